"""Run a coroutine's first step now, and a Task only if it has to wait.

The WebSocket libraries' ``send`` is a coroutine that almost never suspends
(it suspends only to drain a full write buffer). Driving it by hand in a
plain handler keeps the connection metas Task-free per message: a broadcast
to a thousand connections costs a thousand synchronous writes, not a
thousand Tasks. Python 3.12 has eager tasks for this; 3.11 does not.

When the coroutine does suspend, :func:`_resume` hands it to a Task: it
forwards the future the coroutine yielded to the Task (which waits for it,
exactly as if the Task had run the first step), then keeps delegating.
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Coroutine, Generator
from typing import Any

__all__ = ["run_eagerly"]


def run_eagerly(coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any] | None:
    """Run ``coro`` until it first suspends; None if it finished, else the Task finishing it.

    Its exceptions, if it fails before suspending, raise here.
    """
    try:
        yielded = coro.send(None)
    except StopIteration:
        return None
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
