"""The transparency rules between nodes in separate OS processes (the other
tests of them run two nodes in one process)."""

from __future__ import annotations

import pytest
from cluster_peers import Ping, Refused, Watcher
from conftest import ChildNode, child_node, cluster, until

import metakit
from metakit import CallTimeout, Down, Exit, NoProcess
from metakit.cluster import LocalServer, RemoteError


async def test_send_call_exit_link_monitor_across_os_processes(
    server: LocalServer, namespace: str, children: list[ChildNode]
) -> None:
    async with metakit.Node("a@test", cluster=cluster(server, namespace)) as a:
        child = await child_node(children, server, namespace, "b@test")
        pong = child.pong
        assert pong is not None
        await until(lambda: a.whereis("pong") == pong)
        for i in range(3000):
            a.send("pong", i)
        assert await a.call("pong", "got") == list(range(3000))
        watcher = await a.spawn(Watcher)
        for n in range(20):
            await a.call(watcher, ("send", pong, Ping(n, watcher)))
        proc = a._registry.table[watcher.id]
        await until(lambda: len(proc.got) >= 20)  # type: ignore[attr-defined]
        assert proc.got == [("pong", n, pong) for n in range(20)]  # type: ignore[attr-defined]
        with pytest.raises(ValueError, match="bad value"):
            await a.call(pong, ("raise", "value"))
        with pytest.raises(Refused):
            await a.call(pong, ("raise", "refused"))
        with pytest.raises(RemoteError, match="mine"):
            await a.call(pong, ("raise", "unregistered"))
        with pytest.raises(CallTimeout):
            await a.call(pong, ("sleep", 5), timeout=0.2)
        assert await a.call(pong, "sender") == a.pid
        with pytest.raises(TypeError):
            a.send(pong, object())
        # link and monitor, then an exit from here ends it over there
        ref = await a.call(watcher, ("monitor", pong))
        await a.call(watcher, ("link", pong))
        assert await a.call(pong, "ping") == "pong"
        a.send_exit(pong, "told")
        await until(lambda: len(proc.got) >= 22)  # type: ignore[attr-defined]
        assert Down(pong, ref, "told") in proc.got  # type: ignore[attr-defined]
        assert Exit(pong, "told") in proc.got  # type: ignore[attr-defined]
        with pytest.raises(NoProcess):
            await a.call(pong, "ping")
        await until(lambda: a.whereis("pong") is None, what="the name released")
        assert await child.stop() == 0
        await until(lambda: a.nodes() == ["a@test"])
