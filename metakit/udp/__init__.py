"""UDP meta-process: :class:`UDPServer` and the :class:`UDPPacket` / :class:`UDPError` messages."""

from __future__ import annotations

from .messages import UDPError, UDPPacket
from .server import UDPServer, UDPServerStatistics

__all__ = ["UDPError", "UDPPacket", "UDPServer", "UDPServerStatistics"]
