"""Bad input on a node's subject is counted and logged, never crashes it; a
namespace never sees another's traffic (DESIGN.md §8)."""

from __future__ import annotations

import random

import nats
import pytest
from cluster_peers import Pong
from conftest import cluster, until

import metakit
from metakit import NoProcess
from metakit._remote_actors import CALL, SEND
from metakit.cluster import LocalServer
from metakit.cluster._peer import token
from metakit.cluster._wire import Codec
from metakit.testing import TIMEOUT


async def test_forged_and_truncated_batches_are_counted_not_fatal(
    server: LocalServer, namespace: str
) -> None:
    a = metakit.Node("a@test", cluster=cluster(server, namespace))
    b = metakit.Node("b@test", cluster=cluster(server, namespace))
    async with a, b:
        await until(lambda: a.nodes() == ["a@test", "b@test"])
        pong = await a.spawn(Pong)
        codec = Codec()
        header = codec.pack((1, "b@test", 12345))
        good = codec.pack((SEND, pong.id, 1, "kept"))
        rng = random.Random(7)
        bad = [
            b"",
            b"\xc1",  # never used in msgpack
            bytes(rng.randrange(256) for _ in range(64)),
            codec.pack((99, "b@test", 1)),  # wrong version
            codec.pack(("x",)),
            header + good + good[:-2],  # a truncated tail after a good frame
            header + codec.pack((SEND,)),  # too short
            header + codec.pack((77, 1, 2)),  # unknown kind
            header + codec.pack((SEND, "tid", 1, "x")),
            header + codec.pack((CALL, pong.id, 1, "cid", "ping", "extra")),
            header + b"\xdd\xff\xff\xff\xff",  # an array claiming 4 G items
        ]
        bad += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))) for _ in range(100)]
        nc = await nats.connect(server.url, connect_timeout=TIMEOUT)
        try:
            subject = f"mk.{namespace}.n.{token('a@test')}"
            for payload in bad:
                await nc.publish(subject, payload)
            await nc.publish(f"mk.{namespace}.hb", b"\x93garbage")
            await nc.flush()
        finally:
            await nc.close()
        stats = a.cluster.statistics  # type: ignore[union-attr]
        await until(lambda: stats().bad_input >= 10, what="the bad input counted")
        # The node carries on: local and remote traffic still work.
        assert await b.call(pong, "ping") == "pong"
        assert await a.call(pong, "got") == ["kept"]  # the good frame before the cut
        assert a.nodes() == ["a@test", "b@test"]


async def test_namespaces_do_not_see_each_other(server: LocalServer) -> None:
    nodes = {
        ns: (
            metakit.Node("a@test", cluster=cluster(server, ns)),
            metakit.Node("b@test", cluster=cluster(server, ns)),
        )
        for ns in ("left", "right")
    }
    spy = await nats.connect(server.url, connect_timeout=TIMEOUT)
    leaked: list[str] = []
    try:
        for a, b in nodes.values():
            await a.start()
            await b.start()
        await until(lambda: all(a.nodes() == ["a@test", "b@test"] for a, _ in nodes.values()))
        pongs = {}
        for ns, (_a, b) in nodes.items():
            pongs[ns] = await b.spawn(Pong)
            await b.register_name("pong", pongs[ns], cluster=True)
        left_a, _ = nodes["left"]
        right_a, _ = nodes["right"]
        await until(lambda: left_a.whereis("pong") == pongs["left"])
        await until(lambda: right_a.whereis("pong") == pongs["right"])

        async def record(msg: nats.aio.msg.Msg) -> None:
            leaked.append(msg.subject)

        await spy.subscribe("mk.right.n.>", cb=record)
        await spy.flush()
        for i in range(100):
            left_a.send("pong", i)
        assert await left_a.call("pong", "count") == 100
        # A PID of the other namespace's node of the same name reaches nothing.
        with pytest.raises(NoProcess):
            await left_a.call(pongs["right"], "ping")
        await spy.flush()
        assert leaked == []  # none of it crossed into the other namespace
        assert await right_a.call("pong", "count") == 0
        await until(lambda: bool(leaked), what="the spy to see that namespace's own traffic")
    finally:
        await spy.close()
        for a, b in nodes.values():
            await b.stop()
            await a.stop()
