"""Web meta-processes on aiohttp: :class:`WebServer`, :class:`WebHandler` and
:class:`SSEHandler` (Server-Sent Events).

``WebHandler`` mounts on any route of any aiohttp app (``WebServer``'s, or
one you run yourself in the same loop) and turns each request into a
``call`` to a worker process, whose answer becomes the response.
"""

from __future__ import annotations

from .handler import WebHandler, WebHandlerStatistics, to_response
from .messages import SSEConnect, SSEDisconnect, SSEEvent, WebRequest
from .server import WebServer, WebServerStatistics
from .sse import SSEConnection, SSEHandler, SSEHandlerStatistics

__all__ = [
    "SSEConnect",
    "SSEConnection",
    "SSEDisconnect",
    "SSEEvent",
    "SSEHandler",
    "SSEHandlerStatistics",
    "WebHandler",
    "WebHandlerStatistics",
    "WebRequest",
    "WebServer",
    "WebServerStatistics",
    "to_response",
]
