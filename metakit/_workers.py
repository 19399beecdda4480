"""Who gets the next connection, datagram or request: one worker, or a pool.

Every network meta hands its traffic to a worker process: its parent by
default, a given process, or pool members round-robin. Pool members are
looked up by name or PID each time, so a supervised worker restarted under
the same name is found again, and dead members are skipped.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ._state import EXITING
from .ids import PID

if TYPE_CHECKING:
    from .mailbox import Mailbox
    from .node import Node

__all__ = ["Workers", "mark_coroutine_function"]


class Workers:
    """A round-robin over names or PIDs; empty means "the parent"."""

    __slots__ = ("_next", "targets")

    def __init__(
        self, worker: PID | str | None, pool: Sequence[PID | str] | None, *, required: bool
    ) -> None:
        if worker is not None and pool is not None:
            raise ValueError("give a worker or a pool, not both")
        if required and worker is None and pool is None:
            raise ValueError("give a worker or a pool")
        self.targets: list[PID | str] = [worker] if worker is not None else list(pool or ())
        if pool is not None and not self.targets:
            raise ValueError("the pool is empty")
        self._next = 0

    def pick(self, node: Node, parent: Mailbox) -> Mailbox | None:
        """The next live worker (``parent`` when no worker or pool was given), or None."""
        # Not exiting is enough: an actor still in init queues what it gets
        # (a server binds in its parent's init, and may accept before it ends).
        targets = self.targets
        if not targets:
            return parent if parent._mk_state < EXITING else None
        for _ in range(len(targets)):
            target = targets[self._next % len(targets)]
            self._next += 1
            actor = node._lookup(target)
            if actor is not None and actor._mk_state < EXITING:
                return actor
        return None

    def __repr__(self) -> str:
        return ", ".join(map(str, self.targets)) if self.targets else "the parent"


def mark_coroutine_function(obj: Any) -> None:
    """Make ``asyncio.iscoroutinefunction(obj)`` true for a callable object.

    aiohttp warns about route handlers that check fails, and an object with
    an ``async def __call__`` fails it; these are the marks it looks for
    (Python 3.11's asyncio, and 3.12's inspect).
    """
    obj._is_coroutine = getattr(asyncio.coroutines, "_is_coroutine", None)
    obj._is_coroutine_marker = getattr(inspect, "_is_coroutine_mark", None)
