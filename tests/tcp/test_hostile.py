"""TCPServer against hostile peers, with its defaults: TLS handshakes that never
come, fail or stall, and peers that never read. Every limit holds, the worker
hears only of connections it serves, and the server keeps serving the others."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import socket
import ssl
import struct
from typing import Any

import pytest

from metakit import Node
from metakit.errors import MailboxFull
from metakit.framing import Line
from metakit.tcp import TCPConnect, TCPDisconnect, TCPMessage, TCPServer
from metakit.testing import TIMEOUT, Probe, check_meta_lifecycle, wait_until

Contexts = tuple[ssl.SSLContext, ssl.SSLContext]
Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def serve(probe: Any, **options: Any) -> tuple[Probe, TCPServer]:
    """A Probe worker that owns a TCPServer on a free port."""
    worker: Probe = await probe()
    server = TCPServer("127.0.0.1", 0, **options)
    await worker.spawn_meta(server)
    return worker, server


async def silent(server: TCPServer) -> Stream:
    """A TCP connection that never sends a byte: no ClientHello."""
    return await asyncio.open_connection(*server.address)


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await writer.wait_closed()
    except (ConnectionError, ssl.SSLError):
        pass


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST instead of a FIN (SO_LINGER 0)."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def closed_by_server(reader: asyncio.StreamReader, timeout: float = TIMEOUT) -> None:
    """Wait until the server has closed the connection (EOF or a reset), skipping
    whatever it sent first (a TLS alert); TimeoutError if it has not."""
    async with asyncio.timeout(timeout):
        try:
            while await reader.read(65536):
                pass
        except ConnectionResetError:
            pass


class HandTLS:
    """A TLS client run by hand over a plain stream (``ssl.MemoryBIO``): the test
    chooses when each of its flights goes out, and what goes with it."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    def __init__(self, context: ssl.SSLContext) -> None:
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._in, self._out, server_hostname="localhost")

    @classmethod
    async def connect(
        cls, context: ssl.SSLContext, server: TCPServer, *, hello: bool = False
    ) -> HandTLS:
        """Connect; with ``hello``, send the ClientHello before the server's loop
        runs again, so that it is in the socket when the server accepts."""
        client = cls(context)
        if hello:
            sock = socket.create_connection(server.address)  # blocking: the loop waits
            sock.sendall(client._hello())
            client.reader, client.writer = await asyncio.open_connection(sock=sock)
        else:
            client.reader, client.writer = await asyncio.open_connection(*server.address)
        return client

    def _hello(self) -> bytes:
        with contextlib.suppress(ssl.SSLWantReadError):
            self._tls.do_handshake()
        return self._out.read()

    def send_hello(self) -> None:
        """Send the ClientHello."""
        self.writer.write(self._hello())

    async def finish(self, then: bytes = b"", *, close: bool = False) -> None:
        """Read the server's flight and send the client's last one, with ``then``
        (application data) and, if ``close``, a close_notify and EOF, in one write."""
        while True:
            data = await asyncio.wait_for(self.reader.read(65536), TIMEOUT)
            if not data:
                raise ConnectionError("closed during the handshake")
            self._in.write(data)
            try:
                self._tls.do_handshake()
            except ssl.SSLWantReadError:
                continue
            break
        if then:
            self._tls.write(then)
        if close:
            with contextlib.suppress(ssl.SSLWantReadError):
                self._tls.unwrap()
        self.writer.write(self._out.read())
        if close:
            self.writer.write_eof()

    async def read(self) -> bytes:
        """The next application data from the server; b"" at EOF."""
        while True:
            try:
                return self._tls.read(65536)
            except ssl.SSLWantReadError:
                pass
            data = await asyncio.wait_for(self.reader.read(65536), TIMEOUT)
            if not data:
                return b""
            self._in.write(data)


async def echo_once(worker: Probe, server: TCPServer, client_ctx: ssl.SSLContext) -> None:
    """A well-behaved TLS client is served: Connect, a line each way, Disconnect."""
    reader, writer = await asyncio.open_connection(*server.address, ssl=client_ctx)
    hello = await worker.receive()
    assert isinstance(hello, TCPConnect)
    conn = hello.conn
    writer.write(b"ping\n")
    assert await worker.receive() == TCPMessage(conn, b"ping")
    worker.send(conn, TCPMessage(conn, b"pong"))
    assert await asyncio.wait_for(reader.readline(), TIMEOUT) == b"pong\n"
    await close(writer)
    end = await worker.receive()
    assert isinstance(end, TCPDisconnect)
    assert end.conn == conn


# -- TLS: the slot is taken at accept, the handshake has a deadline ---------------------


async def test_tls_connection_takes_its_slot_at_accept(
    node: Node, probe: Any, tls: Contexts
) -> None:
    server_ctx, client_ctx = tls
    worker, server = await serve(
        probe,
        framing=Line(max_length=100),
        ssl=server_ctx,
        max_connections=2,
        ssl_handshake_timeout=TIMEOUT * 4,
    )
    holders = [await silent(server) for _ in range(2)]
    await wait_until(lambda: server.connections == 2)  # no ClientHello, yet each holds a slot
    # Every socket over the limit is closed at once, long before the handshake
    # timeout would have closed it...
    over = [await silent(server) for _ in range(40)]
    for reader, _ in over:
        await closed_by_server(reader)
    # ...and so is a TLS client that sends its ClientHello.
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await asyncio.wait_for(asyncio.open_connection(*server.address, ssl=client_ctx), TIMEOUT)
    stats = server.statistics()
    assert (stats.rejected, stats.connections, stats.accepted) == (41, 2, 0)
    assert worker.pending() == []  # the worker heard of none of them
    for _, writer in over + holders:
        await close(writer)
    # The holders are gone (a failed handshake each): their slots serve a real client.
    await wait_until(lambda: server.connections == 0)
    await echo_once(worker, server, client_ctx)
    stats = server.statistics()
    assert (stats.accepted, stats.rejected, stats.handshake_failed) == (1, 41, 2)


async def test_handshake_timeout_closes_silent_and_stalled_peers(
    node: Node, probe: Any, tls: Contexts
) -> None:
    server_ctx, client_ctx = tls
    worker, server = await serve(probe, ssl=server_ctx, ssl_handshake_timeout=0.2)
    loop = asyncio.get_running_loop()
    start = loop.time()
    mute = await silent(server)
    stalled = await HandTLS.connect(client_ctx, server)
    stalled.send_hello()  # and never the rest
    await wait_until(lambda: server.connections == 2)
    await closed_by_server(mute[0])
    await closed_by_server(stalled.reader)
    assert loop.time() - start >= 0.2
    await wait_until(lambda: server.connections == 0)
    stats = server.statistics()
    assert (stats.handshake_failed, stats.accepted, stats.rejected) == (2, 0, 0)
    assert worker.pending() == []
    await close(mute[1])
    await close(stalled.writer)


async def test_failed_handshakes_never_reach_the_worker(
    node: Node, probe: Any, tls: Contexts
) -> None:
    server_ctx, client_ctx = tls
    worker, server = await serve(
        probe, framing=Line(max_length=100), ssl=server_ctx, ssl_handshake_timeout=TIMEOUT
    )
    # Garbage instead of a ClientHello.
    reader, writer = await silent(server)
    writer.write(b"GET / HTTP/1.0\r\n\r\n")
    await closed_by_server(reader)
    await close(writer)
    # EOF in the middle of the handshake.
    half = await HandTLS.connect(client_ctx, server)
    half.send_hello()
    half.writer.write_eof()
    await closed_by_server(half.reader)
    await close(half.writer)
    # A reset in the middle of it.
    _, writer = await silent(server)
    await wait_until(lambda: server.connections == 1)
    reset(writer)
    # A client that does not trust the certificate: it sends an alert.
    with pytest.raises(ssl.SSLCertVerificationError):
        await asyncio.open_connection(*server.address, ssl=ssl.create_default_context())
    await wait_until(lambda: server.statistics().handshake_failed == 4)
    await wait_until(lambda: server.connections == 0)
    assert node.metas() == [server.id]  # no connection meta is left
    # The first thing the worker ever hears is the next good client's Connect.
    await echo_once(worker, server, client_ctx)
    assert worker.pending() == []
    stats = server.statistics()
    assert (stats.accepted, stats.rejected, stats.handshake_failed) == (1, 0, 4)


@pytest.mark.slow
async def test_forty_silent_sockets_under_the_defaults(
    node: Node, probe: Any, tls: Contexts
) -> None:
    server_ctx, client_ctx = tls
    worker, server = await serve(probe, framing=Line(max_length=100), ssl=server_ctx)
    loop = asyncio.get_running_loop()
    start = loop.time()
    attackers = [await silent(server) for _ in range(40)]
    await wait_until(lambda: server.connections == 40)
    await echo_once(worker, server, client_ctx)  # served meanwhile
    # The default handshake timeout, 10 s, closes every silent socket.
    async with asyncio.timeout(10 + TIMEOUT):
        for reader, _ in attackers:
            await closed_by_server(reader, timeout=10 + TIMEOUT)
    assert loop.time() - start >= 9.9
    await wait_until(lambda: server.connections == 0)
    stats = server.statistics()
    assert (stats.accepted, stats.handshake_failed, stats.rejected) == (1, 40, 0)
    assert worker.pending() == []
    for _, writer in attackers:
        await close(writer)


@pytest.mark.parametrize("then_close", [False, True], ids=["data", "data-and-close"])
async def test_data_sent_with_the_clients_finished_is_not_lost(
    node: Node, probe: Any, tls: Contexts, then_close: bool
) -> None:
    # The client's last handshake flight, its first data and (here) its
    # close_notify and EOF can reach the server in one read: the handshake's
    # end and that data arrive together, before the connection is open.
    server_ctx, client_ctx = tls
    worker, server = await serve(probe, framing=Line(max_length=100), ssl=server_ctx)
    client = await HandTLS.connect(client_ctx, server)
    client.send_hello()
    await client.finish(b"first\nsecond\n", close=then_close)
    hello = await worker.receive()
    assert isinstance(hello, TCPConnect)
    conn = hello.conn
    assert await worker.receive() == TCPMessage(conn, b"first")
    assert await worker.receive() == TCPMessage(conn, b"second")
    if then_close:
        assert await worker.receive() == TCPDisconnect(conn, "closed")
    else:
        worker.send(conn, TCPMessage(conn, b"back"))
        assert await client.read() == b"back\n"
        await close(client.writer)
        assert isinstance(await worker.receive(), TCPDisconnect)
    await close(client.writer)


async def test_a_clienthello_waiting_at_accept_is_not_lost(
    node: Node, probe: Any, tls: Contexts
) -> None:
    # The ClientHello is in the socket before the server accepts it: uvloop
    # reads it as soon as the connection is made, before the handshake starts.
    server_ctx, client_ctx = tls
    worker, server = await serve(
        probe, framing=Line(max_length=100), ssl=server_ctx, ssl_handshake_timeout=TIMEOUT * 4
    )
    client = await HandTLS.connect(client_ctx, server, hello=True)
    await client.finish(b"hello\n")
    hello = await worker.receive()
    assert isinstance(hello, TCPConnect)
    assert await worker.receive() == TCPMessage(hello.conn, b"hello")
    await close(client.writer)
    assert isinstance(await worker.receive(), TCPDisconnect)


async def test_pool_worker_is_picked_once_the_handshake_is_done(
    node: Node, probe: Any, tls: Contexts
) -> None:
    server_ctx, client_ctx = tls
    owner: Probe = await probe()
    first: Probe = await probe()
    second: Probe = await probe()
    server = TCPServer("127.0.0.1", 0, ssl=server_ctx, pool=[first.pid, second.pid])
    await owner.spawn_meta(server)
    client = await HandTLS.connect(client_ctx, server)
    client.send_hello()
    await wait_until(lambda: server.connections == 1)
    node.kill(first.pid)  # the member next in turn at accept dies during the handshake
    await client.finish()
    assert isinstance(await second.receive(), TCPConnect)
    await close(client.writer)
    assert isinstance(await second.receive(), TCPDisconnect)


async def test_server_ending_during_handshakes_leaves_nothing(tls: Contexts) -> None:
    # Each way the server can end (its parent, an exit, a kill, node.stop())
    # while handshakes are under way: the peers see the close, and no socket,
    # task or thread is left behind.
    server_ctx, client_ctx = tls
    peers: list[asyncio.Task[None]] = []

    async def peer(stream: Stream) -> None:
        try:
            with contextlib.suppress(TimeoutError):
                await closed_by_server(stream[0], timeout=TIMEOUT * 10)
        finally:
            await close(stream[1])

    async def exercise(parent: Probe, meta: Any) -> None:
        server: TCPServer = meta
        stalled = await HandTLS.connect(client_ctx, server)
        stalled.send_hello()
        streams = [await silent(server), await silent(server), (stalled.reader, stalled.writer)]
        peers.extend(asyncio.create_task(peer(stream)) for stream in streams)
        await wait_until(lambda: server.connections == 3)

    await check_meta_lifecycle(
        lambda parent: TCPServer(
            "127.0.0.1", 0, ssl=server_ctx, ssl_handshake_timeout=TIMEOUT * 10
        ),
        exercise=exercise,
    )
    assert all(task.done() for task in peers)


# -- the defaults: a bounded mailbox, an idle timeout -------------------------------------


def test_defaults_are_finite() -> None:
    params = inspect.signature(TCPServer).parameters
    assert params["mailbox_size"].default == 256
    assert params["idle_timeout"].default == 300.0
    assert params["ssl_handshake_timeout"].default == 10.0


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("mailbox_size", 0),
        ("mailbox_size", -1),
        ("idle_timeout", 0),
        ("idle_timeout", -1.0),
        ("ssl_handshake_timeout", 0),
        ("ssl_handshake_timeout", -1.0),
    ],
)
def test_limits_must_be_positive(option: str, value: float) -> None:
    with pytest.raises(ValueError, match=option):
        TCPServer("127.0.0.1", 0, **{option: value})


async def test_a_peer_that_never_reads_meets_the_default_mailbox_bound(
    node: Node, probe: Any
) -> None:
    worker, server = await serve(probe)
    _, writer = await asyncio.open_connection(*server.address, limit=1 << 16)
    conn = (await worker.receive()).conn
    info = node.meta_info(conn)
    assert info.mailbox_size == 256
    assert info.inspect["idle_timeout"] == "300.0"
    # The peer reads nothing: the kernel's buffers, then the transport's,
    # fill; the connection holds its writes and its mailbox fills up.
    block = bytes(16 << 10)
    sent = 0
    while sent < 4096:  # 64 MiB: far more than the buffers and the bound hold
        try:
            worker.send(conn, TCPMessage(conn, block))
        except MailboxFull:
            break
        sent += 1
        await asyncio.sleep(0)  # let the connection write what it can
    assert sent < 4096, "no MailboxFull after 64 MiB written to a peer that reads nothing"
    assert sent >= 256
    assert node.meta_info(conn).inspect["writing"] == "held"
    reset(writer)
    assert isinstance(await worker.receive(), TCPDisconnect)


async def test_idle_timeout_none_disables_it(node: Node, probe: Any) -> None:
    worker, server = await serve(probe, framing=Line(max_length=100), idle_timeout=None)
    _, timed = await serve(probe, idle_timeout=0.05)
    _, writer = await asyncio.open_connection(*server.address)
    conn = (await worker.receive()).conn
    assert node.meta_info(conn).inspect["idle_timeout"] == "None"
    _, other = await asyncio.open_connection(*timed.address)
    await wait_until(lambda: timed.connections == 1)
    await wait_until(lambda: timed.connections == 0)  # idled out; ours is still open
    writer.write(b"still here\n")
    assert await worker.receive() == TCPMessage(conn, b"still here")
    await close(other)
    await close(writer)
    assert await worker.receive() == TCPDisconnect(conn, "closed")
