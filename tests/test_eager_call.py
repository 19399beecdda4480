"""``Meta.call(..., eager=True)``: an idle callee answers inside the call.

WebHandler makes its calls so (a request task yields anyway when it writes
the response). Each test checks what a queued call would have done too:
the same answer, the same order, the same errors and timeouts.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import metakit
from metakit import NO_REPLY, Node, Process
from metakit.errors import CallTimeout, ProcessExited
from metakit.testing import TIMEOUT, wait_until


class Worker(Process):
    """Answers calls in order with what it has seen; a few requests misbehave."""

    def init(self) -> None:
        self.seen: list[Any] = []
        self.later: list[Any] = []

    def handle_message(self, sender: Any, message: Any) -> None:
        self.seen.append(message)

    def handle_call(self, sender: Any, request: Any) -> Any:
        self.seen.append(request)
        if request == "fail":
            raise ValueError("bad request")
        if request == "stop":
            raise metakit.Stop("asked to")
        if request == "later":
            self.later.append(sender)
            return NO_REPLY
        return list(self.seen)


class AsyncWorker(Process):
    async def handle_call(self, sender: Any, request: Any) -> Any:
        return ("async", request)


class Bridge(metakit.Meta):
    """A meta with no main loop: the tests make its calls."""


class Owner(Process):
    async def init(self, holder: list[Bridge]) -> None:
        bridge = Bridge()
        await self.spawn_meta(bridge)
        holder.append(bridge)


async def bridge_and(node: Node, worker: type[Process]) -> tuple[Bridge, Any, Any]:
    holder: list[Bridge] = []
    await node.spawn(Owner, holder)
    pid = await node.spawn(worker)
    return holder[0], pid, node._registry.table[pid.id]


async def test_an_idle_worker_answers_inside_the_call(node: Node) -> None:
    bridge, pid, worker = await bridge_and(node, Worker)
    future = bridge.call(pid, "a", eager=True)
    assert future.done()  # no loop turn: answered before call() returned
    assert await future == ["a"]
    assert not worker._mk_scheduled  # idle again, with no queue of its own
    # A second one, and a plain (queued) one: the same answers.
    assert await bridge.call(pid, "b", eager=True) == ["a", "b"]
    queued = bridge.call(pid, "c")
    assert not queued.done()
    assert await asyncio.wait_for(queued, TIMEOUT) == ["a", "b", "c"]


async def test_a_busy_worker_takes_the_call_in_its_turn(node: Node) -> None:
    bridge, pid, _ = await bridge_and(node, Worker)
    node.send(pid, "first")  # queued: the worker is not idle now
    future = bridge.call(pid, "then", eager=True)
    assert not future.done()
    assert await asyncio.wait_for(future, TIMEOUT) == ["first", "then"]


async def test_a_coroutine_handle_call_is_queued(node: Node) -> None:
    bridge, pid, _ = await bridge_and(node, AsyncWorker)
    future = bridge.call(pid, 1, eager=True)
    assert not future.done()
    assert await asyncio.wait_for(future, TIMEOUT) == ("async", 1)


async def test_errors_reach_the_caller_and_the_worker_carries_on(node: Node) -> None:
    bridge, pid, _ = await bridge_and(node, Worker)
    future = bridge.call(pid, "fail", eager=True)
    assert future.done()
    with pytest.raises(ValueError, match="bad request"):
        await future
    assert await bridge.call(pid, "next", eager=True) == ["fail", "next"]


async def test_stop_in_handle_call_ends_the_worker_and_fails_the_call(node: Node) -> None:
    bridge, pid, _ = await bridge_and(node, Worker)
    ended = node.wait_exit(pid)
    future = bridge.call(pid, "stop", eager=True)
    with pytest.raises(ProcessExited):
        await asyncio.wait_for(future, TIMEOUT)
    assert await asyncio.wait_for(ended, TIMEOUT) == "asked to"


async def test_a_deferred_answer_comes_later_and_keeps_its_deadline(node: Node) -> None:
    bridge, pid, worker = await bridge_and(node, Worker)
    future = bridge.call(pid, "later", eager=True)
    assert not future.done()
    await wait_until(lambda: len(worker.later) == 1)
    worker.reply(worker.later[0], "answered")
    assert await asyncio.wait_for(future, TIMEOUT) == "answered"
    # Never answered: the call's own timeout still applies.
    late = bridge.call(pid, "later", timeout=0.05, eager=True)
    with pytest.raises(CallTimeout):
        await asyncio.wait_for(late, TIMEOUT)
