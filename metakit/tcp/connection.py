"""TCPConnection: one TCP connection as a meta-process.

Theory of operation
-------------------

A small ``asyncio.BufferedProtocol`` (:class:`_Protocol`) reads into one
reused buffer (no allocation per read, DESIGN.md §6) and hands each read to
the connection meta, which runs it through its framer and appends one
``TCPMessage`` per frame to the worker's mailbox. The meta has no main-loop
Task: the transport's callbacks drive it, so a connection costs a protocol,
a meta and a transport, nothing more.

Who closes what:

* the **worker** ends a connection with ``send_exit(conn, "normal")`` (after
  the writes queued before it; the transport flushes, then closes) or
  ``"kill"`` (an RST at once). It gets ``TCPDisconnect`` either way.
* the **peer** or a limit ends it: EOF, reset, ``idle_timeout``, a framing
  error.
* Either way (but ``"kill"``) the transport is closed, the worker gets
  ``TCPDisconnect``, and the meta stays routable until the worker has handled
  that message, discarding writes meanwhile. So a worker never gets
  ``NoProcess`` for writing to a connection whose disconnect it has not seen.
* the **parent** (or the server) ending ends the connection with its reason.
  A pool worker ending closes the connections it served.

On EOF the write side stays open until the worker has handled every message
read before it, and the replies it sent meanwhile are flushed: a client that
sends a request and half-closes still gets its answer.

Back-pressure: when the worker's mailbox holds more than ``high_watermark``
messages, reading pauses and a :class:`~metakit.mailbox.Notify` marker goes
into the worker's mailbox ``low_watermark`` messages from its end; reading
resumes when the worker gets there. A full bounded mailbox parks the frames
in the connection (reading paused) until the marker fires: nothing is lost.
When the transport's write buffer passes its high-water mark, the meta stops
taking writes from its mailbox (``Mailbox._mk_hold``) until it drains.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, cast

from .._state import DEAD, RUNNING
from ..errors import FramingError
from ..framing import Framer, Raw
from ..ids import PID
from ..mailbox import IGNORE, Mailbox, Signal
from ..messages import Down
from ..meta import Meta
from .messages import TCPConnect, TCPDisconnect, TCPMessage

if TYPE_CHECKING:
    from .server import TCPServer

__all__ = ["TCPConnection"]

_READ_SIZE = 65536


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


class _Protocol(asyncio.BufferedProtocol):
    """The thin I/O adapter: every callback goes straight to the connection meta."""

    def __init__(self, owner: Any, read_size: int) -> None:
        self.owner = owner  # who makes the connection meta: a TCPServer, or a TCPClient itself
        self.conn: TCPConnection | None = None
        self.buffer = memoryview(bytearray(read_size))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.conn = self.owner._connection_made(self, transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        conn = self.conn
        if conn is not None:
            conn._on_data(self.buffer[:nbytes])

    def eof_received(self) -> bool:
        conn = self.conn
        return conn._on_eof() if conn is not None else False

    def connection_lost(self, exc: Exception | None) -> None:
        conn = self.conn
        if conn is not None:
            conn._on_lost(exc)

    def pause_writing(self) -> None:
        if self.conn is not None:
            self.conn._mk_hold()

    def resume_writing(self) -> None:
        if self.conn is not None:
            self.conn._mk_unhold()


class TCPConnection(Meta):
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

    _mk_eager = True  # its handler is a non-blocking write: run it at once when idle

    def __init__(
        self,
        framing: Framer[Any] | None = None,
        *,
        idle_timeout: float | None = None,
        high_watermark: int = 64,
        low_watermark: int = 16,
    ) -> None:
        if not 0 <= low_watermark < high_watermark:
            raise ValueError("need 0 <= low_watermark < high_watermark")
        self._framer: Framer[Any] = (framing or Raw()).clone()
        # Raw frames go to the socket as they are: skip a copy per write.
        self._encode = None if isinstance(self._framer, Raw) else self._framer.encode
        self._read_size = self._framer.max_length if isinstance(self._framer, Raw) else _READ_SIZE
        self._idle = idle_timeout
        self._high2 = 2 * high_watermark  # in mailbox entries (two per message)
        self._low = low_watermark
        self._transport: asyncio.Transport | None = None
        self._worker: Mailbox | None = None
        self._server: TCPServer | None = None
        self.peer: Any = None
        self.local: Any = None
        self._paused = False  # reading paused for back-pressure
        self._backlog: list[Any] = []  # frames a full worker mailbox refused
        self._pending_end: Any = None  # the peer is gone; end once the backlog is delivered
        self._eof = False
        self._closed = False  # the transport is closed or closing
        self._disconnected = False  # TCPDisconnect sent
        self._lingering = False
        self._last = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._dropped_writes = 0
        self._pauses = 0

    # -- setup -----------------------------------------------------------------

    def _attach(
        self, transport: asyncio.BaseTransport, worker: Mailbox, server: TCPServer | None
    ) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self._transport = cast(asyncio.Transport, transport)
        self._worker = worker
        self._server = server
        self.peer = transport.get_extra_info("peername")
        self.local = transport.get_extra_info("sockname")
        if worker is not self._mk_parent_proc:
            # A pool worker: the connection must close when it ends.
            self._mk_node._monitor(self, worker._mk_ident)
        if self._idle is not None:
            self._last = self._mk_loop.time()
            self._timer = self._mk_loop.call_later(self._idle, self._check_idle)
        worker._mk_deliver_system(
            self._mk_parent_proc._mk_pid, TCPConnect(self._mk_alias, self.peer, self.local)
        )

    @property
    def worker(self) -> PID | None:
        """The process that receives this connection's messages."""
        return self._worker._mk_ident if self._worker is not None else None  # type: ignore[return-value]

    # -- reading (the hot path) --------------------------------------------------

    def _on_data(self, data: memoryview) -> None:
        try:
            frames = self._framer.feed(data)
        except FramingError as exc:
            self._push(exc.frames)
            self._finish(exc)
            return
        if self._idle is not None:
            self._last = self._mk_loop.time()
        if not frames:
            return
        if self._backlog:
            self._backlog.extend(frames)
            return
        worker = self._worker
        assert worker is not None
        q = worker._mk_q
        sender = self._mk_parent_proc._mk_pid
        alias = self._mk_alias
        limit = worker._mk_limit
        for i, frame in enumerate(frames):
            if len(q) >= limit:  # full, or the worker is dead (limit -1)
                self._park(frames[i:])
                break
            q.append(sender)
            q.append(TCPMessage(alias, frame))
        else:
            i = len(frames)
        self._mk_out += i
        if not worker._mk_scheduled and q:
            worker._mk_scheduled = True
            worker._mk_kick()
        if len(q) > self._high2 and not self._paused:
            self._pause()

    def _push(self, frames: list[Any]) -> None:
        """Deliver frames outside the hot path (before an error ends the connection)."""
        if frames:
            self._backlog.extend(frames)
            self._flush()

    def _park(self, frames: list[Any]) -> None:
        assert self._worker is not None
        if self._worker._mk_state == DEAD:
            return  # the Down from our monitor (or the parent's exit) ends us
        self._backlog.extend(frames)
        self._pause()

    def _pause(self) -> None:
        assert self._worker is not None
        assert self._transport is not None
        if not self._paused:
            self._paused = True
            self._pauses += 1
            if not self._closed:
                self._transport.pause_reading()
        self._worker._mk_notify(self._resume, behind=self._low)

    def _resume(self) -> None:
        """Run by the worker's drain when it reaches our marker."""
        if self._mk_state != RUNNING or not self._flush():
            return
        if self._pending_end is not None:
            reason, self._pending_end = self._pending_end, None
            self._finish(reason)
            return
        if self._eof:
            self._mark_eof()
            return
        if self._paused:
            self._paused = False
            if not self._closed and not self._eof:
                assert self._transport is not None
                self._transport.resume_reading()

    def _flush(self) -> bool:
        """Move parked frames to the worker; False if some still wait (marker re-set)."""
        worker = self._worker
        assert worker is not None
        backlog = self._backlog
        sender = self._mk_parent_proc._mk_pid
        while backlog:
            if worker._mk_state == DEAD:
                backlog.clear()
                return False
            try:
                worker._mk_deliver(sender, TCPMessage(self._mk_alias, backlog[0]))
            except Exception:  # MailboxFull: wait for the worker to make room
                self._pause()
                return False
            backlog.pop(0)
            self._mk_out += 1
        return True

    def _on_eof(self) -> bool:
        # Keep the write side open: the worker may still answer what it read.
        self._eof = True
        if not self._backlog:  # else _resume does this once the backlog is delivered
            self._mark_eof()
        return True

    def _mark_eof(self) -> None:
        worker = self._worker
        if worker is None or not worker._mk_notify(self._eof_reached):
            self._eof_reached()

    def _eof_reached(self) -> None:
        # The worker has handled every message read before EOF; what it sent
        # meanwhile is queued here. Close after those writes, in order.
        if self._mk_state == RUNNING and not self._closed:
            self._mk_notify(self._close_after_eof)

    def _close_after_eof(self) -> None:
        self._finish("closed")

    def _on_lost(self, exc: Exception | None) -> None:
        if self._closed:
            return  # we closed it
        self._closed = True
        self._finish(exc if exc is not None else "closed")

    def _check_idle(self) -> None:
        self._timer = None
        if self._mk_state != RUNNING or self._closed:
            return
        assert self._idle is not None
        left = self._last + self._idle - self._mk_loop.time()
        if left > 0:
            self._timer = self._mk_loop.call_later(left, self._check_idle)
        else:
            self._finish("idle")

    def _finish(self, reason: Any) -> None:
        """End gracefully: close, tell the worker, linger until it has handled that."""
        if self._mk_state != RUNNING or self._lingering:
            return
        if self._backlog:
            self._pending_end = reason  # deliver what was read first
            return
        self._close_transport(abort=False)
        self._send_disconnect(reason)
        self._lingering = True
        worker = self._worker
        if worker is None or not worker._mk_notify(lambda: self._mk_end(reason)):
            self._mk_end(reason)

    # -- writing -------------------------------------------------------------------

    def handle_message(self, sender: PID, message: Any) -> None:
        """Write ``TCPMessage(conn, data)`` to the socket (others are logged)."""
        if message.__class__ is TCPMessage:
            if self._closed:
                self._dropped_writes += 1  # the worker will see TCPDisconnect
                return
            data = message.data
            assert self._transport is not None
            self._transport.write(data if self._encode is None else self._encode(data))
            if self._idle is not None:
                self._last = self._mk_loop.time()
        elif message.__class__ is Down:
            # Our pool worker ended, however it ended: close gracefully (the
            # peer sees EOF); nobody reads this connection any more.
            self._close_transport(abort=False)
            self._mk_end(message.reason)
        else:
            self.log.warning("unexpected message %r from %r", message, sender)

    # -- ending --------------------------------------------------------------------

    def _mk_trap(self, sig: Signal) -> Any:
        if sig.link and sig.reason == "normal":
            return IGNORE
        worker = self._worker
        if not sig.forced and worker is not None and worker._mk_state != DEAD:
            self._finish(sig.reason)  # the meta ends once the worker has seen TCPDisconnect
            return IGNORE
        return None

    def _mk_signal(self, sig: Signal) -> None:
        # A forced exit (parent or server ending) cannot wait behind writes the
        # peer is not reading: end now.
        if sig.forced and self._mk_held and self._mk_state == RUNNING:
            self._mk_end(sig.reason)
        else:
            super()._mk_signal(sig)

    def _close_transport(self, abort: bool) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        transport = self._transport
        if transport is not None and not self._closed:
            self._closed = True
            if abort or self._mk_held:
                _reset(transport)
            else:
                transport.close()  # flushes what is buffered, then closes
        self._closed = True

    def _send_disconnect(self, reason: Any) -> None:
        if self._disconnected:
            return
        self._disconnected = True
        worker = self._worker
        if worker is not None and worker._mk_state != DEAD:
            worker._mk_deliver_system(
                self._mk_parent_proc._mk_pid, TCPDisconnect(self._mk_alias, reason)
            )

    def terminate(self, reason: Any) -> None:
        """Close the socket (abort on ``"kill"``) and send ``TCPDisconnect`` once."""
        self._close_transport(abort=reason == "kill")
        self._send_disconnect(reason)
        if self._server is not None:
            self._server._forget(self)

    def statistics(self) -> Mapping[str, int]:
        """A snapshot of the counters: ``received`` (frames), ``pauses``, ``dropped_writes``."""
        return MappingProxyType(
            {
                "received": self._mk_out,
                "pauses": self._pauses,
                "dropped_writes": self._dropped_writes,
            }
        )

    def handle_inspect(self) -> dict[str, str]:
        """Peer, local address, framing and flow-control state."""
        return {
            "peer": str(self.peer),
            "local": str(self.local),
            "framing": repr(self._framer),
            "worker": repr(self.worker),
            "reading": "paused" if self._paused else "on",
            "pauses": str(self._pauses),
            "writing": "held" if self._mk_held else "on",
            "dropped_writes": str(self._dropped_writes),
        }
