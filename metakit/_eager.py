"""Finish in a Task a coroutine whose first step was run by hand.

The WebSocket libraries' ``send`` is a coroutine that almost never suspends
(it suspends only to drain a full write buffer). A connection meta's plain
handler drives its first step with ``coro.send(None)``, so a broadcast to a
thousand connections costs a thousand synchronous writes, not a thousand
Tasks (Python 3.12 has eager tasks for this; 3.11 does not). Only when the
coroutine does suspend does :func:`finish_eagerly` hand it to a Task:
:func:`_resume` forwards the future the coroutine yielded to the Task (which
waits for it, exactly as if the Task had run the first step), then keeps
delegating.
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Coroutine, Generator
from typing import Any

__all__ = ["finish_eagerly"]


def finish_eagerly(coro: Coroutine[Any, Any, Any], yielded: Any) -> asyncio.Task[Any]:
    """Hand a coroutine that yielded ``yielded`` on its first step to a Task that finishes it."""
    return asyncio.get_running_loop().create_task(_finish(coro, yielded))


async def _finish(coro: Coroutine[Any, Any, Any], yielded: Any) -> Any:
    return await _resume(coro, yielded)


@types.coroutine
def _resume(coro: Coroutine[Any, Any, Any], yielded: Any) -> Generator[Any, Any, Any]:
    while True:
        try:
            sent = yield yielded
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:
            try:
                yielded = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                yielded = coro.send(sent)
            except StopIteration as stop:
                return stop.value
