"""Call timeouts without a timer per call.

``loop.call_later`` plus ``cancel()`` for every ``call`` costs more than the
rest of a round trip on the stdlib loop (a TimerHandle, a heap push, a
cancelled-handle cleanup). Instead each distinct timeout value gets a FIFO
of ``(deadline, future, target)``: calls with the same timeout expire in the
order they were made, so one timer at the oldest pending deadline suffices.

The sweep also runs every ``_SWEEP`` seconds while calls are in flight, to
drop the answered ones from the front, so the queues hold about that much
traffic. A long-pending call at the front with many answered calls behind it
is handled by compacting the queue when it grows past ``_COMPACT``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from .errors import CallTimeout

__all__ = ["Deadlines"]

_SWEEP = 0.1
_COMPACT = 4096


class Deadlines:
    """The pending calls' deadlines on one loop."""

    __slots__ = ("_mk_loop", "_queues", "_timer")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._mk_loop = loop
        self._queues: dict[float, deque[tuple[float, asyncio.Future[Any], Any]]] = {}
        self._timer: asyncio.TimerHandle | None = None

    def add(self, future: asyncio.Future[Any], timeout: float, target: Any) -> None:
        """Fail ``future`` with CallTimeout(target, timeout) unless it is done in time."""
        queue = self._queues.get(timeout)
        if queue is None:
            queue = self._queues[timeout] = deque()
        deadline = self._mk_loop.time() + timeout
        queue.append((deadline, future, target))
        wake = min(deadline, deadline - timeout + _SWEEP)
        timer = self._timer
        if timer is None or wake < timer.when():
            if timer is not None:
                timer.cancel()  # a shorter timeout than any pending one
            self._timer = self._mk_loop.call_at(wake, self._sweep)

    def _sweep(self) -> None:
        self._timer = None
        now = self._mk_loop.time()
        wake = now + _SWEEP
        for timeout, queue in list(self._queues.items()):
            while queue:
                deadline, future, target = queue[0]
                if future.done():
                    queue.popleft()
                elif deadline <= now:
                    queue.popleft()
                    future.set_exception(CallTimeout(target, timeout))
                else:
                    wake = min(wake, deadline)
                    break
            if not queue:
                del self._queues[timeout]
            elif len(queue) > _COMPACT:
                self._queues[timeout] = deque(e for e in queue if not e[1].done())
        if self._queues:
            self._timer = self._mk_loop.call_at(wake, self._sweep)

    def close(self) -> None:
        """Stop the timer (the node is stopped)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
