"""The messages a TCP connection meta exchanges with its worker.

One shape for every connection, accepted or outgoing::

    TCPConnect(conn, peer, local)   once, first
    TCPMessage(conn, data)          per chunk (Raw) or frame, in order
    TCPDisconnect(conn, reason)     exactly once, last

The worker writes by sending ``TCPMessage(conn, data)`` to ``conn``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..ids import Alias
from ..messages import fast_init

__all__ = ["TCPConnect", "TCPDisconnect", "TCPMessage"]


@fast_init
@dataclass(frozen=True, slots=True)
class TCPConnect:
    """A connection is open.

    Attributes:
        conn: the connection meta's Alias; send it ``TCPMessage`` to write.
        peer: the remote address, as the socket reports it.
        local: the local address.
    """

    conn: Alias
    peer: Any
    local: Any


@fast_init
@dataclass(frozen=True, slots=True)
class TCPMessage:
    """Data on a connection, in either direction.

    Attributes:
        conn: the connection meta's Alias.
        data: ``bytes`` for ``Raw`` framing, else one frame (for ``JSON``, a
            decoded value; to write, the value to encode).
    """

    conn: Alias
    data: Any


@fast_init
@dataclass(frozen=True, slots=True)
class TCPDisconnect:
    """The connection has ended; nothing more comes from it.

    Attributes:
        conn: the connection meta's Alias.
        reason: ``"closed"`` (the peer closed it), ``"normal"`` (you sent
            ``send_exit(conn, "normal")``), ``"kill"``, ``"idle"``,
            ``"shutdown"``, or an exception: a ``ConnectionError`` from the
            socket, a :class:`~metakit.FramingError` for bad input.
    """

    conn: Alias
    reason: Any
