"""TCPConnection: one TCP connection as a meta-process, a thin adapter on
:class:`metakit.connection.Connection` (which owns the lifecycle and the
back-pressure; read its theory of operation first).

The connection meta is its own ``asyncio.Protocol``: the base class's
``data_received`` runs each read through the framer and hands the frames to
the worker as ``TCPMessage``; ``pause_writing``/``resume_writing`` are the
base class's too. The meta has no main-loop Task: the transport's callbacks
drive it, so a connection costs a meta and a transport, nothing more.

Why ``data_received`` and not ``BufferedProtocol``: the node tunes malloc
once per process (``metakit._malloc``), after which a fresh stdlib-loop
server reads at full speed from the start; and then the plain protocol is
the cheaper one on both loops. uvloop reads into its own buffer and hands
over ``bytes`` without a Python ``get_buffer`` call, and ``Line`` keeps a
whole-line read's frame as one slice of those bytes (``bench/tcp_echo.py``:
~0.3 us less per round trip on uvloop, the same on the stdlib loop).

What is TCP's own: a half-close (EOF) keeps the write side open until the
worker has answered what it read (a client that sends a request and
half-closes still gets its answer), and ``"kill"`` is an RST.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable
from typing import Any, cast

from ..connection import Connection
from ..framing import Framer, Raw
from ..ids import PID
from .messages import TCPConnect, TCPDisconnect, TCPMessage

__all__ = ["TCPConnection"]


def _reset(transport: asyncio.Transport) -> None:
    """Abort with an RST: SO_LINGER 0 makes close() reset instead of sending a FIN,
    so the peer can tell a killed connection from a closed one."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    transport.abort()


class TCPConnection(Connection, asyncio.Protocol):
    """A TCP connection as a meta-process; its Alias is the connection id.

    You do not create these: :class:`~metakit.tcp.TCPServer` makes one per
    accepted connection, and :class:`~metakit.tcp.TCPClient` is one. The
    worker receives ``TCPConnect``, ``TCPMessage``\\ s and exactly one
    ``TCPDisconnect``; it writes with ``send(conn, TCPMessage(conn, data))``.

    Args:
        framing: a framer used as a template (cloned); default ``Raw()``.
        idle_timeout: end with reason ``"idle"`` after this many seconds
            without a read or a write.
        high_watermark: pause reading when the worker's mailbox holds more
            messages than this.
        low_watermark: resume when it is down to about this many.
    """

    __slots__ = ("_accept", "_encode", "_idle", "_nbytes", "_nwrites", "_transport", "local")

    message_type = TCPMessage

    def __init__(
        self,
        framing: Framer[Any] | None = None,
        *,
        idle_timeout: float | None = None,
        high_watermark: int = 64,
        low_watermark: int = 16,
    ) -> None:
        framer = (framing or Raw()).clone()
        super().__init__(
            framing=framer,
            idle_timeout=idle_timeout,
            high_watermark=high_watermark,
            low_watermark=low_watermark,
        )
        # Raw frames go to the socket as they are: skip a copy per write.
        self._encode = None if isinstance(framer, Raw) else framer.encode
        self._idle = idle_timeout is not None
        self._nwrites = 0  # written by handle_message below (writes_counted)
        self._nbytes = 0
        self._transport: asyncio.Transport | None = None
        # A server's: who serves the connection (None: refuse it).
        self._accept: Callable[[TCPConnection], PID | None] | None = None
        self.local: Any = None

    # -- the protocol: asyncio calls these (data_received and pause_writing/
    # resume_writing are Connection's) ------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """The transport is connected: a server's connection is spawned here."""
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self._transport = cast(asyncio.Transport, transport)
        self.peer = transport.get_extra_info("peername")
        self.local = transport.get_extra_info("sockname")
        framer = self.framer
        if isinstance(framer, Raw) and hasattr(transport, "max_size"):
            # The stdlib loop's recv size (256 KiB): read no more than a frame,
            # rather than read 256 KiB and cut it into copies.
            transport.max_size = framer.read_size
        worker = None
        if self._accept is not None:
            worker = self._accept(self)
            if worker is None:
                transport.close()
                return
        self.open(worker, TCPConnect(self.id, self.peer, self.local))

    def eof_received(self) -> bool:
        """The peer half-closed: keep writing until the worker has answered what it read."""
        self.input_ended()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        """The transport is closed, by us or by the peer."""
        self.lost(exc if exc is not None else "closed")

    # -- the Connection hooks -----------------------------------------------------------

    def set_reading(self, on: bool) -> None:
        """Resume or pause the transport."""
        assert self._transport is not None
        if on:
            self._transport.resume_reading()
        else:
            self._transport.pause_reading()

    def close_transport(self, reason: Any, abort: bool) -> None:
        """Close after the buffered writes (a FIN), or reset at once."""
        transport = self._transport
        if transport is not None:
            if abort:
                _reset(transport)
            else:
                transport.close()

    def disconnect_message(self, reason: Any) -> TCPDisconnect:
        """``TCPDisconnect(conn, reason)``."""
        return TCPDisconnect(self.id, reason)

    def handle_message(self, sender: PID, message: Any) -> None:
        """Write ``TCPMessage(conn, data)`` to the socket (anything else, and a write
        after the close, goes to Connection's ``handle_message``).

        Connection's write path with :meth:`write` inlined: a call less per
        write, the cost of one echoed line on the stdlib loop
        (``bench/tcp_echo.py``); ``broadcast`` takes the original.
        """
        if message.__class__ is TCPMessage and self.writable:
            data = message.data if self._encode is None else self._encode(message.data)
            self._transport.write(data)  # type: ignore[union-attr]
            self._nbytes += len(data)
            self._nwrites += 1
            if self._idle:
                self.touch()
        else:
            super().handle_message(sender, message)

    def writes_counted(self) -> tuple[int, int]:
        """What :meth:`handle_message` wrote: ``(messages, bytes)``."""
        return (self._nwrites, self._nbytes)

    def write(self, data: Any) -> int:
        """Write one frame (encoded by the framer) to the socket."""
        if self._encode is not None:
            data = self._encode(data)
        self._transport.write(data)  # type: ignore[union-attr]
        return len(data)

    def handle_inspect(self) -> dict[str, str]:
        """Connection's fields, the local address and the framing."""
        info = super().handle_inspect()
        info["local"] = str(self.local)
        info["framing"] = repr(self.framer)
        return info
