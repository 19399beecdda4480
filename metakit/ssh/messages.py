"""The messages an SSH session meta exchanges with its worker.

One shape for every session, accepted or outgoing (as TCP's)::

    SSHConnect(conn, user, command, term, peer)   once, first
    SSHMessage(conn, data)                        per chunk (Raw) or frame, in order
    SSHDisconnect(conn, reason)                   exactly once, last

The worker writes by sending ``SSHMessage(conn, data)`` to ``conn``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..ids import Alias
from ..messages import fast_init

__all__ = ["SSHConnect", "SSHDisconnect", "SSHMessage"]


@fast_init
@dataclass(frozen=True, slots=True)
class SSHConnect:
    """A session channel is open.

    Attributes:
        conn: the session meta's Alias; send it ``SSHMessage`` to write.
        user: the authenticated user name.
        command: the command of an exec session (``ssh host CMD``); None for
            a shell (or a client's session without a command).
        term: the terminal type when a pty was requested (``"xterm"``...), else None.
        peer: the remote address, as the socket reports it.
    """

    conn: Alias
    user: str
    command: str | None
    term: str | None
    peer: Any


@fast_init
@dataclass(frozen=True, slots=True)
class SSHMessage:
    """Data on a session, in either direction.

    Attributes:
        conn: the session meta's Alias.
        data: ``bytes`` with ``Raw`` framing (the default), else one frame;
            to write, the bytes or the frame to encode.
    """

    conn: Alias
    data: Any


@fast_init
@dataclass(frozen=True, slots=True)
class SSHDisconnect:
    """The session has ended; nothing more comes from it.

    Attributes:
        conn: the session meta's Alias.
        reason: ``"closed"`` (the peer closed it), ``"normal"`` (you sent
            ``send_exit(conn, "normal")``), ``"idle"``, ``"shutdown"``,
            ``"kill"``, an exception (a lost connection, a
            :class:`~metakit.FramingError` for bad input), or, for an
            :class:`~metakit.ssh.SSHClient`, the remote command's exit status
            (an ``int``).
    """

    conn: Alias
    reason: Any
