"""SSHConnection: one SSH session channel as a meta-process, a thin adapter on
:class:`metakit.connection.StreamConnection` (which owns the lifecycle and the
back-pressure; read its theory of operation first).

The meta is asyncssh's callback-level session object itself
(``SSHServerSession`` / ``SSHClientSession``): asyncssh calls
``data_received``, ``eof_received``, ``pause_writing``/``resume_writing`` and
``connection_lost`` on it, and the base class turns them into messages for
the worker. There is no stream and no Task per session.

What is SSH's own:

* reading pauses through the channel (``pause_reading``): asyncssh stops
  sending window updates, so a peer pushing faster than the worker reads is
  held back by SSH's own flow control, not by a buffer here;
* writes are held while asyncssh's send buffer is over its high-water mark
  (``pause_writing``), as a socket's are;
* an EOF (``^D``, or the end of a piped stdin) keeps the channel open for
  writing until the worker has answered what it read, as TCP's half-close;
* a server session ended with ``"normal"``, or by the client's EOF once the
  worker has answered, sends exit status 0 (any other reason, 1) and closes
  after the queued writes; ``"kill"`` aborts the
  channel; a client session's end is the remote command's exit status.
* with a line editor (a pty session on a server made with
  ``line_editor=True``) asyncssh echoes and edits the input and hands over
  whole lines as text; they are encoded to UTF-8 here, so the framer and
  the worker see bytes either way.
"""

from __future__ import annotations

from typing import Any

from ..connection import StreamConnection
from ..framing import Framer
from ..mailbox import connection_read
from .messages import SSHDisconnect, SSHMessage

__all__ = ["SSHConnection"]


class SSHConnection(StreamConnection):
    """An SSH session channel as a meta-process; its Alias is the connection id.

    You do not create these: :class:`~metakit.ssh.SSHServer` makes one per
    session channel, and :class:`~metakit.ssh.SSHClient` is one. The worker
    receives ``SSHConnect``, ``SSHMessage``\\ s and exactly one
    ``SSHDisconnect``; it writes with ``send(conn, SSHMessage(conn, data))``.

    Args:
        framing: a framer used as a template (cloned); default ``Raw()``:
            ``bytes`` chunks as they arrive.
        idle_timeout: end with reason ``"idle"`` after this many seconds
            without a read or a write.
        high_watermark: pause reading when the worker's mailbox holds more
            messages than this.
        low_watermark: resume when it is down to about this many.

    Attributes:
        user: the authenticated user (a server's session), or the login user
            (a client's).
        command: the exec command, or None.
        term: the terminal type of a pty session, or None.
    """

    message_type = SSHMessage

    def __init__(self, framing: Framer[Any] | None = None, **options: Any) -> None:
        super().__init__(framing, **options)  # idle_timeout, high_watermark, low_watermark
        self._chan: Any = None
        self._text = False  # the channel carries str (a line editor's): UTF-8 both ways
        self.user: str | None = None
        self.command: str | None = None
        self.term: str | None = None

    # -- asyncssh's session callbacks (pause_writing/resume_writing are Connection's) --

    def connection_made(self, chan: Any) -> None:
        """The channel is open (nothing is read before ``session_started``)."""
        self._chan = chan
        self.peer = chan.get_extra_info("peername")
        self._text = chan.get_encoding()[0] is not None

    def data_received(self, data: Any, datatype: Any = None) -> None:
        """A read: frame it and hand the frames to the worker (stderr data of a
        client's command too, as ``2>&1`` would)."""
        if self._text:
            data = data.encode()
        connection_read(self, data)

    def eof_received(self) -> bool:
        """The peer sent EOF: keep writing until the worker has answered what it read."""
        self.input_ended()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        """The channel is closed, by us or by the peer."""
        if self.worker is None:  # closed before its session started: nobody heard of it
            self.exit(exc if exc is not None else "closed")
            return
        self.lost(exc if exc is not None else self._closed_reason())

    def _closed_reason(self) -> Any:
        return "closed"

    # -- the Connection hooks -------------------------------------------------------------

    def set_reading(self, on: bool) -> None:
        """Resume or pause the channel (its window: SSH's own flow control)."""
        if on:
            self._chan.resume_reading()
        else:
            self._chan.pause_reading()

    def close_transport(self, reason: Any, abort: bool) -> None:
        """Close after the queued writes (a server's session with an exit status), or abort."""
        chan = self._chan
        if chan is None:
            return
        if abort:
            chan.abort()
        else:
            self._close_channel(chan, reason)

    def _close_channel(self, chan: Any, reason: Any) -> None:
        chan.close()

    def disconnect_message(self, reason: Any) -> SSHDisconnect:
        """``SSHDisconnect(conn, reason)``."""
        return SSHDisconnect(self.id, reason)

    def write(self, data: Any) -> int:
        """Write one frame (encoded by the framer) to the channel."""
        if not self.raw_framing:
            data = self.framer.encode(data)
        self._chan.write(data.decode(errors="replace") if self._text else data)
        return len(data)

    def handle_inspect(self) -> dict[str, str]:
        """Connection's fields, the user, the command, the terminal and the framing."""
        info = super().handle_inspect()
        info["user"] = str(self.user)
        info["command"] = str(self.command)
        info["term"] = str(self.term)
        info["framing"] = repr(self.framer)
        return info
