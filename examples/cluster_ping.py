"""Two nodes in two OS processes on a local NATS server: ping-pong, then a
monitor that fires when one of them is killed.

This process starts a nats-server (``metakit.cluster.local_server``), then a
second Python process running the node ``pong@localhost`` with a ``Pong``
registered under the cluster name ``"pong"``. The node ``ping@localhost``
here finds it by that name, calls it three times, monitors it and its node,
and kills the other process with SIGKILL: the monitor and ``NodeDown`` fire
with ``"noconnection"`` within three heartbeats.

Run: python examples/cluster_ping.py          (needs: pip install 'metakit[cluster]')
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from typing import Any

import metakit
from metakit import PID, Caller, Down, NodeDown, Process
from metakit.cluster import Cluster, local_server

HEARTBEAT = 1.0


class Pong(Process):
    """Answers ("ping", n) with ("pong", n)."""

    def handle_call(self, sender: Caller, request: Any) -> Any:
        _, n = request
        return ("pong", n)


async def pong_node(node: metakit.Node) -> None:
    """The second process: a Pong under the cluster name "pong", until killed."""
    pid = await node.spawn(Pong)
    await node.register_name("pong", pid, cluster=True)
    print("ready", flush=True)
    await asyncio.Event().wait()


class Ping(Process):
    """Pings "pong", watches it, kills its process, reports the Down."""

    async def init(self, child: asyncio.subprocess.Process) -> None:
        self.child = child
        self.killed_at = 0.0
        self.send(self.pid, "go")

    async def handle_message(self, sender: PID, message: Any) -> None:
        match message:
            case "go":
                pong = self.node.whereis("pong")
                assert pong is not None  # the other node registered it before saying "ready"
                print(f"pong is {pong} on node {pong.node}")
                for n in (1, 2, 3):
                    started = time.perf_counter()
                    reply = await self.call("pong", ("ping", n))
                    took = (time.perf_counter() - started) * 1000
                    print(f"ping {n} -> {reply[0]} {reply[1]} ({took:.1f} ms)")
                print("nodes:", self.node.nodes())
                self.monitor("pong")
                self.monitor_node(pong.node)
                await self.call("pong", ("ping", 0))  # the monitor is in place
                self.killed_at = time.monotonic()
                os.kill(self.child.pid, signal.SIGKILL)
                print("killed the pong node (SIGKILL)")
            case Down(_, _, reason):
                took = time.monotonic() - self.killed_at
                print(f"Down: {reason} after {took:.1f} s (heartbeat {HEARTBEAT:g} s)")
            case NodeDown(node, reason):
                print(f"NodeDown: {node} {reason}")
                print("nodes:", self.node.nodes())
                raise metakit.Stop()


async def main() -> None:
    async with local_server() as server:
        assert server.url is not None
        child = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--pong", server.url, stdout=asyncio.subprocess.PIPE
        )
        try:
            assert child.stdout is not None
            await asyncio.wait_for(child.stdout.readline(), 10)  # "ready"
            cluster = Cluster(server.url, namespace="ping", heartbeat=HEARTBEAT)
            async with metakit.Node("ping@localhost", cluster=cluster) as node:
                pid = await node.spawn(Ping, child)
                await asyncio.wait_for(node.wait_exit(pid), 10)
        finally:
            if child.returncode is None:
                child.kill()
            await child.wait()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--pong"]:
        cluster = Cluster(sys.argv[2], namespace="ping", heartbeat=HEARTBEAT)
        metakit.run(pong_node, node_name="pong@localhost", cluster=cluster)
    else:
        asyncio.run(main())
