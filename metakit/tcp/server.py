"""TCPServer: a listening socket as a meta-process; one connection meta per client."""

from __future__ import annotations

import asyncio
import ssl as _ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..connection import ConnState
from ..connections import ConnectionSet
from ..errors import MetakitError
from ..framing import Framer, Raw
from ..ids import PID
from ..meta import Meta
from ..pool import Pool
from .connection import TCPConnection, _ServerTLS

__all__ = ["TCPServer", "TCPServerStatistics"]


@dataclass(frozen=True, slots=True)
class TCPServerStatistics:
    """A TCP server's counters at one moment (``server.statistics()``).

    Attributes:
        accepted: connections served: handed to a worker (with TLS, once the
            handshake was done).
        rejected: connections closed at once: over ``max_connections``, no
            live worker, or the node stopping.
        connections: connections open now, TLS handshakes under way included.
        handshake_failed: TLS handshakes that failed or timed out (no
            ClientHello, a bad one, the peer gone); the worker never heard of
            those connections.
    """

    accepted: int
    rejected: int
    connections: int
    handshake_failed: int


class TCPServer(Meta):
    """Listen on ``host:port``; every accepted connection becomes a :class:`TCPConnection`.

    ::

        class Echo(metakit.Process):
            async def init(self) -> None:
                self.server = TCPServer("127.0.0.1", 7000, framing=Line(max_length=4096))
                await self.spawn_meta(self.server)      # binds here: errors raise here

            def handle_message(self, sender, message):
                match message:
                    case TCPMessage(conn, data):
                        self.send(conn, TCPMessage(conn, data))

    The worker (the parent, or with ``pool=[...]`` the next live pool member,
    round-robin) gets ``TCPConnect``, ``TCPMessage`` per chunk or frame, and
    exactly one ``TCPDisconnect`` per connection.

    Args:
        host: address to bind (``"127.0.0.1"``, ``"::1"``, ``"0.0.0.0"``...).
        port: port to bind; 0 picks a free one (read :attr:`address` after spawning).
        framing: a framer template, cloned per connection; default ``Raw()``.
        pool: names or PIDs of worker processes; dead ones are skipped.
        ssl: an ``ssl.SSLContext`` for TLS. The server listens without TLS
            and runs each handshake itself after the accept, so a connection
            holds its ``max_connections`` slot from the accept on; its worker
            gets ``TCPConnect`` once the handshake is done, and never hears of
            one that fails.
        max_connections: beyond it, a new connection is closed at once,
            before any byte is read (with TLS, before the handshake): the
            peer sees EOF. Counted as ``rejected``. Default: no limit.
        idle_timeout: seconds without a read or a write after which a
            connection ends with reason ``"idle"``: the worker gets
            ``TCPDisconnect(conn, "idle")``, the peer sees the connection
            closed after the writes already queued. Default 300; None: never.
        backlog: the listen backlog.
        reuse_port: set ``SO_REUSEPORT`` (several servers on one port).
        mailbox_size: the bound of each connection's mailbox (at least 1):
            the writes that wait while the peer is not reading (the socket's
            buffers full). A full one raises ``MailboxFull`` at the worker
            writing to it (``broadcast`` skips the connection and counts it
            as ``dropped``); the peer, once it reads again, gets every write
            that was taken, in order. Default 256.
        high_watermark: pause reading when the worker's mailbox holds more
            messages than this: what a slow worker can have queued per
            connection is about this many frames (with ``Raw()``, of up to
            ``read_size``, 64 KiB, each).
        low_watermark: resume reading when it is down to about this many.
        ssl_handshake_timeout: seconds from the accept for the TLS handshake;
            a peer that has not completed it by then (one that never sends a
            ClientHello, say) is disconnected: its socket is closed, it is
            counted as ``handshake_failed``, and the worker never hears of
            it. Default 10.

    Resource handling:
        Binding happens in ``init``, so ``spawn_meta`` raises ``OSError`` for
        a busy port or a bad address. When the server ends (exit signal, or
        its parent ending), it stops listening at once, freeing the port, and
        ends its connections with the same reason. ``node.stop()`` stops it
        listening first, and ends the connections still in their TLS
        handshake, while the workers finish what is in flight.

    Error handling:
        ``ValueError`` for a ``mailbox_size`` below 1, a timeout that is not
        positive, or watermarks out of order.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        framing: Framer[Any] | None = None,
        pool: Sequence[PID | str] | None = None,
        ssl: _ssl.SSLContext | None = None,
        max_connections: int | None = None,
        idle_timeout: float | None = 300.0,
        backlog: int = 128,
        reuse_port: bool = False,
        mailbox_size: int = 256,
        high_watermark: int = 64,
        low_watermark: int = 16,
        ssl_handshake_timeout: float = 10.0,
    ) -> None:
        if mailbox_size < 1:
            raise ValueError(f"mailbox_size must be at least 1, not {mailbox_size!r}")
        if idle_timeout is not None and not idle_timeout > 0:
            raise ValueError(f"idle_timeout must be positive (or None), not {idle_timeout!r}")
        if not ssl_handshake_timeout > 0:
            raise ValueError(
                f"ssl_handshake_timeout must be positive, not {ssl_handshake_timeout!r}"
            )
        if not 0 <= low_watermark < high_watermark:
            raise ValueError("need 0 <= low_watermark < high_watermark")
        self.host = host
        self.port = port
        self._framing = framing or Raw()
        self._workers = Pool(None, pool)
        self._max_connections = max_connections
        self._idle = idle_timeout
        self._backlog = backlog
        self._reuse_port = reuse_port
        self._conn_mailbox = mailbox_size
        self._watermarks = (high_watermark, low_watermark)
        self._tls = (
            None
            if ssl is None
            else _ServerTLS(ssl, ssl_handshake_timeout, self._tls_serve, self._tls_failed)
        )
        self._server: asyncio.Server | None = None
        self._conns = ConnectionSet(self)
        self._accepted = 0
        self._local: Any = None  # the last connection's local address, shared by the next
        self._rejected = 0
        self._handshake_failed = 0

    async def init(self) -> None:
        """Bind and listen (without TLS: each connection runs its own handshake)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._new_connection,
            self.host,
            self.port,
            backlog=self._backlog,
            reuse_port=self._reuse_port or None,
        )

    @property
    def address(self) -> tuple[str, int]:
        """The bound ``(host, port)`` (the first socket's, if several)."""
        if self._server is None or not self._server.sockets:
            raise MetakitError("the server is not listening")
        sockname = self._server.sockets[0].getsockname()
        return sockname[0], sockname[1]

    @property
    def connections(self) -> int:
        """How many connections are open."""
        return len(self._conns)

    def _new_connection(self) -> TCPConnection:
        # The protocol factory: the connection meta is spawned once connected.
        high, low = self._watermarks
        conn = TCPConnection(
            self._framing, idle_timeout=self._idle, high_watermark=high, low_watermark=low
        )
        conn._server = self  # the server itself, not a bound method: 64 bytes less each
        return conn

    def _accept(self, conn: TCPConnection) -> PID | None:
        # Connected: spawn the connection meta and say who serves it (None: refused).
        worker = self._workers.pick(self) if self.alive else None
        if worker is None:
            self._refuse(conn)
            return None
        if not self._admit(conn):
            return None
        self._accepted += 1
        return worker

    def _accept_tls(self, conn: TCPConnection) -> None:
        # Connected, no TLS byte read yet: the connection takes its slot now,
        # so a peer that never completes a handshake holds one slot until the
        # handshake timeout, and max_connections of them are all there can be.
        # The worker is picked once the handshake is done (_tls_serve).
        if not self.alive:
            self._refuse(conn)
        elif self._admit(conn):
            assert self._tls is not None
            conn._start_tls(self._tls)

    def _admit(self, conn: TCPConnection) -> bool:
        # A free slot: spawn the connection into it; else (or the node is
        # stopping) refuse it.
        if self._max_connections is not None and len(self._conns) >= self._max_connections:
            self._refuse(conn)
            return False
        try:
            self.spawn_nowait(conn, mailbox_size=self._conn_mailbox)
        except MetakitError:  # the node is stopping
            self._refuse(conn)
            return False
        self._conns.add(conn)
        return True

    def _refuse(self, conn: TCPConnection) -> None:
        self._rejected += 1
        conn.close_transport("refused", abort=False)

    def _tls_serve(self, conn: TCPConnection) -> PID | None:
        # A connection's TLS handshake is done: who serves it (None: refuse it).
        worker = self._workers.pick(self) if self.alive else None
        if worker is None:
            self._rejected += 1
        else:
            self._accepted += 1
        return worker

    def _tls_failed(self, exc: BaseException) -> None:
        self._handshake_failed += 1

    def quiesce(self) -> None:
        """``node.stop()``: refuse new connections while the workers finish; the
        open ones end with the server, as usual, and those still in their TLS
        handshake (no worker has heard of them) end now."""
        if self._server is not None:
            self._server.close()
        for conn in self._conns:
            if conn.state is ConnState.NEW:
                conn.exit("shutdown")

    def terminate(self, reason: Any) -> None:
        """Stop listening (the port is free at once) and end every connection."""
        if self._server is not None:
            self._server.close()
        self._conns.end_all(reason)

    def statistics(self) -> TCPServerStatistics:
        """A snapshot of the counters."""
        return TCPServerStatistics(
            accepted=self._accepted,
            rejected=self._rejected,
            connections=len(self._conns),
            handshake_failed=self._handshake_failed,
        )

    def handle_inspect(self) -> dict[str, str]:
        """The counters, the address and the workers."""
        info = super().handle_inspect()
        info["address"] = str(self.address) if self._server and self._server.sockets else "-"
        info["workers"] = repr(self._workers)
        return info
