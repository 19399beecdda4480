"""Read deadlines on HTTP: a peer that is slow to send its request is cut off.

The slow peers here are real sockets that send a byte at a time (slowloris);
their pace is the only sleep in this file: it makes the attack, it waits for
nothing. Every wait is for an event (a response, the server closing) under a
deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

import metakit
from metakit import NO_REPLY, Caller, Node
from metakit.testing import TIMEOUT, LeakCheck, wait_until
from metakit.web import WebHandler, WebRequest, WebServer

# The deadlines the tests set: short, and scaled with the rest of the patience.
DEADLINE = TIMEOUT / 16
# Timers may fire a tick early (uvloop counts in milliseconds).
EARLY = 0.05
PACE = 0.02  # seconds between a slow peer's bytes

REQUEST = b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"


class Api(metakit.Process):
    """A worker answering a few routes; it holds ``/slow`` until told to answer."""

    async def init(self) -> None:
        self.held: list[Caller] = []
        self.seen: list[str] = []

    def handle_call(self, sender: Caller, request: Any) -> Any:
        if not isinstance(request, WebRequest):
            if request == "seen":
                return list(self.seen)
            held, self.held = self.held, []
            for caller in held:
                self.reply(caller, request)
            return len(held)
        self.seen.append(f"{request.method} {request.path}")
        match request:
            case WebRequest(path="/hello"):
                return "hello"
            case WebRequest(method="POST", path="/echo"):
                return web.Response(body=request.body, status=201)
            case WebRequest(path="/slow"):
                self.held.append(sender)
                return NO_REPLY
            case WebRequest(path="/keepalive"):
                return str(request.request.protocol.keepalive_timeout)
        return web.Response(status=418)

    def handle_inspect(self) -> dict[str, str]:
        return {"held": str(len(self.held))}


async def start(
    node: Node, *, handler_opts: dict[str, Any] | None = None, **server_opts: Any
) -> tuple[metakit.PID, WebHandler, WebServer]:
    """An Api worker named "api" owning a WebHandler on every path and a WebServer."""
    handler = WebHandler("api", timeout=TIMEOUT, **(handler_opts or {}))
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    server = WebServer("127.0.0.1", 0, app, **server_opts)

    class Owner(Api):
        async def init(self) -> None:
            await super().init()
            await self.spawn_meta(handler)
            await self.spawn_meta(server)

    pid = await node.spawn(Owner, name="api")
    return pid, handler, server


def holding(node: Node, pid: metakit.PID) -> bool:
    return node.process_info(pid).inspect["held"] != "0"


@contextlib.asynccontextmanager
async def connection(
    server: WebServer,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection(*server.address)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length: status, headers (lowercased), body."""
    async with asyncio.timeout(TIMEOUT):
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        status_line, *lines = head.split("\r\n")
        fields = (line.split(":", 1) for line in lines if line)
        headers = {name.strip().lower(): value.strip() for name, value in fields}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(status_line.split()[1]), headers, body


async def closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """Wait (up to TIMEOUT) for the server to close; what it sent until then."""
    received = b""
    async with asyncio.timeout(TIMEOUT):
        try:
            while chunk := await reader.read(65536):
                received += chunk
        except ConnectionResetError:
            pass
    return received


async def trickle(writer: asyncio.StreamWriter, data: bytes) -> None:
    """Send ``data`` a byte at a time, then endless header lines the same way.

    It stops only when the server has gone (or when cancelled).
    """

    def endless() -> Any:
        yield from data
        while True:
            yield from b"X-Slow: y\r\n"

    with contextlib.suppress(ConnectionError):
        for byte in endless():
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(PACE)  # the attack's pace, not a wait


@contextlib.asynccontextmanager
async def trickling(writer: asyncio.StreamWriter, data: bytes) -> AsyncIterator[None]:
    task = asyncio.ensure_future(trickle(writer, data))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_silent_connection_is_closed_at_the_header_deadline(node: Node) -> None:
    _, _, server = await start(node, header_timeout=DEADLINE)
    loop = asyncio.get_running_loop()
    began = loop.time()
    async with connection(server) as (reader, _):
        assert await closed_by_server(reader) == b""  # closed, with no response
        assert loop.time() - began >= DEADLINE - EARLY
    assert server.statistics().headers_timed_out == 1


async def test_trickled_headers_do_not_extend_the_header_deadline(node: Node) -> None:
    _, _, server = await start(node, header_timeout=DEADLINE)
    loop = asyncio.get_running_loop()
    began = loop.time()
    async with (
        connection(server) as (reader, writer),
        trickling(writer, b"GET /hello HTTP/1.1\r\n"),
    ):
        # A byte every PACE seconds: an idle timer would never fire.
        assert await closed_by_server(reader) == b""
        assert loop.time() - began >= DEADLINE - EARLY
    assert server.statistics().headers_timed_out == 1
    assert server.statistics().connections == 0


async def test_a_connection_the_client_closes_in_time_is_not_counted(node: Node) -> None:
    _, _, server = await start(node, header_timeout=DEADLINE)
    async with connection(server):
        await wait_until(lambda: server.statistics().connections == 1)
    await wait_until(lambda: server.statistics().connections == 0)
    # Opened after the first one closed: once it is cut, the first one's
    # deadline has passed too, and its timer went with it.
    async with connection(server) as (silent, _):
        assert await closed_by_server(silent) == b""
    assert server.statistics().headers_timed_out == 1


async def test_prompt_requests_and_slow_handlers_are_not_cut(
    node: Node,
) -> None:
    pid, _, server = await start(node, header_timeout=DEADLINE)
    async with aiohttp.ClientSession() as session, connection(server) as (reader, writer):
        # A keep-alive connection with a first request made at once...
        writer.write(REQUEST)
        assert (await read_response(reader))[::2] == (200, b"hello")
        # ...and a request the worker takes its time over.
        slow = asyncio.ensure_future(session.get(f"{server.url}/slow"))
        await wait_until(lambda: holding(node, pid))
        # Both connections were open before this silent one: once it is cut,
        # their deadlines have passed too.
        async with connection(server) as (silent, _):
            assert await closed_by_server(silent) == b""
        assert await node.call(pid, "worth the wait") == 1
        async with await slow as r:
            assert (r.status, await r.text()) == (200, "worth the wait")
        writer.write(REQUEST)  # the next request on the keep-alive connection
        assert (await read_response(reader))[::2] == (200, b"hello")
    assert server.statistics().headers_timed_out == 1  # the silent one only


async def test_the_next_request_on_a_kept_alive_connection_has_keepalive_timeout(
    node: Node,
) -> None:
    # After the first request, aiohttp's keep-alive timer bounds the wait for
    # the next one's headers (from the end of the response; bytes do not
    # extend it): WebServer relies on it, with a finite default.
    _, _, server = await start(node, header_timeout=TIMEOUT * 10, keepalive_timeout=DEADLINE)
    loop = asyncio.get_running_loop()
    async with connection(server) as (reader, writer):
        writer.write(REQUEST)
        assert (await read_response(reader))[::2] == (200, b"hello")
        answered = loop.time()
        async with trickling(writer, b"GET /hello HTTP/1.1\r\n"):
            assert await closed_by_server(reader) == b""
            assert loop.time() - answered >= DEADLINE - EARLY
    assert server.statistics().headers_timed_out == 0


async def test_keepalive_timeout_defaults_to_75_seconds(node: Node) -> None:
    _, _, server = await start(node)
    async with aiohttp.ClientSession() as session, session.get(f"{server.url}/keepalive") as r:
        assert await r.text() == "75.0"


async def test_the_node_serves_others_through_a_slowloris_attack(node: Node) -> None:
    attackers = 20
    _, _, server = await start(node, header_timeout=DEADLINE * 4)
    leaks = LeakCheck()  # the server is up: what the attack adds must all go
    async with contextlib.AsyncExitStack() as stack:
        readers = []
        for _ in range(attackers):
            reader, writer = await stack.enter_async_context(connection(server))
            await stack.enter_async_context(trickling(writer, b"GET /hello HTTP/1.1\r\n"))
            readers.append(reader)
        await wait_until(lambda: server.statistics().connections == attackers)
        async with aiohttp.ClientSession() as session, session.get(f"{server.url}/hello") as r:
            assert (r.status, await r.text()) == (200, "hello")
        assert server.statistics().headers_timed_out == 0  # all still open meanwhile
        for reader in readers:
            assert await closed_by_server(reader) == b""
    assert server.statistics().headers_timed_out == attackers
    await wait_until(lambda: server.statistics().connections == 0)
    await leaks.check()  # no socket, task or thread of theirs left behind


async def test_a_trickled_body_is_answered_408(node: Node) -> None:
    pid, handler, server = await start(
        node,
        handler_opts={"body_timeout": DEADLINE},
        lingering_time=DEADLINE,  # aiohttp then reads on for this long, and closes
    )
    loop = asyncio.get_running_loop()
    head = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
    async with connection(server) as (reader, writer):
        writer.write(head)
        began = loop.time()
        async with trickling(writer, b"x" * 1000):
            status, headers, _ = await read_response(reader)
            assert (status, headers["connection"]) == (408, "close")
            assert loop.time() - began >= DEADLINE - EARLY
            assert await closed_by_server(reader) == b""
    assert handler.statistics().body_timed_out == 1
    assert server.statistics().headers_timed_out == 0  # the headers were in time
    assert await node.call(pid, "seen") == []  # the worker never saw it


async def test_a_body_in_pieces_within_body_timeout_is_served(node: Node) -> None:
    _, handler, server = await start(node, handler_opts={"body_timeout": TIMEOUT})
    async with connection(server) as (reader, writer):
        writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nabc")
        # The handler is reading the body, and it is not all there yet.
        await wait_until(lambda: handler.statistics().requests == 1)
        writer.write(b"def")
        assert (await read_response(reader))[::2] == (201, b"abcdef")
    assert handler.statistics().body_timed_out == 0


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
async def test_curl_uploading_slowly_gets_408(node: Node, tmp_path: Any) -> None:
    _, handler, server = await start(node, handler_opts={"body_timeout": DEADLINE})
    upload = tmp_path / "upload"
    upload.write_bytes(b"x" * 200_000)  # 10 s at 20 KiB/s: longer than TIMEOUT
    curl = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--limit-rate", "20k"]
    proc = await asyncio.create_subprocess_exec(
        *curl, "--data-binary", f"@{upload}", f"{server.url}/echo", stdout=subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    assert out == b"408"
    assert handler.statistics().body_timed_out == 1


def test_deadlines_must_be_positive() -> None:
    for bad in (0, -1.0):
        with pytest.raises(ValueError, match="header_timeout"):
            WebServer("127.0.0.1", 0, web.Application(), header_timeout=bad)
        with pytest.raises(ValueError, match="body_timeout"):
            WebHandler("api", body_timeout=bad)
