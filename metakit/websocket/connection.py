"""What server and client WebSocket connections share: a thin adapter on
:class:`metakit.connection.Connection` (which owns the lifecycle and the
back-pressure; read its theory of operation first).

A connection's read loop (aiohttp's request task on the server side, the
meta's main loop on the client side) feeds one ``WSMessage`` per message to
the worker. Pausing reading means the loop stops calling ``receive``, so the
library's own flow control pauses the socket.

Writes are plain handlers: the library's send coroutine is driven by hand
(:mod:`metakit._eager`) and almost always completes at once; when it must
wait for the socket to drain, the connection holds its writes
(``pause_writing``) until it has, so a bounded mailbox pushes back on the
writer with ``MailboxFull``.

Close codes: ``send_exit(conn, "normal")`` closes with 1000 after the
messages queued before it, ``"shutdown"`` with 1001, an exception reason
with 1011, ``"kill"`` drops the connection (1006). The peer's close frame
reports its code; an oversized message is 1009, undecodable JSON 1007.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import orjson

from .._eager import Pump
from ..connection import Connection
from ..connections import broadcast
from .messages import WSDisconnect, WSMessage

__all__ = ["WSConnectionBase", "broadcast", "close_code"]


def close_code(reason: Any) -> int:
    """The close code for an exit reason: 1000, 1001, or 1011."""
    if reason == "normal":
        return 1000
    if reason in ("shutdown", "closed"):
        return 1001
    return 1011


class WSConnectionBase(Connection):
    """What server and client WebSocket connections share (not used directly).

    Args:
        codec: None (str and bytes as they are) or ``"json"`` (orjson both ways).
        high_watermark: stop reading when the worker's mailbox holds more
            messages than this.
        low_watermark: read again when it is down to about this many.
    """

    # Slots: a broadcast touches every connection; compact objects, no dict lookups.
    __slots__ = (
        "_close_msg",
        "_code",
        "_json",
        "_pump",
        "_resume",
        "_writing",
        "codec",
        "prepare_key",
    )

    message_type = WSMessage

    def __init__(
        self, *, codec: str | None = None, high_watermark: int = 64, low_watermark: int = 16
    ) -> None:
        if codec not in (None, "json"):
            raise ValueError(f"codec must be None or 'json', not {codec!r}")
        super().__init__(high_watermark=high_watermark, low_watermark=low_watermark)
        self.codec = codec
        self._json = codec == "json"
        self.prepare_key = codec
        self._code: int | None = None  # the close code, once known
        self._close_msg: str | None = None  # a close frame's reason, when not the exit reason
        self._resume: asyncio.Future[None] | None = None  # the read loop waits on it
        self._writing: asyncio.Task[Any] | None = None
        self._pump = Pump()

    # -- the library side (subclasses) ---------------------------------------

    def _send_frame(self, payload: Any, text: bool) -> Coroutine[Any, Any, Any]:
        """The library's send coroutine for one message (``text``: UTF-8 bytes)."""
        raise NotImplementedError

    def _close(self, code: int, reason: str) -> None:
        """Start a clean close (a close frame); must not block."""
        raise NotImplementedError

    def _drop(self) -> None:
        """Drop the connection at once (no close frame)."""
        raise NotImplementedError

    # -- the Connection hooks --------------------------------------------------------

    def set_reading(self, on: bool) -> None:
        """Let the read loop go on, or make it wait before its next receive."""
        if on:
            self._release_reader()
        elif self._resume is None:
            self._resume = asyncio.get_running_loop().create_future()

    def close_transport(self, reason: Any, abort: bool) -> None:
        """A close frame with the reason's code (see the module docstring), or a drop."""
        if self._code is None:
            self._code = 1006 if reason == "kill" else close_code(reason)
        if abort:
            self._drop()
        else:
            message = self._close_msg
            if message is None:
                message = "" if self._code == 1011 else str(reason)
            self._close(self._code, message)
        self._release_reader()

    def disconnect_message(self, reason: Any) -> WSDisconnect:
        """``WSDisconnect(conn, code, reason)``."""
        code = self._code if self._code is not None else close_code(reason)
        return WSDisconnect(self.id, code, reason)

    # -- reading -----------------------------------------------------------------

    def _received(self, data: str | bytes) -> asyncio.Future[None] | None:
        """One message read: decode it and feed it; what to await before the next
        (None: read on). Undecodable JSON closes with 1007."""
        if self._json:
            try:
                value = orjson.loads(data)
            except orjson.JSONDecodeError:
                self._ending(1007, "invalid JSON", "invalid JSON")
                return None
        else:
            value = data
        self.feed_one(value, len(data))
        return self._resume

    def _release_reader(self) -> None:
        resume, self._resume = self._resume, None
        if resume is not None and not resume.done():
            resume.set_result(None)

    def _remote_close(self, code: int, reason: Any) -> None:
        """The peer (or the library) ended it: tell the worker, linger until it knows."""
        if self.writable:  # else this side closed first, with its own code
            self._code = code
        self.lost(reason)

    def _ending(self, code: int, close_msg: str, reason: Any) -> None:
        """This side ends it for a protocol reason: a close frame with ``code``."""
        self._code = code
        self._close_msg = close_msg
        self.finish(reason)

    # -- writing -------------------------------------------------------------------

    def write(self, data: Any) -> int:
        """Send one message on the socket (encoded as JSON with that codec)."""
        text = True
        if self._json:
            payload: Any = self._payload(data)
        elif data.__class__ is str:
            payload = data.encode()
        elif data.__class__ is bytes:
            payload = data
            text = False
        else:
            payload = self._payload(data)
            text = False
        if payload is None:
            return 0
        return self._send(payload, text)

    def prepare(self, data: Any) -> bytes | None:
        """For a broadcast: ``data`` encoded once (JSON, or a str as UTF-8)."""
        if self._json:
            return orjson.dumps(data)
        return data.encode() if data.__class__ is str else None

    def write_prepared(self, data: Any, prepared: Any) -> int:
        """For a broadcast: write ``data``, already encoded as ``prepared`` text if not None."""
        return self.write(data) if prepared is None else self._send(prepared, True)

    def _send(self, payload: Any, text: bool) -> int:
        """Send one encoded message; the bytes sent."""
        try:
            # The library's send coroutine, run by hand (metakit._eager): it
            # finishes at once unless the socket must drain first.
            pending = self._pump.run(self._send_frame(payload, text))
        except Exception as exc:  # the socket is gone under us
            self._remote_close(1006, str(exc) or type(exc).__name__)
            return 0
        if pending is not None:
            self._writing = pending
            self.pause_writing()  # until the socket has drained
            pending.add_done_callback(self._written)
        return len(payload)

    def _payload(self, data: Any) -> Any:
        """Encode (JSON) or check a message to send; None after closing on an unsendable one."""
        try:
            payload = orjson.dumps(data) if self._json else data
            if not isinstance(payload, str | bytes | bytearray | memoryview):
                kind = type(data).__name__
                raise TypeError(f"a WebSocket message is str or bytes, not {kind}")
        except (TypeError, orjson.JSONEncodeError) as exc:
            # The worker's mistake: say so, and close rather than leave the peer waiting.
            self.log.error("cannot send %r: %s", data, exc)
            self._ending(1011, "unsendable message", exc)
            return None
        return payload

    def _written(self, task: asyncio.Task[Any]) -> None:
        self._writing = None
        if not task.cancelled() and task.exception() is not None:
            self._remote_close(1006, str(task.exception()))
        self.resume_writing()

    def terminate(self, reason: Any) -> None:
        """Close (a close frame; dropped on ``"kill"``) and send WSDisconnect, each once."""
        super().terminate(reason)
        if self._writing is not None:
            self._writing.cancel()
        self._release_reader()

    def handle_inspect(self) -> dict[str, str]:
        """Connection's fields and the codec."""
        info = super().handle_inspect()
        info["codec"] = str(self.codec)
        return info
