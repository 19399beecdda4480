"""TCPConnection: one TCP connection as a meta-process.

Theory of operation
-------------------

The connection meta is its own ``asyncio.Protocol``: ``data_received`` runs
each read through the framer and appends one ``TCPMessage`` per frame to the
worker's mailbox. The meta has no main-loop Task: the transport's callbacks
drive it, so a connection costs a meta and a transport, nothing more.

Why ``data_received`` and not ``BufferedProtocol`` (DESIGN.md §6 chose the
latter for the stdlib loop's cold start): the node tunes malloc once per
process (``metakit.node._warm_allocator``), after which a fresh stdlib-loop server
reads at full speed from the start; and then the plain protocol is the
cheaper one on both loops. uvloop reads into its own buffer and hands over
``bytes`` without a Python ``get_buffer`` call, and ``Line`` keeps a whole-line
read's frame as one slice of those bytes. Measured with ``bench/tcp_echo.py``:
~0.3 us less per round trip on uvloop, the same on the stdlib loop.

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
taking writes from its mailbox (``Mailbox._mk_hold``) and stops reading until
it drains: a peer that does not read its answers sends no more requests, so
an echo's memory stays bounded by the high-water mark, not by the peer.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections import deque
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


class TCPConnection(Meta, asyncio.Protocol):
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
        self._idle = idle_timeout
        self._high2 = 2 * high_watermark  # in mailbox entries (two per message)
        self._low = low_watermark
        self._transport: asyncio.Transport | None = None
        self._worker: Mailbox | None = None
        self._sender: PID | None = None  # the parent: messages to the worker come from it
        self._server: TCPServer | None = None
        self.peer: Any = None
        self.local: Any = None
        self._paused = False  # the worker is behind
        self._wblocked = False  # the peer is not reading what we write
        self._reading = True  # what the transport was last told
        self._backlog: deque[Any] = deque()  # frames read while the worker was behind
        self._pending_end: Any = None  # the peer is gone; end once the backlog is delivered
        self._eof = False
        self._closed = False  # the transport is closed or closing
        self._disconnected = False  # TCPDisconnect sent
        self._lingering = False
        self._last = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._dropped_writes = 0
        self._pauses = 0
        self._write_holds = 0

    # -- setup -----------------------------------------------------------------

    def _attach(
        self, transport: asyncio.BaseTransport, worker: Mailbox, server: TCPServer | None
    ) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self._transport = cast(asyncio.Transport, transport)
        self._worker = worker
        self._server = server
        self._sender = self._mk_parent_proc._mk_pid
        if isinstance(self._framer, Raw) and hasattr(transport, "max_size"):
            # The stdlib loop's recv size (256 KiB): read no more than a frame,
            # rather than read 256 KiB and cut it into copies. (uvloop reads
            # into its own buffer; Raw cuts what it hands over.)
            transport.max_size = self._framer.read_size
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

    # -- the protocol: asyncio calls these ------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """The transport is connected: a server's connection is spawned here."""
        if self._server is not None:
            self._server._connection_made(self, transport)
        else:
            self._attach(transport, self._mk_parent_proc, None)

    def data_received(self, data: bytes) -> None:
        """A read: frame it and hand each frame to the worker (the hot path)."""
        try:
            frames = self._framer.feed(data)
        except FramingError as exc:
            if self._worker is not None:
                self._push(exc.frames)
                self._finish(exc)
            return
        if self._idle is not None:
            self._last = self._mk_loop.time()
        worker = self._worker
        if not frames or worker is None:  # None: a refused connection, closing
            return
        if self._backlog:
            self._backlog.extend(frames)
            return
        q = worker._mk_q
        if len(frames) == 1 and len(q) < worker._mk_limit:  # the common case
            q.append(self._sender)
            q.append(TCPMessage(self._mk_alias, frames[0]))
            self._mk_out += 1
        else:
            self._deliver(frames, worker, q)
        if not worker._mk_scheduled and q:
            worker._mk_scheduled = True
            worker._mk_kick()
        if len(q) > self._high2 and not self._paused:
            self._pause()

    def eof_received(self) -> bool:
        """The peer half-closed: keep writing until the worker has answered what it read."""
        self._eof = True
        self._reading = False  # the transport reads no more: never resume it
        if self._worker is not None and not self._backlog:
            # With a backlog, _resume does this once it is delivered.
            self._mark_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        """The transport is closed, by us or by the peer."""
        if self._closed or self._worker is None:
            return  # we closed it, or it was refused
        self._closed = True
        self._finish(exc if exc is not None else "closed")

    def pause_writing(self) -> None:
        """The write buffer is past its high-water mark: stop taking writes."""
        if self._worker is not None:
            self._wblocked = True
            self._write_holds += 1
            self._mk_hold()
            self._set_reading()

    def resume_writing(self) -> None:
        """The write buffer has drained: take writes again."""
        if self._worker is not None:
            self._wblocked = False
            self._mk_unhold()
            self._set_reading()

    # -- reading -------------------------------------------------------------------

    def _deliver(self, frames: list[Any], worker: Mailbox, q: Any) -> None:
        sender = self._sender
        alias = self._mk_alias
        limit = worker._mk_limit
        high = self._high2
        for i, frame in enumerate(frames):
            # One read may hold hundreds of frames: past the high watermark the
            # rest wait here, as they do when the mailbox is full (or the
            # worker dead: limit -1), and reading pauses.
            if len(q) >= limit or len(q) > high:
                self._park(frames[i:])
                break
            q.append(sender)
            q.append(TCPMessage(alias, frame))
        else:
            i = len(frames)
        self._mk_out += i

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
            self._set_reading()
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
            self._set_reading()

    def _set_reading(self) -> None:
        """Read unless the worker is behind or the peer is not reading what we write
        (an echo whose peer never reads must not buffer its replies without end)."""
        want = not (self._paused or self._wblocked or self._eof or self._closed)
        if want != self._reading:
            self._reading = want
            if not self._closed and not self._eof:
                assert self._transport is not None
                if want:
                    self._transport.resume_reading()
                else:
                    self._transport.pause_reading()

    def _flush(self) -> bool:
        """Move parked frames to the worker; False if some still wait (marker re-set)."""
        worker = self._worker
        assert worker is not None
        backlog = self._backlog
        while backlog:
            if worker._mk_state == DEAD:
                backlog.clear()
                return False
            if len(worker._mk_q) > self._high2:  # behind again: the next marker resumes
                self._pause()
                return False
            try:
                worker._mk_deliver(self._sender, TCPMessage(self._mk_alias, backlog[0]))
            except Exception:  # MailboxFull: wait for the worker to make room
                self._pause()
                return False
            backlog.popleft()
            self._mk_out += 1
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
        """A snapshot of the counters: ``received`` (frames), ``pauses`` (the worker was
        behind), ``write_holds`` (the peer was not reading), ``dropped_writes``."""
        return MappingProxyType(
            {
                "received": self._mk_out,
                "pauses": self._pauses,
                "write_holds": self._write_holds,
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
            "reading": "on" if self._reading else "paused",
            "pauses": str(self._pauses),
            "writing": "held" if self._mk_held else "on",
            "write_holds": str(self._write_holds),
            "dropped_writes": str(self._dropped_writes),
        }
