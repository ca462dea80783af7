import asyncio
from collections.abc import Sequence

import pytest

from streams.api.group_commit import GroupCommit


class Writes:
    def __init__(self, fail_on: str | None = None) -> None:
        self.batches: list[list[str]] = []
        self.fail_on = fail_on
        self.release = asyncio.Event()

    async def __call__(self, rows: Sequence[str]) -> None:
        self.batches.append(list(rows))
        await self.release.wait()
        if self.fail_on in rows:
            raise OSError(f"cannot store {self.fail_on}")


async def test_rows_arriving_during_a_write_share_the_next_one() -> None:
    writes = Writes()
    group = GroupCommit(writes, writers=1)
    first = asyncio.create_task(group.add("a"))
    await asyncio.sleep(0)
    rest = [asyncio.create_task(group.add(r)) for r in "bcd"]
    await asyncio.sleep(0)
    assert writes.batches == [["a"]]
    assert group.waiting == 3
    writes.release.set()
    await asyncio.gather(first, *rest)
    assert writes.batches == [["a"], ["b", "c", "d"]]


async def test_a_failed_write_fails_only_its_own_batch() -> None:
    writes = Writes(fail_on="b")
    group = GroupCommit(writes, writers=1, max_batch=2)
    tasks = [asyncio.create_task(group.add(r)) for r in "abcde"]
    await asyncio.sleep(0)
    writes.release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert writes.batches == [["a", "b"], ["c", "d"], ["e"]]
    assert [type(r) for r in results] == [OSError, OSError, type(None), type(None), type(None)]
    assert "cannot store b" in str(results[0])


async def test_a_caller_that_gives_up_still_gets_its_row_written() -> None:
    writes = Writes()
    group = GroupCommit(writes, writers=1)
    task = asyncio.create_task(group.add("a"))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    writes.release.set()
    await group.close()
    assert writes.batches == [["a"]]


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        GroupCommit(Writes(), writers=0)
