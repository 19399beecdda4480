"""Nodes in their own OS processes, killed, stopped, frozen and restarted:
links and monitors fire once with "noconnection" within 3 x heartbeat
(DESIGN.md §8, Failure), and a PID of an earlier run reaches nothing."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import pytest
from cluster_peers import Watcher
from conftest import HEARTBEAT, ChildNode, Proxy, child_node, cluster, stays, until

import metakit
from metakit import Down, Exit, NodeDown, NoProcess
from metakit.cluster import Cluster, LocalServer


def _got(node: metakit.Node, pid: metakit.PID) -> list[Any]:
    proc = node._registry.table.get(pid.id)
    return list(proc.got) if proc is not None else []  # type: ignore[attr-defined]


async def _watch(node: metakit.Node, child: ChildNode) -> tuple[metakit.PID, metakit.Ref]:
    """A trapping Watcher on ``node`` linked to the child's pong, monitoring it and its node."""
    assert child.pong is not None
    watcher = await node.spawn(Watcher)
    await node.call(watcher, ("link", child.pong))
    ref = await node.call(watcher, ("monitor", child.pong))
    await node.call(watcher, ("monitor_node", child.pong.node))
    assert await node.call(child.pong, "ping") == "pong"  # the link and monitor are in place
    return watcher, ref


def _expect_once(got: list[Any], pong: metakit.PID, ref: metakit.Ref, node: str) -> None:
    assert got.count(Exit(pong, "noconnection")) == 1, got
    assert got.count(Down(pong, ref, "noconnection")) == 1, got
    assert sum(isinstance(m, NodeDown) and m.node == node for m in got) == 1, got
    assert len(got) == 3, got


@pytest.mark.parametrize("how", ["sigkill", "sigstop"])
async def test_a_killed_or_frozen_node_is_down_within_three_heartbeats(
    server: LocalServer, namespace: str, children: list[ChildNode], how: str
) -> None:
    async with metakit.Node("a@test", cluster=cluster(server, namespace)) as a:
        child = await child_node(children, server, namespace, "b@test")
        assert child.pong is not None
        assert child.proc is not None
        await until(lambda: a.nodes() == ["a@test", "b@test"])
        watcher, ref = await _watch(a, child)
        loop = asyncio.get_running_loop()
        started = loop.time()
        os.kill(child.proc.pid, signal.SIGKILL if how == "sigkill" else signal.SIGSTOP)
        try:
            await until(lambda: len(_got(a, watcher)) >= 3, what="noconnection")
            took = loop.time() - started
            # Silence past 2.75 heartbeats, checked 8 times a heartbeat.
            assert took <= 3 * HEARTBEAT + 0.15, took
            # Nothing more arrives: exactly once.
            await stays(lambda: len(_got(a, watcher)) == 3, 2 * HEARTBEAT, "exactly once")
            _expect_once(_got(a, watcher), child.pong, ref, "b@test")
            assert a.nodes() == ["a@test"]
            assert a.whereis("pong") is None  # its names went with it
            with pytest.raises(NoProcess):
                a.send(child.pong, "anyone?")
        finally:
            if how == "sigstop":
                os.kill(child.proc.pid, signal.SIGCONT)


async def test_a_cleanly_stopped_node_is_down_at_once(
    server: LocalServer, namespace: str, children: list[ChildNode]
) -> None:
    heartbeat = 2.0  # a clean stop must not wait for heartbeats to go missing
    async with metakit.Node("a@test", cluster=cluster(server, namespace, heartbeat=heartbeat)) as a:
        child = await child_node(children, server, namespace, "b@test", heartbeat=heartbeat)
        assert child.pong is not None
        await until(lambda: "b@test" in a.nodes())
        watcher, ref = await _watch(a, child)
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await child.stop() == 0
        await until(lambda: len(_got(a, watcher)) >= 3, what="the stop")
        assert loop.time() - started < heartbeat
        got = _got(a, watcher)
        assert Exit(child.pong, "noconnection") in got
        assert Down(child.pong, ref, "noconnection") in got
        assert NodeDown("b@test", "stopped") in got
        assert len(got) == 3


async def test_a_pid_of_an_earlier_run_reaches_nothing(
    server: LocalServer, namespace: str, children: list[ChildNode]
) -> None:
    async with metakit.Node("a@test", cluster=cluster(server, namespace)) as a:
        first = await child_node(children, server, namespace, "b@test")
        old = first.pong
        assert old is not None
        first.kill()
        await until(lambda: a.nodes() == ["a@test"])
        # The same node name, a new run (it waits out the old run's key).
        second = await child_node(children, server, namespace, "b@test")
        assert second.pong is not None
        assert second.pong != old
        await until(lambda: a.nodes() == ["a@test", "b@test"])
        with pytest.raises(NoProcess):
            await a.call(old, "ping")
        a.send(old, "stale")
        assert await a.call(second.pong, "got") == []
        assert await a.call(second.pong, "ping") == "pong"
        # The cluster name is the new run's.
        await until(lambda: a.whereis("pong") == second.pong)


async def test_a_name_held_by_a_node_that_died_is_free_again(
    server: LocalServer, namespace: str, children: list[ChildNode]
) -> None:
    async with metakit.Node("a@test", cluster=cluster(server, namespace)) as a:
        child = await child_node(children, server, namespace, "b@test")
        await until(lambda: a.whereis("pong") == child.pong)
        mine = await a.spawn(Watcher)
        with pytest.raises(metakit.NameTaken):
            await a.register_name("pong", mine, cluster=True)
        child.kill()
        await until(lambda: a.whereis("pong") is None, what="the name released")
        await a.register_name("pong", mine, cluster=True)
        assert a.whereis("pong") == mine


async def test_a_node_cut_off_from_its_server_and_the_others_see_each_other_down_once(
    server: LocalServer, namespace: str
) -> None:
    """b reaches the server through a relay, which is then cut: a sees b
    down, and b, cut off, sees a down after the same silence, each once."""
    relay = await Proxy(server.port).start()
    try:
        a = metakit.Node("a@test", cluster=cluster(server, namespace))
        b = metakit.Node(
            "b@test", cluster=Cluster(relay.url, namespace=namespace, heartbeat=HEARTBEAT)
        )
        async with a, b:
            await until(lambda: a.nodes() == b.nodes() == ["a@test", "b@test"])
            on_a = await a.spawn(Watcher)
            on_b = await b.spawn(Watcher)
            ref_a = await a.call(on_a, ("monitor", on_b))
            ref_b = await b.call(on_b, ("monitor", on_a))
            await a.call(on_a, ("link", on_b))
            assert await a.call(on_b, "got") == []  # the link and monitors are in place
            assert await b.call(on_a, "got") == []
            loop = asyncio.get_running_loop()
            started = loop.time()
            await relay.cut()
            await until(lambda: len(_got(a, on_a)) >= 2, what="a's side")
            await until(lambda: len(_got(b, on_b)) >= 2, what="b's side")
            assert loop.time() - started <= 3 * HEARTBEAT + 0.15
            await stays(
                lambda: len(_got(a, on_a)) == len(_got(b, on_b)) == 2,
                2 * HEARTBEAT,
                "exactly once",
            )
            assert sorted(map(repr, _got(a, on_a))) == sorted(
                map(repr, [Down(on_b, ref_a, "noconnection"), Exit(on_b, "noconnection")])
            )
            assert sorted(map(repr, _got(b, on_b))) == sorted(
                map(repr, [Down(on_a, ref_b, "noconnection"), Exit(on_a, "noconnection")])
            )
            assert a.nodes() == ["a@test"]
            assert b.nodes() == ["b@test"]
    finally:
        await relay.close()


async def test_a_stalled_node_gets_its_names_back(
    server: LocalServer, namespace: str, children: list[ChildNode]
) -> None:
    # SIGSTOP past the limit: the others judge it down and free its names;
    # once it runs again it must claim them again.
    async with metakit.Node("a@test", cluster=cluster(server, namespace)) as a:
        child = await child_node(children, server, namespace, "b@test")
        await until(lambda: a.whereis("pong") == child.pong)
        assert child.proc is not None
        os.kill(child.proc.pid, signal.SIGSTOP)
        try:
            await until(lambda: a.whereis("pong") is None, what="b judged down")
        finally:
            os.kill(child.proc.pid, signal.SIGCONT)
        await until(lambda: a.whereis("pong") == child.pong, what="b's name back")
        assert await a.call("pong", "ping") == "pong"
