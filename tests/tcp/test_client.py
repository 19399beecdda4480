"""TCPClient: outgoing connections speak the same messages."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from metakit import Node
from metakit.framing import JSON, Line
from metakit.tcp import TCPClient, TCPConnect, TCPDisconnect, TCPMessage, TCPServer
from metakit.testing import Probe, wait_until


async def test_client_against_server(node: Node, probe: Any) -> None:
    server_side: Probe = await probe()
    server = TCPServer("127.0.0.1", 0, framing=JSON())
    await server_side.spawn_meta(server)
    client_side: Probe = await probe()
    client = TCPClient(*server.address, framing=JSON())
    conn = await client_side.spawn_meta(client)
    hello = await client_side.receive()
    assert hello == TCPConnect(conn, server.address, hello.local)
    accepted = (await server_side.receive()).conn
    client_side.send(conn, TCPMessage(conn, {"ask": [1, 2]}))
    assert await server_side.receive() == TCPMessage(accepted, {"ask": [1, 2]})
    server_side.send(accepted, TCPMessage(accepted, {"answer": 3}))
    assert await client_side.receive() == TCPMessage(conn, {"answer": 3})
    client_side.send_exit(conn, "normal")
    assert await client_side.receive() == TCPDisconnect(conn, "normal")
    assert await server_side.receive() == TCPDisconnect(accepted, "closed")


async def test_connect_refused_raises_at_spawn_meta(node: Node, probe: Any) -> None:
    with socket.socket() as probe_sock:
        probe_sock.bind(("127.0.0.1", 0))
        port = probe_sock.getsockname()[1]  # bound, not listening: refuses
        owner: Probe = await probe()
        with pytest.raises(ConnectionRefusedError):
            await owner.spawn_meta(TCPClient("127.0.0.1", port))
    assert node.metas() == []


async def test_connect_timeout(node: Node, probe: Any) -> None:
    # A listening socket whose backlog is full does not complete new handshakes.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        fillers = []
        try:
            for _ in range(8):
                s = socket.socket()
                s.setblocking(False)
                try:
                    s.connect(listener.getsockname())
                except BlockingIOError:
                    pass
                fillers.append(s)
            owner: Probe = await probe()
            with pytest.raises((TimeoutError, ConnectionError)):
                await owner.spawn_meta(TCPClient(*listener.getsockname(), connect_timeout=0.2))
        finally:
            for s in fillers:
                s.close()


async def test_server_closing_client_connection(node: Node, probe: Any) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"bye\n")
        writer.close()

    plain = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        owner: Probe = await probe()
        conn = await owner.spawn_meta(
            TCPClient(*plain.sockets[0].getsockname()[:2], framing=Line(max_length=10))
        )
        assert isinstance(await owner.receive(), TCPConnect)
        assert await owner.receive() == TCPMessage(conn, b"bye")
        assert await owner.receive() == TCPDisconnect(conn, "closed")
        await wait_until(lambda: conn not in node.metas())
    finally:
        plain.close()
        await plain.wait_closed()
