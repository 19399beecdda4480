"""Connection: the one lifecycle and back-pressure algorithm of every connection meta.

Theory of operation
-------------------

Everything that decides a connection's state lives here; the transports
(``metakit.tcp``, ``metakit.websocket``, and any meta of yours) are thin
adapters that call *in* when their object reports something, and implement
four hooks that act *out* on it. The model is h11's ``_state.py``.

States (:class:`ConnState`), each with what is true in it::

    NEW ──open()──> OPEN ──finish()──> CLOSING ──> LINGERING ──> CLOSED
                     │ ^                  (backlog   (transport    (meta
                     │ └──open()──┐        delivered  closed,      ended)
                     └─interrupted()─> INTERRUPTED    Disconnect
                                     (Disconnect sent, sent)
                                      writes held)

* ``OPEN``: frames read go to the worker; its writes go to the transport.
* ``CLOSING``: an end is decided (the peer closed, an error, an exit signal
  from the worker) but frames already read wait in the backlog: they reach
  the worker first, then the end goes on. Nothing read is ever lost.
* ``LINGERING``: the transport is closed and the worker has been sent its
  Disconnect (exactly once). The meta stays routable, dropping (and
  counting) writes, until the worker has *handled* the Disconnect — a
  :class:`~metakit.mailbox.Notify` marker behind it says so — so a worker
  never gets ``NoProcess`` for writing to a connection it has not seen end.
* ``CLOSED``: the meta has ended; ``terminate`` closed the transport (an
  abort for ``"kill"``, or when writes are held and cannot be flushed) and
  sent the Disconnect if nothing had.
* ``INTERRUPTED`` (reconnecting clients only): the transport dropped and the
  adapter is reconnecting. The worker has its Disconnect; writes wait in
  the mailbox (held, so its bound pushes back) until ``open`` again.

Who ends a connection, and how:

* the **worker**, ``send_exit(conn, "normal")`` (or any reason): taken in
  order after the writes queued before it, then ``finish`` (a graceful
  close after those writes); ``"kill"``: at once, an abort.
* the **peer** or a **limit** (EOF after the replies, a reset, the idle
  timeout, a framing error): the adapter calls :meth:`Connection.lost`,
  :meth:`Connection.input_ended` or :meth:`Connection.finish`.
* the **owner** (the parent process, or the server or handler whose
  :class:`ConnectionSet` holds it) ending: a forced exit; the connection
  ends now with that reason, not lingering (the owner is gone).
* a **pool worker** ending (the connection monitors it): closed gracefully.

Back-pressure, reading: frames go into the worker's mailbox while it holds
at most ``high_watermark`` messages. Past it — or when its bounded mailbox is
full — the rest of a read waits in the connection's backlog, reading pauses
(the adapter's ``set_reading(False)``), and a marker goes into the worker's
mailbox ``low_watermark`` messages from its end; when the worker reaches it
the backlog moves over and reading resumes. A slow worker costs about
``high_watermark`` frames per connection, never more.

Back-pressure, writing: when the transport's buffer is full the adapter
calls :meth:`Connection.pause_writing` (asyncio's own protocol callback for
byte streams): the meta takes no more writes from its mailbox, whose bound
then raises ``MailboxFull`` at the writer, and it stops *reading* too — a
peer that does not read its answers sends no more requests, so an echo's
memory stays bounded by the transport's buffer, not by the peer.
:meth:`Connection.resume_writing` takes writes again at once, and reads
again once the writes held meanwhile are written (a transport that pauses
again after a few writes, as an SSH channel's window does, would otherwise
take reads faster than it writes their answers).

Hooks an adapter implements (all plain, non-blocking):

* :meth:`Connection.set_reading` — pause or resume reading the transport;
* :meth:`Connection.close_transport` — close it (flushing writes) or abort;
* :meth:`Connection.disconnect_message` — the Disconnect for a reason;
* :meth:`Connection.write` — write one message's data; the bytes written
  (``handle_message`` calls it for the transport's :attr:`message_type`
  while :attr:`writable`, and drops and counts writes after the close).

A byte stream also gets :meth:`Connection.data_received` (frame each read
with its framer, feed the frames): an ``asyncio.Protocol`` adapter inherits
it as its own callback.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, Any, ClassVar

from ._envelope import IGNORE, Signal
from ._idle import IdleSweep, sweep_for
from ._state import DEAD, INIT, RUNNING
from .errors import FramingError, MailboxFull
from .framing import Framer, Raw
from .ids import PID, Alias, Ref
from .mailbox import IDLE, connection_feed_one, connection_read
from .messages import Down
from .meta import Meta

if TYPE_CHECKING:
    from .connections import ConnectionSet
    from .mailbox import Mailbox

__all__ = ["ConnState", "Connection", "ConnectionStatistics", "StreamConnection"]


class ConnState(IntEnum):
    """Where a connection is in its lifecycle (see the module docstring)."""

    NEW = 0
    """Made, not yet opened."""
    OPEN = 1
    """Reading and writing."""
    INTERRUPTED = 2
    """Dropped, reconnecting: the worker has its Disconnect; writes wait."""
    CLOSING = 3
    """An end is decided; frames already read reach the worker first."""
    LINGERING = 4
    """Closed, Disconnect sent; writes dropped until the worker has handled it."""
    CLOSED = 5
    """The meta has ended."""


_NEW, _OPEN, _INTERRUPTED, _CLOSING, _LINGERING, _CLOSED = ConnState


@dataclass(frozen=True, slots=True)
class ConnectionStatistics:
    """A connection's counters at one moment (``conn.statistics()``).

    Attributes:
        bytes_in: bytes read from the transport.
        bytes_out: bytes written to it (after framing).
        messages_in: messages (frames) handed to the worker.
        messages_out: messages written.
        paused_reads: times reading paused because the worker was behind.
        held_writes: times writes were held because the transport was full.
        dropped: writes dropped: sent after the connection had closed, or
            skipped by a ``broadcast`` because the mailbox was full.
        state: the lifecycle state when the snapshot was taken.
    """

    bytes_in: int
    bytes_out: int
    messages_in: int
    messages_out: int
    paused_reads: int
    held_writes: int
    dropped: int
    state: ConnState


class Connection(Meta):
    """Base of every connection meta: one lifecycle and back-pressure for all.

    Subclass it to adapt a transport (see the module docstring for the
    hooks); its Alias is the connection id in every message. The worker
    gets the Connect given to :meth:`open`, one :attr:`message_type` per
    frame, and exactly one Disconnect.

    Args:
        framing: the framer :meth:`data_received` uses, for byte streams
            (an instance of its own: clone a template first).
        idle_timeout: end with reason ``"idle"`` after this many seconds
            without a whole frame read or a message written. Bytes that do
            not complete a frame do not count (a peer trickling a line one
            byte at a time is idle), and the clock stops while this side
            has paused reading because the worker is behind. Checked four
            times per period (no clock read per message): the connection
            ends within 1.25 x ``idle_timeout`` of its last traffic.
        high_watermark: pause reading when the worker's mailbox holds more
            messages than this.
        low_watermark: resume when it is down to about this many.

    Attributes:
        message_type: the transport's Message class, ``message_type(conn,
            data)`` with a ``data`` field: what frames are delivered as, and
            what the worker writes (that exact class: a subclass is not
            written, it is logged as unexpected).
        writable: whether writes go to the transport (OPEN or CLOSING);
            after the close they are dropped and counted.
        framer: the framer given as ``framing`` (None for message transports).
        peer: the remote address, when the transport has one.

    Resource handling:
        ``terminate`` closes the transport (``close_transport``) unless it
        is closed already and sends the Disconnect unless it was sent;
        whatever ends the connection, both happen exactly once.
    """

    __slots__ = (
        "_mk_backlog",
        "_mk_bytes_in",
        "_mk_bytes_out",
        "_mk_closed",
        "_mk_cstate",
        "_mk_disconnected",
        "_mk_dropped",
        "_mk_eof",
        "_mk_held_writes",
        "_mk_high",
        "_mk_high2",
        "_mk_idle",
        "_mk_last",
        "_mk_low",
        "_mk_make",
        "_mk_on_end",
        "_mk_paused",
        "_mk_paused_reads",
        "_mk_pending_end",
        "_mk_reading",
        "_mk_seen",
        "_mk_sender",
        "_mk_sweep",
        "_mk_wblocked",
        "_mk_wdrain",
        "_mk_worker",
        "_mk_worker_ref",
        "_mk_writes",
        "framer",
        "peer",
        "writable",
    )

    eager = True  # its handler is a non-blocking write: run it at once when idle
    message_type: ClassVar[type]

    mailbox_size = 256
    """The default bound of a connection's mailbox, where its writes wait while
    the transport is full: past it ``send`` raises ``MailboxFull`` at the
    writer and ``broadcast`` skips the connection and counts it in
    ``dropped``. A peer that reads nothing costs at most this many messages
    (plus the transport's buffer), never more."""

    def __init__(
        self,
        *,
        framing: Framer[Any] | None = None,
        idle_timeout: float | None = None,
        high_watermark: int = 64,
        low_watermark: int = 16,
    ) -> None:
        if not 0 <= low_watermark < high_watermark:
            raise ValueError("need 0 <= low_watermark < high_watermark")
        self.framer = framing
        self._mk_idle = idle_timeout
        self._mk_high = high_watermark
        self._mk_high2 = 2 * high_watermark  # in mailbox entries: two per message
        self._mk_low = low_watermark
        self._mk_make = type(self).message_type
        self._mk_cstate = _NEW
        self._mk_worker: Mailbox | None = None
        self._mk_worker_ref: Ref | None = None
        self._mk_sender: PID | None = None  # the parent: messages to the worker come from it
        # The ConnectionSet holding it (not its bound discard: 64 bytes per connection).
        self._mk_on_end: ConnectionSet | None = None
        # Frames read while the worker was behind: none (the shared empty queue,
        # no 760-byte deque per idle connection) until it first falls behind.
        self._mk_backlog: deque[Any] = IDLE
        self._mk_pending_end: Any = None
        self._mk_paused = False  # the worker is behind
        self._mk_wblocked = False  # the transport's write buffer is full
        self._mk_wdrain = False  # writes held meanwhile are still queued: read later
        self._mk_reading = True  # what the transport was last told
        self._mk_eof = False
        self._mk_closed = False  # the transport is closed or closing
        self._mk_disconnected = False
        # The node's idle check for its timeout, while open (_idle.py: one
        # timer per timeout, not a 250-600 byte timer per connection).
        self._mk_sweep: IdleSweep | None = None
        self._mk_last = 0.0  # when traffic was last seen (by the idle check, or touch)
        self._mk_seen = 0  # frames read + messages written, at the last idle check
        self._mk_bytes_in = 0
        self._mk_bytes_out = 0
        self._mk_writes = 0
        self._mk_dropped = 0
        self._mk_paused_reads = 0
        self._mk_held_writes = 0
        self.writable = False
        self.peer: Any = None

    # -- hooks: the adapter acts on its transport -------------------------------

    def set_reading(self, on: bool) -> None:
        """Hook: resume (``True``) or pause (``False``) reading the transport."""

    def close_transport(self, reason: Any, abort: bool) -> None:
        """Hook: close the transport — after its buffered writes, or at once when
        ``abort`` (a ``"kill"``, or writes held that cannot drain). Called once."""

    def disconnect_message(self, reason: Any) -> Any:
        """Hook: the Disconnect message the worker gets for ``reason``."""
        raise TypeError(f"{type(self).__name__} must define disconnect_message")

    def write(self, data: Any) -> int:
        """Hook: write one message's ``data`` to the transport; the bytes written.

        Called only while :attr:`writable`, from ``handle_message`` (or the
        sender's own send, when the connection is idle: keep it short).
        """
        raise TypeError(f"{type(self).__name__} must define write")

    # -- calls in: the adapter reports what its transport did ---------------------

    def open(self, worker: PID | Alias | None, hello: Any) -> None:
        """The transport is connected: serve ``worker`` (None: the parent) and send it ``hello``.

        A pool worker (not the parent) is monitored: its end closes the
        connection. A reconnecting client calls it again after
        :meth:`interrupted`.
        """
        parent = self._mk_parent_proc
        actor: Mailbox = parent if worker is None else self._mk_node._registry.resolve(worker)
        self._mk_worker = actor
        self._mk_sender = parent._mk_pid
        if actor is not parent and self._mk_worker_ref is None:
            self._mk_worker_ref = self._mk_node._links.monitor(self, actor._mk_ident)
        self._mk_cstate = _OPEN
        # (_mk_paused stays: frames read before a reconnect still wait for the worker)
        self._mk_closed = self._mk_eof = self._mk_disconnected = False
        self.writable = True
        if not self._mk_reading:
            self._mk_update_reading()
        if self._mk_idle is not None:
            # The clock starts at every open: a reconnect is not idle for the outage.
            self._mk_last = self._mk_loop.time()
            self._mk_seen = self._mk_traffic()
            if self._mk_sweep is None:
                self._mk_sweep = sweep_for(self._mk_sched.sweeps, self._mk_loop, self._mk_idle)
                self._mk_sweep.add(self)
        self._mk_update_hold()
        actor._mk_deliver_system(self._mk_sender, hello)

    # A read: frame it and hand each frame to the worker (the hot path). It is
    # feed() with the one-frame delivery inlined, so it lives in mailbox.py
    # beside the envelope it fills; the TCP tests run it, the WebSocket
    # tests (which feed) the original.
    data_received = connection_read

    def _mk_framing_error(self, exc: FramingError) -> None:
        # A read that breaks the framer's limits: what it completed goes to the
        # worker first, then the connection ends with the error.
        if self._mk_worker is not None:
            if exc.frames:
                self._mk_park(exc.frames)
                self._mk_flush()
            self.finish(exc)

    def feed(self, frames: list[Any], nbytes: int = 0) -> None:
        """Hand frames (read as ``nbytes``) to the worker in order, with back-pressure;
        nothing is lost. ``data_received`` (a byte stream's read: framed, then
        fed) is this with its common case inlined.

        One frame for an idle worker with plain handlers runs its
        ``handle_message`` before this returns (in the order its drain would
        keep); that handler may end this connection. Several frames queue.
        """
        self._mk_bytes_in += nbytes
        worker = self._mk_worker
        if worker is None:  # a refused connection, closing
            return
        if self._mk_backlog:
            self._mk_park(frames)
            return
        taken = worker._mk_feed(
            self._mk_sender, self._mk_make, self._mk_alias, frames, self._mk_high
        )
        if taken < 0:
            self._mk_behind(frames, ~taken)
        else:
            self._mk_out += taken

    # One frame (a message transport's read): feed([frame], nbytes) with its
    # common case inlined, beside the envelope in mailbox.py; the WebSocket
    # tests run it.
    feed_one = connection_feed_one

    def input_ended(self) -> None:
        """The peer sent EOF: finish once the worker has handled what was read
        and the writes it sent meanwhile are flushed."""
        self._mk_eof = True
        self._mk_reading = False  # the transport reads no more: never resume it
        if self._mk_worker is not None and not self._mk_backlog:
            self._mk_mark_eof()  # with a backlog, _resume does it once delivered

    def lost(self, reason: Any) -> None:
        """The transport is gone (the peer closed it, a reset, an error): end with ``reason``."""
        if self._mk_closed or self._mk_worker is None:
            return  # closed from this side already, or refused
        self._mk_closed = True
        self.writable = False
        self.finish(reason)

    def finish(self, reason: Any) -> None:
        """End gracefully: frames read go to the worker first; then the transport
        closes after its queued writes, the worker gets its Disconnect, and
        the meta lingers until the worker has handled it."""
        if self._mk_state != RUNNING or self._mk_cstate >= _LINGERING:
            return
        if self._mk_backlog:
            self._mk_cstate = _CLOSING
            self._mk_pending_end = reason  # again once the backlog is delivered
            return
        self._mk_close(reason, abort=False)
        self._mk_cstate = _LINGERING
        self._mk_send_disconnect(reason)
        worker = self._mk_worker
        if worker is None or not worker._mk_notify(lambda: self._mk_end(reason)):
            self._mk_end(reason)

    def interrupted(self, reason: Any) -> None:
        """The transport dropped and the adapter reconnects: the worker gets its
        Disconnect, writes wait in the mailbox until :meth:`open` again."""
        self._mk_closed = True
        self.writable = False
        self._mk_cstate = _INTERRUPTED
        self._mk_send_disconnect(reason)
        self._mk_update_hold()

    def pause_writing(self) -> None:
        """The transport's write buffer is full: hold writes, stop reading."""
        if self._mk_worker is not None:
            self._mk_wblocked = True
            self._mk_held_writes += 1
            self._mk_update_hold()
            self._mk_update_reading()

    def resume_writing(self) -> None:
        """The write buffer has drained: take writes, and read again once the
        writes held meanwhile are written."""
        if self._mk_worker is not None:
            self._mk_wblocked = False
            self._mk_update_hold()
            # Reading at once would let a transport that pauses again after a
            # few writes (an SSH channel's window) take reads faster than it
            # writes their answers, until the held writes overflow the mailbox.
            if self._mk_q and not self._mk_wdrain:
                self._mk_wdrain = True
                self._mk_notify(self._mk_writes_drained)
            self._mk_update_reading()

    def _mk_writes_drained(self) -> None:
        self._mk_wdrain = False
        self._mk_update_reading()

    # -- what the worker and others see ----------------------------------------------

    @property
    def state(self) -> ConnState:
        """The lifecycle state."""
        return self._mk_cstate

    @property
    def idle_timeout(self) -> float | None:
        """The ``idle_timeout`` it was made with (None: never idle)."""
        return self._mk_idle

    @property
    def worker(self) -> PID | None:
        """The process that receives this connection's messages."""
        return self._mk_worker._mk_ident if self._mk_worker is not None else None  # type: ignore[return-value]

    def writes_counted(self) -> tuple[int, int]:
        """Hook: ``(messages, bytes)`` an adapter wrote and counted itself, in an
        ``handle_message`` of its own that writes without calling :meth:`write`
        (a call less per write); :meth:`statistics` adds them. Default (0, 0)."""
        return (0, 0)

    def touch(self) -> None:
        """Traffic the counters do not see: restart the idle clock.

        Frames read and messages written (those :meth:`writes_counted`
        reports too) are seen without it: the idle check compares the
        counters, so the hot path reads no clock."""
        self._mk_last = self._mk_loop.time()

    def statistics(self) -> ConnectionStatistics:
        """A snapshot of the counters."""
        own_messages, own_bytes = self.writes_counted()
        return ConnectionStatistics(
            bytes_in=self._mk_bytes_in,
            bytes_out=self._mk_bytes_out + own_bytes,
            messages_in=self._mk_out,
            messages_out=self._mk_writes + own_messages,
            paused_reads=self._mk_paused_reads,
            held_writes=self._mk_held_writes,
            dropped=self._mk_dropped,
            state=self._mk_cstate,
        )

    def handle_inspect(self) -> dict[str, str]:
        """The counters, the state, the worker and whether it reads and writes."""
        info = super().handle_inspect()
        info["state"] = self._mk_cstate.name.lower()
        info["worker"] = repr(self.worker)
        info["peer"] = str(self.peer)
        info["reading"] = "on" if self._mk_reading else "paused"
        info["writing"] = "held" if self._mk_held else "on"
        return info

    # -- broadcast hooks: a transport that encodes (JSON, UTF-8) overrides them, so
    # one broadcast encodes once per kind of connection, not once per connection.

    prepare_key: Any = None
    """Connections with the same key share what :meth:`prepare` returns in a broadcast."""

    def prepare(self, data: Any) -> Any:
        """Broadcast hook: encode ``data`` once for every connection with this key."""
        return None

    def write_prepared(self, data: Any, prepared: Any) -> int:
        """Broadcast hook: :meth:`write` ``data``, ``prepared`` by :meth:`prepare`."""
        return self.write(data)

    def handle_message(self, sender: PID, message: Any) -> None:
        """Write ``message_type(conn, data)`` with :meth:`write`; anything else is logged.

        A write after the connection has closed is dropped and counted.
        """
        if message.__class__ is self._mk_make:
            if self.writable:
                self._mk_bytes_out += self.write(message.data)  # type: ignore[attr-defined]
                self._mk_writes += 1
            else:
                self._mk_dropped += 1  # the worker will see the Disconnect
        elif message.__class__ is Down and message.ref == self._mk_worker_ref:
            # Our pool worker ended, however: nobody reads this connection any more.
            self._mk_close(message.reason, abort=False)
            self._mk_end(message.reason)
        else:
            self.log.warning("unexpected message %r from %r", message, sender)

    # -- reading: back-pressure ----------------------------------------------------------

    def _mk_behind(self, frames: list[Any], taken: int) -> None:
        """The worker took ``taken`` of ``frames`` and is behind: the rest (if any)
        waits here, and reading pauses."""
        self._mk_out += taken
        worker = self._mk_worker
        assert worker is not None
        if taken < len(frames):
            if worker._mk_state != DEAD:  # else the Down (or the parent's exit) ends us
                self._mk_park(frames[taken:] if taken else frames)
                self._mk_pause()
        elif not self._mk_paused:
            self._mk_pause()

    def _mk_park(self, frames: list[Any]) -> None:
        """Keep frames the worker cannot take yet, in order."""
        if self._mk_backlog is IDLE:
            self._mk_backlog = deque()
        self._mk_backlog.extend(frames)

    def _mk_pause(self) -> None:
        assert self._mk_worker is not None
        if not self._mk_paused:
            self._mk_paused = True
            self._mk_paused_reads += 1
            self._mk_update_reading()
        self._mk_worker._mk_notify(self._mk_resume, behind=self._mk_low)

    def _mk_resume(self) -> None:
        """Run by the worker's drain when it reaches our marker."""
        if self._mk_state != RUNNING or not self._mk_flush():
            return
        if self._mk_pending_end is not None:
            reason, self._mk_pending_end = self._mk_pending_end, None
            self.finish(reason)
            return
        if self._mk_eof:
            self._mk_mark_eof()
            return
        if self._mk_paused:
            self._mk_paused = False
            self._mk_update_reading()

    def _mk_flush(self) -> bool:
        """Move parked frames to the worker; False if some still wait (marker re-set)."""
        worker = self._mk_worker
        assert worker is not None
        backlog = self._mk_backlog
        while backlog:
            if worker._mk_state == DEAD:
                backlog.clear()
                return False
            if worker._mk_pending > self._mk_high:  # behind again: the next marker resumes
                self._mk_pause()
                return False
            try:
                worker._mk_deliver(self._mk_sender, self._mk_make(self._mk_alias, backlog[0]))
            except MailboxFull:  # wait for the worker to make room
                self._mk_pause()
                return False
            backlog.popleft()
            self._mk_out += 1
        self._mk_backlog = IDLE  # caught up: give the deque back
        return True

    def _mk_update_reading(self) -> None:
        want = not (
            self._mk_paused
            or self._mk_wblocked
            or self._mk_wdrain
            or self._mk_eof
            or self._mk_closed
        )
        if want != self._mk_reading:
            self._mk_reading = want
            if not self._mk_closed and not self._mk_eof:
                self.set_reading(want)

    def _mk_update_hold(self) -> None:
        want = self._mk_wblocked or self._mk_cstate is _INTERRUPTED
        if want and not self._mk_held:
            self._mk_hold()
        elif not want and self._mk_held:
            self._mk_unhold()

    def _mk_mark_eof(self) -> None:
        worker = self._mk_worker
        if worker is None or not worker._mk_notify(self._mk_eof_reached):
            self._mk_eof_reached()

    def _mk_eof_reached(self) -> None:
        # The worker has handled every message read before EOF; what it sent
        # meanwhile is queued here. Close after those writes, in order.
        if self._mk_state == RUNNING and not self._mk_closed:
            self._mk_notify(self._mk_close_after_eof)

    def _mk_close_after_eof(self) -> None:
        self.finish("closed")

    def _mk_traffic(self) -> int:
        return self._mk_out + self._mk_writes + self.writes_counted()[0]

    def _mk_check_idle(self, now: float) -> None:
        # The node's sweep calls it every idle_timeout / STEPS (_idle.py):
        # traffic since the last check (the counters moved) restarts the clock.
        # So the connection ends between idle_timeout and 1.25 x idle_timeout
        # after its last frame or write, and no read or write pays for a clock.
        if self._mk_state != RUNNING or self._mk_closed:
            if self._mk_state == INIT and not self._mk_closed:
                return  # a client opened in its init: checked once it runs
            self._mk_stop_idle()
            return
        assert self._mk_idle is not None
        traffic = self._mk_traffic()
        if traffic != self._mk_seen or self._mk_paused:
            # (Paused: this side stopped reading because the worker is behind;
            # the peer is not idle, it is waiting for us.)
            self._mk_seen = traffic
            self._mk_last = now
        if now - self._mk_last >= self._mk_idle:
            self._mk_stop_idle()
            self.finish("idle")

    def _mk_stop_idle(self) -> None:
        sweep = self._mk_sweep
        if sweep is not None:
            self._mk_sweep = None
            sweep.discard(self)

    # -- ending ------------------------------------------------------------------------

    def _mk_close(self, reason: Any, abort: bool) -> None:
        self._mk_stop_idle()
        self.writable = False
        if not self._mk_closed:
            self._mk_closed = True
            self.close_transport(reason, abort or self._mk_held)

    def _mk_send_disconnect(self, reason: Any) -> None:
        if self._mk_disconnected:
            return
        self._mk_disconnected = True
        worker = self._mk_worker
        if worker is not None and worker._mk_state != DEAD:
            worker._mk_deliver_system(self._mk_sender, self.disconnect_message(reason))

    def _mk_trap(self, sig: Signal) -> Any:
        if sig.link and sig.reason == "normal":
            return IGNORE
        worker = self._mk_worker
        if not sig.forced and worker is not None and worker._mk_state != DEAD:
            self.finish(sig.reason)  # the meta ends once the worker has seen the Disconnect
            return IGNORE
        return None

    def _mk_signal(self, sig: Signal) -> None:
        if sig.link and sig.reason == "normal":
            return  # as for any meta: a link's "normal" changes nothing
        # A forced exit cannot wait behind writes the peer is not reading, and
        # an interrupted connection has nothing to flush: end now.
        stuck = (sig.forced and self._mk_held) or self._mk_cstate is _INTERRUPTED
        if stuck and self._mk_state == RUNNING and sig.reason != "kill":
            self._mk_end(sig.reason)
        else:
            super()._mk_signal(sig)

    def terminate(self, reason: Any) -> None:
        """Close the transport (abort on ``"kill"``) and send the Disconnect, each once."""
        self._mk_close(reason, abort=reason == "kill")
        self._mk_send_disconnect(reason)
        self._mk_cstate = _CLOSED
        if self._mk_on_end is not None:
            self._mk_on_end.discard(self)


class StreamConnection(Connection):
    """A :class:`Connection` over a byte stream (TCP, an SSH channel...): its
    framer is a clone of ``framing`` (``Raw()`` by default), and
    :attr:`encode` is the framer's ``encode``, or None for ``Raw`` (whose
    frames go out as they are: a copy less per write). On the write path an
    adapter tests :attr:`raw_framing` and calls ``framer.encode``: a bound
    method kept per connection would cost 64 bytes each.

    Attributes:
        raw_framing: True when the framer is ``Raw``: frames are written as
            they are, not through ``framer.encode``.

    Args:
        framing: a framer used as a template (cloned); default ``Raw()``.
        idle_timeout, high_watermark, low_watermark: as for :class:`Connection`.
    """

    __slots__ = ("raw_framing",)
    framer: Framer[Any]  # always set here

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
        self.raw_framing = isinstance(framer, Raw)

    @property
    def encode(self) -> Callable[[Any], bytes] | None:
        """The framer's ``encode``, or None for ``Raw`` (its frames go out as they are)."""
        return None if self.raw_framing else self.framer.encode
