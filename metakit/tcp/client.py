"""TCPClient: an outgoing TCP connection as a meta-process."""

from __future__ import annotations

import asyncio
import ssl as _ssl
from typing import Any

from ..framing import Framer
from .connection import TCPConnection

__all__ = ["TCPClient"]


class TCPClient(TCPConnection):
    """Connect to ``host:port``; the parent gets the same messages as a server's worker.

    ::

        conn = await self.spawn_meta(TCPClient("127.0.0.1", 7000, framing=Line()))
        self.send(conn, TCPMessage(conn, b"hello"))

    The parent receives ``TCPConnect``, then ``TCPMessage`` per chunk or
    frame, then exactly one ``TCPDisconnect``; it closes the connection with
    ``send_exit(conn, "normal")``.

    Args:
        host: the server's host name or address.
        port: the server's port.
        framing: a framer template (cloned); default ``Raw()``.
        ssl: an ``ssl.SSLContext`` for TLS.
        server_hostname: the name to check the server's certificate against
            (default: ``host``).
        connect_timeout: seconds to wait for the connection (and TLS handshake).
        idle_timeout: end with reason ``"idle"`` after this long without traffic.
        high_watermark: pause reading when the parent's mailbox holds more
            messages than this.
        low_watermark: resume reading when it is down to about this many.

    Error handling:
        Connection errors (``ConnectionRefusedError``, ``TimeoutError``,
        ``ssl.SSLError``, ...) raise at ``spawn_meta``.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        framing: Framer[Any] | None = None,
        ssl: _ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        connect_timeout: float = 10.0,
        idle_timeout: float | None = None,
        high_watermark: int = 64,
        low_watermark: int = 16,
    ) -> None:
        super().__init__(
            framing,
            idle_timeout=idle_timeout,
            high_watermark=high_watermark,
            low_watermark=low_watermark,
        )
        self.host = host
        self.port = port
        self._ssl = ssl
        self._server_hostname = server_hostname
        self._connect_timeout = connect_timeout

    async def init(self) -> None:
        """Connect (and complete the TLS handshake)."""
        loop = asyncio.get_running_loop()
        await asyncio.wait_for(
            loop.create_connection(
                lambda: self,
                self.host,
                self.port,
                ssl=self._ssl,
                server_hostname=self._server_hostname if self._ssl else None,
            ),
            self._connect_timeout,
        )
