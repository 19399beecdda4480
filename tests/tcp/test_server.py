"""TCPServer and TCPConnection: lifecycle, closing, pool, limits, faults."""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

import pytest

import metakit
from metakit import Node
from metakit.errors import FrameTooLarge
from metakit.framing import Line
from metakit.tcp import TCPConnect, TCPDisconnect, TCPMessage, TCPServer
from metakit.testing import TIMEOUT, Probe, wait_until


async def serve(probe: Any, **options: Any) -> tuple[Probe, TCPServer]:
    """A Probe worker that owns a TCPServer on a free port."""
    worker: Probe = await probe()
    server = TCPServer("127.0.0.1", 0, **options)
    await worker.spawn_meta(server)
    return worker, server


class HeldWorker(metakit.Process):
    """A worker that can be held busy, so what reaches it meanwhile stays queued.

    ``("hold", gate)`` keeps its (coroutine) handler waiting until the test
    sets ``gate``, an asyncio.Event; any other message goes to :attr:`inbox`.
    """

    async def init(self, holder: list[HeldWorker]) -> None:
        holder.append(self)
        self.inbox: asyncio.Queue[Any] = asyncio.Queue()

    async def handle_message(self, sender: metakit.PID, message: Any) -> None:
        match message:
            case ("hold", asyncio.Event() as gate):
                await gate.wait()
            case _:
                self.inbox.put_nowait(message)

    def hold(self) -> asyncio.Event:
        """Queue a hold; the worker is busy from when it gets there until the event is set."""
        gate = asyncio.Event()
        self.node.send(self.pid, ("hold", gate))
        return gate

    async def receive(self) -> Any:
        return await asyncio.wait_for(self.inbox.get(), TIMEOUT)


async def serve_held(node: Node, **options: Any) -> tuple[HeldWorker, TCPServer]:
    """A HeldWorker that owns a TCPServer on a free port."""
    holder: list[HeldWorker] = []
    await node.spawn(HeldWorker, holder)
    [worker] = holder
    server = TCPServer("127.0.0.1", 0, **options)
    await worker.spawn_meta(server)
    return worker, server


async def connect(server: TCPServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(*server.address)


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await writer.wait_closed()
    except ConnectionError:
        pass


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST instead of a FIN (SO_LINGER 0)."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def test_bind_errors_raise_at_spawn_meta(node: Node, probe: Any) -> None:
    worker, server = await serve(probe)
    with pytest.raises(OSError, match="in use"):  # busy port
        await worker.spawn_meta(TCPServer("127.0.0.1", server.address[1]))
    with pytest.raises(OSError, match="assign"):  # not an address of this machine
        await worker.spawn_meta(TCPServer("192.0.2.1", 0))
    assert node.metas() == [server.id]


async def test_connect_message_disconnect_once(node: Node, probe: Any) -> None:
    worker, server = await serve(probe, framing=Line(max_length=100))
    host, port = server.address
    assert host == "127.0.0.1"
    assert port > 0
    reader, writer = await connect(server)
    hello = await worker.receive()
    assert isinstance(hello, TCPConnect)
    conn = hello.conn
    assert hello.peer == writer.get_extra_info("sockname")
    assert hello.local == (host, port)
    writer.write(b"one\ntw")
    await writer.drain()
    assert await worker.receive() == TCPMessage(conn, b"one")
    writer.write(b"o\n")
    assert await worker.receive() == TCPMessage(conn, b"two")
    worker.send(conn, TCPMessage(conn, b"back"))
    assert await reader.readline() == b"back\n"
    await close(writer)
    assert await worker.receive() == TCPDisconnect(conn, "closed")
    await wait_until(lambda: conn not in node.metas())
    worker.send(worker.pid, "marker")
    assert await worker.receive() == "marker"  # and no second TCPDisconnect


async def test_send_exit_normal_flushes_then_closes(node: Node, probe: Any) -> None:
    worker, server = await serve(probe, framing=Line(max_length=100))
    reader, writer = await connect(server)
    conn = (await worker.receive()).conn
    for i in range(100):
        worker.send(conn, TCPMessage(conn, b"line %d" % i))
    worker.send_exit(conn, "normal")
    lines = (await asyncio.wait_for(reader.read(), TIMEOUT)).splitlines()
    assert lines == [b"line %d" % i for i in range(100)]  # all of it, then EOF
    assert await worker.receive() == TCPDisconnect(conn, "normal")
    await close(writer)


async def test_send_exit_kill_aborts(node: Node, probe: Any) -> None:
    worker, server = await serve(probe)
    reader, writer = await connect(server)
    conn = (await worker.receive()).conn
    worker.send_exit(conn, "kill")
    assert await worker.receive() == TCPDisconnect(conn, "kill")
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.read(), TIMEOUT)
    await close(writer)


async def test_writes_after_remote_close_are_dropped_not_raised(node: Node) -> None:
    worker, server = await serve_held(node)
    reader, writer = await connect(server)
    conn = (await worker.receive()).conn
    # The peer closes while the worker is busy: the connection reads no more and
    # waits for the worker to handle what was read before the EOF.
    first = worker.hold()
    writer.write_eof()
    await wait_until(lambda: node.meta_info(conn).inspect["reading"] == "paused")
    # The worker gets there, then is busy again: the connection closes (the
    # peer sees it) and the TCPDisconnect waits in the worker's mailbox.
    second = worker.hold()
    first.set()
    assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""
    # The worker has not seen TCPDisconnect yet: writing must not raise.
    worker.send(conn, TCPMessage(conn, b"too late"))
    await wait_until(lambda: node.meta_info(conn).inspect["dropped"] == "1")
    second.set()
    assert await worker.receive() == TCPDisconnect(conn, "closed")
    await wait_until(lambda: conn not in node.metas())
    with pytest.raises(metakit.NoProcess):  # after it: the connection is gone
        worker.send(conn, TCPMessage(conn, b"way too late"))
    await close(writer)


async def test_writes_after_own_send_exit_are_dropped_not_raised(node: Node) -> None:
    worker, server = await serve_held(node, framing=Line(max_length=100))
    reader, writer = await connect(server)
    conn = (await worker.receive()).conn
    gate = worker.hold()  # busy: the TCPDisconnect will wait in its mailbox
    worker.send(conn, TCPMessage(conn, b"last"))
    worker.send_exit(conn, "normal")
    # EOF: the connection has closed; the worker has not seen TCPDisconnect yet.
    assert await asyncio.wait_for(reader.read(), TIMEOUT) == b"last\n"
    worker.send(conn, TCPMessage(conn, b"after close"))  # no NoProcess: dropped
    await wait_until(lambda: node.meta_info(conn).inspect["dropped"] == "1")
    gate.set()
    assert await worker.receive() == TCPDisconnect(conn, "normal")
    await wait_until(lambda: conn not in node.metas())
    assert node.meta_info(server.id).inspect["connections"] == "0"
    await close(writer)


async def test_half_close_gets_replies_then_eof(node: Node, probe: Any) -> None:
    class Upper(metakit.Process):
        async def init(self, server: TCPServer) -> None:
            await self.spawn_meta(server)

        def handle_message(self, sender: metakit.PID, message: Any) -> None:
            if isinstance(message, TCPMessage):
                self.send(message.conn, TCPMessage(message.conn, message.data.upper()))

    server = TCPServer("127.0.0.1", 0, framing=Line(max_length=100))
    await node.spawn(Upper, server)
    reader, writer = await connect(server)
    writer.write(b"a\nb\nc\n")
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), TIMEOUT) == b"A\nB\nC\n"
    await close(writer)


async def test_frame_too_large_ends_after_complete_frames(node: Node, probe: Any) -> None:
    worker, server = await serve(probe, framing=Line(max_length=8))
    reader, writer = await connect(server)
    conn = (await worker.receive()).conn
    writer.write(b"ok\nfine\n" + b"x" * 20)
    assert await worker.receive() == TCPMessage(conn, b"ok")
    assert await worker.receive() == TCPMessage(conn, b"fine")
    end = await worker.receive()
    assert isinstance(end, TCPDisconnect)
    assert isinstance(end.reason, FrameTooLarge)
    assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""
    await close(writer)
    # The server keeps serving.
    _, writer2 = await connect(server)
    assert isinstance(await worker.receive(), TCPConnect)
    await close(writer2)
    assert isinstance(await worker.receive(), TCPDisconnect)


async def test_peer_reset_mid_frame(node: Node, probe: Any) -> None:
    worker, server = await serve(probe, framing=Line(max_length=100))
    _, writer = await connect(server)
    conn = (await worker.receive()).conn
    writer.write(b"whole\nhal")
    assert await worker.receive() == TCPMessage(conn, b"whole")
    reset(writer)
    end = await worker.receive()
    assert end.conn == conn
    assert isinstance(end, TCPDisconnect)
    assert isinstance(end.reason, ConnectionResetError)


async def test_idle_timeout(node: Node, probe: Any) -> None:
    worker, server = await serve(probe, idle_timeout=0.05)
    reader, writer = await connect(server)
    conn = (await worker.receive()).conn
    assert await worker.receive() == TCPDisconnect(conn, "idle")
    assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""
    await close(writer)


async def test_max_connections(node: Node, probe: Any) -> None:
    worker, server = await serve(probe, max_connections=2, framing=Line(max_length=100))
    first = [await connect(server) for _ in range(2)]
    conns = [(await worker.receive()).conn for _ in range(2)]
    reader, writer = await connect(server)
    assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""  # accepted, closed at once
    await close(writer)
    info = node.meta_info(server.id)
    assert info.inspect["rejected"] == "1"
    assert info.inspect["connections"] == "2"
    for (_, w), conn in zip(first, conns, strict=True):  # the others are unaffected
        w.write(b"ping\n")
        assert await worker.receive() == TCPMessage(conn, b"ping")
        await close(w)


async def test_pool_round_robin_and_dead_member(node: Node, probe: Any) -> None:
    owner: Probe = await probe()
    members: list[Probe] = [await probe() for _ in range(3)]
    server = TCPServer("127.0.0.1", 0, pool=[m.pid for m in members])
    await owner.spawn_meta(server)
    clients = [await connect(server) for _ in range(6)]
    for member in members:
        for _ in range(2):
            assert isinstance(await member.receive(), TCPConnect)
    # A pool member dies: its connections close (the peers see EOF)...
    node.kill(members[0].pid)
    for reader, _ in clients[0::3]:
        assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""
    # ...the others stay open, and new connections skip the dead member.
    more = [await connect(server) for _ in range(2)]
    for member in members[1:]:
        assert isinstance(await member.receive(), TCPConnect)
    for _, writer in clients[1::3] + clients[2::3]:
        writer.write(b"x")
        await writer.drain()
    for _, writer in clients + more:
        await close(writer)
    assert owner.pending() == []


async def test_parent_exit_closes_all_and_frees_port(node: Node, probe: Any) -> None:
    worker, server = await serve(probe)
    port = server.address[1]
    clients = [await connect(server) for _ in range(3)]
    for _ in clients:
        await worker.receive()
    node.send_exit(worker.pid, "shutdown")
    for reader, writer in clients:
        assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""
        await close(writer)
    # The port is free at once: a new server binds it.
    worker2: Probe = await probe()
    again = TCPServer("127.0.0.1", port)
    await worker2.spawn_meta(again)
    assert again.address[1] == port


async def test_server_exit_ends_its_connections(node: Node, probe: Any) -> None:
    worker, server = await serve(probe)
    reader, writer = await connect(server)
    conn = (await worker.receive()).conn
    alias = server.id
    worker.send_exit(alias, "shutdown")
    assert await worker.receive() == TCPDisconnect(conn, "shutdown")
    assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""
    await close(writer)


@pytest.mark.slow
async def test_thousand_connections_leave_nothing(node: Node, probe: Any) -> None:
    _, server = await serve(probe)
    alias = server.id
    for batch in range(20):
        clients = [await connect(server) for _ in range(50)]
        for _, writer in clients:
            writer.write(b"x")
        for _, writer in clients:
            await close(writer)
        del batch
    await wait_until(lambda: node.metas() == [alias], message=str(node.metas()))
    assert server.connections == 0
    info = node.meta_info(alias)
    assert info.inspect["accepted"] == "1000"
    # The node fixture then checks that no socket, task or thread is left.


class Upper:
    """A framer of the user's own (not a metakit class): each read upper-cased."""

    max_length = 1024
    buffered = 0

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        return [bytes(data).upper()] if data else []

    def encode(self, frame: bytes) -> bytes:
        return frame.lower()

    def clone(self) -> Upper:
        return Upper()


async def test_a_framer_of_the_users_own(node: Node, probe: Any) -> None:
    worker, server = await serve(probe, framing=Upper())
    reader, writer = await connect(server)
    conn = (await worker.receive()).conn
    writer.write(b"hello")
    assert await worker.receive() == TCPMessage(conn, b"HELLO")
    worker.send(conn, TCPMessage(conn, b"BACK"))
    assert await reader.readexactly(4) == b"back"
    await close(writer)
    assert await worker.receive() == TCPDisconnect(conn, "closed")
