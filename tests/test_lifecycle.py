"""Every ready meta passes metakit.testing.check_meta_lifecycle, and the check can fail."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import aiohttp
import pytest
import websockets
from aiohttp import web

import metakit
from metakit.framing import Line
from metakit.tcp import TCPClient, TCPConnect, TCPMessage, TCPServer
from metakit.testing import TIMEOUT, Probe, check_meta_lifecycle
from metakit.udp import UDPPacket, UDPServer
from metakit.web import WebHandler, WebServer
from metakit.websocket import WebSocketClient, WebSocketHandler, WSConnect, WSMessage


async def test_tcp_server_and_its_connections() -> None:
    async def exercise(parent: Probe, server: Any) -> None:
        reader, writer = await asyncio.open_connection(*server.address)
        conn = (await parent.receive()).conn
        writer.write(b"ping\n")
        assert await parent.receive() == TCPMessage(conn, b"ping")
        parent.send(conn, TCPMessage(conn, b"pong"))
        assert await reader.readline() == b"pong\n"
        writer.close()
        await writer.wait_closed()

    await check_meta_lifecycle(
        lambda parent: TCPServer("127.0.0.1", 0, framing=Line()), exercise=exercise
    )


async def test_tcp_client() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        while await reader.read(65536):
            pass
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]

    async def exercise(parent: Probe, client: Any) -> None:
        assert isinstance(await parent.receive(), TCPConnect)
        parent.send(client.id, TCPMessage(client.id, b"hello"))

    try:
        await check_meta_lifecycle(lambda parent: TCPClient("127.0.0.1", port), exercise=exercise)
    finally:
        server.close()
        await server.wait_closed()


async def test_udp_server() -> None:
    async def exercise(parent: Probe, server: Any) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            sock.sendto(b"hi", server.address)
            packet = await parent.receive()
            assert isinstance(packet, UDPPacket)
            assert packet.data == b"hi"

    await check_meta_lifecycle(lambda parent: UDPServer("127.0.0.1", 0), exercise=exercise)


class _Site:
    """An aiohttp server outside the check (its sockets are not the meta's) whose
    one route goes to whichever handler the check is running."""

    def __init__(self) -> None:
        self.handler: Any = None
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._route)
        self.runner = web.AppRunner(app, handler_cancellation=True)
        self.url = ""

    async def _route(self, request: web.Request) -> web.StreamResponse:
        response: web.StreamResponse = await self.handler(request)
        return response

    async def __aenter__(self) -> _Site:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        host, port = self.runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()


async def test_web_server() -> None:
    async def exercise(parent: Probe, server: Any) -> None:
        async with aiohttp.ClientSession() as session, session.get(server.url + "/x") as r:
            assert r.status == 404

    await check_meta_lifecycle(
        lambda parent: WebServer("127.0.0.1", 0, web.Application()), exercise=exercise
    )


async def test_web_handler() -> None:
    async with _Site() as site:

        def make(parent: Probe) -> WebHandler:
            parent.reply_with = "ok"  # the parent is the worker: it answers every call
            site.handler = WebHandler(parent.pid)
            return site.handler

        async def exercise(parent: Probe, handler: Any) -> None:
            async with aiohttp.ClientSession() as session, session.get(site.url + "/x") as r:
                assert (r.status, await r.text()) == (200, "ok")

        await check_meta_lifecycle(make, exercise=exercise)


async def test_websocket_handler_and_its_connections() -> None:
    async with _Site() as site:

        def make(parent: Probe) -> WebSocketHandler:
            site.handler = WebSocketHandler(parent.pid)
            return site.handler

        async def exercise(parent: Probe, handler: Any) -> None:
            async with websockets.connect(site.url.replace("http", "ws") + "/ws") as ws:
                hello = await parent.receive()
                assert isinstance(hello, WSConnect)
                await ws.send("ping")
                assert await parent.receive() == WSMessage(hello.conn, "ping")
                parent.send(hello.conn, WSMessage(hello.conn, "pong"))
                assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "pong"

        await check_meta_lifecycle(make, exercise=exercise)


async def test_websocket_client() -> None:
    async def echo(ws: Any) -> None:
        async for message in ws:
            await ws.send(message)

    async with websockets.serve(echo, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]

        async def exercise(parent: Probe, client: Any) -> None:
            assert isinstance(await parent.receive(), WSConnect)
            parent.send(client.id, WSMessage(client.id, "hi"))
            assert await parent.receive() == WSMessage(client.id, "hi")

        await check_meta_lifecycle(
            lambda parent: WebSocketClient(f"ws://127.0.0.1:{port}"), exercise=exercise
        )


class _Leaky(metakit.Meta):
    """Breaks the lifecycle on purpose: a socket its terminate forgets to close."""

    async def init(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()


class _TwiceTold(metakit.Meta):
    """Breaks it another way: terminate ends the meta again (terminate runs once anyway)."""

    def terminate(self, reason: Any) -> None:
        self.exit(reason)


async def test_the_check_names_a_leaked_object() -> None:
    made: list[_Leaky] = []

    def make(parent: Probe) -> _Leaky:
        made.append(_Leaky())
        return made[-1]

    try:
        with pytest.raises(AssertionError, match=r"\[normal\]: its object outlived it"):
            await check_meta_lifecycle(make, endings=["normal"], timeout=0.2)
    finally:
        for meta in made:
            meta.sock.close()


async def test_terminate_runs_once_even_when_it_re_enters() -> None:
    await check_meta_lifecycle(lambda parent: _TwiceTold())


async def test_unknown_ending_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown ending"):
        await check_meta_lifecycle(lambda parent: _TwiceTold(), endings=["sideways"])
