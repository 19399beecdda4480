"""reuse_port=True on TCPServer, UDPServer and WebServer: two servers share a
port (what the workers of metakit.run(main, workers=N) do); without it the
second one fails to bind."""

from __future__ import annotations

import socket
import sys
from typing import Any

import pytest
from aiohttp import web

import metakit
from metakit.tcp import TCPServer
from metakit.udp import UDPServer
from metakit.web import WebServer

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="SO_REUSEPORT as on Linux")


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _make(kind: str, port: int, reuse: bool) -> metakit.Meta:
    if kind == "tcp":
        return TCPServer("127.0.0.1", port, reuse_port=reuse)
    if kind == "udp":
        return UDPServer("127.0.0.1", port, reuse_port=reuse)
    return WebServer("127.0.0.1", port, web.Application(), reuse_port=reuse)


class Owner(metakit.Process):
    async def handle_call(self, sender: metakit.Caller, request: Any) -> Any:
        kind, port, reuse = request
        await self.spawn_meta(_make(kind, port, reuse))
        return None


@pytest.mark.parametrize("kind", ["tcp", "udp", "web"])
async def test_two_servers_share_a_port_with_reuse_port(node: metakit.Node, kind: str) -> None:
    port = _free_port(socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM)
    owner = await node.spawn(Owner)
    await node.call(owner, (kind, port, True))
    await node.call(owner, (kind, port, True))  # binds the same port: no error
    assert len(node.metas()) == 2
    with pytest.raises(OSError, match="ddress already in use"):
        await node.call(owner, (kind, port, False))
