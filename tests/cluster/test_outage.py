"""The NATS server restarted mid-run (with its state lost): nodes reconnect,
re-assert names and liveness, and traffic resumes; during the outage sends
are bounded and calls time out (DESIGN.md §8, Outages)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable

import nats
import pytest
from cluster_peers import Pong, Watcher
from conftest import ChildNode, child_node, cluster, until

import metakit
from metakit import CallTimeout, MailboxFull
from metakit.cluster import LocalServer, local_server
from metakit.cluster._peer import token
from metakit.testing import TIMEOUT


async def _keys(url: str, namespace: str) -> list[str]:
    nc = await nats.connect(url, connect_timeout=TIMEOUT)
    try:
        kv = await nc.jetstream().key_value(f"mk-{namespace}")
        try:
            return sorted(await kv.keys())
        except nats.js.errors.NoKeysError:
            return []
    finally:
        await nc.close()


async def _until_keys(
    server: LocalServer, namespace: str, predicate: Callable[[list[str]], bool], what: str
) -> None:
    """Poll the bucket's keys (every 50 ms, a server round trip each) until
    ``predicate`` holds, or fail after TIMEOUT."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while not predicate(await _keys(server.url, namespace)):  # type: ignore[arg-type]
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


class Feed(metakit.Process):
    async def init(self) -> None:
        await self.register_event("feed", cluster=True)

    def handle_call(self, sender: metakit.Caller, request: object) -> object:
        return self.send_event("feed", request)


def _got(node: metakit.Node, pid: metakit.PID) -> list[object]:
    proc = node._registry.table.get(pid.id)
    return list(proc.got) if proc is not None else []  # type: ignore[attr-defined]


async def test_a_server_restart_loses_nothing_and_fires_no_down(namespace: str) -> None:
    # A heartbeat of 1 s: the outage (well under 2.75 s) must fire no Down.
    server = local_server()
    await server.start()
    try:
        a = metakit.Node(
            "a@test", cluster=cluster(server, namespace, heartbeat=1.0, max_pending=65536)
        )
        b = metakit.Node("b@test", cluster=cluster(server, namespace, heartbeat=1.0))
        async with a, b:
            await until(lambda: a.nodes() == b.nodes() == ["a@test", "b@test"])
            pong = await b.spawn(Pong)
            await b.register_name("pong", pong, cluster=True)
            watcher = await a.spawn(Watcher)
            await a.call(watcher, ("monitor", pong))
            await a.call(watcher, ("link", pong))
            await until(lambda: a.whereis("pong") == pong)
            assert await a.call("pong", "ping") == "pong"
            feed = await b.spawn(Feed)
            await until(lambda: a.cluster.event_producer("feed") == feed)  # type: ignore[union-attr]
            await a.call(watcher, ("monitor_event", "feed"))
            await until(lambda: "a@test" in b._events.by_name["feed"].nodes)
            before = await _keys(server.url, namespace)  # type: ignore[arg-type]
            assert before == sorted(
                ["n.a=40test", "n.b=40test", f"name.{token('pong')}", f"e.{token('feed')}"]
            )

            await server.stop()
            await until(lambda: not a.cluster.statistics().connected)  # type: ignore[union-attr]
            with pytest.raises(CallTimeout):
                await a.call(pong, "ping", timeout=0.3)
            sent, refused = 0, None
            for i in range(100_000):
                try:
                    a.send(pong, i)
                except MailboxFull as exc:
                    refused = exc
                    break
                sent += 1
            assert refused is not None
            assert refused.unit == "bytes"
            assert 1000 < sent < 100_000

            await server.start()  # the same port, an empty store
            await until(lambda: a.cluster.statistics().connected)  # type: ignore[union-attr]
            # What was queued arrives, in order; the timed-out call does not run.
            await until(lambda: len(_got(b, pong)) >= sent, what="the queued sends")
            assert _got(b, pong) == list(range(sent))
            assert await a.call("pong", "ping") == "pong"
            # Names and liveness are back in the new server's bucket.
            await until(lambda: a.whereis("pong") == pong)
            await _until_keys(server, namespace, lambda keys: keys == before, "the keys back")
            assert a.nodes() == b.nodes() == ["a@test", "b@test"]
            assert await b.call(feed, "after") == 1  # the subscription outlived the outage
            await until(lambda: _got(a, watcher) == [metakit.EventMessage("feed", "after")])
            assert a.cluster.statistics().reconnects == 1  # type: ignore[union-attr]
    finally:
        await server.stop()


async def test_a_live_peers_names_and_groups_stay_known_while_it_reconnects(
    namespace: str, children: list[ChildNode]
) -> None:
    # b is frozen across the restart and until a has re-asserted itself on the
    # new server, which has none of b's keys: a must still know b's name and
    # group, and a call by the name must wait for b, not fail.
    server = local_server()
    await server.start()
    try:
        async with metakit.Node("a@test", cluster=cluster(server, namespace, heartbeat=1.0)) as a:
            child = await child_node(children, server, namespace, "b@test", heartbeat=1.0)
            assert child.proc is not None
            assert child.pong is not None
            await a.call(child.pong, ("join", "pongs"))
            await until(lambda: a.whereis("pong") == child.pong)
            await until(lambda: a.group_members("pongs") == [child.pong])
            groups = a.cluster._groups._watch  # type: ignore[union-attr]
            follower = groups._follower
            os.kill(child.proc.pid, signal.SIGSTOP)
            try:
                await server.stop()
                await server.start()
                # a's re-assertion ends with the groups' watch restarted.
                await until(lambda: groups._follower not in (None, follower), what="a re-asserted")
                assert "name." + token("pong") not in await _keys(server.url, namespace)  # type: ignore[arg-type]
                assert a.whereis("pong") == child.pong
                assert a.group_members("pongs") == [child.pong]
                call = asyncio.ensure_future(a.call("pong", "ping", timeout=TIMEOUT))
            finally:
                os.kill(child.proc.pid, signal.SIGCONT)
            assert await call == "pong"
            # b writes its keys again; they replace what a carried.
            want = {f"name.{token('pong')}", f"g.pongs.{token('b@test')}"}
            await _until_keys(server, namespace, lambda keys: want <= set(keys), "b's keys back")
            assert a.whereis("pong") == child.pong
            assert a.group_members("pongs") == [child.pong]
            assert a.nodes() == ["a@test", "b@test"]
    finally:
        await server.stop()
