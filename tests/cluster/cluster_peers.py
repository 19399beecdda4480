"""Processes the cluster tests put on nodes, and a node to run in its own OS process.

``python cluster_peers.py URL NAMESPACE NODE HEARTBEAT`` starts a node with a
:class:`Pong` registered under the cluster name ``"pong"`` and prints one JSON
line, ``{"pong": [node, id]}``; it stops cleanly when its stdin closes (and
dies with SIGKILL like any process).
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass
from typing import Any

import metakit
from metakit.cluster import Cluster, message


# Named: in the child this module runs as __main__, and the default name
# (module.qualname) would differ between the two sides.
@message(name="tests.Ping")
@dataclass(frozen=True, slots=True)
class Ping:
    """A registered message type: crosses nodes as itself."""

    n: int
    sender: metakit.PID


@message(name="tests.Refused")
class Refused(Exception):
    """A registered exception type: re-raised at the caller as itself."""


class Unregistered(Exception):
    """Not registered: arrives as RemoteError."""


class Pong(metakit.Process):
    """Answers calls, counts and keeps what it is sent, replies to Ping."""

    async def init(self) -> None:
        self.got: list[Any] = []

    def handle_message(self, sender: metakit.PID, message: Any) -> None:
        self.got.append(message)
        if isinstance(message, Ping):
            self.send(message.sender, ("pong", message.n, self.pid))
        elif isinstance(message, tuple) and message and message[0] == "forward":
            self.send(message[1], message[2])

    async def handle_call(self, sender: metakit.Caller, request: Any) -> Any:
        match request:
            case "ping":
                return "pong"
            case "got":
                return self.got
            case "count":
                return len(self.got)
            case ("echo", value):
                return value
            case ("join", group):
                await self.join_group(group)
                return "joined"
            case ("raise", "value"):
                raise ValueError("bad value", 7)
            case ("raise", "refused"):
                raise Refused("no")
            case ("raise", "unregistered"):
                raise Unregistered("mine")
            case ("sleep", seconds):
                await asyncio.sleep(seconds)
                return "slept"
            case ("stop", reason):
                raise metakit.Stop(reason)
            case "sender":
                return sender.pid
        raise ValueError(f"unknown request {request!r}")


class Watcher(metakit.Process):
    """Traps exits and keeps every message, for links, monitors and NodeDown."""

    trap_exit = True

    async def init(self) -> None:
        self.got: list[Any] = []
        self.changed = asyncio.Event()

    def handle_message(self, sender: metakit.PID, message: Any) -> None:
        self.got.append(message)
        self.changed.set()

    def handle_call(self, sender: metakit.Caller, request: Any) -> Any:
        match request:
            case ("link", target):
                self.link(target)
            case ("unlink", target):
                self.unlink(target)
            case ("monitor", target):
                return self.monitor(target)
            case ("demonitor", ref):
                self.demonitor(ref)
            case ("monitor_node", name):
                self.monitor_node(name)
            case ("monitor_event", name):
                return self.monitor_event(name)
            case ("send", target, value):
                self.send(target, value)
            case "got":
                return list(self.got)
        return None


async def _child(url: str, namespace: str, node_name: str, heartbeat: float) -> None:
    cluster = Cluster(url, namespace=namespace, heartbeat=heartbeat)
    async with metakit.Node(node_name, cluster=cluster) as node:
        pid = await node.spawn(Pong)
        await node.register_name("pong", pid, cluster=True)
        print(json.dumps({"pong": [pid.node, pid.id]}), flush=True)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
        )
        try:
            await reader.read()  # EOF: the test wants a clean stop
        finally:
            transport.close()


if __name__ == "__main__":
    asyncio.run(_child(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])))
