"""WebSocketHandler: an aiohttp handler (and a meta) that turns upgrades into connection metas."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import WSMsgType, web

from .._compat import mark_coroutine_function
from .._eager import Pump
from ..connection import ConnState
from ..connections import ConnectionSet
from ..errors import MetakitError
from ..ids import PID
from ..meta import Meta
from ..pool import Pool
from ..web.messages import WebRequest
from .connection import WSConnectionBase
from .messages import WSConnect

__all__ = ["WSConnection", "WebSocketHandler", "WebSocketHandlerStatistics"]

_OPEN = ConnState.OPEN


@dataclass(frozen=True, slots=True)
class WebSocketHandlerStatistics:
    """A WebSocket handler's counters at one moment (``handler.statistics()``).

    Attributes:
        accepted: connections upgraded and served.
        refused_origin: upgrades refused (403) for their ``Origin``.
        no_worker: upgrades closed with 1013 because no worker was alive.
        refused_full: upgrades refused (503) at ``max_connections``.
        connections: connections open now.
    """

    accepted: int
    refused_origin: int
    no_worker: int
    refused_full: int
    connections: int


class WSConnection(WSConnectionBase):
    """One accepted WebSocket as a meta-process; its Alias is the connection id.

    Made by :class:`WebSocketHandler`; see :mod:`metakit.connection` for who
    closes what and :mod:`metakit.websocket.connection` for the close codes.
    """

    __slots__ = ("_closing", "_request", "_ws")

    def __init__(self, ws: web.WebSocketResponse, request: web.BaseRequest, **options: Any) -> None:
        super().__init__(**options)
        self._ws = ws
        self._request = request
        self._closing: asyncio.Task[Any] | None = None

    def _send_frame(self, payload: Any, text: bool) -> Coroutine[Any, Any, Any]:
        # send_frame: one coroutine fewer than send_str/send_bytes, which only check and encode.
        return self._ws.send_frame(payload, WSMsgType.TEXT if text else WSMsgType.BINARY)

    def _close(self, code: int, reason: str) -> None:
        # Close reasons are limited to 123 bytes (RFC 6455 §5.5).
        self._closing = self.create_task(self._ws.close(code=code, message=reason.encode()[:123]))

    def _drop(self) -> None:
        transport = self._request.transport
        if transport is not None:
            transport.abort()

    async def _serve(self) -> None:
        """The read loop, in aiohttp's request task, until the socket closes."""
        ws = self._ws
        while self.writable:  # open (or closing, and then paused)
            msg = await ws.receive()
            kind = msg.type
            if kind is WSMsgType.TEXT or kind is WSMsgType.BINARY:
                wait = self._received(msg.data)
                while wait is not None:  # the worker is behind: read no more until it catches up
                    await wait
                    wait = self._resume
            elif kind is WSMsgType.CLOSE:  # aiohttp has answered the close frame
                self._remote_close(ws.close_code or 1005, msg.extra or "")
                return
            elif kind is WSMsgType.CLOSING:  # this side is closing it
                return
            else:  # CLOSED, ERROR: dropped, too big, heartbeat failed
                reason = str(msg.data) if msg.data is not None else "connection lost"
                code = getattr(msg.data, "code", None) or ws.close_code or 1006
                self._remote_close(int(code), reason)
                return


class WebSocketHandler(Meta):
    """Mount on an aiohttp route; each upgraded connection becomes a :class:`WSConnection`.

    ::

        ws = WebSocketHandler("chat", codec="json", origins=["http://localhost:8080"])
        await self.spawn_meta(ws)
        app.router.add_get("/ws", ws)

    The worker gets ``WSConnect(conn, peer, request_info)``, one
    ``WSMessage(conn, data)`` per message and exactly one
    ``WSDisconnect(conn, code, reason)``; it writes with
    ``send(conn, WSMessage(conn, data))`` and closes with ``send_exit``.

    Args:
        worker: the name or PID of the process that gets the messages.
        pool: instead of ``worker``, names or PIDs taken round-robin per connection.
        codec: None (``str`` for text frames, ``bytes`` for binary) or
            ``"json"`` (decoded with orjson; written as JSON text frames).
        max_message: the largest message accepted; a bigger one closes the
            connection with 1009.
        heartbeat: seconds between pings; a peer that misses the pong is
            dropped (1006). None: no pings.
        origins: allowed ``Origin`` header values; others get 403 before the
            upgrade. None: any.
        compress: offer per-message deflate.
        handshake_timeout: seconds allowed for the upgrade.
        max_connections: beyond it, an upgrade is refused with 503 before
            it happens (counted as ``refused_full``). None: no limit.
        mailbox_size: each connection's mailbox bound, at least 1: where
            writes wait while the socket is full. A full one raises
            ``MailboxFull`` at the worker writing to it, and ``broadcast``
            skips (and counts in ``dropped``) a connection that far behind.
        high_watermark: stop reading a socket when the worker's mailbox
            holds more messages than this.
        low_watermark: read again when it is down to about this many.

    Resource handling:
        Connections are metas of this handler's parent. When the handler
        ends, its connections close with the same reason. ``node.stop()``
        first closes them with 1001 ("shutdown") and refuses new ones, and
        stops the processes once their workers have had ``WSDisconnect``.
    """

    def __init__(
        self,
        worker: PID | str | None = None,
        *,
        pool: Sequence[PID | str] | None = None,
        codec: str | None = None,
        max_message: int = 1 << 20,
        heartbeat: float | None = 30.0,
        origins: Sequence[str] | None = None,
        compress: bool = True,
        handshake_timeout: float = 10.0,
        max_connections: int | None = None,
        mailbox_size: int = 256,
        high_watermark: int = 64,
        low_watermark: int = 16,
    ) -> None:
        self._workers = Pool(worker, pool, required=True)
        self._conn_options: dict[str, Any] = {
            "codec": codec,
            "high_watermark": high_watermark,
            "low_watermark": low_watermark,
        }
        WSConnectionBase(**self._conn_options)  # validate the options now
        self.max_message = max_message
        self.heartbeat = heartbeat
        self.origins = frozenset(origins) if origins is not None else None
        self.compress = compress
        self.handshake_timeout = handshake_timeout
        if mailbox_size < 1:
            raise ValueError(f"mailbox_size must be at least 1, not {mailbox_size}")
        self._conn_mailbox = mailbox_size
        self.max_connections = max_connections
        self._upgrading = 0
        self._conns = ConnectionSet(self)
        self._quiescing = False  # node.stop() has begun: no new connections
        self._pump = Pump()
        self._accepted = self._refused_origin = self._no_worker = self._refused_full = 0
        mark_coroutine_function(self)  # aiohttp takes it as an async handler

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        """Upgrade one request and serve the connection until it closes (aiohttp calls this)."""
        if not self.alive or self._quiescing:  # not spawned yet, or ending
            return web.Response(status=503, text="503 Service Unavailable")
        if self.origins is not None and request.headers.get("Origin") not in self.origins:
            self._refused_origin += 1
            return web.Response(status=403, text="403 Forbidden: origin not allowed")
        if (
            self.max_connections is not None
            and len(self._conns) + self._upgrading >= self.max_connections
        ):
            self._refused_full += 1
            return web.Response(status=503, text="503 Service Unavailable: too many connections")
        ws = web.WebSocketResponse(
            heartbeat=self.heartbeat,
            max_msg_size=self.max_message + 1,  # aiohttp's limit is exclusive
            compress=self.compress,
        )
        self._upgrading += 1  # holds its slot during the handshake
        try:
            async with asyncio.timeout(self.handshake_timeout):
                await ws.prepare(request)
        finally:
            self._upgrading -= 1
        worker = self._workers.pick(self)
        if worker is None or not self.alive:
            self._no_worker += 1
            await ws.close(code=1013, message=b"no worker")  # try again later
            return ws
        conn = WSConnection(ws, request, **self._conn_options)
        try:
            self.spawn_nowait(conn, mailbox_size=self._conn_mailbox)
        except MetakitError:  # the node is stopping
            await ws.close(code=1001)
            return ws
        conn._pump = self._pump  # one pump serves every connection: less to touch per write
        self._conns.add(conn)
        self._accepted += 1
        conn.peer = request.remote
        conn.open(worker, WSConnect(conn.id, request.remote, WebRequest(request)))
        try:
            await conn._serve()
            if conn._closing is not None:
                # Our close frame first: aiohttp would close with 1000 once we return.
                await asyncio.shield(conn._closing)
        finally:
            # Cancelled (the client left, with handler_cancellation) or done.
            if conn.alive and conn.state is _OPEN:
                conn._remote_close(1006, "connection lost")
        return ws

    def terminate(self, reason: Any) -> None:
        """End every connection with this handler's reason."""
        self._conns.end_all(reason)

    def quiesce(self) -> asyncio.Future[None] | None:
        """``node.stop()``: a WebSocket is never done on its own (and a web server's
        graceful close waits for its handler). Going away (1001) now, while the
        workers still run: the node waits until the connections have ended."""
        self._quiescing = True
        gone = self._conns.wait_empty()
        if gone is not None:
            self.terminate("shutdown")
        return gone

    def statistics(self) -> WebSocketHandlerStatistics:
        """A snapshot of the counters."""
        return WebSocketHandlerStatistics(
            accepted=self._accepted,
            refused_origin=self._refused_origin,
            no_worker=self._no_worker,
            refused_full=self._refused_full,
            connections=len(self._conns),
        )
