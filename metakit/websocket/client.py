"""WebSocketClient: an outgoing WebSocket (the ``websockets`` library) as a meta-process."""

from __future__ import annotations

import asyncio
import random
import ssl as _ssl
from collections.abc import Coroutine, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from ..connection import ConnState
from .connection import WSConnectionBase
from .messages import WSConnect

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
        self._code = self._close_msg = None
        self.peer = self._ws.remote_address
        self.open(None, WSConnect(self.id, self.peer, None))

    async def start(self) -> None:
        """Read; after a drop, reconnect under ``reconnect``, else wait to be ended."""
        while True:
            await self._read()
            backoff = self.reconnect
            if backoff is None or self.state is not ConnState.INTERRUPTED:
                await asyncio.Future()  # lingering: ended once the parent saw WSDisconnect
                return
            for delay in backoff.delays():
                await asyncio.sleep(delay)
                try:
                    await self._connect()  # what was sent while it was down goes out now
                except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
                    self.log.info("reconnecting to %s failed: %r", self.url, exc)
                    continue
                break

    async def _read(self) -> None:
        ws = self._ws
        assert ws is not None
        try:
            async for message in ws:
                wait = self._received(message)
                while wait is not None:  # the parent is behind: read no more until it catches up
                    await wait
                    wait = self._resume
                if not self.writable:
                    return
        except ConnectionClosed:
            pass
        if self.state is ConnState.OPEN:
            self._remote_close(ws.close_code or 1006, ws.close_reason or "connection lost")

    def _remote_close(self, code: int, reason: Any) -> None:
        if self.reconnect is None or self.state is not ConnState.OPEN or not self.alive:
            super()._remote_close(code, reason)
            return
        # Down, but coming back: tell the parent, hold the writes until then.
        self._code = code
        self.interrupted(reason)

    def _send_frame(self, payload: Any, text: bool) -> Coroutine[Any, Any, Any]:
        assert self._ws is not None
        return self._ws.send(payload, text=text)

    def _close(self, code: int, reason: str) -> None:
        assert self._ws is not None
        self.create_task(self._ws.close(code, reason))

    def _drop(self) -> None:
        if self._ws is not None:
            self._ws.transport.abort()
