"""WebSocket meta-processes: :class:`WebSocketHandler` (server, on aiohttp) and
:class:`WebSocketClient` (on the ``websockets`` library), with the
``WSConnect`` / ``WSMessage`` / ``WSDisconnect`` messages.
"""

from __future__ import annotations

from .client import Backoff, WebSocketClient
from .connection import broadcast
from .handler import WebSocketHandler, WebSocketHandlerStatistics, WSConnection
from .messages import WSConnect, WSDisconnect, WSMessage

__all__ = [
    "Backoff",
    "WSConnect",
    "WSConnection",
    "WSDisconnect",
    "WSMessage",
    "WebSocketClient",
    "WebSocketHandler",
    "WebSocketHandlerStatistics",
    "broadcast",
]
