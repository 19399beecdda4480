"""The WebSocket connection metas: what server and client connections share.

Theory of operation
-------------------

A connection's read loop (aiohttp's request task on the server side, the
meta's main loop on the client side) appends one ``WSMessage`` per message
to the worker's mailbox. When the worker's mailbox holds more than
``high_watermark`` messages the loop stops reading, so the library's own
flow control pauses the socket, until a Notify marker placed
``low_watermark`` messages from the end of the worker's mailbox is reached.

Writes are plain handlers: the library's ``send`` coroutine is driven by
hand (:mod:`metakit._eager`) and almost always completes at once; when it
must wait for the socket to drain, the meta holds its mailbox until it has,
so a bounded mailbox pushes back on the writer with ``MailboxFull``.

Who closes what, as for TCP: ``send_exit(conn, "normal")`` closes with 1000
after the messages queued before it, ``"shutdown"`` with 1001, an exception
reason with 1011, ``"kill"`` drops the connection. The peer closing, a
failed heartbeat, an oversized or undecodable message end it too. Each time
the worker gets one ``WSDisconnect`` and the meta stays routable, discarding
writes, until the worker has handled it. A worker that ends takes its
connections with it: 1001 for ``"normal"``/``"shutdown"``, 1011 otherwise.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterable, Mapping
from types import MappingProxyType
from typing import Any

import orjson

from .._eager import Pump
from .._state import DEAD, RUNNING
from ..errors import MailboxFull
from ..ids import PID, Alias
from ..mailbox import IGNORE, Mailbox, Signal
from ..messages import Down
from ..meta import Meta
from ..process import Process
from .messages import WSConnect, WSDisconnect, WSMessage

__all__ = ["WSConnectionBase", "broadcast", "close_code"]


def close_code(reason: Any) -> int:
    """The close code for an exit reason: 1000, 1001, or 1011."""
    if reason == "normal":
        return 1000
    if reason in ("shutdown", "closed"):
        return 1001
    return 1011


class WSConnectionBase(Meta):
    """What server and client WebSocket connections share (not used directly).

    Args:
        codec: None (str and bytes as they are) or ``"json"`` (orjson both ways).
        high_watermark: stop reading when the worker's mailbox holds more
            messages than this.
        low_watermark: read again when it is down to about this many.
    """

    _mk_eager = True  # its handler is a non-blocking write: run it at once when idle

    # Slots: a broadcast touches every connection; compact objects, no dict lookups.
    __slots__ = (
        "_disconnected",
        "_down",
        "_high2",
        "_json",
        "_lingering",
        "_low",
        "_open",
        "_pump",
        "_resume",
        "_sent",
        "_stats",
        "_worker",
        "_writing",
        "codec",
        "peer",
    )

    def __init__(
        self, *, codec: str | None = None, high_watermark: int = 64, low_watermark: int = 16
    ) -> None:
        if codec not in (None, "json"):
            raise ValueError(f"codec must be None or 'json', not {codec!r}")
        if not 0 <= low_watermark < high_watermark:
            raise ValueError("need 0 <= low_watermark < high_watermark")
        self.codec = codec
        self._json = codec == "json"
        self._high2 = 2 * high_watermark
        self._low = low_watermark
        self._worker: Mailbox | None = None
        self._resume: asyncio.Future[None] | None = None
        self._open = False  # the socket can take writes
        self._lingering = False
        self._disconnected = False
        self._writing: asyncio.Task[Any] | None = None
        self._down = False  # a client waiting to reconnect: writes stay held
        self.peer: Any = None
        self._stats = {"received": 0, "dropped_writes": 0, "pauses": 0}
        self._sent = 0  # an attribute, not in _stats: counted on every write
        self._pump = Pump()

    # -- the library side (subclasses) ---------------------------------------

    def _send(self, data: Any) -> Coroutine[Any, Any, Any]:
        """The library's send coroutine for a str, bytes (binary) or, with JSON, UTF-8 bytes."""
        raise NotImplementedError

    def _send_text(self, data: bytes) -> Coroutine[Any, Any, Any]:
        """The library's send coroutine for a text message already encoded as UTF-8."""
        raise NotImplementedError

    def _close(self, code: int, reason: str) -> None:
        """Start a clean close (a close frame); must not block."""
        raise NotImplementedError

    def _drop(self) -> None:
        """Drop the connection at once (no close frame)."""
        raise NotImplementedError

    # -- reading -----------------------------------------------------------------

    def _connected(self, worker: Mailbox, peer: Any, request_info: Any) -> None:
        self._worker = worker
        self.peer = peer
        self._open = True
        self._disconnected = False
        self._lingering = False
        if worker is not self._mk_parent_proc and self._mk_watching is None:
            self._mk_node._monitor(self, worker._mk_ident)  # a pool worker: close with it
        hello = WSConnect(self._mk_alias, peer, request_info)
        worker._mk_deliver_system(self._mk_parent_proc._mk_pid, hello)

    def _decode(self, data: str | bytes) -> Any:
        return orjson.loads(data) if self._json else data

    def _received(self, data: Any) -> asyncio.Future[None] | None:
        """Hand one message to the worker; a future to await first if it is behind."""
        worker = self._worker
        assert worker is not None
        q = worker._mk_q
        if len(q) >= worker._mk_limit:  # full (or dead: limit -1): wait for room
            if worker._mk_state == DEAD:
                return None
            return self._wait_for_room(behind=0, then=data)
        q.append(self._mk_parent_proc._mk_pid)
        q.append(WSMessage(self._mk_alias, data))
        self._mk_out += 1
        self._stats["received"] += 1
        if not worker._mk_scheduled:
            worker._mk_scheduled = True
            worker._mk_kick()
        if len(q) > self._high2:
            return self._wait_for_room(behind=self._low, then=None)
        return None

    def _wait_for_room(self, behind: int, then: Any) -> asyncio.Future[None]:
        assert self._worker is not None
        self._stats["pauses"] += 1
        resume = self._resume = self._mk_loop.create_future()

        def release(_: object = None) -> None:
            if not resume.done():
                resume.set_result(None)

        def wake() -> None:
            if then is not None and self._mk_state == RUNNING:
                again = self._received(then)
                if again is not None:  # still full: chain the wait
                    again.add_done_callback(release)
                    return
            release()

        self._worker._mk_notify(wake, behind=behind)
        return resume

    # -- writing -------------------------------------------------------------------

    def handle_message(self, sender: PID, message: Any) -> None:
        """Send ``WSMessage(conn, data)`` on the socket (others are logged)."""
        if message.__class__ is WSMessage:
            self._write(message.data, None)
        elif message.__class__ is Down:
            # Our pool worker ended: nobody reads this connection any more.
            self._open_close(close_code(message.reason), "worker ended")
            self._mk_end(message.reason)
        else:
            self.log.warning("unexpected message %r from %r", message, sender)

    def _write(self, data: Any, encoded: bytes | None) -> None:
        """Send one message; ``encoded``: its UTF-8 text (JSON, or a str), when a
        broadcast has encoded it already."""
        if not self._open:
            self._stats["dropped_writes"] += 1  # the worker will see WSDisconnect
            return
        if encoded is not None:
            coro = self._send_text(encoded)
        else:
            cls = data.__class__
            if self._json or (cls is not str and cls is not bytes):
                payload = self._payload(data)
                if payload is None:
                    return
            else:
                payload = data
            coro = self._send(payload)
        try:
            # The library's send coroutine, run by hand (metakit._eager): it
            # finishes at once unless the socket must drain first.
            pending = self._pump.run(coro)
        except Exception as exc:  # the socket is gone under us
            self._remote_end(1006, str(exc) or type(exc).__name__)
            return
        self._sent += 1
        if pending is not None:
            self._writing = pending
            self._mk_hold()  # until the socket has drained
            pending.add_done_callback(self._written)

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
            self._open_close(1011, "unsendable message")
            self._remote_end(1011, exc)
            return None
        return payload

    def _written(self, task: asyncio.Task[Any]) -> None:
        self._writing = None
        if not task.cancelled() and task.exception() is not None:
            self._remote_end(1006, str(task.exception()))
        if not self._down:  # a client that is down keeps its writes held
            self._mk_unhold()

    # -- ending ------------------------------------------------------------------------

    def _open_close(self, code: int, reason: str) -> None:
        if self._open:
            self._open = False
            self._close(code, reason)

    def _remote_end(self, code: int, reason: Any) -> None:
        """It ended on the peer's side (or a limit's): tell the worker, linger until it knows."""
        self._open = False
        self._disconnect(code, reason)
        if self._mk_state == RUNNING and not self._lingering:
            self._lingering = True
            worker = self._worker
            if worker is None or not worker._mk_notify(lambda: self._mk_end("normal")):
                self._mk_end("normal")

    def _disconnect(self, code: int, reason: Any) -> None:
        if self._disconnected:
            return
        self._disconnected = True
        worker = self._worker
        if worker is not None and worker._mk_state != DEAD:
            bye = WSDisconnect(self._mk_alias, code, reason)
            worker._mk_deliver_system(self._mk_parent_proc._mk_pid, bye)

    def _mk_trap(self, sig: Signal) -> Any:
        if sig.link and sig.reason == "normal":
            return IGNORE
        worker = self._worker
        if not sig.forced and worker is not None and worker._mk_state != DEAD and self._open:
            # Closed by this side: close frame after the queued writes, then linger.
            code = close_code(sig.reason)
            self._open_close(code, str(sig.reason) if code != 1011 else "")
            self._remote_end(code, sig.reason)
            return IGNORE
        return None

    def _mk_signal(self, sig: Signal) -> None:
        if sig.forced and self._mk_held and self._mk_state == RUNNING:
            self._mk_end(sig.reason)  # a parent exit cannot wait behind a stuck write
        else:
            super()._mk_signal(sig)

    def terminate(self, reason: Any) -> None:
        """Close (a close frame; dropped at once on ``"kill"``) and send WSDisconnect once."""
        code = close_code(reason)
        if reason == "kill" or self._mk_held:
            if self._open:
                self._open = False
                self._drop()
        else:
            self._open_close(code, "" if code == 1011 else str(reason))
        if self._writing is not None:
            self._writing.cancel()
        if self._resume is not None and not self._resume.done():
            self._resume.set_result(None)
        self._disconnect(code if reason != "kill" else 1006, reason)

    def statistics(self) -> Mapping[str, int]:
        """A snapshot of the counters: ``received``, ``sent``, ``dropped_writes``, ``pauses``."""
        return MappingProxyType({**self._stats, "sent": self._sent})

    def handle_inspect(self) -> dict[str, str]:
        """Peer, codec, and the message counters."""
        info = {k: str(v) for k, v in self._stats.items()}
        info["sent"] = str(self._sent)
        info["peer"] = str(self.peer)
        info["codec"] = str(self.codec)
        info["writing"] = "held" if self._mk_held else "on"
        return info


def broadcast(sender: Process, conns: Iterable[Alias], data: Any) -> int:
    """Send ``data`` to every WebSocket connection in ``conns``; return how many took it.

    The same as ``sender.send(conn, WSMessage(conn, data))`` for each, in
    order with the sender's other messages to them, but cheaper per
    connection, and a broadcast does not stop half-way:

    * a connection that is gone is skipped (its ``WSDisconnect`` is on its
      way to its worker), where ``send`` would raise ``NoProcess``;
    * a connection whose bounded mailbox is full (a peer far behind) is
      skipped and counts it in its ``dropped_writes`` statistic, where
      ``send`` would raise ``MailboxFull``;
    * ``data`` is encoded once (as JSON for ``codec="json"`` connections,
      as UTF-8 for a str), not once per connection.

    Raises:
        TypeError: ``data`` cannot be JSON-encoded for a ``codec="json"`` connection.
    """
    table = sender._mk_table
    pid = sender._mk_pid
    as_json: bytes | None = None
    as_text = data.encode() if data.__class__ is str else None
    took = 0
    for conn in conns:
        target = table.get(conn.id)
        if not isinstance(target, WSConnectionBase):
            continue  # gone
        encoded: bytes | None
        if target._json:
            if as_json is None:
                as_json = orjson.dumps(data)
            encoded = as_json
        else:
            encoded = as_text
        if not target._mk_scheduled:
            # Idle: write now, as Process.send does for an idle network meta.
            target._mk_run_now(target._write, data, encoded)
        else:
            # Busy or held: it takes this in its turn.
            try:
                target._mk_deliver(pid, WSMessage(conn, data))
            except MailboxFull:
                target._stats["dropped_writes"] += 1
                continue
        took += 1
    sender._mk_out += took
    return took
