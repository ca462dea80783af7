"""``/v1/verify`` bodies to verify EmailRequests: one address waits for its answer, a batch is a
job of requests of up to ``CHUNK`` addresses each.

Pure: ids (``streams/contract/ids.py`` ``job_id``, keyed like message ids) and time are
parameters. Every verification, single or batch, is a job whose request
ids are known up front, so progress is a count of result rows for those ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, cast

from streams.api.check import Check
from streams.contract.build import email_request, recipient
from streams.contract.records import EmailRequest, Priority

__all__ = [
    "CHUNK",
    "MAX_BATCH",
    "MAX_WAIT",
    "Job",
    "parse_batch",
    "parse_single",
    "plan",
    "requests",
]

CHUNK: Final = 1000  # addresses per request: the gate fans each one out per address
MAX_BATCH: Final = 100_000
MAX_WAIT: Final = 30.0
MAX_ADDRESS: Final = 320  # RFC 3696 errata: 64 + 1 + 255


@dataclass(frozen=True, slots=True)
class Job:
    job_id: str
    addresses: list[str]
    smtp_probe: bool | None
    request_ids: list[str]


def _address(check: Check, value: Any, field: str) -> str | None:
    """Any non-empty string is accepted: telling a bad address from a good one is the job."""
    if not isinstance(value, str) or not value.strip():
        check.fail(field, "must be a non-empty string")
        return None
    if len(value) > MAX_ADDRESS:
        check.fail(field, f"must be at most {MAX_ADDRESS} characters")
        return None
    return value.strip()


def _probe(check: Check, value: Any) -> bool | None:
    if value is not None and not isinstance(value, bool):
        check.fail("smtp_probe", "must be true, false or null (the tenant's default)")
        return None
    return value


def parse_single(body: Any, default_wait: float) -> tuple[str, bool | None, float]:
    """(address, smtp_probe, seconds to wait) of ``{"email", "smtp_probe"?, "timeout"?}``."""
    check = Check()
    root = check.obj(body, "body", required=True) or {}
    address = _address(check, root.get("email"), "email")
    probe = _probe(check, root.get("smtp_probe"))
    wait = root.get("timeout", default_wait)
    if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not 0 <= wait <= MAX_WAIT:
        check.fail("timeout", f"must be a number of seconds from 0 to {MAX_WAIT:g}")
        wait = default_wait
    check.done()
    assert address is not None
    return address, probe, float(wait)


def parse_batch(body: Any) -> tuple[list[str], bool | None]:
    """(distinct addresses in their first order, smtp_probe) of ``{"emails": [...]}``."""
    check = Check()
    root = check.obj(body, "body", required=True) or {}
    raw = check.items(root.get("emails"), "emails")
    if not raw and not check.errors:
        check.fail("emails", "The emails array is required and may not be empty.")
    if len(raw) > MAX_BATCH:
        check.fail("emails", f"At most {MAX_BATCH} addresses per batch.")
        raw = []
    seen: dict[str, None] = {}
    for i, value in enumerate(raw):
        address = _address(check, value, f"emails.{i}")
        if address is not None:
            seen.setdefault(address, None)
    probe = _probe(check, root.get("smtp_probe"))
    check.done()
    return list(seen), probe


def plan(job_id: str, addresses: list[str], smtp_probe: bool | None) -> Job:
    """Split the addresses into requests: the job id itself for one chunk, else ``<job>.<n>``."""
    chunks = max(1, -(-len(addresses) // CHUNK))
    ids = [job_id] if chunks == 1 else [f"{job_id}.{n}" for n in range(chunks)]
    return Job(job_id, addresses, smtp_probe, ids)


def requests(job: Job, *, tenant: str, priority: str, now: datetime) -> list[EmailRequest]:
    """The job's EmailRequest records (operation ``verify``)."""
    return [
        email_request(
            request_id,
            tenant,
            "verify",
            now,
            # the gate drops a second copy of the same request (a retried POST, a replay)
            idempotency_key=f"verify:{request_id}",
            priority=cast("Priority", priority),  # the route falls back to a valid one
            recipients=[recipient(a) for a in job.addresses[n * CHUNK : (n + 1) * CHUNK]],
            smtp_probe=job.smtp_probe,
        )
        for n, request_id in enumerate(job.request_ids)
    ]
