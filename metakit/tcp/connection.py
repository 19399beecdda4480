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

TLS on a server's connection: the server listens without TLS, so a
connection is spawned, and holds its ``max_connections`` slot, when the
socket is accepted; it then runs the handshake itself (``loop.start_tls``,
with the server's deadline, in a Task of its own) and opens, sending the
worker its ``TCPConnect``, only once the handshake is done. A handshake
that fails or times out ends the meta before the worker has heard of it:
no ``TCPConnect``, no ``TCPDisconnect``. The plain accept path has neither
the Task nor the extra calls.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from ..connection import StreamConnection
from ..framing import Framer, Raw
from ..ids import PID
from .messages import TCPConnect, TCPDisconnect, TCPMessage

if TYPE_CHECKING:
    from .server import TCPServer

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


@dataclass(frozen=True, slots=True)
class _ServerTLS:
    """How a TLS server's connections complete their handshake (one per server).

    Attributes:
        context: the server's ``SSLContext``.
        timeout: seconds the handshake may take, from the accept.
        serve: called once it is done: who serves the connection (None: nobody,
            refuse it).
        failed: called when it failed or timed out (the server counts it).
    """

    context: ssl.SSLContext
    timeout: float
    serve: Callable[[TCPConnection], PID | None]
    failed: Callable[[BaseException], None]


class _BeforeTLS(asyncio.Protocol):
    """The socket's protocol from the accept until ``start_tls`` takes it over.

    The loop may read before the handshake's Task first runs (uvloop starts
    reading as ``connection_made`` returns): that first read (the ClientHello)
    is kept, reading paused, and handed to the TLS layer ahead of anything
    read after it. An EOF or a close this early ends the handshake at once.
    """

    __slots__ = ("_kept", "ended", "transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self._kept: list[bytes] = []
        self.ended: Exception | None = None
        """Set if the peer closed (or half-closed) before the handshake began."""

    def data_received(self, data: bytes) -> None:
        self._kept.append(data)
        self.transport.pause_reading()  # start_tls resumes it

    def eof_received(self) -> bool:
        self.ended = ConnectionResetError("EOF before the TLS handshake")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended = exc or ConnectionResetError("closed before the TLS handshake")

    def hand_over(self) -> None:
        """Give what was read to the TLS layer, now the socket's protocol.

        Scheduled just before ``start_tls`` runs, so it runs right after it has
        set its protocol and before any later read (callbacks run in order):
        still unwrapped, the TLS layer only buffers it.
        """
        protocol = self.transport.get_protocol()
        if protocol is self or self.transport.is_closing():
            return  # start_tls did not get that far
        # Both loops' TLS layers are buffered protocols (uvloop's is not a
        # subclass): fill their buffer as a transport would.
        tls = cast(asyncio.BufferedProtocol, protocol)
        for data in self._kept:
            view = memoryview(data)
            while view:
                buffer = memoryview(tls.get_buffer(len(view)))
                n = min(len(buffer), len(view))
                buffer[:n] = view[:n]
                tls.buffer_updated(n)
                view = view[n:]
        self._kept.clear()


class _BeforeOpen(asyncio.Protocol):
    """The TLS layer's application protocol until the connection is open.

    The stdlib loop passes on application data read in the same chunk as
    the client's last handshake flight at once, before ``start_tls`` has
    returned (uvloop a loop turn later); an EOF or a close may follow. They
    are kept here and replayed in order once the connection is open, and
    anything after that is passed on (a ``connection_lost`` may have been
    scheduled for this object already). At most one read's worth is kept:
    the handshake's Task was woken before that read was passed on.
    """

    __slots__ = ("_conn", "_kept")

    def __init__(self) -> None:
        self._conn: TCPConnection | None = None
        self._kept: list[tuple[str, tuple[Any, ...]]] = []

    def _pass(self, name: str, *args: Any) -> Any:
        if self._conn is None:
            self._kept.append((name, args))
            return None
        return getattr(self._conn, name)(*args)

    def data_received(self, data: bytes) -> None:
        self._pass("data_received", data)

    def eof_received(self) -> bool | None:
        return self._pass("eof_received")  # type: ignore[no-any-return]

    def connection_lost(self, exc: Exception | None) -> None:
        self._pass("connection_lost", exc)

    def pause_writing(self) -> None:
        self._pass("pause_writing")

    def resume_writing(self) -> None:
        self._pass("resume_writing")

    def hand_over(self, conn: TCPConnection) -> None:
        """Replay what was kept to ``conn``, now open, and pass it everything after."""
        self._conn = conn
        kept, self._kept = self._kept, []
        for name, args in kept:
            getattr(conn, name)(*args)


class TCPConnection(StreamConnection, asyncio.Protocol):
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

    __slots__ = (
        "_handshake",
        "_nbytes",
        "_nwrites",
        "_server",
        "_transport",
        "local",
    )

    message_type = TCPMessage

    def __init__(self, framing: Framer[Any] | None = None, **options: Any) -> None:
        super().__init__(framing, **options)  # idle_timeout, high_watermark, low_watermark
        self._nwrites = 0  # written by handle_message below (writes_counted)
        self._nbytes = 0
        self._transport: asyncio.Transport | None = None
        # A server's: who serves the connection (None: not now; the server has
        # closed it, or opens it once its TLS handshake is done).
        self._server: TCPServer | None = None  # the server that accepted it
        self._handshake: asyncio.Task[None] | None = None  # a TLS handshake under way
        self.local: Any = None

    # -- the protocol: asyncio calls these (data_received and pause_writing/
    # resume_writing are Connection's) ------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """The transport is connected: a server's connection is spawned here."""
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self._transport = cast(asyncio.Transport, transport)
        self.peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        server = self._server
        if server is not None:
            # A server's connections share its address: one tuple for them all
            # (uvloop makes a new one per call: 146 bytes per connection).
            if local == server._local:
                local = server._local
            else:
                server._local = local
        self.local = local
        framer = self.framer
        if isinstance(framer, Raw) and hasattr(transport, "max_size"):
            # The stdlib loop's recv size (256 KiB): read no more than a frame,
            # rather than read 256 KiB and cut it into copies.
            transport.max_size = framer.read_size
        worker = None
        if server is not None:
            if server._tls is not None:
                server._accept_tls(self)  # opened after its TLS handshake, or refused
                return
            worker = server._accept(self)
            if worker is None:  # refused and closed
                return
        self.open(worker, TCPConnect(self.id, self.peer, self.local))

    def _start_tls(self, tls: _ServerTLS) -> None:
        """A TLS server's connection, spawned and holding its slot: run the handshake."""
        assert self._transport is not None
        raw = _BeforeTLS(self._transport)
        self._transport.set_protocol(raw)
        self._handshake = self.create_task(
            self._tls_handshake(tls, raw), name=f"metakit TLS handshake {self.id!r}"
        )

    async def _tls_handshake(self, tls: _ServerTLS, raw: _BeforeTLS) -> None:
        loop = asyncio.get_running_loop()
        opening = _BeforeOpen()
        try:
            if raw.ended is not None:
                raise raw.ended
            loop.call_soon(raw.hand_over)  # right after start_tls has set its protocol
            secure = await loop.start_tls(
                raw.transport,
                opening,
                tls.context,
                server_side=True,
                ssl_handshake_timeout=tls.timeout,
            )
            if secure is None:  # the socket closed as the handshake ended
                raise ConnectionResetError("closed during the TLS handshake")
        except Exception as exc:
            # No ClientHello, a bad one, the timeout, the peer gone: the socket
            # is closed (by start_tls, or terminate below) and the worker never
            # hears of the connection.
            self._handshake = None
            self.log.debug("TLS handshake with %s failed: %r", self.peer, exc)
            tls.failed(exc)
            self.exit(exc)
            return
        self._handshake = None
        self._transport = secure
        worker = tls.serve(self)
        if worker is None:  # nobody left to serve it
            self.exit("refused")
            return
        secure.set_protocol(self)
        self.open(worker, TCPConnect(self.id, self.peer, self.local))
        opening.hand_over(self)

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
        handshake = self._handshake
        if handshake is not None:  # ended during its TLS handshake: stop that first
            self._handshake = None
            handshake.cancel()
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
            data = message.data if self.raw_framing else self.framer.encode(message.data)
            self._transport.write(data)  # type: ignore[union-attr]
            self._nbytes += len(data)
            self._nwrites += 1
        else:
            super().handle_message(sender, message)

    def writes_counted(self) -> tuple[int, int]:
        """What :meth:`handle_message` wrote: ``(messages, bytes)``."""
        return (self._nwrites, self._nbytes)

    def write(self, data: Any) -> int:
        """Write one frame (encoded by the framer) to the socket."""
        if not self.raw_framing:
            data = self.framer.encode(data)
        self._transport.write(data)  # type: ignore[union-attr]
        return len(data)

    def handle_inspect(self) -> dict[str, str]:
        """Connection's fields, the local address, the framing and the idle timeout."""
        info = super().handle_inspect()
        info["local"] = str(self.local)
        info["framing"] = repr(self.framer)
        info["idle_timeout"] = str(self.idle_timeout)
        return info
