"""Events: the node's pub/sub."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import metakit
from metakit import Down, EventMessage, Exit, Node, Process
from metakit.testing import Probe, wait_until


class Producer(Process):
    async def init(self, event: str = "prices") -> None:
        self.event = event
        self.register_event(event)

    def handle_message(self, sender: metakit.PID, message: Any) -> None:
        if message == "crash":
            raise RuntimeError("producer crashed")
        if message == "withdraw":
            self.unregister_event(self.event)
            return

    def handle_call(self, sender: metakit.Caller, request: Any) -> Any:
        return self.send_event(self.event, request)


class Counter(Process):
    """Counts EventMessages; subscribes in init."""

    async def init(self, event: str) -> None:
        self.count = 0
        self.monitor_event(event)

    def handle_message(self, sender: metakit.PID, message: Any) -> None:
        if isinstance(message, EventMessage):
            self.count += 1

    def handle_inspect(self) -> dict[str, str]:
        return {"count": str(self.count)}


async def test_monitor_event_receives_then_down(node: Node, probe: Any) -> None:
    p: Probe = await probe()
    producer = await node.spawn(Producer)
    ref = p.monitor_event("prices")
    assert await node.call(producer, {"eur": 1.1}) == 1
    assert await p.receive_from() == (producer, EventMessage("prices", {"eur": 1.1}))
    node.send(producer, "crash")
    down = await p.receive()
    assert down.target == "prices"
    assert down.ref == ref
    assert isinstance(down.reason, RuntimeError)
    # The event went with its producer: it can be registered again.
    await node.spawn(Producer)


async def test_link_event_gets_exit_signal(node: Node, probe: Any) -> None:
    p: Probe = await probe()  # traps exits
    producer = await node.spawn(Producer)
    p.link_event("prices")
    await node.call(producer, "tick")
    assert await p.receive() == EventMessage("prices", "tick")
    node.send_exit(producer, "shutdown")
    assert await p.receive() == Exit("prices", "shutdown")
    # A killed producer reaches a link as "killed", which a trapping process survives.
    killed = await node.spawn(Producer)
    p.link_event("prices")
    node.kill(killed)
    assert await p.receive() == Exit("prices", "killed")

    class Linked(Process):
        async def init(self) -> None:
            self.link_event("prices")

    producer2 = await node.spawn(Producer)
    other = await node.spawn(Linked)
    ref = p.monitor(other)
    node.send(producer2, "crash")
    down = await p.receive()
    assert down.ref == ref
    assert isinstance(down.reason, RuntimeError)


async def test_unregister_event(node: Node, probe: Any) -> None:
    p: Probe = await probe()
    producer = await node.spawn(Producer)
    ref = p.monitor_event("prices")
    node.send(producer, "withdraw")
    assert await p.receive() == Down("prices", ref, "unregistered")
    with pytest.raises(metakit.UnknownEvent):
        await node.call(producer, "tick")


async def test_event_errors(node: Node, probe: Any) -> None:
    p: Probe = await probe()
    await node.spawn(Producer)
    with pytest.raises(metakit.NameTaken):
        p.register_event("prices")
    with pytest.raises(metakit.UnknownEvent):
        p.send_event("prices", 1)  # not the producer
    with pytest.raises(metakit.UnknownEvent):
        p.link_event("nothing")
    ref = p.monitor_event("nothing")
    assert await p.receive() == Down("nothing", ref, "noproc")


async def test_dead_subscriber_is_unsubscribed(node: Node) -> None:
    producer = await node.spawn(Producer)
    subs = [await node.spawn(Counter, "prices") for _ in range(3)]
    assert await node.call(producer, 1) == 3
    node.kill(subs[0])
    # send_event counts the subscribers it reached: the two left, none full.
    assert await node.call(producer, 2) == 2
    await wait_until(
        lambda: [node.process_info(pid).inspect["count"] for pid in subs[1:]] == ["2", "2"]
    )


async def test_demonitor_and_unlink_event(node: Node, probe: Any) -> None:
    p: Probe = await probe()
    producer = await node.spawn(Producer)
    ref = p.monitor_event("prices")
    p.demonitor(ref)
    assert await node.call(producer, 1) == 0
    p.link_event("prices")
    p.unlink_event("prices")
    assert await node.call(producer, 1) == 0
    p.monitor_event("prices")
    p.demonitor_event("prices")
    assert await node.call(producer, 1) == 0


async def test_full_subscriber_misses_and_is_counted(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    gate = asyncio.Event()

    class Blocked(Process):
        async def init(self) -> None:
            self.monitor_event("prices")

        async def handle_message(self, sender: metakit.PID, message: Any) -> None:
            await gate.wait()

    producer = await node.spawn(Producer)
    blocked = await node.spawn(Blocked, mailbox_size=1)
    await node.call(producer, 1)  # taken by the handler, which blocks
    await wait_until(lambda: node.process_info(blocked).mailbox == 0)
    assert await node.call(producer, 2) == 1  # queued
    assert await node.call(producer, 3) == 0  # full: missed, counted, logged
    gate.set()
    # The drop is counted (the running total is in the warning).
    missed = [r for r in caplog.records if "missed a message" in r.getMessage()]
    assert [(r.levelname, r.getMessage()) for r in missed] == [
        (
            "WARNING",
            f"{producer!r}: event 'prices': 1 subscriber(s) with a full mailbox"
            " missed a message (1 so far)",
        )
    ]


async def test_ten_thousand_subscribers_one_pass_no_tasks(node: Node) -> None:
    producer = await node.spawn(Producer)
    subs = [await node.spawn(Counter, "prices") for _ in range(10_000)]
    tasks_before = asyncio.all_tasks()
    delivered = await node.call(producer, "tick")
    assert delivered == 10_000
    # Publishing created no Task: each subscriber got an append and, being
    # idle, one scheduled drain callback.
    assert asyncio.all_tasks() == tasks_before
    await wait_until(lambda: all(node.process_info(pid).inspect["count"] == "1" for pid in subs))
