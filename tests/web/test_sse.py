"""SSEHandler on a real WebServer with aiohttp's client: events, fields,
heartbeats, ends, limits (DESIGN.md §10, Server-Sent Events)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import aiohttp
import pytest
from aiohttp import web

import metakit
from metakit import Node, broadcast
from metakit.testing import TIMEOUT, check_meta_lifecycle, wait_until
from metakit.web import SSEConnect, SSEDisconnect, SSEEvent, SSEHandler, WebServer


class Feed(metakit.Process):
    """Owns an SSEHandler on /events; keeps what it gets; writes what it is told."""

    async def init(self, options: dict[str, Any]) -> None:
        self.sse = SSEHandler(self.pid, **options)
        await self.spawn_meta(self.sse)
        app = web.Application()
        app.router.add_get("/events", self.sse)
        self.server = WebServer("127.0.0.1", 0, app)
        await self.spawn_meta(self.server)
        self.got: asyncio.Queue[Any] = asyncio.Queue()
        self.conns: list[metakit.Alias] = []

    def handle_call(self, sender: metakit.Caller, request: Any) -> Any:
        match request:
            case "url":
                return self.server.url + "/events"
            case ("broadcast", data):
                return broadcast(self, self.conns, data)
        return None

    def handle_message(self, sender: metakit.PID, message: Any) -> None:
        if isinstance(message, SSEConnect):
            self.conns.append(message.conn)
        self.got.put_nowait(message)


async def feed(node: Node, **options: Any) -> tuple[Feed, str]:
    pid = await node.spawn(Feed, options)  # (node.spawn has a mailbox_size of its own)
    proc: Feed = node._registry.table[pid.id]  # type: ignore[assignment]
    return proc, await node.call(pid, "url")


async def next_message(proc: Feed) -> Any:
    return await asyncio.wait_for(proc.got.get(), TIMEOUT)


async def read_events(response: aiohttp.ClientResponse, n: int) -> list[bytes]:
    """The next ``n`` events (blocks ended by a blank line), heartbeats skipped."""
    events: list[bytes] = []
    buffer = b""
    while len(events) < n:
        chunk = await asyncio.wait_for(response.content.readany(), TIMEOUT)
        assert chunk, f"the stream ended after {events}"
        buffer += chunk
        while b"\n\n" in buffer:
            block, buffer = buffer.split(b"\n\n", 1)
            if block != b":":
                events.append(block)
    return events


async def test_events_with_their_fields(node: Node) -> None:
    proc, url = await feed(node)
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers={"Last-Event-ID": "41"}) as response,
    ):
        if True:
            assert response.status == 200
            assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
            assert response.headers["Cache-Control"] == "no-cache, no-transform"
            assert response.headers["X-Accel-Buffering"] == "no"
            assert "Content-Encoding" not in response.headers
            connect = await next_message(proc)
            assert isinstance(connect, SSEConnect)
            assert connect.last_event_id == "41"
            assert connect.request.path == "/events"
            conn = connect.conn
            node.send(conn, SSEEvent(conn, {"n": 1}, id="42"))
            node.send(conn, SSEEvent(conn, "a str\nover lines", event="note", retry=2500))
            assert await read_events(response, 2) == [
                b'id: 42\ndata: {"n":1}',
                b'event: note\nretry: 2500\ndata: "a str\\nover lines"',
            ]
            node.send_exit(conn, "normal")  # after what is queued
            assert await response.content.read() == b""
    assert await next_message(proc) == SSEDisconnect(conn, "normal")


async def test_plain_text_is_split_into_data_lines(node: Node) -> None:
    proc, url = await feed(node, codec=None)
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        conn = (await next_message(proc)).conn
        node.send(conn, SSEEvent(conn, "one\rtwo\r\nthree\nfour"))
        assert await read_events(response, 1) == [b"data: one\ndata: two\ndata: three\ndata: four"]
        node.send(conn, SSEEvent(conn, {"not": "a str"}))  # the worker's mistake: it ends
        assert isinstance((await next_message(proc)).reason, TypeError)


@pytest.mark.parametrize("field", ["event", "id"])
@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "a\0b"])
def test_no_line_can_be_injected(field: str, bad: str) -> None:
    conn = metakit.Alias("x@localhost", 1)
    with pytest.raises(ValueError, match="CR, LF or NUL"):
        SSEEvent(conn, "data", **{field: bad})


def test_retry_is_a_whole_number() -> None:
    conn = metakit.Alias("x@localhost", 1)
    for bad in (-1, 1.5, True, "10"):
        with pytest.raises(ValueError, match="retry"):
            SSEEvent(conn, "data", retry=bad)  # type: ignore[arg-type]


async def test_heartbeats_find_a_client_that_has_gone(node: Node) -> None:
    proc, url = await feed(node, heartbeat=0.1)
    async with aiohttp.ClientSession() as session:
        response = await session.get(url)
        conn = (await next_message(proc)).conn
        assert await asyncio.wait_for(response.content.readuntil(b"\n\n"), TIMEOUT) == b":\n\n"
        response.close()  # the client goes, saying nothing
    assert await next_message(proc) == SSEDisconnect(conn, "closed")
    await wait_until(lambda: proc.sse.statistics().connections == 0)
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(proc.got.get(), 0.3)  # one Disconnect only


async def test_node_stop_sends_retry_and_closes() -> None:
    async with Node("stop@localhost") as node:
        proc, url = await feed(node, heartbeat=None)
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            await next_message(proc)
            stopping = asyncio.ensure_future(node.stop())
            assert await asyncio.wait_for(response.content.read(), TIMEOUT) == b"retry: 1000\n\n"
            await asyncio.wait_for(stopping, TIMEOUT)


async def test_broadcast_reaches_every_stream(node: Node) -> None:
    proc, url = await feed(node)
    async with aiohttp.ClientSession() as session:
        responses = [await session.get(url) for _ in range(5)]
        for _ in responses:
            await next_message(proc)
        assert await node.call(proc.pid, ("broadcast", {"to": "all"})) == 5
        for response in responses:
            assert await read_events(response, 1) == [b'data: {"to":"all"}']
            response.close()


async def test_a_frozen_client_costs_bounded_memory(node: Node) -> None:
    proc, url = await feed(node, heartbeat=None, mailbox_size=16)
    host, port = url.removeprefix("http://").split("/")[0].split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: a small window
    sock.connect((host, int(port)))
    sock.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")  # and then never reads
    try:
        conn = (await next_message(proc)).conn
        event = "x" * 65536
        sent = 0
        for _ in range(2000):  # 128 MiB at most; the bound trips long before
            if broadcast(proc, [conn], event) == 0:
                break
            sent += 1
            await asyncio.sleep(0)
        stats = node.meta_info(conn).statistics
        assert stats.held_writes >= 1
        assert stats.dropped >= 1  # counted, not queued
        assert sent < 100, f"{sent} events taken for a client that reads nothing"
        # What this process holds for the client: the held events (the mailbox
        # bound) and the transport's buffer, whatever the kernel took before.
        stream = node._registry.table[conn.id]
        assert node.meta_info(conn).mailbox <= 16 + 1  # the bound, and the hold's marker
        held = stream._request.transport.get_write_buffer_size()  # type: ignore[attr-defined]
        assert held <= 4 * 65536 + 65536, f"{held} bytes buffered for a frozen client"
    finally:
        sock.close()
    assert isinstance(await next_message(proc), SSEDisconnect)


async def test_max_connections_and_no_worker(node: Node) -> None:
    proc, url = await feed(node, max_connections=1)
    async with aiohttp.ClientSession() as session, session.get(url) as first:
        await next_message(proc)
        async with session.get(url) as second:
            assert second.status == 503
        assert first.status == 200
    assert proc.sse.statistics().refused_full == 1


async def test_handler_lifecycle() -> None:
    await check_meta_lifecycle(lambda parent: SSEHandler(parent.pid))


@pytest.mark.parametrize("version", ["1.1", "1.0"])
async def test_the_bytes_on_the_wire(node: Node, version: str) -> None:
    """HTTP/1.1: each event is one chunk, framed as aiohttp frames it (events go
    straight to the transport); HTTP/1.0: no chunks, the body until the close."""
    proc, url = await feed(node, heartbeat=None)
    host, port = url.removeprefix("http://").split("/")[0].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(f"GET /events HTTP/{version}\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        conn = (await next_message(proc)).conn
        proc.send(conn, SSEEvent(conn, {"n": 1}, id="7"))
        assert await node.call(proc.pid, ("broadcast", "two\nlines")) == 1
        proc.send_exit(conn, "normal")
        body = await asyncio.wait_for(reader.read(), TIMEOUT)
    finally:
        writer.close()
        await writer.wait_closed()
    one, two = b'id: 7\ndata: {"n":1}\n\n', b'data: "two\\nlines"\n\n'
    if version == "1.1":
        assert b"transfer-encoding: chunked" in head.lower()
        assert body == b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(one), one, len(two), two)
    else:
        assert b"transfer-encoding" not in head.lower()
        assert body == one + two
    assert isinstance(await next_message(proc), SSEDisconnect)
