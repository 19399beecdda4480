"""A watch on keys of the namespace's bucket, kept as a local view."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

__all__ = ["KeyWatch"]


class KeyWatch:
    """Loads the keys matching a pattern into a fresh view, then follows their
    changes into that view in a task (names and groups keep their view so).

    Args:
        apply: ``apply(view, entry)``: one KV entry (a put or a delete) into the view.
    """

    def __init__(self, apply: Callable[[Any, Any], None]) -> None:
        self._apply = apply
        self._watcher: Any = None
        self._follower: asyncio.Task[None] | None = None
        self._later: asyncio.TimerHandle | None = None

    async def start(self, kv: Any, pattern: str, view: Any) -> Any:
        """(Re)start: ``view`` filled with the current keys (returned), then followed."""
        await self.close()
        watcher = self._watcher = await kv.watch(pattern)
        while True:  # the current keys, up to the marker
            entry = await watcher.updates(timeout=10.0)
            if entry is None:
                break
            self._apply(view, entry)
        self._follower = asyncio.get_running_loop().create_task(self._follow(watcher, view))
        return view

    def later(self, delay: float, callback: Callable[..., None], *args: Any) -> None:
        """Run ``callback(*args)`` on this view in ``delay`` seconds, unless the
        watch restarts or closes first (a restarted view's carried entries)."""
        self._later = asyncio.get_running_loop().call_later(delay, callback, *args)

    async def _follow(self, watcher: Any, view: Any) -> None:
        with contextlib.suppress(Exception):
            async for entry in watcher:
                if entry is not None:
                    self._apply(view, entry)

    async def close(self) -> None:
        """Stop following (the connection is closing, or the watch restarts)."""
        if self._later is not None:
            self._later.cancel()
            self._later = None
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(BaseException):
                await self._follower
            self._follower = None
        if self._watcher is not None:
            with contextlib.suppress(Exception):
                await self._watcher.stop()
            self._watcher = None
