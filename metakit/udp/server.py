"""UDPServer: a UDP socket as a meta-process.

Theory of operation
-------------------

A small ``asyncio.DatagramProtocol`` hands each datagram to the server meta,
which appends ``UDPPacket(server, addr, data)`` to the next worker's mailbox
(the parent, or pool members round-robin per datagram). Replies arrive in
the server's own mailbox and go out with ``transport.sendto``.

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
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from .._state import RUNNING
from .._workers import Workers
from ..errors import MetakitError
from ..ids import PID
from ..meta import Meta
from .messages import UDPError, UDPPacket

__all__ = ["UDPServer"]

_LOG_EVERY = 1.0  # seconds between two log lines about drops of one kind


def _packet(server: Any, addr: Any, data: bytes) -> UDPPacket:
    # UDPPacket(...) for the hot path: a frozen dataclass's __init__ goes
    # through object.__setattr__ per field; the slot descriptors are direct.
    packet = _new_packet(UDPPacket)
    _set_server(packet, server)
    _set_addr(packet, addr)
    _set_data(packet, data)
    return packet


_new_packet = object.__new__
_set_server = vars(UDPPacket)["server"].__set__
_set_addr = vars(UDPPacket)["addr"].__set__
_set_data = vars(UDPPacket)["data"].__set__


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
        self.server._mk_unhold()

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
        mailbox_size: the bound of the server's own mailbox, where replies
            wait (0: unbounded).

    Resource handling:
        Binding happens in ``init`` (``spawn_meta`` raises ``OSError`` for a
        busy port or a bad address). The socket is closed when the server
        ends: exit signal, parent exit, node stop.
    """

    _mk_eager = True  # its handler is a non-blocking write: run it at once when idle

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
        mailbox_size: int = 0,
    ) -> None:
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        self.host = host
        self.port = port
        self._workers = Workers(None, pool, required=False)
        self._max_datagram = max_datagram
        self._queue_entries = 2 * max_queue  # mailbox entries: two per message
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
        parent = self._mk_parent_proc
        worker = parent if not workers.targets else workers.pick(self._mk_node, parent)
        if worker is None:
            self._count("dropped_no_worker", "no live pool member")
            return
        q = worker._mk_q
        if len(q) >= self._queue_entries or len(q) >= worker._mk_limit:
            self._count("dropped_full", f"the mailbox of {worker._mk_ident!r} is full")
            return
        q.append(self._mk_parent_proc._mk_pid)
        q.append(_packet(self._mk_alias, addr, data))
        self._mk_out += 1
        if not worker._mk_scheduled:
            worker._mk_scheduled = True
            worker._mk_kick()

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
                writer = self._mk_node._mk_table.get(sender.id)
                if writer is not None:
                    error = UDPError(self._mk_alias, message.addr, exc)
                    writer._mk_deliver_system(self._mk_parent_proc._mk_pid, error)
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
        self._mk_hold()

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
            worker = self._mk_node._mk_table.get(writer.id) if writer is not None else None
            if worker is None or worker._mk_state != RUNNING:
                worker = self._workers.pick(self._mk_node, self._mk_parent_proc)
            if worker is not None:
                worker._mk_deliver_system(
                    self._mk_parent_proc._mk_pid, UDPError(self._mk_alias, addr, error)
                )

    def _lost(self, exc: Exception | None) -> None:
        if self._mk_state == RUNNING:
            self._mk_end(exc if exc is not None else "closed")

    # -- ending -------------------------------------------------------------------

    def terminate(self, reason: Any) -> None:
        """Close the socket (the port is free once the transport lets go of it)."""
        self._sock = None
        if self._transport is not None:
            self._transport.abort()
        self._writers.clear()

    def statistics(self) -> Mapping[str, int]:
        """A snapshot of the counters: ``received``, ``sent``, ``dropped_full``,
        ``dropped_oversize``, ``dropped_no_worker``, ``send_errors``,
        ``send_paused``, and ``dropped_kernel`` where the platform says."""
        counters = dict(self._stats, received=self._received_count, sent=self._sent_count)
        kernel = self.kernel_drops()
        if kernel is not None:
            counters["dropped_kernel"] = kernel
        return MappingProxyType(counters)

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
        """Address and the counters: received, sent, dropped by cause, send errors."""
        info = {k: str(v) for k, v in self.statistics().items()}
        info["address"] = str(self.address) if self._transport else "-"
        return info
