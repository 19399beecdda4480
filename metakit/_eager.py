"""Run a coroutine's first step by hand, and a Task only if it has to wait.

The WebSocket libraries' ``send`` is a coroutine that almost never suspends
(it suspends only to drain a full write buffer). A connection meta's plain
handler runs it with :meth:`Pump.run`, so a broadcast to a thousand
connections costs a thousand synchronous writes, not a thousand Tasks
(Python 3.12 has eager tasks for this; 3.11 does not).

A :class:`Pump` is a generator that runs each coroutine it is given with
``yield from``, then yields ``_IDLE``: a coroutine that finishes at once
costs no ``StopIteration`` (``coro.send(None)`` would raise one per call,
a third of the cost of a short send). When a coroutine does suspend, the
pump yields the future it waits for; the pump, mid-coroutine, is handed to a
Task that forwards what it yields to the loop (exactly as if the Task had
run the first step) until the pump is idle again, and the next
:meth:`Pump.run` starts a fresh pump.
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Coroutine, Generator
from typing import Any

__all__ = ["Pump"]

_IDLE: Any = object()


@types.coroutine
def _pump() -> Generator[Any, Any, None]:
    coro = yield _IDLE
    while True:
        yield from coro  # its result is not needed: sends return None
        coro = yield _IDLE


class Pump:
    """Runs coroutines whose results are not needed, eagerly, one at a time."""

    __slots__ = ("_gen",)

    def __init__(self) -> None:
        self._gen: Generator[Any, Any, None] | None = None

    def run(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[None] | None:
        """Run ``coro`` until it first suspends: None if it finished, else the Task finishing it.

        Its exceptions, if it fails before suspending, raise here.
        """
        gen = self._gen
        if gen is None:
            gen = self._gen = _pump()
            gen.send(None)
        try:
            yielded = gen.send(coro)
        except BaseException:
            self._gen = None  # the coroutine's exception ended the pump too
            raise
        if yielded is _IDLE:
            return None
        self._gen = None  # the Task owns this pump now
        return asyncio.get_running_loop().create_task(_finish(gen, yielded))


async def _finish(gen: Generator[Any, Any, None], yielded: Any) -> None:
    await _resume(gen, yielded)


@types.coroutine
def _resume(gen: Generator[Any, Any, None], yielded: Any) -> Generator[Any, Any, None]:
    # Forward what the pump yields to the Task, and what the Task sends or
    # throws (a result, a cancellation) back in, until the coroutine is done.
    while True:
        try:
            sent = yield yielded
        except GeneratorExit:
            gen.close()
            raise
        except BaseException as exc:
            yielded = gen.throw(exc)
        else:
            yielded = gen.send(sent)
        if yielded is _IDLE:
            gen.close()
            return
