"""SSH meta-processes (``pip install 'metakit[ssh]'``, on asyncssh): :class:`SSHServer`,
:class:`SSHClient`, their messages, and :class:`Console`, a node console over SSH.

Every session channel, accepted or outgoing, is an :class:`SSHConnection` meta
whose Alias is the connection id in ``SSHConnect``, ``SSHMessage`` and
``SSHDisconnect``, exactly as a TCP connection's (see
:mod:`metakit.connection` for who closes what).
"""

from __future__ import annotations

try:
    import asyncssh  # noqa: F401
except ImportError as exc:  # pragma: no cover - the extra is missing
    raise ImportError("metakit.ssh needs asyncssh: pip install 'metakit[ssh]'") from exc

from .client import SSHClient
from .connection import SSHConnection
from .console import Console
from .messages import SSHConnect, SSHDisconnect, SSHMessage
from .server import SSHServer, SSHServerStatistics

__all__ = [
    "Console",
    "SSHClient",
    "SSHConnect",
    "SSHConnection",
    "SSHDisconnect",
    "SSHMessage",
    "SSHServer",
    "SSHServerStatistics",
]
