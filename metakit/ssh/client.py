"""SSHClient: an outgoing SSH session as a meta-process."""

from __future__ import annotations

from typing import Any

import asyncssh

from ..framing import Framer
from .connection import SSHConnection
from .messages import SSHConnect

__all__ = ["SSHClient"]


class SSHClient(SSHConnection, asyncssh.SSHClientSession[bytes]):
    """Log in to ``host:port`` and open one session: the parent gets the same
    messages as a server's worker.

    ::

        conn = await self.spawn_meta(
            SSHClient("build.example", 22, username="ci", client_keys=["~/.ssh/id_ed25519"],
                      known_hosts="~/.ssh/known_hosts", command="make test", framing=Line())
        )
        # SSHConnect, an SSHMessage per output line, SSHDisconnect(conn, exit_status)

    Args:
        host: the server's host name or address.
        port: the server's port.
        username: the user to log in as.
        client_keys: private keys to log in with: paths or asyncssh keys.
        known_hosts: the server keys to trust: a known_hosts path, or
            asyncssh's other forms; None trusts any server key (only for
            tests on 127.0.0.1).
        command: the command to run; None opens a shell.
        password: a password to log in with, instead of or besides the keys.
        framing: a framer template (cloned); default ``Raw()``. The remote
            command's stderr arrives on the same stream, as ``2>&1``.
        connect_timeout: seconds for connecting and logging in.
        idle_timeout: end with reason ``"idle"`` after this long without traffic.
        high_watermark: pause reading (the channel's window) when the parent's
            mailbox holds more messages than this.
        low_watermark: resume reading when it is down to about this many.

    Error handling:
        Connection and login errors (``ConnectionRefusedError``,
        ``asyncssh.PermissionDenied``, ``asyncssh.HostKeyNotVerifiable``,
        ``TimeoutError``...) raise at ``spawn_meta``. The ``SSHDisconnect``
        reason is the remote command's exit status (an ``int``) when it sent
        one.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        username: str,
        client_keys: Any,
        known_hosts: Any,
        command: str | None = None,
        password: str | None = None,
        framing: Framer[Any] | None = None,
        connect_timeout: float = 10.0,
        idle_timeout: float | None = None,
        high_watermark: int = 64,
        low_watermark: int = 16,
    ) -> None:
        super().__init__(
            framing,
            idle_timeout=idle_timeout,
            high_watermark=high_watermark,
            low_watermark=low_watermark,
        )
        self.host = host
        self.port = port
        self.user = username
        self.command = command
        self._options = {
            "username": username,
            "client_keys": client_keys,
            "known_hosts": known_hosts,
            "password": password,
            "connect_timeout": connect_timeout,
            "login_timeout": connect_timeout,
            # Only what is given here: no ~/.ssh/config, no agent.
            "config": None,
            "agent_path": None,
        }
        self._ssh: Any = None
        self._status: int | None = None

    async def init(self) -> None:
        """Connect, log in and open the session."""
        self._ssh = await asyncssh.connect(self.host, self.port, **self._options)
        try:
            await self._ssh.create_session(lambda: self, self.command, encoding=None)
        except BaseException:
            self._ssh.close()
            raise

    def session_started(self) -> None:
        self.open(None, SSHConnect(self.id, self.user or "", self.command, None, self.peer))

    def exit_status_received(self, status: int) -> None:
        """The remote command's exit status: the Disconnect's reason."""
        self._status = status

    def _closed_reason(self) -> Any:
        return self._status if self._status is not None else "closed"

    def _close_channel(self, chan: Any, reason: Any) -> None:
        chan.write_eof()  # the command sees the end of its input
        chan.close()

    def terminate(self, reason: Any) -> None:
        """Close the session and the SSH connection."""
        super().terminate(reason)
        if self._ssh is not None:
            self._ssh.close()
            self.create_task(self._ssh.wait_closed(), name=f"metakit SSH close {self.id!r}")
