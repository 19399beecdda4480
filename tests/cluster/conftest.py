"""Cluster test fixtures: a real nats-server per test, a fresh namespace, and
nodes in their own OS processes (``cluster_peers.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import metakit
from metakit.cluster import Cluster, LocalServer, local_server
from metakit.testing import TIMEOUT

HEARTBEAT = 0.2
_PEERS = Path(__file__).with_name("cluster_peers.py")
_count = itertools.count()


@pytest.fixture
async def server() -> AsyncIterator[LocalServer]:
    async with local_server() as running:
        yield running


@pytest.fixture
def namespace() -> str:
    return f"t{os.getpid()}-{next(_count)}"


def cluster(server: LocalServer, namespace: str, **options: Any) -> Cluster:
    options.setdefault("heartbeat", HEARTBEAT)
    return Cluster(server.url, namespace=namespace, **options)


async def until(predicate: Any, timeout: float = TIMEOUT, what: str = "the condition") -> None:
    """Poll ``predicate()`` each loop turn (and every 5 ms) until true, or fail."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


async def stays(predicate: Any, seconds: float, what: str = "the condition") -> None:
    """Check ``predicate()`` every 5 ms for ``seconds``: fail the moment it is false
    (for what must not happen: a second Down, a late exit)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        if not predicate():
            raise AssertionError(f"{what} stopped holding")
        await asyncio.sleep(0.005)


class ChildNode:
    """A node in its own OS process, with a ``Pong`` under the cluster name ``"pong"``."""

    def __init__(self, server: LocalServer, namespace: str, name: str, heartbeat: float) -> None:
        self.argv = [sys.executable, str(_PEERS), server.url, namespace, name, str(heartbeat)]
        self.proc: asyncio.subprocess.Process | None = None
        self.pong: metakit.PID | None = None

    async def start(self) -> ChildNode:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env
        )
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), TIMEOUT)
        if not line:
            await self.proc.wait()
            raise AssertionError(f"child node exited with {self.proc.returncode}")
        node, ident = json.loads(line)["pong"]
        self.pong = metakit.PID(node, ident)
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()

    async def stop(self) -> int:
        """Close its stdin (a clean stop) and wait for it."""
        assert self.proc is not None
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        return await asyncio.wait_for(self.proc.wait(), TIMEOUT)

    async def close(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()


@pytest.fixture
async def children() -> AsyncIterator[list[ChildNode]]:
    started: list[ChildNode] = []
    yield started
    for child in started:
        await child.close()


async def child_node(
    children: list[ChildNode],
    server: LocalServer,
    namespace: str,
    name: str,
    heartbeat: float = HEARTBEAT,
) -> ChildNode:
    child = ChildNode(server, namespace, name, heartbeat)
    children.append(child)
    return await child.start()


class Proxy:
    """A TCP relay between a node and its server on 127.0.0.1, to cut the node off.

    ``cut()`` closes every relayed connection and refuses new ones (the node
    sees its server gone); ``url`` is what the node connects to.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.url = ""

    async def start(self) -> Proxy:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"nats://127.0.0.1:{port}"
        return self

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self.writers |= {writer, up_writer}
        pumps = [
            asyncio.ensure_future(self._pump(reader, up_writer)),
            asyncio.ensure_future(self._pump(up_reader, writer)),
        ]
        self.tasks.update(pumps)
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for task in pumps:
            task.cancel()
        for w in (writer, up_writer):
            w.close()
            self.writers.discard(w)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()

    async def cut(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None
        for writer in list(self.writers):
            writer.transport.abort()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks.clear()

    async def close(self) -> None:
        await self.cut()
