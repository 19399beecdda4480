"""Call timeouts without a timer per call.

``loop.call_later`` plus ``cancel()`` for every ``call`` costs more than the
rest of a round trip on the stdlib loop (a TimerHandle, a heap push, a
cancelled-handle cleanup). Instead each distinct timeout value gets a FIFO
of ``(deadline, future, target)``: calls with the same timeout expire in the
order they were made, so one timer at the oldest pending deadline suffices.
A queue holds each entry as three consecutive items, deadline, future and
target, as the mailbox does: no tuple per call for the cyclic GC to count.

The sweep also runs every ``_SWEEP`` seconds while calls are in flight, to
drop the answered ones from the front, so the queues hold about that much
traffic. A long-pending call at the front with many answered calls behind it
is handled by compacting the queue when it grows past ``_COMPACT``.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

from .errors import CallTimeout

__all__ = ["Deadlines"]

_SWEEP = 0.1
_COMPACT = 4096


class Deadlines:
    """The pending calls' deadlines on one loop."""

    __slots__ = ("_mk_loop", "_queues", "_time", "_timer", "_wake")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._mk_loop = loop
        # The stdlib loop's time() is a Python method around time.monotonic:
        # call that directly (one frame less per call). Other loops keep their own.
        plain = getattr(type(loop), "time", None) is asyncio.BaseEventLoop.time
        self._time = time.monotonic if plain else loop.time
        self._queues: dict[float, deque[Any]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._wake = 0.0  # when the timer fires (its when(), without the call)

    def add(self, future: asyncio.Future[Any], timeout: float, target: Any) -> None:
        """Fail ``future`` with CallTimeout(target, timeout) unless it is done in time."""
        queue = self._queues.get(timeout)
        if queue is None:
            queue = self._queues[timeout] = deque()
        now = self._time()
        deadline = now + timeout
        queue.append(deadline)
        queue.append(future)
        queue.append(target)
        wake = deadline if timeout < _SWEEP else now + _SWEEP
        timer = self._timer
        if timer is None or wake < self._wake:
            if timer is not None:
                timer.cancel()  # a shorter timeout than any pending one
            self._wake = wake
            self._timer = self._mk_loop.call_at(wake, self._sweep)

    def _sweep(self) -> None:
        self._timer = None
        now = self._time()
        wake = now + _SWEEP
        for timeout, queue in list(self._queues.items()):
            while queue:
                deadline = queue[0]
                future = queue[1]
                if deadline > now and not future.done():
                    wake = min(wake, deadline)
                    break
                queue.popleft()
                queue.popleft()
                target = queue.popleft()
                if not future.done():  # answered calls just leave the queue
                    future.set_exception(CallTimeout(target, timeout))
            if not queue:
                del self._queues[timeout]
            elif len(queue) > 3 * _COMPACT:
                kept: deque[Any] = deque()
                for i in range(0, len(queue), 3):
                    if not queue[i + 1].done():
                        kept.extend((queue[i], queue[i + 1], queue[i + 2]))
                self._queues[timeout] = kept
        if self._queues:
            self._wake = wake
            self._timer = self._mk_loop.call_at(wake, self._sweep)

    def close(self) -> None:
        """Stop the timer (the node is stopped)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
