"""The node's scheduler: one ready list of plain-handler actors with a drain due.

Waking an idle actor appends it to the list; the first append of a batch
schedules one ``loop.call_soon(run)``, which drains them all. So a burst of
messages to one actor costs one scheduling, and waking a thousand idle
actors (a broadcast) costs a thousand appends and one callback, not a
thousand Handles for the cyclic GC to trace (DESIGN.md §6).
``Mailbox._mk_kick`` inlines :meth:`Scheduler.schedule`: it runs on every
wake-up.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._idle import IdleSweep
    from .mailbox import Mailbox

__all__ = ["Scheduler"]


class Scheduler:
    """Runs the drains of the actors made ready since the last turn, in order.

    Attributes:
        loop: the node's event loop.
        ready: the actors whose drain is due (read by ``Mailbox._mk_kick``).
        spare: empty queues of actors gone idle, for the next to wake up
            (``mailbox.py``: an idle actor holds no queue of its own).
        sweeps: the idle checks of the node's connections, one per timeout
            (``_idle.py``).
    """

    __slots__ = ("loop", "ready", "spare", "sweeps")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.ready: list[Mailbox] = []
        self.spare: list[deque[Any]] = []
        self.sweeps: dict[float, IdleSweep] = {}

    def schedule(self, actor: Mailbox) -> None:
        """Drain ``actor`` on the next loop turn (one ``call_soon`` per batch)."""
        ready = self.ready
        ready.append(actor)
        if len(ready) == 1:
            self.loop.call_soon(self.run)

    def run(self) -> None:
        """Drain every ready actor; those made ready meanwhile run on the next turn."""
        ready = self.ready
        if len(ready) == 1:  # the common case: one actor woke up; no new list
            ready.pop()._mk_drain()
            return
        self.ready = []
        for i, actor in enumerate(ready):
            try:
                actor._mk_drain()
            except BaseException:
                # Only a BaseException escapes a drain: keep the rest scheduled.
                rest = ready[i + 1 :]
                if rest:
                    if not self.ready:
                        self.loop.call_soon(self.run)
                    self.ready[:0] = rest
                raise
