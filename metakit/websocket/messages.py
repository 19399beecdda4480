"""The messages a WebSocket connection meta exchanges with its worker.

The same shape as TCP::

    WSConnect(conn, peer, request_info)   once, first (again after a client reconnects)
    WSMessage(conn, data)                 per message, in order
    WSDisconnect(conn, code, reason)      exactly once per connection

The worker writes with ``send(conn, WSMessage(conn, data))``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..ids import Alias
from ..messages import fast_init

__all__ = ["WSConnect", "WSDisconnect", "WSMessage"]


@fast_init
@dataclass(frozen=True, slots=True)
class WSConnect:
    """A WebSocket is open.

    Attributes:
        conn: the connection meta's Alias.
        peer: the remote address.
        request_info: for a server connection, the upgrade request as a
            :class:`~metakit.web.WebRequest` (path, query, headers...); for
            a client, None.
    """

    conn: Alias
    peer: Any
    request_info: Any


@fast_init
@dataclass(frozen=True, slots=True)
class WSMessage:
    """One message, either direction.

    Attributes:
        conn: the connection meta's Alias.
        data: ``str`` for a text frame, ``bytes`` for a binary one; with
            ``codec="json"``, the decoded value (and the value to encode).
    """

    conn: Alias
    data: Any


@fast_init
@dataclass(frozen=True, slots=True)
class WSDisconnect:
    """The WebSocket has closed; nothing more comes from it.

    Attributes:
        conn: the connection meta's Alias.
        code: the close code: 1000 normal, 1001 going away (``"shutdown"``),
            1006 dropped without a close frame (also a failed heartbeat),
            1007 undecodable data, 1009 message too big, 1011 the worker or
            the server failed.
        reason: the peer's close reason (a str), or the exit reason when
            this side closed it.
    """

    conn: Alias
    code: int
    reason: Any
