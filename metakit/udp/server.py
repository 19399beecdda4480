"""UDPServer: a UDP socket as a meta-process.

Theory of operation
-------------------

A small ``asyncio.DatagramProtocol`` hands each datagram to the server meta,
which offers ``UDPPacket(server, addr, data)`` to the next worker (the
parent, or pool members round-robin per datagram): an idle worker with
plain handlers handles it inside the read, a busy one finds it in its
mailbox. Replies go to the server (an idle one sends at once, inside the
worker's ``send``) and out with ``transport.sendto``.

UDP may drop; metakit does not hide it. A datagram is dropped, counted
(``handle_inspect``) and logged (at most once a second, with a count) when
it is longer than ``max_datagram``, when the worker's mailbox is full, or
when it already holds ``max_queue`` messages (so memory stays bounded even
for an unbounded worker mailbox). Never an exception in the protocol.

When the socket's send buffer is full, the transport pauses writing: the
server stops taking replies from its mailbox until it resumes (counted and
logged). On Linux, ``IP_RECVERR`` makes an ICMP error for a reply visible,
with the address it was sent to, from the socket's error queue; it reaches
the worker as :class:`UDPError`, and the server carries on.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import MetakitError, NoProcess
from ..ids import PID, Alias
from ..meta import Meta
from ..pool import Pool
from .messages import UDPError, UDPPacket

__all__ = ["UDPServer", "UDPServerStatistics"]

_LOG_EVERY = 1.0  # seconds between two log lines about drops of one kind


@dataclass(frozen=True, slots=True)
class UDPServerStatistics:
    """A UDP server's counters at one moment (``server.statistics()``).

    Attributes:
        received: datagrams received.
        sent: datagrams sent.
        dropped_full: dropped because the worker's mailbox was full or held
            ``max_queue`` messages.
        dropped_oversize: dropped for being longer than ``max_datagram``.
        dropped_no_worker: dropped because no pool member was alive.
        send_errors: replies that failed (a bad reply, an ICMP error).
        send_paused: times the socket's send buffer was full.
        dropped_kernel: datagrams the kernel dropped for this socket
            (receive buffer full), where the platform says (Linux); else None.
    """

    received: int
    sent: int
    dropped_full: int
    dropped_oversize: int
    dropped_no_worker: int
    send_errors: int
    send_paused: int
    dropped_kernel: int | None


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, server: UDPServer) -> None:
        self.server = server
        # The hot callback goes straight to the server: no frame in between.
        self.datagram_received = server._received  # type: ignore[method-assign]

    def error_received(self, exc: Exception) -> None:
        self.server._error(exc)

    def pause_writing(self) -> None:
        self.server._pause_writing()

    def resume_writing(self) -> None:
        self.server.release_writes()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server._lost(exc)


class UDPServer(Meta):
    """Bind ``host:port``; each datagram reaches a worker as :class:`UDPPacket`.

    ::

        class Echo(metakit.Process):
            async def init(self) -> None:
                self.server = UDPServer("127.0.0.1", 9000)
                await self.spawn_meta(self.server)

            def handle_message(self, sender, message):
                match message:
                    case UDPPacket(server, addr, data):
                        self.send(server, UDPPacket(server, addr, data))

    Args:
        host: address to bind; IPv4 or IPv6 (``"::1"``).
        port: port to bind; 0 picks a free one (read :attr:`address` after).
        pool: names or PIDs of worker processes, round-robin per datagram;
            dead ones are skipped.
        max_datagram: longer datagrams are dropped and counted.
        max_queue: drop (and count) a datagram when its worker's mailbox
            already holds this many messages.
        reuse_port: set ``SO_REUSEPORT``.
        recv_buffer: set ``SO_RCVBUF`` (bytes) for bursts; the kernel caps it
            at ``net.core.rmem_max``. Datagrams the kernel drops because the
            buffer is full are counted as ``dropped_kernel`` (Linux).
        mailbox_size: the bound of the server's own mailbox, at least 1:
            where replies wait while the socket's buffer is full; past it a
            worker's ``send`` raises ``MailboxFull``.

    Resource handling:
        Binding happens in ``init`` (``spawn_meta`` raises ``OSError`` for a
        busy port or a bad address). The socket is closed when the server
        ends: exit signal, parent exit, node stop.
    """

    eager = True  # its handler is a non-blocking write: run it at once when idle

    def __init__(
        self,
        host: str,
        port: int,
        *,
        pool: Sequence[PID | str] | None = None,
        max_datagram: int = 65507,
        max_queue: int = 1024,
        reuse_port: bool = False,
        recv_buffer: int | None = None,
        mailbox_size: int = 1024,
    ) -> None:
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        if mailbox_size < 1:
            raise ValueError("mailbox_size must be at least 1")
        self.host = host
        self.port = port
        self._workers = Pool(None, pool)
        self._max_datagram = max_datagram
        self._max_queue = max_queue
        self._alias: Alias | None = None  # set once spawned: the hot path reads it
        self._parent: PID | None = None
        self._reuse_port = reuse_port
        self._recv_buffer = recv_buffer
        self._inode = 0
        self.mailbox_size = mailbox_size
        self._transport: asyncio.DatagramTransport | None = None
        self._sock: socket.socket | None = None  # the socket (the transport owns it)
        self._writers: dict[Any, PID] = {}  # who last wrote to an address
        self._received_count = 0
        self._sent_count = 0
        self._stats = {
            "dropped_full": 0,
            "dropped_oversize": 0,
            "dropped_no_worker": 0,
            "send_errors": 0,
            "send_paused": 0,
        }
        self._last_log: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}

    async def init(self) -> None:
        """Bind the socket (here, not in the loop: one error, and no half-made transport)."""
        self._alias = self.id
        self._parent = self.parent
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            if self._reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if self._recv_buffer:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._recv_buffer)
            if sys.platform == "linux":
                # Unconnected UDP sockets hear of ICMP errors only with
                # IP_RECVERR; the failed destination is then in the error queue.
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, 25, 1)  # IPV6_RECVERR
                else:
                    sock.setsockopt(socket.IPPROTO_IP, 11, 1)  # IP_RECVERR
            self._sock = sock
            sock.bind(address)
            sock.setblocking(False)
            self._inode = os.fstat(sock.fileno()).st_ino
            # The transport owns the socket from here on, and closes it.
            self._transport, _ = await loop.create_datagram_endpoint(
                lambda: _Protocol(self), sock=sock
            )
        except BaseException:
            self._sock = None
            sock.close()
            raise

    @property
    def address(self) -> Any:
        """The bound address: ``(host, port)``, or a 4-tuple for IPv6."""
        if self._transport is None:
            raise MetakitError("the server is not bound")
        return self._transport.get_extra_info("sockname")

    # -- receiving (the hot path) ---------------------------------------------

    def _received(self, data: bytes, addr: Any) -> None:
        self._received_count += 1
        if len(data) > self._max_datagram:
            self._count("dropped_oversize", f"datagram of {len(data)} bytes from {addr!r}")
            return
        workers = self._workers
        worker = self._parent if not workers.targets else workers.pick(self)
        if worker is None:
            self._count("dropped_no_worker", "no live pool member")
            return
        packet = UDPPacket(self._alias, addr, data)  # type: ignore[arg-type]
        if not self.offer(worker, packet, max_pending=self._max_queue):
            self._count("dropped_full", f"the mailbox of {worker!r} is full")

    def _count(self, kind: str, what: str) -> None:
        self._stats[kind] += 1
        now = time.monotonic()
        if now - self._last_log.get(kind, 0.0) < _LOG_EVERY:
            self._unlogged[kind] = self._unlogged.get(kind, 0) + 1
            return
        self._last_log[kind] = now
        more = self._unlogged.pop(kind, 0)
        extra = f" (and {more} more since the last report)" if more else ""
        self.log.warning("%s: %s%s; %s so far", kind, what, extra, self._stats[kind])

    # -- sending ----------------------------------------------------------------

    def handle_message(self, sender: PID, message: Any) -> None:
        """Send ``UDPPacket(server, addr, data)`` to ``addr`` (others are logged)."""
        if message.__class__ is UDPPacket:
            assert self._transport is not None
            try:
                if message.data:
                    self._transport.sendto(message.data, message.addr)
                else:
                    self._send_empty(message.addr)
            except (TypeError, ValueError, OSError) as exc:
                # A malformed reply (not bytes, a bad address) fails that reply,
                # not the server: counted, logged, and told to the worker.
                self._count("send_errors", f"reply to {message.addr!r} failed: {exc}")
                try:
                    self.send_system(sender, UDPError(self.id, message.addr, exc))
                except NoProcess:
                    pass  # the writer is gone: the count and the log are all there is
                return
            self._sent_count += 1
            writers = self._writers
            if len(writers) > 4096:
                writers.clear()  # a hint, not a registry: keep it small
            writers[message.addr] = sender
        else:
            self.log.warning("unexpected message %r from %r", message, sender)

    def _send_empty(self, addr: Any) -> None:
        # asyncio's transport ignores sendto(b"") (Python 3.11); an empty
        # datagram is legal UDP, so it goes out on the socket directly.
        assert self._sock is not None
        try:
            self._sock.sendto(b"", addr)
        except OSError as exc:
            self._error(exc)

    def _pause_writing(self) -> None:
        self._count("send_paused", "the socket's send buffer is full; replies wait")
        self.hold_writes()

    def _error(self, exc: Exception) -> None:
        failed: list[Any] = []
        if self._sock is not None and sys.platform == "linux":
            try:
                while True:  # drain the error queue: uvloop needs it drained
                    failed.append(self._sock.recvmsg(1, 512, socket.MSG_ERRQUEUE)[3])
            except OSError:
                pass
        self._stats["send_errors"] += max(1, len(failed))
        error = exc if isinstance(exc, OSError) else OSError(str(exc))
        for addr in failed or [None]:
            writer = self._writers.pop(addr, None) if addr is not None else None
            # The process that last wrote to that address, else a worker.
            for target in (writer, self._workers.pick(self)):
                if target is None:
                    continue
                try:
                    self.send_system(target, UDPError(self.id, addr, error))
                except NoProcess:
                    continue
                break

    def _lost(self, exc: Exception | None) -> None:
        if self.alive:
            self.exit(exc if exc is not None else "closed")

    # -- ending -------------------------------------------------------------------

    def terminate(self, reason: Any) -> None:
        """Close the socket (the port is free once the transport lets go of it)."""
        self._sock = None
        if self._transport is not None:
            self._transport.abort()
        self._writers.clear()

    def statistics(self) -> UDPServerStatistics:
        """A snapshot of the counters."""
        stats = self._stats
        return UDPServerStatistics(
            received=self._received_count,
            sent=self._sent_count,
            dropped_full=stats["dropped_full"],
            dropped_oversize=stats["dropped_oversize"],
            dropped_no_worker=stats["dropped_no_worker"],
            send_errors=stats["send_errors"],
            send_paused=stats["send_paused"],
            dropped_kernel=self.kernel_drops(),
        )

    def kernel_drops(self) -> int | None:
        """Datagrams the kernel dropped for this socket (receive buffer full), if known.

        Read from ``/proc/net/udp`` or ``udp6`` (Linux); None elsewhere.
        """
        inode = str(self._inode)
        for table in ("/proc/net/udp", "/proc/net/udp6"):
            try:
                with open(table) as rows:
                    for row in rows:
                        fields = row.split()
                        if len(fields) > 12 and fields[9] == inode:
                            return int(fields[12])
            except OSError:
                return None
        return None

    def handle_inspect(self) -> dict[str, str]:
        """The counters and the address."""
        info = super().handle_inspect()
        info["address"] = str(self.address) if self._transport else "-"
        return info
