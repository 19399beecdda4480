"""SSHServer: an SSH listener as a meta-process; one session meta per channel.

asyncssh runs the protocol (key exchange, authentication, channels); this
module decides who gets in and turns each session channel into an
:class:`~metakit.ssh.connection.SSHConnection` meta for a worker, as
``TCPServer`` does for sockets. Per SSH connection asyncssh asks a
:class:`_Gate` (its ``SSHServer`` callbacks) which users and keys may log
in and whether a session may open; the gate asks the meta. The meta keeps
every SSH connection it accepted, because asyncssh's acceptor ``close()``
stops listening but leaves them open: ``terminate`` closes them.
"""

from __future__ import annotations

import asyncio
import inspect
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncssh

from ..connections import ConnectionSet
from ..errors import MetakitError
from ..framing import Framer, Raw
from ..ids import PID
from ..meta import Meta
from ..pool import Pool
from .connection import SSHConnection
from .messages import SSHConnect

__all__ = ["SSHServer", "SSHServerStatistics"]

Password = Callable[[str, str], Any]
"""``(user, password) -> bool``, plain or async."""


@dataclass(frozen=True, slots=True)
class SSHServerStatistics:
    """An SSH server's counters at one moment (``server.statistics()``).

    Attributes:
        connections: SSH connections open now (logged in or logging in).
        sessions: session channels open now.
        accepted: session channels served (handed to a worker).
        refused: session channels refused: over ``max_sessions``, no live
            worker, or the node stopping.
        auth_failed: login attempts refused (a wrong key or password, or no
            credentials configured).
    """

    connections: int
    sessions: int
    accepted: int
    refused: int
    auth_failed: int


def _host_keys(given: Any) -> list[Any]:
    if given is None:
        return []
    if isinstance(given, str | os.PathLike | asyncssh.SSHKey):
        given = [given]
    return [
        asyncssh.read_private_key(os.fspath(k)) if isinstance(k, str | os.PathLike) else k
        for k in given
    ]


def _authorized(given: Any) -> asyncssh.SSHAuthorizedKeys | None:
    """A path to an authorized_keys file, its text, or a list of public keys."""
    if given is None or isinstance(given, asyncssh.SSHAuthorizedKeys):
        return given
    if isinstance(given, str) and ("\n" in given.strip() or given.lstrip().startswith(_KEY_TYPES)):
        return asyncssh.import_authorized_keys(given)
    if isinstance(given, str | os.PathLike):
        return asyncssh.read_authorized_keys(os.path.expanduser(given))
    lines = []
    for key in given:
        if isinstance(key, asyncssh.SSHKey):
            key = key.export_public_key().decode()
        lines.append(str(key).strip())
    return asyncssh.import_authorized_keys("\n".join(lines) + "\n")


_KEY_TYPES = ("ssh-", "ecdsa-", "sk-")  # how a line of public key text starts


class _Gate(asyncssh.SSHServer):
    """asyncssh's per-connection callbacks: who logs in, whether a session opens."""

    def __init__(self, server: SSHServer) -> None:
        self._server = server
        self._conn: Any = None
        self._peer: Any = None

    def connection_made(self, conn: Any) -> None:
        self._conn = conn
        self._peer = conn.get_extra_info("peername")
        self._server._ssh_conns.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server._ssh_conns.discard(self._conn)

    def begin_auth(self, username: str) -> bool:
        return True  # always authenticate: without credentials configured nobody gets in

    def public_key_auth_supported(self) -> bool:
        return self._server._authorized is not None

    def validate_public_key(self, username: str, key: Any) -> bool:
        keys = self._server._authorized
        host, addr = (self._peer[0], self._peer[0]) if self._peer else ("", "")
        ok = keys is not None and keys.validate(key, host, addr) is not None
        if not ok:
            self._server._auth_failed += 1
        return ok

    def password_auth_supported(self) -> bool:
        return self._server._password is not None

    async def validate_password(self, username: str, password: str) -> bool:
        check = self._server._password
        ok = False
        if check is not None:
            result = check(username, password)
            ok = bool(await result) if inspect.isawaitable(result) else bool(result)
        if not ok:
            self._server._auth_failed += 1
        return ok

    def session_requested(self) -> Any:
        return self._server._new_session(self._conn) or False


class _ServerSession(SSHConnection, asyncssh.SSHServerSession[bytes]):
    """A server's session channel: it opens, telling its worker, once the
    client has said what it wants (a shell, an exec, a pty)."""

    def __init__(self, server: SSHServer, framing: Framer[Any], **options: Any) -> None:
        SSHConnection.__init__(self, framing, **options)
        self._server = server

    def pty_requested(self, term_type: str, term_size: Any, term_modes: Any) -> bool:
        self.term = term_type or None
        return True

    def shell_requested(self) -> bool:
        return True

    def exec_requested(self, command: str) -> bool:
        self.command = command
        return True

    def subsystem_requested(self, subsystem: str) -> bool:
        return False  # no sftp and the like: a session is a shell or a command

    def session_started(self) -> None:
        chan = self._chan
        self.user = chan.get_extra_info("username")
        worker = self._server._serve()
        if worker is None:
            self.close_transport("refused", abort=False)
            self.exit("refused")
            return
        self.open(worker, SSHConnect(self.id, self.user or "", self.command, self.term, self.peer))

    def _close_channel(self, chan: Any, reason: Any) -> None:
        # After the queued writes. Status 0 when the worker ended it, or when the
        # client sent EOF and had its answers (``ssh host cmd < file``); else 1.
        chan.exit(0 if reason in ("normal", "closed") else 1)


class SSHServer(Meta):
    """Listen for SSH on ``host:port``; every session channel becomes an
    :class:`~metakit.ssh.connection.SSHConnection` meta.

    ::

        class Echo(metakit.Process):
            async def init(self) -> None:
                server = SSHServer("127.0.0.1", 2222, authorized_keys="~/.ssh/authorized_keys")
                await self.spawn_meta(server)          # binds here: errors raise here

            def handle_message(self, sender, message):
                match message:
                    case SSHMessage(conn, data):
                        self.send(conn, SSHMessage(conn, data))

    The worker (the parent, or with ``pool=[...]`` the next live pool member,
    round-robin) gets ``SSHConnect``, ``SSHMessage`` per chunk or frame, and
    exactly one ``SSHDisconnect`` per session.

    Args:
        host: address to bind.
        port: port to bind; 0 picks a free one (read :attr:`address` after spawning).
        host_keys: private host keys: paths or asyncssh keys. None: an
            Ed25519 key is generated, and its ``SHA256:`` fingerprint logged
            at INFO (clients see a new key each run: give one for anything
            that lasts).
        authorized_keys: who may log in with a key: an authorized_keys file
            (a path), its text, or a list of public keys (asyncssh keys or
            ``"ssh-ed25519 AAAA..."`` lines).
        password: ``(user, password) -> bool``, plain or async, to allow
            password logins too. Without ``authorized_keys`` and
            ``password`` nobody logs in.
        pool: names or PIDs of worker processes; dead ones are skipped.
        framing: a framer template, cloned per session; default ``Raw()``.
        max_sessions: session channels open at once on the server; another
            channel open is refused (the client sees "session refused"), the
            others carry on. Default: no limit.
        idle_timeout: per session: end with reason ``"idle"`` after this many
            seconds with no data either way. Default: never.
        login_timeout: seconds a client has from connecting to logging in.
        line_editor: give pty sessions asyncssh's line editor (echo, history,
            arrow keys): the worker gets whole lines, as bytes.
        mailbox_size: the bound of each session's mailbox (its held writes).
        high_watermark: pause reading (the channel's window) when the
            worker's mailbox holds more messages than this.
        low_watermark: resume reading when it is down to about this many.
        reuse_port: set ``SO_REUSEPORT`` (several servers on one port).

    Resource handling:
        Binding happens in ``init``, so ``spawn_meta`` raises ``OSError``
        for a busy port. When the server ends it stops listening, ends its
        sessions with the same reason and closes every SSH connection it
        accepted. ``node.stop()`` stops it listening first.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        host_keys: Any = None,
        authorized_keys: Any = None,
        password: Password | None = None,
        pool: Sequence[PID | str] | None = None,
        framing: Framer[Any] | None = None,
        max_sessions: int | None = None,
        idle_timeout: float | None = None,
        login_timeout: float = 30.0,
        line_editor: bool = False,
        mailbox_size: int = 256,
        high_watermark: int = 64,
        low_watermark: int = 16,
        reuse_port: bool = False,
    ) -> None:
        if mailbox_size < 1:
            raise ValueError(f"mailbox_size must be at least 1, not {mailbox_size!r}")
        if idle_timeout is not None and not idle_timeout > 0:
            raise ValueError(f"idle_timeout must be positive (or None), not {idle_timeout!r}")
        if not login_timeout > 0:
            raise ValueError(f"login_timeout must be positive, not {login_timeout!r}")
        if max_sessions is not None and max_sessions < 1:
            raise ValueError(f"max_sessions must be at least 1, not {max_sessions!r}")
        if not 0 <= low_watermark < high_watermark:
            raise ValueError("need 0 <= low_watermark < high_watermark")
        self.host = host
        self.port = port
        self._host_keys = _host_keys(host_keys)
        self._authorized = _authorized(authorized_keys)
        self._password = password
        self._workers = Pool(None, pool)
        self._framing = framing or Raw()
        self._max_sessions = max_sessions
        self._idle = idle_timeout
        self._login_timeout = login_timeout
        self._line_editor = line_editor
        self._conn_mailbox = mailbox_size
        self._watermarks = (high_watermark, low_watermark)
        self._reuse_port = reuse_port
        self._acceptor: Any = None
        self._ssh_conns: set[Any] = set()
        self._sessions = ConnectionSet(self)
        self._accepted = 0
        self._refused = 0
        self._auth_failed = 0
        self.fingerprint: str | None = None

    async def init(self) -> None:
        """Bind and listen (generating a host key if none was given)."""
        keys = self._host_keys
        if not keys:
            keys = [asyncssh.generate_private_key("ssh-ed25519")]
            self.log.info("SSH host key generated: %s", keys[0].get_fingerprint())
        self.fingerprint = keys[0].get_fingerprint()
        self._acceptor = await asyncssh.listen(
            self.host,
            self.port,
            server_factory=lambda: _Gate(self),
            server_host_keys=keys,
            login_timeout=self._login_timeout,
            encoding="utf-8" if self._line_editor else None,
            line_editor=self._line_editor,
            allow_pty=True,
            reuse_port=self._reuse_port or None,
            # Our keys and passwords only: never the user's ~/.ssh, never a config file.
            authorized_client_keys=None,
            config=None,
        )

    @property
    def address(self) -> tuple[str, int]:
        """The bound ``(host, port)``."""
        if self._acceptor is None:
            raise MetakitError("the server is not listening")
        sockets = self._acceptor.sockets
        sockname = sockets[0].getsockname()
        return sockname[0], sockname[1]

    def _new_session(self, ssh_conn: Any) -> _ServerSession | None:
        # A session channel open: a meta for it, or None (refused).
        if not self.alive or (
            self._max_sessions is not None and len(self._sessions) >= self._max_sessions
        ):
            self._refused += 1
            return None
        high, low = self._watermarks
        session = _ServerSession(
            self, self._framing, idle_timeout=self._idle, high_watermark=high, low_watermark=low
        )
        try:
            self.spawn_nowait(session, mailbox_size=self._conn_mailbox)
        except MetakitError:  # the node is stopping
            self._refused += 1
            return None
        self._sessions.add(session)
        return session

    def _serve(self) -> PID | None:
        worker = self._workers.pick(self) if self.alive else None
        if worker is None:
            self._refused += 1
        else:
            self._accepted += 1
        return worker

    def quiesce(self) -> None:
        """``node.stop()``: stop listening while the workers finish."""
        if self._acceptor is not None:
            self._acceptor.close()

    def terminate(self, reason: Any) -> None:
        """Stop listening, end every session, close every SSH connection (a
        tracked task awaits their end: ``node.stop()`` waits for it)."""
        if self._acceptor is not None:
            self._acceptor.close()
        self._sessions.end_all(reason)
        conns = list(self._ssh_conns)
        for conn in conns:
            conn.close()
        self.create_task(_closed(self._acceptor, conns), name=f"metakit SSH close {self.id!r}")

    def statistics(self) -> SSHServerStatistics:
        """A snapshot of the counters."""
        return SSHServerStatistics(
            connections=len(self._ssh_conns),
            sessions=len(self._sessions),
            accepted=self._accepted,
            refused=self._refused,
            auth_failed=self._auth_failed,
        )

    def handle_inspect(self) -> dict[str, str]:
        """The counters, the address, the host key and the workers."""
        info = super().handle_inspect()
        info["address"] = str(self.address) if self._acceptor is not None else "-"
        info["host_key"] = str(self.fingerprint)
        info["workers"] = repr(self._workers)
        return info


async def _closed(acceptor: Any, conns: list[Any]) -> None:
    waits = [c.wait_closed() for c in conns]
    if acceptor is not None:
        waits.append(acceptor.wait_closed())
    await asyncio.wait_for(asyncio.gather(*waits, return_exceptions=True), 5.0)
