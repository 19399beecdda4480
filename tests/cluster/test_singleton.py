"""The singleton: exactly one instance in the namespace, failover when its
node goes down, a holder cut off stops before another starts (DESIGN.md §8)."""

from __future__ import annotations

import asyncio

from conftest import HEARTBEAT, Proxy, cluster, until

import metakit
from metakit.cluster import Cluster, LocalServer


class Leader(metakit.Process):
    def handle_call(self, sender: metakit.Caller, request: object) -> object:
        return self.node.name


def _running(nodes: list[metakit.Node]) -> list[str]:
    """The nodes on which a Leader runs right now."""
    return [
        n.name
        for n in nodes
        if n.running and any(isinstance(p, Leader) for p in n._registry.table.values())
    ]


async def test_one_instance_fails_over_and_never_two(server: LocalServer, namespace: str) -> None:
    relay = await Proxy(server.port).start()
    nodes = [
        metakit.Node(
            "a@test", cluster=Cluster(relay.url, namespace=namespace, heartbeat=HEARTBEAT)
        ),
        metakit.Node("b@test", cluster=cluster(server, namespace)),
        metakit.Node("c@test", cluster=cluster(server, namespace)),
    ]
    try:
        for node in nodes:
            await node.start()
        await until(lambda: all(len(n.nodes()) == 3 for n in nodes))
        # a first: it holds the lease.
        first = [await n.spawn_singleton(Leader, name="leader") for n in nodes]
        assert first[0] is not None
        assert first[1:] == [None, None]
        await until(lambda: nodes[1].whereis("leader") == first[0])
        assert await nodes[2].call("leader", "who") == "a@test"
        # Cut a off: its instance must stop before another starts, and one must start.
        samples: list[list[str]] = []

        async def sample() -> None:
            while True:
                samples.append(_running(nodes))
                await asyncio.sleep(0.005)

        sampler = asyncio.ensure_future(sample())
        loop = asyncio.get_running_loop()
        started = loop.time()
        await relay.cut()
        await until(
            lambda: bool(_running(nodes[1:])), timeout=3 * HEARTBEAT + 1 + 2, what="a failover"
        )
        took = loop.time() - started
        sampler.cancel()
        assert max(len(s) for s in samples) == 1, "two instances at once"
        assert "a@test" not in _running(nodes)
        assert took <= 3 * HEARTBEAT + 1 + 1.0, took  # a TTL is whole seconds: 1 s here
        winner = _running(nodes[1:])[0]
        survivor = nodes[1] if winner == "b@test" else nodes[2]
        await until(lambda: survivor.whereis("leader") is not None)
        assert await survivor.call("leader", "who") == winner
    finally:
        for node in reversed(nodes):
            await node.stop()
        await relay.close()


async def test_no_instance_starts_while_its_name_is_held(
    server: LocalServer, namespace: str
) -> None:
    # The lease is free but the name is still held (as when the lease expires
    # before the old holder's node is judged down): nothing may start until
    # the name is free, and then the instance does.
    a = metakit.Node("a@test", cluster=cluster(server, namespace))
    b = metakit.Node("b@test", cluster=cluster(server, namespace))
    async with a, b:
        await until(lambda: a.nodes() == b.nodes() == ["a@test", "b@test"])
        squatter = await b.spawn(Leader)
        await b.register_name("leader", squatter, cluster=True)
        await until(lambda: a.whereis("leader") == squatter)
        assert await a.spawn_singleton(Leader, name="leader") is None
        assert _running([a]) == []
        b.kill(squatter)
        await until(lambda: _running([a]) == ["a@test"], timeout=3 * HEARTBEAT + 2)
        await until(
            lambda: b.whereis("leader") is not None and b.whereis("leader").node == "a@test"
        )
        assert _running([a, b]) == ["a@test"]
