"""TCP meta-processes: :class:`TCPServer`, :class:`TCPClient` and their messages.

Every connection, accepted or outgoing, is a :class:`TCPConnection` meta
whose Alias is the connection id in ``TCPConnect``, ``TCPMessage`` and
``TCPDisconnect``. See :mod:`metakit.connection` for who closes what.
"""

from __future__ import annotations

from .client import TCPClient
from .connection import TCPConnection
from .messages import TCPConnect, TCPDisconnect, TCPMessage
from .server import TCPServer, TCPServerStatistics

__all__ = [
    "TCPClient",
    "TCPConnect",
    "TCPConnection",
    "TCPDisconnect",
    "TCPMessage",
    "TCPServer",
    "TCPServerStatistics",
]
