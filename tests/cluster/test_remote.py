"""Two nodes in one Python process, on a real nats-server: a remote PID, Alias
or cluster name works like a local one (DESIGN.md §8, Transparency)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from cluster_peers import Ping, Pong, Refused, Unregistered, Watcher
from conftest import cluster, until

import metakit
from metakit import CallTimeout, Down, Exit, NoProcess, ProcessExited
from metakit.cluster import LocalServer, RemoteError
from metakit.cluster._peer import token
from metakit.testing import TIMEOUT


class Pair:
    def __init__(self, server: LocalServer, namespace: str) -> None:
        self.a = metakit.Node("a@test", cluster=cluster(server, namespace))
        self.b = metakit.Node("b@test", cluster=cluster(server, namespace))

    async def __aenter__(self) -> Pair:
        await self.a.start()
        await self.b.start()
        await until(lambda: self.a.nodes() == self.b.nodes() == ["a@test", "b@test"])
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.b.stop()
        await self.a.stop()


async def got(node: metakit.Node, pid: metakit.PID, n: int) -> list[Any]:
    result: list[Any] = []

    async def enough() -> None:
        nonlocal result
        while True:
            result = await node.call(pid, "got")
            if len(result) >= n:
                return
            await asyncio.sleep(0.01)

    await asyncio.wait_for(enough(), TIMEOUT)
    return result


async def test_send_arrives_in_order_and_call_answers(server: LocalServer, namespace: str) -> None:
    async with Pair(server, namespace) as p:
        pong = await p.b.spawn(Pong)
        for i in range(2000):
            p.a.send(pong, i)
        assert await got(p.a, pong, 2000) == list(range(2000))
        assert await p.a.call(pong, "ping") == "pong"
        assert await p.a.call(pong, ("echo", ({1, 2}, (3, b"x"), {"k": [None, 1.5]}))) == (
            {1, 2},
            (3, b"x"),
            {"k": [None, 1.5]},
        )
        # The caller's PID arrives as itself.
        assert await p.a.call(pong, "sender") == p.a.pid


async def test_process_to_process_round_trip_with_a_registered_message(
    server: LocalServer, namespace: str
) -> None:
    async with Pair(server, namespace) as p:
        pong = await p.b.spawn(Pong)
        watcher = await p.a.spawn(Watcher)
        for n in range(50):
            await p.a.call(watcher, ("send", pong, Ping(n, watcher)))
        replies = await got(p.a, watcher, 50)
        assert replies == [("pong", n, pong) for n in range(50)]


async def test_call_errors_keep_their_meaning(server: LocalServer, namespace: str) -> None:
    async with Pair(server, namespace) as p:
        pong = await p.b.spawn(Pong)
        with pytest.raises(ValueError, match="bad value") as info:
            await p.a.call(pong, ("raise", "value"))
        assert info.value.args == ("bad value", 7)
        with pytest.raises(Refused):
            await p.a.call(pong, ("raise", "refused"))
        with pytest.raises(RemoteError) as remote:
            await p.a.call(pong, ("raise", "unregistered"))
        assert remote.value.type_name == f"{Unregistered.__module__}.Unregistered"
        assert remote.value.message == "mine"
        with pytest.raises(CallTimeout):
            await p.a.call(pong, ("sleep", 5), timeout=0.2)
        assert await p.a.call(pong, "ping") == "pong"  # the abandoned call was cancelled
        with pytest.raises(ProcessExited) as exited:
            await p.a.call(pong, ("stop", "bye"))
        assert exited.value.reason == "bye"
        # Gone: NoProcess within a round trip, not a timeout.
        with pytest.raises(NoProcess):
            await p.a.call(pong, "ping", timeout=None)


async def test_unencodable_message_raises_at_send_and_sends_nothing(
    server: LocalServer, namespace: str
) -> None:
    async with Pair(server, namespace) as p:
        pong = await p.b.spawn(Pong)
        for bad in (object(), frozenset({1}), [1, lambda: 2], {"k": Watcher}):
            with pytest.raises(TypeError):
                p.a.send(pong, bad)
            with pytest.raises(TypeError):
                p.a.call(pong, ("echo", bad))
        p.a.send(pong, "after")
        assert await got(p.a, pong, 1) == ["after"]
        assert p.a.cluster.statistics().messages_out >= 1  # type: ignore[union-attr]


async def test_send_exit_and_kill_reach_remote_processes(
    server: LocalServer, namespace: str
) -> None:
    async with Pair(server, namespace) as p:
        pong = await p.b.spawn(Pong)
        done = p.b.wait_exit(pong)
        p.a.send_exit(pong, "told")
        assert await asyncio.wait_for(done, TIMEOUT) == "told"
        other = await p.b.spawn(Pong)
        done = p.b.wait_exit(other)
        p.a.kill(other)
        assert await asyncio.wait_for(done, TIMEOUT) == "kill"


async def test_links_carry_exits_both_ways(server: LocalServer, namespace: str) -> None:
    async with Pair(server, namespace) as p:
        watcher = await p.a.spawn(Watcher)
        pong = await p.b.spawn(Pong)
        await p.a.call(watcher, ("link", pong))
        await p.a.call(pong, "ping")  # the link frame went before this call
        p.b.send_exit(pong, "crash")
        await until(lambda: Exit(pong, "crash") in _got(p.a, watcher))
        # And the other way: a remote process linked to a local one hears its death.
        remote_watcher = await p.b.spawn(Watcher)
        local = await p.a.spawn(Pong)
        await p.b.call(remote_watcher, ("link", local))
        await p.b.call(local, "ping")
        p.a.send_exit(local, "gone")
        await until(lambda: Exit(local, "gone") in _got(p.b, remote_watcher))
        # Unlinked: no exit.
        pong2 = await p.b.spawn(Pong)
        await p.a.call(watcher, ("link", pong2))
        await p.a.call(watcher, ("unlink", pong2))
        await p.a.call(pong2, "ping")
        p.b.send_exit(pong2, "quiet")
        await p.a.call(await p.b.spawn(Pong), "ping")
        assert not any(isinstance(m, Exit) and m.source == pong2 for m in _got(p.a, watcher))


async def test_link_to_a_gone_remote_process_exits_with_noproc(
    server: LocalServer, namespace: str
) -> None:
    async with Pair(server, namespace) as p:
        watcher = await p.a.spawn(Watcher)
        pong = await p.b.spawn(Pong)
        p.b.kill(pong)
        await p.a.call(watcher, ("link", pong))
        await until(lambda: Exit(pong, "noproc") in _got(p.a, watcher))


async def test_monitors_on_pids_and_aliases(server: LocalServer, namespace: str) -> None:
    async with Pair(server, namespace) as p:
        watcher = await p.a.spawn(Watcher)
        pong = await p.b.spawn(Pong)
        ref = await p.a.call(watcher, ("monitor", pong))
        with pytest.raises(ProcessExited):
            await p.a.call(pong, ("stop", "done"))
        await until(lambda: Down(pong, ref, "done") in _got(p.a, watcher))
        # Already gone: noproc.
        ref2 = await p.a.call(watcher, ("monitor", pong))
        await until(lambda: Down(pong, ref2, "noproc") in _got(p.a, watcher))
        # Demonitored: no Down.
        pong3 = await p.b.spawn(Pong)
        ref3 = await p.a.call(watcher, ("monitor", pong3))
        await p.a.call(watcher, ("demonitor", ref3))
        with pytest.raises(ProcessExited):
            await p.a.call(pong3, ("stop", "quiet"))
        await p.a.call(await p.b.spawn(Pong), "ping")
        assert not any(isinstance(m, Down) and m.ref == ref3 for m in _got(p.a, watcher))
        # A meta's Alias, on the other node.
        owner = await p.b.spawn(MetaOwner)
        alias = await p.b.call(owner, "alias")
        ref4 = await p.a.call(watcher, ("monitor", alias))
        assert await p.a.call(alias, "hello") == ("meta", "hello")
        p.a.send_exit(alias, "normal")
        await until(lambda: Down(alias, ref4, "normal") in _got(p.a, watcher))


class Echo(metakit.Meta):
    def handle_message(self, sender: metakit.PID, message: Any) -> None:
        pass

    def handle_call(self, sender: metakit.Caller, request: Any) -> Any:
        return ("meta", request)


class MetaOwner(metakit.Process):
    async def init(self) -> None:
        self.alias = await self.spawn_meta(Echo())

    def handle_call(self, sender: metakit.Caller, request: Any) -> Any:
        return self.alias


def _got(node: metakit.Node, pid: metakit.PID) -> list[Any]:
    proc = node._registry.table.get(pid.id)  # the test's own process
    return list(proc.got) if proc is not None else []  # type: ignore[attr-defined]


async def test_cluster_names_are_unique_found_and_released(
    server: LocalServer, namespace: str
) -> None:
    async with Pair(server, namespace) as p:
        one = await p.a.spawn(Pong)
        two = await p.b.spawn(Pong)
        results = await asyncio.gather(
            p.a.register_name("leader", one, cluster=True),
            p.b.register_name("leader", two, cluster=True),
            return_exceptions=True,
        )
        assert sorted(type(r).__name__ for r in results) == ["NameTaken", "NoneType"]
        winner, loser = (one, p.b) if results[0] is None else (two, p.a)
        await until(lambda: p.a.whereis("leader") == p.b.whereis("leader") == winner)
        assert await loser.call("leader", "ping") == "pong"
        loser.send("leader", "by name")
        await until(lambda: "by name" in _got(p.a if winner is one else p.b, winner))
        # Released when the holder ends: the other node takes it.
        (p.a if winner is one else p.b).kill(winner)
        await until(lambda: p.a.whereis("leader") is None and p.b.whereis("leader") is None)
        third = await loser.spawn(Pong)
        await loser.register_name("leader", third, cluster=True)
        await until(lambda: p.a.whereis("leader") == p.b.whereis("leader") == third)


async def test_a_key_left_by_a_dead_holder_here_does_not_block_the_name(
    server: LocalServer, namespace: str
) -> None:
    async with Pair(server, namespace) as p:
        c = p.a.cluster
        assert c is not None
        # What a holder here that ended leaves when deleting its key failed
        # (the connection dropped meanwhile): its node is up, so no other
        # node takes it over, and this one must.
        dead = await p.a.spawn(Pong)
        p.a.kill(dead)
        await p.a.wait_exit(dead)
        stale = c._codec.pack(["stuck", c.name, c.creation, dead.id])
        await c._kv.put(f"name.{token('stuck')}", stale)
        holder = await p.a.spawn(Pong)
        await p.a.register_name("stuck", holder, cluster=True)
        await until(lambda: p.b.whereis("stuck") == holder)
        # A live holder here still wins.
        other = await p.a.spawn(Pong)
        with pytest.raises(metakit.NameTaken):
            await p.a.register_name("stuck", other, cluster=True)


async def test_stop_is_down_at_once_with_noconnection(server: LocalServer, namespace: str) -> None:
    a = metakit.Node("a@test", cluster=cluster(server, namespace, heartbeat=5.0))
    b = metakit.Node("b@test", cluster=cluster(server, namespace, heartbeat=5.0))
    async with a:
        await b.start()
        await until(lambda: a.nodes() == ["a@test", "b@test"])
        watcher = await a.spawn(Watcher)
        pong = await b.spawn(Pong)
        linked = await b.spawn(Pong)
        ref = await a.call(watcher, ("monitor", pong))
        await a.call(watcher, ("link", linked))
        await a.call(watcher, ("monitor_node", "b@test"))
        await a.call(pong, "ping")
        started = asyncio.get_running_loop().time()
        await b.stop()
        await until(lambda: len(_got(a, watcher)) >= 3, timeout=2.0)
        assert asyncio.get_running_loop().time() - started < 5.0  # well before a heartbeat
        got_ = _got(a, watcher)
        assert Down(pong, ref, "noconnection") in got_
        assert Exit(linked, "noconnection") in got_
        assert metakit.NodeDown("b@test", "stopped") in got_
        assert len(got_) == 3
        assert a.nodes() == ["a@test"]
        with pytest.raises(NoProcess):
            a.send(pong, "x")


async def test_monitor_node_of_a_node_that_is_not_up_fires_at_once(
    server: LocalServer, namespace: str
) -> None:
    async with Pair(server, namespace) as p:
        watcher = await p.a.spawn(Watcher)
        await p.a.call(watcher, ("monitor_node", "nobody@test"))
        await until(lambda: metakit.NodeDown("nobody@test", "noconnection") in _got(p.a, watcher))
        ref = await p.a.call(watcher, ("monitor", metakit.PID("nobody@test", 5)))
        target = metakit.PID("nobody@test", 5)
        await until(lambda: Down(target, ref, "noconnection") in _got(p.a, watcher))


async def test_a_second_node_of_a_taken_name_fails_to_start(
    server: LocalServer, namespace: str
) -> None:
    async with metakit.Node("a@test", cluster=cluster(server, namespace)):
        twin = metakit.Node("a@test", cluster=cluster(server, namespace))
        with pytest.raises(metakit.NameTaken):
            await twin.start()
        assert not twin.running
