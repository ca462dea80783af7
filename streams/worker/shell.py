"""What the faust process host adds to the stages: the directory's refresh on a faust timer."""

from __future__ import annotations

import faust

from streams.db.directory import DirectoryHolder

__all__ = ["install_directory"]


def install_directory(app: faust.App, holder: DirectoryHolder) -> None:
    """Reload ``holder`` on a faust timer in a faust worker."""

    @app.timer(holder.database.directory_refresh, on_leader=False)
    async def refresh_directory() -> None:
        await holder.refresh()

    @app.task
    async def first_directory() -> None:
        await holder.refresh()
