"""What an idle actor costs: it holds no queue of its own (mailbox.py's IDLE).

An empty ``deque`` is 760 bytes, more than the rest of an idle process, so
the drain that empties a queue gives it back to the node's spares and the
actor points at one shared, always-empty queue that refuses writes.
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from typing import Any

import pytest

from metakit import Node, Process
from metakit.framing import Line
from metakit.mailbox import IDLE
from metakit.tcp import TCPMessage, TCPServer
from metakit.testing import wait_until


class Counter(Process):
    def init(self) -> None:
        self.got: list[Any] = []

    def handle_message(self, sender: Any, message: Any) -> None:
        self.got.append(message)


class AsyncCounter(Counter):
    async def handle_message(self, sender: Any, message: Any) -> None:
        self.got.append(message)


def actor(node: Node, pid: Any) -> Any:
    return node._registry.table[pid.id]


def test_the_shared_idle_queue_refuses_writes() -> None:
    for write in (IDLE.append, IDLE.appendleft, IDLE.extend, IDLE.extendleft):
        with pytest.raises(RuntimeError, match="shared idle queue"):
            write(1)
    with pytest.raises(RuntimeError):
        IDLE.insert(0, 1)
    assert not IDLE


@pytest.mark.parametrize("cls", [Counter, AsyncCounter])
async def test_an_idle_process_holds_no_queue_of_its_own(node: Node, cls: type[Counter]) -> None:
    pid = await node.spawn(cls)
    proc = actor(node, pid)
    assert proc._mk_q is IDLE  # spawned and never sent anything
    for burst in (1, 3, 600):  # one message, a few, more than one drain's budget
        for i in range(burst):
            node.send(pid, i)
        assert proc._mk_q is not IDLE
        await wait_until(lambda b=burst: len(proc.got) == b and not proc._mk_scheduled)
        assert proc.got == list(range(burst))
        assert proc._mk_q is IDLE  # the drain gave it back
        proc.got.clear()
    spare = node._scheduler.spare
    assert spare
    assert all(q is not IDLE and not q for q in spare)


async def test_queues_are_reused_not_shared(node: Node) -> None:
    pids = [await node.spawn(Counter) for _ in range(3)]
    procs = [actor(node, pid) for pid in pids]
    for round_no in range(3):
        # All three busy at once: each takes a queue of its own, never the same one.
        for n, pid in enumerate(pids):
            node.send(pid, (round_no, n))
        queues = [p._mk_q for p in procs]
        assert len({id(q) for q in queues}) == 3
        assert IDLE not in queues
        await wait_until(lambda r=round_no: all(len(p.got) == r + 1 for p in procs))
    for n, p in enumerate(procs):
        assert p.got == [(r, n) for r in range(3)]
        assert p._mk_q is IDLE


async def test_an_idle_process_costs_at_most_a_kibibyte(node: Node) -> None:
    n = 2000
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        pids = [await node.spawn(Counter) for _ in range(n)]
        for pid in pids:
            node.send(pid, "hello")  # each has had a message: idle, not just new
        procs = [actor(node, pid) for pid in pids]
        await wait_until(lambda: all(p.got and not p._mk_scheduled for p in procs))
        for p in procs:
            p.got.clear()
        procs.clear()
        gc.collect()
        per_process = (tracemalloc.get_traced_memory()[0] - before) / n
    finally:
        tracemalloc.stop()
    assert per_process <= 1024, f"{per_process:.0f} bytes per idle process"
    for pid in pids:
        node.kill(pid)


class Echo(Process):
    async def init(self, ports: list[int], conns: list[Any]) -> None:
        self.conns = conns
        self.server = TCPServer("127.0.0.1", 0, framing=Line())
        await self.spawn_meta(self.server)
        ports.append(self.server.address[1])

    def handle_message(self, sender: Any, message: Any) -> None:
        if isinstance(message, TCPMessage):
            self.conns.append(message.conn)
            self.send(message.conn, message)


async def test_an_idle_connection_holds_no_queue_or_backlog(node: Node) -> None:
    ports: list[int] = []
    conns: list[Any] = []
    await node.spawn(Echo, ports, conns)
    clients = []
    try:
        for i in range(5):
            reader, writer = await asyncio.open_connection("127.0.0.1", ports[0])
            clients.append(writer)
            writer.write(b"line %d\n" % i)
            assert await asyncio.wait_for(reader.readline(), 5) == b"line %d\n" % i
        await wait_until(lambda: len(conns) == 5)
        for alias in conns:
            conn = actor(node, alias)
            assert conn._mk_q is IDLE
            assert conn._mk_backlog is IDLE
    finally:
        for writer in clients:
            writer.close()
            await writer.wait_closed()
