"""TLS on both sides, with a certificate made by the test."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import pytest

from metakit import Node
from metakit.framing import Line
from metakit.tcp import TCPClient, TCPConnect, TCPDisconnect, TCPMessage, TCPServer
from metakit.testing import TIMEOUT, Probe, wait_until


async def test_tls_echo_both_sides(
    node: Node, probe: Any, tls: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    server_ctx, client_ctx = tls
    worker: Probe = await probe()
    server = TCPServer("127.0.0.1", 0, framing=Line(max_length=100), ssl=server_ctx)
    await worker.spawn_meta(server)
    # A plain asyncio TLS client.
    reader, writer = await asyncio.open_connection(*server.address, ssl=client_ctx)
    conn = (await worker.receive()).conn
    writer.write(b"secret\n")
    assert await worker.receive() == TCPMessage(conn, b"secret")
    worker.send(conn, TCPMessage(conn, b"reply"))
    assert await reader.readline() == b"reply\n"
    writer.close()
    assert (await worker.receive()).conn == conn
    # A metakit TLS client.
    owner: Probe = await probe()
    client = TCPClient(
        *server.address, framing=Line(max_length=100), ssl=client_ctx, server_hostname="localhost"
    )
    out = await owner.spawn_meta(client)
    assert isinstance(await owner.receive(), TCPConnect)
    accepted = (await worker.receive()).conn
    owner.send(out, TCPMessage(out, b"hi"))
    assert await worker.receive() == TCPMessage(accepted, b"hi")
    owner.send_exit(out, "normal")
    assert await owner.receive() == TCPDisconnect(out, "normal")
    assert isinstance(await worker.receive(), TCPDisconnect)


async def test_garbage_instead_of_handshake(
    node: Node, probe: Any, tls: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    server_ctx, client_ctx = tls
    worker: Probe = await probe()
    server = TCPServer("127.0.0.1", 0, ssl=server_ctx, ssl_handshake_timeout=TIMEOUT)
    await worker.spawn_meta(server)
    reader, writer = await asyncio.open_connection(*server.address)
    writer.write(b"GET / HTTP/1.0\r\n\r\n" * 10)
    # The server ends it: EOF, possibly after a TLS alert record (content type 21).
    data = await asyncio.wait_for(reader.read(), TIMEOUT)
    assert data == b"" or data[0] == 21
    writer.close()
    await writer.wait_closed()
    # Its connection meta ended with the handshake, unseen by the worker, and
    # the server keeps serving.
    await wait_until(lambda: server.statistics().handshake_failed == 1)
    await wait_until(lambda: node.metas() == [server.id])
    assert node.meta_info(server.id).inspect["accepted"] == "0"
    reader, writer = await asyncio.open_connection(*server.address, ssl=client_ctx)
    assert isinstance(await worker.receive(), TCPConnect)
    writer.close()
    assert isinstance(await worker.receive(), TCPDisconnect)


async def test_client_rejects_untrusted_server(
    node: Node, probe: Any, tls: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    server_ctx, _ = tls
    worker: Probe = await probe()
    server = TCPServer("127.0.0.1", 0, ssl=server_ctx)
    await worker.spawn_meta(server)
    owner: Probe = await probe()
    with pytest.raises(ssl.SSLCertVerificationError):
        await owner.spawn_meta(TCPClient(*server.address, ssl=ssl.create_default_context()))
