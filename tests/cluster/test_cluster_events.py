"""Cluster events across nodes on a real nats-server (DESIGN.md §8, Events)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from conftest import cluster, stays, until

import metakit
from metakit.cluster import LocalServer


class Producer(metakit.Process):
    async def handle_call(self, sender: metakit.Caller, request: Any) -> Any:
        match request:
            case ("register", name):
                await self.register_event(name, cluster=True)
            case ("unregister", name):
                self.unregister_event(name)
            case ("send", name, message):
                return self.send_event(name, message)
        return None


class Subscriber(metakit.Process):
    trap_exit = True

    async def init(self) -> None:
        self.got: list[Any] = []

    def handle_message(self, sender: metakit.PID, message: Any) -> None:
        match message:
            case metakit.EventMessage(event, value):
                self.got.append((event, value, sender))
            case metakit.Down(target, _ref, reason):
                self.got.append(("down", target, reason))
            case metakit.Exit(source, reason):
                self.got.append(("exit", source, reason))

    def handle_call(self, sender: metakit.Caller, request: Any) -> Any:
        match request:
            case ("monitor", name):
                return self.monitor_event(name)
            case ("link", name):
                self.link_event(name)
            case ("demonitor", name):
                self.demonitor_event(name)
            case "got":
                return list(self.got)
        return None


@pytest.fixture
async def two(server: LocalServer, namespace: str) -> AsyncIterator[tuple[metakit.Node, ...]]:
    """Two nodes of one namespace, each seeing the other."""
    a = metakit.Node("a@test", cluster=cluster(server, namespace))
    b = metakit.Node("b@test", cluster=cluster(server, namespace))
    try:
        await a.start()
        await b.start()
        await until(lambda: a.nodes() == b.nodes() == ["a@test", "b@test"])
        yield a, b
    finally:
        await b.stop()
        await a.stop()


async def _producer_and_subscriber(
    a: metakit.Node, b: metakit.Node, event: str
) -> tuple[metakit.PID, metakit.PID]:
    """A producer of cluster event ``event`` on ``a``, a monitoring subscriber on ``b``."""
    producer = await a.spawn(Producer)
    await a.call(producer, ("register", event))
    sub = await b.spawn(Subscriber)
    await until(lambda: b.cluster.event_producer(event) is not None)  # type: ignore[union-attr]
    await b.call(sub, ("monitor", event))
    await until(lambda: "b@test" in a._events.by_name[event].nodes, what="b subscribed")
    return producer, sub


async def _got(node: metakit.Node, pid: metakit.PID) -> list[Any]:
    return await node.call(pid, "got")  # type: ignore[no-any-return]


async def test_subscribers_on_any_node_one_frame_per_node(two: tuple[metakit.Node, ...]) -> None:
    a, b = two
    producer = await a.spawn(Producer)
    await a.call(producer, ("register", "ticks"))
    local = await a.spawn(Subscriber)
    await a.call(local, ("monitor", "ticks"))
    away = [await b.spawn(Subscriber) for _ in range(3)]
    await until(lambda: b.cluster is not None and b.cluster.event_producer("ticks") is not None)
    await b.call(away[0], ("monitor", "ticks"))
    await b.call(away[1], ("monitor", "ticks"))
    await b.call(away[2], ("link", "ticks"))
    await until(lambda: "b@test" in a._events.by_name["ticks"].nodes, what="b subscribed")
    frames_in = b.cluster.statistics().messages_in  # type: ignore[union-attr]
    # 1 subscriber here + 1 other node with subscribers.
    for i in range(10):
        assert await a.call(producer, ("send", "ticks", i)) == 2
    expected = [("ticks", i, producer) for i in range(10)]
    for pid in away:
        await until(lambda p=pid: b._registry.table[p.id].got == expected)  # type: ignore[attr-defined]
    assert await _got(a, local) == expected
    # One frame per send_event for the three subscribers of b.
    assert b.cluster.statistics().messages_in - frames_in == 10  # type: ignore[union-attr]

    # The last subscriber of b leaving unsubscribes the node.
    await b.call(away[0], ("demonitor", "ticks"))
    await b.call(away[1], ("demonitor", "ticks"))
    assert "b@test" in a._events.by_name["ticks"].nodes  # away[2] still links
    # Producer death reaches the remote subscribers: the link, and a new monitor.
    await b.call(away[0], ("monitor", "ticks"))
    a.kill(producer)
    await until(lambda: ("down", "ticks", "kill") in b._registry.table[away[0].id].got)  # type: ignore[attr-defined]
    await until(lambda: ("exit", "ticks", "killed") in b._registry.table[away[2].id].got)  # type: ignore[attr-defined]
    await until(lambda: ("down", "ticks", "kill") in a._registry.table[local.id].got)  # type: ignore[attr-defined]
    assert not b._events.away
    # The name is free again, for any node.
    await until(lambda: b.cluster.event_producer("ticks") is None)  # type: ignore[union-attr]
    again = await b.spawn(Producer)
    await b.call(again, ("register", "ticks"))


async def test_name_is_cluster_wide_and_checked(two: tuple[metakit.Node, ...]) -> None:
    a, b = two
    p = await a.spawn(Producer)
    q = await b.spawn(Producer)
    await a.call(p, ("register", "lobby"))
    with pytest.raises(metakit.NameTaken):
        await b.call(q, ("register", "lobby"))
    assert "lobby" not in b._events.by_name  # refused: nothing left here
    for bad in ("a.b", "a b", "", "x" * 129, "ü"):
        with pytest.raises(ValueError, match="NATS subject token"):
            await a.call(p, ("register", bad))
    # An unknown event: Down("noproc") at once, or UnknownEvent for a link.
    s = await b.spawn(Subscriber)
    await b.call(s, ("monitor", "nothing"))
    assert (await _got(b, s))[0] == ("down", "nothing", "noproc")
    with pytest.raises(metakit.UnknownEvent):
        await b.call(s, ("link", "nothing"))
    # Withdrawing frees the name; a remote subscriber gets the reason.
    await until(lambda: b.cluster.event_producer("lobby") is not None)  # type: ignore[union-attr]
    await b.call(s, ("monitor", "lobby"))
    await until(lambda: "b@test" in a._events.by_name["lobby"].nodes)
    await a.call(p, ("unregister", "lobby"))
    await until(lambda: ("down", "lobby", "unregistered") in b._registry.table[s.id].got)  # type: ignore[attr-defined]
    await until(lambda: b.cluster.event_producer("lobby") is None)  # type: ignore[union-attr]
    await b.call(q, ("register", "lobby"))


async def test_unencodable_message_reaches_nobody(two: tuple[metakit.Node, ...]) -> None:
    a, b = two
    p, there = await _producer_and_subscriber(a, b, "news")
    here = await a.spawn(Subscriber)
    await a.call(here, ("monitor", "news"))
    with pytest.raises(TypeError):
        await a.call(p, ("send", "news", object()))
    assert await a.call(p, ("send", "news", "ok")) == 2
    await until(lambda: b._registry.table[there.id].got == [("news", "ok", p)])  # type: ignore[attr-defined]
    assert await _got(a, here) == [("news", "ok", p)]


async def test_node_down_ends_its_events_once(two: tuple[metakit.Node, ...]) -> None:
    a, b = two
    _, s = await _producer_and_subscriber(a, b, "feed")
    await a.stop()
    table = b._registry.table
    await until(lambda: ("down", "feed", "noconnection") in table[s.id].got)  # type: ignore[attr-defined]
    await stays(lambda: len(table[s.id].got) == 1, 0.3, "one Down")  # type: ignore[attr-defined]
    assert b.cluster.event_producer("feed") is None  # type: ignore[union-attr]
    assert not b._events.away


async def test_register_event_needs_a_cluster() -> None:
    async with metakit.Node("solo@test") as node:
        p = await node.spawn(Producer)
        with pytest.raises(metakit.NodeNotRunning):
            await node.call(p, ("register", "x"))
