"""Safe by default (DESIGN.md §12): what a hostile or a frozen peer can cost a
connection with no options given — bounded queues, finite framer limits, and
an idle clock that counts whole frames and stops while this side is behind.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

import aiohttp
import pytest
from aiohttp import web

import metakit
from metakit import Node
from metakit.connection import Connection
from metakit.errors import FrameTooLarge, MailboxFull
from metakit.framing import JSON, LengthPrefixed, Line
from metakit.tcp import TCPConnect, TCPDisconnect, TCPMessage, TCPServer
from metakit.testing import TIMEOUT, Probe, wait_until
from metakit.web import WebHandler, WebRequest, WebServer
from metakit.websocket import WebSocketHandler, WSConnect, WSMessage, broadcast

BIG = b"x" * 32768


async def tcp_serve(probe: Any, **options: Any) -> tuple[Probe, TCPServer]:
    worker: Probe = await probe()
    server = TCPServer("127.0.0.1", 0, **options)
    await worker.spawn_meta(server)
    return worker, server


async def ws_serve(probe: Any, **options: Any) -> tuple[Probe, str]:
    worker: Probe = await probe()
    handler = WebSocketHandler(worker.pid, **options)
    await worker.spawn_meta(handler)
    app = web.Application()
    app.router.add_get("/ws", handler)
    server = WebServer("127.0.0.1", 0, app)
    await worker.spawn_meta(server)
    return worker, server.url.replace("http", "ws") + "/ws"


def stats(node: Node, conn: metakit.Alias) -> Any:
    return node.meta_info(conn).statistics


def write_until_full(worker: Probe, conn: metakit.Alias, make: Any) -> int:
    """Write 32 KiB messages until the connection's mailbox refuses one; how many it took."""
    for sent in range(4000):  # 125 MiB: far more than any socket buffer holds
        try:
            worker.send(conn, make(conn, BIG))
        except MailboxFull:
            return sent
    raise AssertionError("4000 writes to a peer that reads nothing, and no MailboxFull")


# -- bounded per-connection queues ---------------------------------------------------------


def test_a_connection_mailbox_is_bounded_by_default() -> None:
    assert 0 < Connection.mailbox_size <= 1024


async def test_tcp_writes_to_a_peer_that_reads_nothing_are_bounded(node: Node, probe: Any) -> None:
    worker, server = await tcp_serve(probe)
    sock = socket.create_connection(server.address)
    try:
        conn = (await worker.receive()).conn
        # Loopback buffers hold a few MiB; past them the writes wait in the
        # connection's mailbox, up to its bound, and then MailboxFull says so.
        sent = write_until_full(worker, conn, TCPMessage)
        held = stats(node, conn)
        assert held.held_writes >= 1
        assert node.meta_info(conn).mailbox <= 2 * Connection.mailbox_size
        assert sent < 1000, f"{sent} writes of 32 KiB queued for a peer that reads nothing"
        # The rest of the node goes on: another client is served.
        other = socket.create_connection(server.address)
        other_conn = (await worker.receive()).conn
        worker.send(other_conn, TCPMessage(other_conn, b"hi"))
        other.settimeout(TIMEOUT)
        assert other.recv(2) == b"hi"
        other.close()
    finally:
        sock.close()


async def test_ws_writes_to_a_peer_that_reads_nothing_are_bounded(node: Node, probe: Any) -> None:
    worker, url = await ws_serve(probe, compress=False)
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        hello = await worker.receive()
        assert isinstance(hello, WSConnect)
        sent = write_until_full(worker, hello.conn, WSMessage)
        assert sent < 1000, f"{sent} writes of 32 KiB queued for a peer that reads nothing"
        assert stats(node, hello.conn).held_writes >= 1
        await ws.close()


async def test_broadcast_skips_and_counts_a_peer_far_behind(node: Node, probe: Any) -> None:
    worker, url = await ws_serve(probe, compress=False)
    async with aiohttp.ClientSession() as session:
        frozen = await session.ws_connect(url)
        live = await session.ws_connect(url)
        conns = [(await worker.receive()).conn for _ in range(2)]
        frozen_conn = conns[0]
        took = [broadcast(worker, [frozen_conn], BIG) for _ in range(2000)]
        assert took.count(0) > 0, "a peer that reads nothing took every broadcast"
        assert stats(node, frozen_conn).dropped == took.count(0)
        # The other member still gets what is broadcast to everyone.
        assert broadcast(worker, conns, "to all") >= 1
        assert await asyncio.wait_for(live.receive_str(), TIMEOUT) == "to all"
        await live.close()
        await frozen.close()


async def test_ws_reading_pauses_while_writes_are_held(node: Node) -> None:
    """A peer that sends without reading its answers: the echo's writes are held
    and reading stops, so the peer cannot push more than a bounded amount."""

    class Echo(metakit.Process):
        def handle_message(self, sender: metakit.PID, message: Any) -> None:
            if isinstance(message, WSConnect):
                conns.append(message.conn)
            elif isinstance(message, WSMessage):
                self.send(message.conn, WSMessage(message.conn, message.data))

    class Owner(Echo):
        async def init(self) -> None:
            handler = WebSocketHandler(self.pid, compress=False)
            await self.spawn_meta(handler)
            app = web.Application()
            app.router.add_get("/ws", handler)
            server = WebServer("127.0.0.1", 0, app)
            await self.spawn_meta(server)
            urls.append(server.url.replace("http", "ws") + "/ws")

    conns: list[metakit.Alias] = []
    urls: list[str] = []
    owner = await node.spawn(Owner)
    total = 4000  # 128 MiB each way if nothing pushed back
    async with aiohttp.ClientSession() as session, session.ws_connect(urls[0]) as ws:

        async def push() -> None:
            for _ in range(total):
                await ws.send_bytes(BIG)

        pusher = asyncio.create_task(push())
        try:
            await wait_until(lambda: conns, message="no WSConnect")
            conn = conns[0]
            await wait_until(
                lambda: (
                    node.meta_info(conn).inspect["reading"] == "paused"
                    and node.meta_info(conn).inspect["writing"] == "held"
                ),
                message="the echo's writes never held or reading never paused",
            )
            done, _ = await asyncio.wait([pusher], timeout=0.5)
            assert not done, "the peer pushed everything while its answers were stuck"
            assert stats(node, conn).messages_in < total // 4
            assert owner in node.processes()
        finally:
            pusher.cancel()
            await asyncio.gather(pusher, return_exceptions=True)


# -- the idle clock ------------------------------------------------------------------------


class Gated(metakit.Process):
    """Echoes lines, but only once ``gate`` is set: a worker that is behind."""

    async def init(self, holder: list[Gated], **options: Any) -> None:
        holder.append(self)
        self.gate = asyncio.Event()
        self.events: asyncio.Queue[Any] = asyncio.Queue()
        self.server = TCPServer("127.0.0.1", 0, **options)
        await self.spawn_meta(self.server)

    async def handle_message(self, sender: metakit.PID, message: Any) -> None:
        match message:
            case TCPMessage(conn, data):
                await self.gate.wait()
                self.send(conn, TCPMessage(conn, data))
            case _:
                self.events.put_nowait(message)


async def test_idle_clock_stops_while_this_side_paused_reading(node: Node) -> None:
    """A client writing every 50 ms to a worker that is behind is not idle: it
    gets every reply once the worker catches up."""
    holder: list[Gated] = []
    await node.spawn(
        Gated,
        holder,
        framing=Line(max_length=100),
        idle_timeout=0.25,
        high_watermark=2,
        low_watermark=1,
    )
    [worker] = holder
    reader, writer = await asyncio.open_connection(*worker.server.address)
    assert isinstance(await asyncio.wait_for(worker.events.get(), TIMEOUT), TCPConnect)
    lines = 20
    for i in range(lines):  # 1 s of traffic: four idle periods while the worker is stuck
        writer.write(b"%d\n" % i)
        await writer.drain()
        await asyncio.sleep(0.05)  # the client's pace, not a wait for anything
    assert worker.events.empty(), f"ended while the worker was behind: {worker.events}"
    worker.gate.set()
    replies = [await asyncio.wait_for(reader.readline(), TIMEOUT) for _ in range(lines)]
    assert replies == [b"%d\n" % i for i in range(lines)]
    writer.close()
    await writer.wait_closed()


async def test_writes_are_traffic_for_the_idle_clock(node: Node, probe: Any) -> None:
    """A peer that only listens to a worker writing every 50 ms is not idle."""
    worker, server = await tcp_serve(probe, framing=Line(max_length=100), idle_timeout=0.25)
    reader, writer = await asyncio.open_connection(*server.address)
    conn = (await worker.receive()).conn
    for i in range(20):  # 1 s: four idle periods
        worker.send(conn, TCPMessage(conn, b"%d" % i))
        assert await asyncio.wait_for(reader.readline(), TIMEOUT) == b"%d\n" % i
        await asyncio.sleep(0.05)  # the worker's pace
    assert worker.pending() == []
    assert node.meta_info(conn).inspect["state"] == "open"
    writer.close()
    await writer.wait_closed()
    assert await worker.receive() == TCPDisconnect(conn, "closed")


async def test_one_idle_sweep_times_each_connection_on_its_own(node: Node, probe: Any) -> None:
    """The node checks every connection with one timeout on one timer: the silent
    one ends "idle" after 0.3 s to 0.375 s, the chatty one beside it stays open."""
    worker, server = await tcp_serve(probe, framing=Line(max_length=100), idle_timeout=0.3)
    _, chatty = await asyncio.open_connection(*server.address)
    chatty_conn = (await worker.receive()).conn
    opened = asyncio.get_running_loop().time()  # before the server starts its clock
    silent_reader, silent = await asyncio.open_connection(*server.address)
    silent_conn = (await worker.receive()).conn
    ended = None
    for i in range(100_000):  # until the silent one ends; TIMEOUT bounds each step
        chatty.write(b"%d\n" % i)
        message = await worker.receive()
        if isinstance(message, TCPDisconnect):
            ended = asyncio.get_running_loop().time() - opened
            assert message == TCPDisconnect(silent_conn, "idle")
            break
        assert message == TCPMessage(chatty_conn, b"%d" % i)
    assert ended is not None
    assert 0.3 <= ended < 0.3 * 1.25 + 0.3, ended
    assert await asyncio.wait_for(silent_reader.read(), TIMEOUT) == b""
    assert node.meta_info(chatty_conn).inspect["state"] == "open"
    chatty.close()
    silent.close()
    await chatty.wait_closed()
    await silent.wait_closed()


async def test_bytes_that_never_complete_a_frame_are_idle(node: Node, probe: Any) -> None:
    """Three clients trickling a line one byte per 50 ms cannot hold
    ``max_connections=3``: they are idle, cut, and an honest client gets in."""
    worker, server = await tcp_serve(
        probe, framing=Line(max_length=1000), idle_timeout=0.25, max_connections=3
    )
    clients = [await asyncio.open_connection(*server.address) for _ in range(3)]
    conns = [(await worker.receive()).conn for _ in range(3)]

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
        for sent in range(60):  # 3 s at most
            if reader.at_eof():
                return sent
            try:
                writer.write(b"x")
                await writer.drain()
            except ConnectionError:
                return sent
            await asyncio.sleep(0.05)  # the attacker's pace
        return -1

    async def until_closed(reader: asyncio.StreamReader) -> bytes:
        try:
            return await reader.read()
        except ConnectionResetError:  # a byte landed as the server closed: Linux resets
            return b""

    readers = [asyncio.create_task(until_closed(r)) for r, _ in clients]
    sent = await asyncio.gather(*(trickle(r, w) for r, w in clients))
    assert -1 not in sent, f"trickling clients held their slots for 3 s: {sent}"
    assert await asyncio.gather(*readers) == [b""] * 3
    ended = [await worker.receive() for _ in range(3)]
    assert sorted(e.reason for e in ended) == ["idle"] * 3
    assert {e.conn for e in ended} == set(conns)
    _, writer = await asyncio.open_connection(*server.address)
    conn = (await worker.receive()).conn
    writer.write(b"hello\n")
    assert await worker.receive() == TCPMessage(conn, b"hello")
    for _, w in clients:
        w.close()
    writer.close()
    await writer.wait_closed()


# -- finite framer limits ---------------------------------------------------------------


def test_every_framer_has_a_finite_default_limit() -> None:
    assert LengthPrefixed().max_length == 1 << 20
    assert LengthPrefixed(2).max_length == 65535
    assert Line().max_length == 65536
    assert JSON().max_length == 1 << 20


async def test_length_prefixed_refuses_a_huge_announced_frame(node: Node, probe: Any) -> None:
    worker, server = await tcp_serve(probe, framing=LengthPrefixed())
    sock = socket.create_connection(server.address)
    try:
        conn = (await worker.receive()).conn
        sock.sendall(struct.pack(">I", 96 << 20) + b"\x00" * 65536)
        ended = await worker.receive()
        assert isinstance(ended, TCPDisconnect)
        assert ended.conn == conn
        assert isinstance(ended.reason, FrameTooLarge)
        sock.settimeout(TIMEOUT)
        try:
            assert sock.recv(1) == b""
        except ConnectionResetError:
            pass
    finally:
        sock.close()


# -- a call whose caller stopped waiting -------------------------------------------------


class Slow(metakit.Process):
    """``handle_call``: ``"stuck"`` waits forever, ``"quick"`` answers at once,
    ``"bounded"`` waits under its own ``asyncio.timeout``."""

    async def init(self, holder: list[Slow]) -> None:
        holder.append(self)
        self.cancelled: list[str] = []
        self.started: list[str] = []

    async def handle_call(self, sender: metakit.Caller, request: Any) -> Any:
        if isinstance(request, WebRequest):
            request = request.path.strip("/")  # the web bridge: by its path
        self.started.append(request)
        if request == "quick":
            return "done"
        if request == "bounded":
            try:
                async with asyncio.timeout(0.05):
                    await asyncio.Event().wait()
            except TimeoutError:
                return "own timeout"
        if request == "early reply":
            self.reply(sender, "replied")
            for _ in range(3):  # goes on working after answering
                await asyncio.sleep(0)
            self.cancelled.append("not cancelled")
            return metakit.NO_REPLY
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.append(request)
            raise
        return None


async def slow(node: Node) -> Slow:
    holder: list[Slow] = []
    await node.spawn(Slow, holder)
    return holder[0]


async def test_a_timed_out_call_cancels_its_handler_and_the_next_is_served(node: Node) -> None:
    callee = await slow(node)
    try:
        await node.call(callee.pid, "stuck", timeout=0.1)
    except metakit.CallTimeout:
        pass
    else:
        raise AssertionError("a stuck handler answered")
    assert await node.call(callee.pid, "quick", timeout=TIMEOUT) == "done"
    assert callee.cancelled == ["stuck"]
    # The process's own deadlines still work after the cancel (uncancelled).
    assert await node.call(callee.pid, "bounded", timeout=TIMEOUT) == "own timeout"
    assert callee.pid in node.processes()


async def test_a_cancelled_caller_cancels_its_handler(node: Node) -> None:
    callee = await slow(node)
    waiting = asyncio.ensure_future(node.call(callee.pid, "stuck", timeout=None))
    await wait_until(lambda: callee.started == ["stuck"])
    waiting.cancel()
    assert await node.call(callee.pid, "quick", timeout=TIMEOUT) == "done"
    assert callee.cancelled == ["stuck"]


async def test_an_answered_call_is_never_cancelled(node: Node) -> None:
    callee = await slow(node)
    assert await node.call(callee.pid, "early reply", timeout=TIMEOUT) == "replied"
    assert await node.call(callee.pid, "quick", timeout=TIMEOUT) == "done"
    await wait_until(lambda: callee.cancelled == ["not cancelled"])


async def test_after_a_504_the_next_request_to_that_worker_is_served(node: Node) -> None:
    callee = await slow(node)

    class Owner(metakit.Process):
        async def init(self, urls: list[str]) -> None:
            app = web.Application()
            handler = WebHandler(callee.pid, timeout=0.2)
            await self.spawn_meta(handler)
            app.router.add_route("*", "/{tail:.*}", handler)
            server = WebServer("127.0.0.1", 0, app)
            await self.spawn_meta(server)
            urls.append(server.url)

    urls: list[str] = []
    await node.spawn(Owner, urls)
    async with aiohttp.ClientSession() as session:
        async with session.get(urls[0] + "/stuck") as response:
            assert response.status == 504
        async with session.get(urls[0] + "/quick") as response:
            assert response.status == 200
            assert await response.text() == "done"
    assert callee.cancelled == ["stuck"]


async def test_a_udp_server_mailbox_is_bounded_by_default(node: Node, probe: Any) -> None:
    from metakit.udp import UDPServer

    worker: Probe = await probe()
    server = UDPServer("127.0.0.1", 0)
    await worker.spawn_meta(server)
    assert 0 < node.meta_info(server.id).mailbox_size <= 4096


async def test_ws_max_connections_refuses_before_the_upgrade(node: Node, probe: Any) -> None:
    worker, url = await ws_serve(probe, max_connections=2)
    async with aiohttp.ClientSession() as session:
        first = [await session.ws_connect(url) for _ in range(2)]
        conns = [(await worker.receive()).conn for _ in range(2)]
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(url)
        assert refused.value.status == 503
        await first[0].close()
        ended = await worker.receive()
        assert ended.conn == conns[0]
        again = await session.ws_connect(url)  # a slot is free again
        assert isinstance(await worker.receive(), WSConnect)
        for ws in (first[1], again):
            await ws.close()
