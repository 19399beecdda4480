"""What an idle actor costs: it holds no queue of its own (mailbox.py's IDLE).

An empty ``deque`` is 760 bytes, more than the rest of an idle process, so
the drain that empties a queue gives it back to the node's spares and the
actor points at one shared, always-empty queue that refuses writes.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import tracemalloc
from typing import Any

import pytest

from metakit import Node, Process, framing
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


async def test_an_idle_connection_holds_no_queue_backlog_timer_or_buffer(node: Node) -> None:
    ports: list[int] = []
    conns: list[Any] = []
    await node.spawn(Echo, ports, conns)
    sweeps = node._scheduler.sweeps
    clients = []
    try:
        for i in range(5):
            reader, writer = await asyncio.open_connection("127.0.0.1", ports[0])
            clients.append(writer)
            writer.write(b"line %d\n" % i)
            assert await asyncio.wait_for(reader.readline(), 5) == b"line %d\n" % i
        await wait_until(lambda: len(conns) == 5)
        metas = [actor(node, alias) for alias in conns]
        for conn in metas:
            assert conn._mk_q is IDLE
            assert conn._mk_backlog is IDLE
        # TCPServer's default idle_timeout: one sweep, one timer, five connections.
        assert list(sweeps) == [300.0]
        sweep = sweeps[300.0]
        assert len(sweep) == 5
        assert sweep._timer is not None
        assert all(conn._mk_sweep is sweep for conn in metas)
        assert all(conn.local is metas[0].local for conn in metas)
        # Whole lines only: no framer has a buffer of its own yet.
        assert all(conn.framer._buf is framing._NO_BUF for conn in metas)
        assert all(conn.encode == conn.framer.encode for conn in metas)
    finally:
        for writer in clients:
            writer.close()
            await writer.wait_closed()
    # The last connection out stops the timer and forgets the sweep.
    await wait_until(lambda: not sweeps)
    assert sweep._timer is None
    assert len(sweep) == 0


async def test_an_idle_connection_costs_under_two_and_a_half_kibibytes(node: Node) -> None:
    # All the server side allocates for an idle TCP connection: the loop's
    # transport, the connection meta, its framer, its id and table entries
    # (the clients' sockets, made in this file and socket.py, do not count).
    # With a timer and an encode method of its own per connection (before
    # _idle.py) it was 2.6 KiB on the stdlib loop and 2.9 on uvloop.
    ports: list[int] = []
    conns: list[Any] = []
    await node.spawn(Echo, ports, conns)
    n = 300
    socks: list[socket.socket] = []

    def connect(count: int) -> None:  # blocking clients, in a thread: off the server's loop
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", ports[0]), timeout=5)
            socks.append(sock)
            sock.sendall(b"x" * 63 + b"\n")
            got = b""
            while len(got) < 64:
                chunk = sock.recv(64)
                assert chunk
                got += chunk

    server_side = [
        tracemalloc.Filter(False, socket.__file__),
        tracemalloc.Filter(False, __file__),
        tracemalloc.Filter(False, tracemalloc.__file__),
    ]
    try:
        await asyncio.to_thread(connect, 10)  # first-connection costs go in the baseline
        await wait_until(lambda: len(conns) == 10)
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.take_snapshot().filter_traces(server_side)
            await asyncio.to_thread(connect, n)
            await wait_until(lambda: len(conns) == 10 + n)
            conns.clear()
            gc.collect()
            after = tracemalloc.take_snapshot().filter_traces(server_side)
        finally:
            tracemalloc.stop()
        grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
        assert grown / n <= 2.5 * 1024, f"{grown / n:.0f} bytes per idle connection"
    finally:
        for sock in socks:
            sock.close()


async def test_node_stop_leaves_no_idle_sweep(node: Node) -> None:
    ports: list[int] = []
    conns: list[Any] = []
    await node.spawn(Echo, ports, conns)
    reader, writer = await asyncio.open_connection("127.0.0.1", ports[0])
    try:
        writer.write(b"hello\n")
        assert await asyncio.wait_for(reader.readline(), 5) == b"hello\n"
        sweep = node._scheduler.sweeps[300.0]
        await node.stop()  # the connection still open
        assert not node._scheduler.sweeps
        assert sweep._timer is None
    finally:
        writer.close()
        await writer.wait_closed()
