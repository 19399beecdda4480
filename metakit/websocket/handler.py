"""WebSocketHandler: an aiohttp handler (and a meta) that turns upgrades into connection metas."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import orjson
from aiohttp import WSMsgType, web

from .._eager import Pump
from .._state import DEAD, RUNNING
from .._workers import Workers, mark_coroutine_function
from ..errors import MetakitError
from ..ids import PID
from ..mailbox import Signal
from ..meta import Meta
from ..web.messages import WebRequest
from .connection import WSConnectionBase

__all__ = ["WSConnection", "WebSocketHandler"]


class WSConnection(WSConnectionBase):
    """One accepted WebSocket as a meta-process; its Alias is the connection id.

    Made by :class:`WebSocketHandler`; see :mod:`metakit.websocket.connection`
    for who closes what.
    """

    __slots__ = ("_closing", "_handler", "_request", "_ws")

    def __init__(self, ws: web.WebSocketResponse, request: web.BaseRequest, **options: Any) -> None:
        super().__init__(**options)
        self._ws = ws
        self._request = request
        self._handler: WebSocketHandler | None = None
        self._closing: asyncio.Task[Any] | None = None

    def _send(self, data: Any) -> Coroutine[Any, Any, Any]:
        # send_frame: one coroutine fewer than send_str/send_bytes, which only check and encode.
        if self._json:
            return self._ws.send_frame(data, WSMsgType.TEXT)  # orjson gave UTF-8 bytes
        if isinstance(data, str):
            return self._ws.send_frame(data.encode(), WSMsgType.TEXT)
        return self._ws.send_frame(data, WSMsgType.BINARY)

    def _send_text(self, data: bytes) -> Coroutine[Any, Any, Any]:
        return self._ws.send_frame(data, WSMsgType.TEXT)

    def _close(self, code: int, reason: str) -> None:
        name = f"metakit ws close {self._mk_alias!r}"
        # Close reasons are limited to 123 bytes (RFC 6455 §5.5).
        closing = self._ws.close(code=code, message=reason.encode()[:123])
        self._closing = self._mk_node._linger(closing, name)

    def _drop(self) -> None:
        transport = self._request.transport
        if transport is not None:
            transport.abort()

    async def _serve(self) -> None:
        """The read loop, in aiohttp's request task, until the socket closes."""
        ws = self._ws
        while self._open:
            msg = await ws.receive()
            kind = msg.type
            if kind is WSMsgType.TEXT or kind is WSMsgType.BINARY:
                try:
                    data = self._decode(msg.data)
                except orjson.JSONDecodeError:
                    self._open_close(1007, "invalid JSON")
                    self._remote_end(1007, "invalid JSON")
                    return
                wait = self._received(data)
                if wait is not None:
                    await wait
            elif kind is WSMsgType.CLOSE:  # aiohttp has answered the close frame
                self._remote_end(ws.close_code or 1005, msg.extra or "")
                return
            elif kind is WSMsgType.CLOSING:  # this side is closing it
                return
            else:  # CLOSED, ERROR: dropped, too big, heartbeat failed
                reason = str(msg.data) if msg.data is not None else "connection lost"
                code = getattr(msg.data, "code", None) or ws.close_code or 1006
                self._remote_end(int(code), reason)
                return

    def terminate(self, reason: Any) -> None:
        """Close as the base class does, and leave the handler's books."""
        super().terminate(reason)
        if self._handler is not None:
            self._handler._forget(self)


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
        mailbox_size: each connection's mailbox bound (0: unbounded); a full
            one raises ``MailboxFull`` at the worker writing to it.
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
        mailbox_size: int = 0,
        high_watermark: int = 64,
        low_watermark: int = 16,
    ) -> None:
        self._workers = Workers(worker, pool, required=True)
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
        self._conn_mailbox = mailbox_size
        self._conns: set[WSConnection] = set()
        self._quiescing = False  # node.stop() has begun: no new connections
        self._gone: asyncio.Future[None] | None = None  # ...and they have all ended
        self._pump = Pump()
        self._mk_state = DEAD  # until spawned: answer 503
        self._stats = {"accepted": 0, "refused_origin": 0, "no_worker": 0}
        mark_coroutine_function(self)  # aiohttp takes it as an async handler

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        """Upgrade one request and serve the connection until it closes (aiohttp calls this)."""
        if self._mk_state != RUNNING or self._quiescing:
            return web.Response(status=503, text="503 Service Unavailable")
        if self.origins is not None and request.headers.get("Origin") not in self.origins:
            self._stats["refused_origin"] += 1
            return web.Response(status=403, text="403 Forbidden: origin not allowed")
        ws = web.WebSocketResponse(
            heartbeat=self.heartbeat,
            max_msg_size=self.max_message + 1,  # aiohttp's limit is exclusive
            compress=self.compress,
        )
        async with asyncio.timeout(self.handshake_timeout):
            await ws.prepare(request)
        worker = self._workers.pick(self._mk_node, self._mk_parent_proc)
        if worker is None or self._mk_state != RUNNING:
            self._stats["no_worker"] += 1
            await ws.close(code=1013, message=b"no worker")  # try again later
            return ws
        conn = WSConnection(ws, request, **self._conn_options)
        try:
            self._mk_node._spawn_meta_now(conn, self._mk_parent_proc, self._conn_mailbox)
        except MetakitError:  # the node is stopping
            await ws.close(code=1001)
            return ws
        conn._handler = self
        conn._pump = self._pump  # one pump serves every connection: less to touch per write
        self._conns.add(conn)
        self._stats["accepted"] += 1
        info = WebRequest(request)
        conn._connected(worker, request.remote, info)
        try:
            await conn._serve()
            if conn._closing is not None:
                # Our close frame first: aiohttp would close with 1000 once we return.
                await asyncio.shield(conn._closing)
        finally:
            # Cancelled (the client left, with handler_cancellation) or done.
            if conn._mk_state == RUNNING and conn._open:
                conn._remote_end(1006, "connection lost")
        return ws

    def terminate(self, reason: Any) -> None:
        """End every connection with this handler's reason."""
        ending = Signal(self._mk_alias, self._mk_parent_proc._mk_pid, reason, forced=True)
        for conn in list(self._conns):
            conn._mk_signal(ending)

    def _mk_quiesce(self) -> asyncio.Future[None] | None:
        # node.stop(): a WebSocket is never done on its own (and a web server's
        # graceful close waits for its handler). Going away (1001) now, while
        # the workers still run: the node waits until they have had their
        # WSDisconnect and the connections have ended.
        self._quiescing = True
        if not self._conns:
            return None
        self._gone = self._mk_loop.create_future()
        self.terminate("shutdown")
        return self._gone

    def _forget(self, conn: WSConnection) -> None:
        self._conns.discard(conn)
        if not self._conns and self._gone is not None and not self._gone.done():
            self._gone.set_result(None)

    def statistics(self) -> Mapping[str, int]:
        """A snapshot of the counters: ``accepted``, ``refused_origin``,
        ``no_worker``, and open ``connections``."""
        counters = dict(self._stats)
        counters["connections"] = len(self._conns)
        return MappingProxyType(counters)

    def handle_inspect(self) -> dict[str, str]:
        """Open connections and counters."""
        info = {k: str(v) for k, v in self._stats.items()}
        info["connections"] = str(len(self._conns))
        return info
