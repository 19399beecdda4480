"""A meta of your own: a line chat on a Unix-domain socket, built on metakit's seam.

The TCP and WebSocket metas are thin adapters on one public seam, and so is
this one. ``UnixLineConnection`` tells :class:`metakit.Connection` what its
asyncio transport did (``open``, ``data_received``, ``input_ended``,
``lost``) and implements four hooks that act on it (``set_reading``,
``close_transport``, ``disconnect_message``, ``write``). Connection does
the rest, as for the ready metas:

* one lifecycle: the worker gets ``UnixConnect``, a ``UnixLine`` per line and
  exactly one ``UnixDisconnect``; ``send_exit(conn, "normal")`` closes after
  the lines queued before it; nothing read is lost on the way out;
* read back-pressure: a worker that falls behind pauses reading;
* write holds: a peer that does not read is not read either, and its
  connection's bounded mailbox pushes back (``broadcast`` skips it).

``UnixLineServer`` shows the rest of the seam: ``Pool`` (who serves),
``spawn_nowait`` (a meta per accept), ``ConnectionSet`` (they end with it),
``quiesce`` and ``statistics()``; it removes its socket file when it ends.

Run: python examples/custom_meta.py [PATH]   (default /tmp/chat.sock)
Try: nc -U /tmp/chat.sock   (or socat - UNIX-CONNECT:/tmp/chat.sock) in two
terminals: each line goes to everyone, ``/quit`` leaves, Ctrl-C stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import metakit
from metakit import PID, Alias, Connection, ConnectionSet, Meta, Pool, Process
from metakit.framing import Line


@dataclass(frozen=True, slots=True)
class UnixConnect:
    """A client has connected; ``conn`` is its connection meta's Alias."""

    conn: Alias


@dataclass(frozen=True, slots=True)
class UnixLine:
    """A line (no ``\\n``) read from ``conn``, or sent to ``conn`` to write.

    Connection makes ``message_type(conn, frame)`` and writes ``message.data``.
    """

    conn: Alias
    data: bytes


@dataclass(frozen=True, slots=True)
class UnixDisconnect:
    """``conn`` has ended: ``"closed"`` by the peer, ``"normal"`` by ``send_exit``,
    the server's reason, or an exception (``FrameTooLarge``...). Sent once, last."""

    conn: Alias
    reason: Any


class UnixLineConnection(Connection, asyncio.Protocol):
    """One client: the adapter between its transport and :class:`metakit.Connection`.

    Connection's ``data_received``, ``pause_writing`` and ``resume_writing``
    serve as this protocol's asyncio callbacks.

    Args:
        accept: the server's: spawns this meta and returns its worker (None: refuse).
        max_length: the longest line, read or written, in bytes.
        high_watermark: pause reading past this many messages at the worker.
        low_watermark: resume at about this many.
    """

    __slots__ = ("accept", "transport")
    message_type = UnixLine
    transport: asyncio.Transport  # set in connection_made, before any hook runs

    def __init__(
        self,
        accept: Callable[[UnixLineConnection], PID | None],
        *,
        max_length: int,
        high_watermark: int,
        low_watermark: int,
    ) -> None:
        super().__init__(
            framing=Line(max_length=max_length),
            high_watermark=high_watermark,
            low_watermark=low_watermark,
        )
        self.accept = accept

    # asyncio's callbacks: each reports to Connection.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Connected: the server spawns this meta and picks its worker."""
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        worker = self.accept(self)
        if worker is None:
            transport.close()
        else:
            self.open(worker, UnixConnect(self.id))

    def eof_received(self) -> bool:
        """The peer shut down its side: answer what it sent, then close."""
        self.input_ended()
        return True  # keep our side open for the answers

    def connection_lost(self, exc: Exception | None) -> None:
        """The transport is closed, by either side."""
        self.lost(exc if exc is not None else "closed")

    # The hooks: Connection acts on the transport through these.

    def set_reading(self, on: bool) -> None:
        """Resume or pause reading."""
        if on:
            self.transport.resume_reading()
        else:
            self.transport.pause_reading()

    def close_transport(self, reason: Any, abort: bool) -> None:
        """Close after the buffered writes, or at once when ``abort``."""
        if abort:
            self.transport.abort()
        else:
            self.transport.close()

    def disconnect_message(self, reason: Any) -> UnixDisconnect:
        """The worker's last message about this connection."""
        return UnixDisconnect(self.id, reason)

    def write(self, data: bytes) -> int:
        """Write one line; return the bytes written."""
        assert self.framer is not None
        frame = self.framer.encode(data)  # ValueError past max_length
        self.transport.write(frame)
        return len(frame)


@dataclass(frozen=True, slots=True)
class UnixLineServerStatistics:
    """Connections ``accepted``, ``rejected`` (no live worker, the node stopping),
    and open now (``connections``)."""

    accepted: int
    rejected: int
    connections: int


class UnixLineServer(Meta):
    """Listen on the Unix socket ``path``; each client becomes a UnixLineConnection.

    Args:
        path: the socket file; a stale one is replaced, a live one is not.
        pool: the workers, round-robin; none: the parent serves every connection.
        max_length: the longest line, in bytes.
        mailbox_size: each connection's mailbox bound (0: none): writes to a
            peer that does not read stop there, with ``MailboxFull``.
        high_watermark: pause reading a client past this many lines at its worker.
        low_watermark: resume at about this many.

    Resource handling:
        Binds in ``init``: ``spawn_meta`` raises ``OSError`` for a bad path or
        one a server listens on. ``quiesce`` stops listening; ending stops it
        too, removes the socket file and ends the connections with the reason.
    """

    def __init__(
        self,
        path: str,
        *,
        pool: Sequence[PID | str] | None = None,
        max_length: int = 4096,
        mailbox_size: int = 0,
        high_watermark: int = 64,
        low_watermark: int = 16,
    ) -> None:
        if not 0 <= low_watermark < high_watermark:
            raise ValueError("need 0 <= low_watermark < high_watermark")
        self.path = path
        self.workers = Pool(pool=pool)
        self.conns = ConnectionSet(self)
        self.limits = (max_length, high_watermark, low_watermark)
        self.conn_mailbox_size = mailbox_size
        self.server: asyncio.Server | None = None
        self.accepted = self.rejected = 0

    async def init(self) -> None:
        """Bind and listen."""
        if _listening(self.path):  # the loop would take its socket file
            raise OSError(errno.EADDRINUSE, "a server is listening on it", self.path)
        loop = asyncio.get_running_loop()
        self.server = await loop.create_unix_server(self.new_connection, self.path)

    def new_connection(self) -> UnixLineConnection:
        """The protocol factory: a connection meta, spawned once connected."""
        length, high, low = self.limits
        return UnixLineConnection(
            self.accept, max_length=length, high_watermark=high, low_watermark=low
        )

    def accept(self, conn: UnixLineConnection) -> PID | None:
        """Spawn ``conn`` and return its worker; None refuses it."""
        worker = self.workers.pick(self) if self.alive else None
        if worker is not None:
            try:
                self.spawn_nowait(conn, mailbox_size=self.conn_mailbox_size)
            except metakit.NodeNotRunning:
                worker = None
        if worker is None:
            self.rejected += 1
            return None
        self.conns.add(conn)
        self.accepted += 1
        return worker

    def quiesce(self) -> None:
        """``node.stop()``: take no new clients while the workers finish."""
        self.stop_listening()

    def terminate(self, reason: Any) -> None:
        """Stop listening and end every connection with ``reason``."""
        self.stop_listening()
        self.conns.end_all(reason)

    def stop_listening(self) -> None:
        """Close the listening socket and remove its file."""
        if self.server is not None:
            self.server.close()
            self.server = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    def statistics(self) -> UnixLineServerStatistics:
        """A snapshot of the counters."""
        return UnixLineServerStatistics(self.accepted, self.rejected, len(self.conns))


def _listening(path: str) -> bool:
    # Connect to see: the server there sees a client come and go.
    with socket.socket(socket.AF_UNIX) as probe:
        probe.setblocking(False)
        try:
            probe.connect(path)
        except BlockingIOError:  # its backlog is full
            return True
        except OSError:  # no such file, not a socket, or a stale one
            return False
        return True


class Room(Process):
    """The worker: each line goes to everyone as ``#n: text``; ``/quit`` leaves."""

    async def init(self, path: str) -> None:
        """Serve ``path``, 256 lines at most waiting for each member."""
        self.members: dict[Alias, int] = {}
        self.joined = 0
        self.server = UnixLineServer(path, mailbox_size=256)
        await self.spawn_meta(self.server)  # binds here: errors raise here
        print(f"listening on {path}", flush=True)

    def handle_message(self, sender: PID, message: Any) -> None:
        """Welcome, relay, say goodbye, forget."""
        match message:
            case UnixConnect(conn):
                self.joined += 1
                self.members[conn] = self.joined
                self.say(conn, b"* you are #%d" % self.joined)
            case UnixLine(conn, b"/quit"):
                self.say(conn, b"* bye")
                self.send_exit(conn, "normal")  # after "bye"
            case UnixLine(conn, text):  # "#n: " and 4000 bytes fit in max_length
                line = b"#%d: %s" % (self.members[conn], text[:4000])
                metakit.broadcast(self, self.members, line)
            case UnixDisconnect(conn, _):
                del self.members[conn]

    def say(self, conn: Alias, text: bytes) -> None:
        """Write to one member: ``broadcast`` skips (and counts) a peer far behind
        where ``send`` would raise ``MailboxFull``."""
        metakit.broadcast(self, [conn], text)

    def terminate(self, reason: Any) -> None:
        """Print the server's counters."""
        stats = self.server.statistics()
        print(f"stopped: accepted={stats.accepted}, rejected={stats.rejected}", flush=True)


if __name__ == "__main__":
    metakit.run(Room, sys.argv[1] if len(sys.argv) > 1 else "/tmp/chat.sock")
