"""WebSocketClient: an outgoing WebSocket (the ``websockets`` library) as a meta-process."""

from __future__ import annotations

import asyncio
import random
import ssl as _ssl
from collections.abc import Coroutine, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from .._state import RUNNING
from ..mailbox import Signal
from .connection import WSConnectionBase

__all__ = ["Backoff", "WebSocketClient"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays between reconnection attempts: ``initial``, doubling up to ``maximum``.

    Attributes:
        initial: the first delay, in seconds.
        maximum: the longest delay.
        factor: how much each delay grows.
        jitter: a random spread (a fraction of each delay), so many clients
            do not reconnect in step.
    """

    initial: float = 0.1
    maximum: float = 5.0
    factor: float = 2.0
    jitter: float = 0.1

    def delays(self) -> Iterator[float]:
        """An endless sequence of delays."""
        delay = self.initial
        while True:
            yield delay * (1 + random.uniform(-self.jitter, self.jitter))
            delay = min(delay * self.factor, self.maximum)


class WebSocketClient(WSConnectionBase):
    """Connect to ``url``; the parent gets the same messages as a server's worker.

    ::

        conn = await self.spawn_meta(WebSocketClient("ws://127.0.0.1:8080/ws", codec="json"))
        self.send(conn, WSMessage(conn, {"hello": "world"}))

    Reconnecting: with ``reconnect=Backoff(...)``, a dropped connection is
    reported (``WSDisconnect``), then retried after each delay until it is
    back, and reported again (``WSConnect``, same Alias). While it is down,
    messages sent to it wait in its mailbox, in order, and go out once it is
    back; the mailbox is bounded (``mailbox_size``, 1000 by default), so a
    sender gets ``MailboxFull`` rather than memory growing without end.
    ``send_exit(conn, ...)`` while it is down stops the retries.

    Args:
        url: ``ws://`` or ``wss://`` URL.
        codec: None (``str``/``bytes``) or ``"json"``.
        headers: extra headers for the upgrade request.
        ssl: an ``ssl.SSLContext`` for ``wss://``.
        reconnect: a :class:`Backoff` to reconnect after a drop; None: end
            when the connection ends.
        max_message: the largest message accepted (bigger: closed with 1009).
        open_timeout: seconds for the connection and the handshake.
        ping_interval: seconds between pings (None: no pings).
        mailbox_size: the bound of this meta's mailbox.
        high_watermark: stop reading when the parent's mailbox holds more than this.
        low_watermark: read again when it is down to about this many.

    Error handling:
        The first connection's errors (``OSError``, ``TimeoutError``,
        ``websockets.exceptions.InvalidStatus`` for a refused upgrade...)
        raise at ``spawn_meta``; later ones are retried under ``reconnect``.
    """

    def __init__(
        self,
        url: str,
        *,
        codec: str | None = None,
        headers: Mapping[str, str] | None = None,
        ssl: _ssl.SSLContext | None = None,
        reconnect: Backoff | None = None,
        max_message: int = 1 << 20,
        open_timeout: float = 10.0,
        ping_interval: float | None = 20.0,
        mailbox_size: int = 1000,
        high_watermark: int = 64,
        low_watermark: int = 16,
    ) -> None:
        super().__init__(codec=codec, high_watermark=high_watermark, low_watermark=low_watermark)
        self.url = url
        self._headers = dict(headers or {})
        self._ssl = ssl
        self.reconnect = reconnect
        self._max_message = max_message
        self._open_timeout = open_timeout
        self._ping_interval = ping_interval
        self.mailbox_size = mailbox_size
        self._ws: ClientConnection | None = None
        self._closing_here = False  # this side closed it: no reconnecting
        self.connects = 0

    async def init(self) -> None:
        """Connect; errors raise at ``spawn_meta``."""
        await self._connect()

    async def _connect(self) -> None:
        self._ws = await connect(
            self.url,
            additional_headers=self._headers,
            ssl=self._ssl,
            max_size=self._max_message,
            open_timeout=self._open_timeout,
            ping_interval=self._ping_interval,
        )
        self.connects += 1
        self._connected(self._mk_parent_proc, self._ws.remote_address, None)

    async def start(self) -> None:
        """Read; after a drop, reconnect under ``reconnect``, else wait to be ended."""
        while True:
            await self._read()
            backoff = self.reconnect
            if backoff is None or self._closing_here or self._mk_state != RUNNING:
                await asyncio.Future()  # lingering: ended once the parent saw WSDisconnect
                return
            for delay in backoff.delays():
                await asyncio.sleep(delay)
                try:
                    await self._connect()
                except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
                    self.log.info("reconnecting to %s failed: %r", self.url, exc)
                    continue
                break
            self._down = False
            if self._writing is None:
                self._mk_unhold()  # what was sent while it was down goes out now

    async def _read(self) -> None:
        ws = self._ws
        assert ws is not None
        try:
            async for message in ws:
                try:
                    data = self._decode(message)
                except orjson.JSONDecodeError:
                    self._open_close(1007, "invalid JSON")
                    self._remote_end(1007, "invalid JSON")
                    return
                wait = self._received(data)
                if wait is not None:
                    await wait
        except ConnectionClosed:
            pass
        if self._open or not self._disconnected:
            self._remote_end(ws.close_code or 1006, ws.close_reason or "connection lost")

    def _remote_end(self, code: int, reason: Any) -> None:
        if self.reconnect is None or self._closing_here or self._mk_state != RUNNING:
            super()._remote_end(code, reason)
            return
        # Down, but coming back: tell the parent, hold the writes until then.
        self._open = False
        self._down = True
        self._disconnect(code, reason)
        self._mk_hold()

    def _mk_trap(self, sig: Signal) -> Any:
        self._closing_here = True
        return super()._mk_trap(sig)

    def _mk_signal(self, sig: Signal) -> None:
        if sig.link and sig.reason == "normal":
            return  # as for any meta: a link's "normal" changes nothing
        if self._down and self._mk_state == RUNNING and sig.reason != "kill":
            # Down and waiting to reconnect: an exit stops that at once.
            self._closing_here = True
            self._mk_end(sig.reason)
        else:
            super()._mk_signal(sig)

    def _send(self, data: Any) -> Coroutine[Any, Any, Any]:
        assert self._ws is not None
        if self._json:
            return self._ws.send(data, text=True)
        return self._ws.send(data)

    def _send_text(self, data: bytes) -> Coroutine[Any, Any, Any]:
        assert self._ws is not None
        return self._ws.send(data, text=True)

    def _close(self, code: int, reason: str) -> None:
        assert self._ws is not None
        name = f"metakit ws close {self._mk_alias!r}"
        self._mk_node._linger(self._ws.close(code, reason), name)

    def _drop(self) -> None:
        if self._ws is not None:
            self._ws.transport.abort()

    def terminate(self, reason: Any) -> None:
        """Close the socket; also stops reconnecting."""
        self._closing_here = True
        super().terminate(reason)
