"""SSHServer and SSHClient on 127.0.0.1 with real clients: asyncssh's, and
OpenSSH's ``ssh`` (Debian's openssh-client; skipped where it is missing).
Keys are made by the tests."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import asyncssh
import pytest

import metakit
from metakit import Node
from metakit.framing import Line
from metakit.ssh import SSHClient, SSHConnect, SSHDisconnect, SSHMessage, SSHServer
from metakit.testing import TIMEOUT, Probe, check_meta_lifecycle, wait_until

SSH = shutil.which("ssh")


@pytest.fixture(scope="module")
def key() -> asyncssh.SSHKey:
    return asyncssh.generate_private_key("ssh-ed25519")


def public(key: asyncssh.SSHKey) -> str:
    return key.export_public_key().decode()


async def serve(probe: Any, key: asyncssh.SSHKey, **options: Any) -> tuple[Probe, SSHServer]:
    """A Probe worker that owns an SSHServer on a free port, letting ``key`` in."""
    worker: Probe = await probe()
    options.setdefault("authorized_keys", [public(key)])
    server = SSHServer("127.0.0.1", 0, **options)
    await worker.spawn_meta(server)
    return worker, server


def login(server: SSHServer, key: asyncssh.SSHKey, **options: Any) -> Any:
    host, port = server.address
    return asyncssh.connect(
        host, port, username="ada", client_keys=[key], known_hosts=None, config=None, **options
    )


class Echo(metakit.Process):
    """Echoes each frame upper-cased; ``bye`` ends the session with status 0."""

    async def init(self, key: asyncssh.SSHKey, **options: Any) -> None:
        self.server = SSHServer("127.0.0.1", 0, authorized_keys=[public(key)], **options)
        await self.spawn_meta(self.server)
        self.seen: list[Any] = []

    def handle_call(self, sender: metakit.Caller, request: Any) -> Any:
        return self.server.address if request == "address" else list(self.seen)

    def handle_message(self, sender: metakit.PID, message: Any) -> None:
        self.seen.append(message)
        match message:
            case SSHMessage(conn, b"bye"):
                self.send_exit(conn, "normal")
            case SSHMessage(conn, data):
                self.send(conn, SSHMessage(conn, data.upper()))


async def echo_server(node: Node, key: asyncssh.SSHKey, **options: Any) -> tuple[Any, Any]:
    pid = await node.spawn(Echo, key, framing=Line(), **options)
    return pid, await node.call(pid, "address")


async def test_exec_echo_and_exit_status_0(node: Node, key: asyncssh.SSHKey) -> None:
    pid, (host, port) = await echo_server(node, key)
    async with asyncssh.connect(
        host, port, username="ada", client_keys=[key], known_hosts=None, config=None
    ) as conn:
        result = await conn.run("upper", input="hello\nworld\nbye\nnot read\n", timeout=TIMEOUT)
    assert (result.exit_status, result.stdout) == (0, "HELLO\nWORLD\n")
    seen = await node.call(pid, "seen")
    connect = seen[0]
    assert isinstance(connect, SSHConnect)
    assert (connect.user, connect.command, connect.term) == ("ada", "upper", None)
    assert connect.peer[0] == "127.0.0.1"
    assert [m.data for m in seen[1:4]] == [b"hello", b"world", b"bye"]
    await wait_until(lambda: any(isinstance(m, SSHDisconnect) for m in node_seen(node, pid)))
    ends = [m for m in node_seen(node, pid) if isinstance(m, SSHDisconnect)]
    assert [e.reason for e in ends] == ["normal"]


def node_seen(node: Node, pid: metakit.PID) -> list[Any]:
    proc = node._registry.table[pid.id]
    return list(proc.seen)  # type: ignore[attr-defined]


async def test_a_shell_with_a_pty_and_eof(probe: Any, key: asyncssh.SSHKey) -> None:
    worker, server = await serve(probe, key)
    async with login(server, key) as conn:
        stdin, stdout, _ = await conn.open_session(term_type="xterm", encoding=None)
        connect = await worker.receive()
        assert (connect.command, connect.term) == (None, "xterm")
        stdin.write(b"typed")
        msg = await worker.receive()
        assert msg == SSHMessage(connect.conn, b"typed")
        worker.send(connect.conn, SSHMessage(connect.conn, b"shown"))
        assert await asyncio.wait_for(stdout.readexactly(5), TIMEOUT) == b"shown"
        # EOF from the client: the session stays open for the worker's answer.
        stdin.write_eof()
        worker.send(connect.conn, SSHMessage(connect.conn, b"after eof"))
        assert await asyncio.wait_for(stdout.read(), TIMEOUT) == b"after eof"
        assert await worker.receive() == SSHDisconnect(connect.conn, "closed")
        await asyncio.wait_for(stdout.channel.wait_closed(), TIMEOUT)
        assert stdout.channel.get_exit_status() == 0  # answered, then closed on its EOF


async def test_a_wrong_key_or_password_is_refused(probe: Any, key: asyncssh.SSHKey) -> None:
    async def check(user: str, password: str) -> bool:
        return (user, password) == ("ada", "right")

    worker, server = await serve(probe, key, password=check)
    stranger = asyncssh.generate_private_key("ssh-ed25519")
    with pytest.raises(asyncssh.PermissionDenied):
        async with login(server, stranger):
            pass
    host, port = server.address
    options = {"known_hosts": None, "config": None, "client_keys": None}
    with pytest.raises(asyncssh.PermissionDenied):
        async with asyncssh.connect(host, port, username="ada", password="wrong", **options):
            pass
    async with asyncssh.connect(host, port, username="ada", password="right", **options) as conn:
        await conn.create_session(asyncssh.SSHClientSession, "x")
        assert (await worker.receive()).user == "ada"
    assert server.statistics().auth_failed >= 2


async def test_without_credentials_nobody_logs_in(probe: Any, key: asyncssh.SSHKey) -> None:
    _, server = await serve(probe, key, authorized_keys=None)
    with pytest.raises(asyncssh.PermissionDenied):
        async with login(server, key):
            pass


async def test_an_abrupt_disconnect_is_one_disconnect(probe: Any, key: asyncssh.SSHKey) -> None:
    worker, server = await serve(probe, key)
    conn = await login(server, key)
    await conn.create_session(asyncssh.SSHClientSession, "long")
    connect = await worker.receive()
    conn.abort()  # the TCP connection goes, no channel close
    end = await worker.receive()
    assert isinstance(end, SSHDisconnect)
    assert end.conn == connect.conn
    await wait_until(lambda: server.statistics().connections == 0)
    with pytest.raises(asyncio.TimeoutError):
        await worker.receive(timeout=0.2)  # no second one


async def test_max_sessions_refuses_the_extra_channel_only(
    probe: Any, key: asyncssh.SSHKey
) -> None:
    worker, server = await serve(probe, key, max_sessions=2)
    async with login(server, key) as conn:
        first, _ = await conn.create_session(asyncssh.SSHClientSession, "one")
        await conn.create_session(asyncssh.SSHClientSession, "two")
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.create_session(asyncssh.SSHClientSession, "three")
        a, b = await worker.receive(), await worker.receive()
        assert {a.command, b.command} == {"one", "two"}
        assert server.statistics().refused == 1
        # The others carry on; a closed one frees its slot.
        first.close()
        await wait_until(lambda: server.statistics().sessions == 1)
        await conn.create_session(asyncssh.SSHClientSession, "four")


async def test_idle_sessions_end(probe: Any, key: asyncssh.SSHKey) -> None:
    worker, server = await serve(probe, key, idle_timeout=0.2)
    async with login(server, key) as conn:
        chan, _ = await conn.create_session(asyncssh.SSHClientSession, "quiet")
        connect = await worker.receive()
        assert await worker.receive() == SSHDisconnect(connect.conn, "idle")
        await asyncio.wait_for(chan.wait_closed(), TIMEOUT)
        assert chan.get_exit_status() == 1


async def test_terminate_closes_accepted_connections(probe: Any, key: asyncssh.SSHKey) -> None:
    worker, server = await serve(probe, key)
    conn = await login(server, key)
    await conn.create_session(asyncssh.SSHClientSession, "x")
    await worker.receive()
    worker.node.send_exit(server.id, "shutdown")
    await asyncio.wait_for(conn.wait_closed(), TIMEOUT)  # asyncssh's close() alone leaves it open


class Slow(metakit.Process):
    """Counts and hashes what arrives, but only once the test opens its gate."""

    async def init(self, key: asyncssh.SSHKey, gate: asyncio.Event) -> None:
        self.server = SSHServer(
            "127.0.0.1", 0, authorized_keys=[public(key)], high_watermark=8, low_watermark=2
        )
        await self.spawn_meta(self.server)
        self.gate = gate
        self.hash = hashlib.sha256()
        self.received = 0
        self.ended: Any = None

    def handle_call(self, sender: metakit.Caller, request: Any) -> Any:
        return self.server.address

    async def handle_message(self, sender: metakit.PID, message: Any) -> None:
        match message:
            case SSHMessage(_, data):
                await self.gate.wait()
                self.hash.update(data)
                self.received += len(data)
            case SSHDisconnect(_, reason):
                self.ended = reason


@pytest.mark.timeout(120)
async def test_a_slow_worker_bounds_memory_and_loses_nothing(
    node: Node, key: asyncssh.SSHKey
) -> None:
    gate = asyncio.Event()
    pid = await node.spawn(Slow, key, gate)
    slow: Slow = node._registry.table[pid.id]  # type: ignore[assignment]
    host, port = await node.call(pid, "address")
    total = 64 * 1024 * 1024
    chunk = os.urandom(64 * 1024)
    expected = hashlib.sha256()
    async with asyncssh.connect(
        host, port, username="ada", client_keys=[key], known_hosts=None, config=None
    ) as conn:
        writer, _, _ = await conn.open_session(command="sink", encoding=None)
        sent = 0

        async def push() -> None:
            nonlocal sent
            while sent < total:
                writer.write(chunk)
                expected.update(chunk)
                sent += len(chunk)
                await writer.drain()
            writer.write_eof()

        pushing = asyncio.ensure_future(push())
        # The worker reads nothing: the client is held back by the channel's
        # window, and what waits on the server is bounded.
        await wait_until(lambda: sent > 0 and writer.channel.get_write_buffer_size() > 0)
        await asyncio.sleep(0)  # let what is in flight land
        [session] = [m for m in node.metas() if m != slow.server.id]
        stats = node.meta_info(session)
        waiting = slow._mk_pending  # type: ignore[attr-defined]
        assert sent < total / 4, f"{sent} bytes went out to a worker that reads nothing"
        assert waiting <= 2 * 8 + 4, f"{waiting} messages queued for the worker"
        assert stats is not None
        gate.set()
        await asyncio.wait_for(pushing, 60)
        await wait_until(lambda: slow.ended is not None, timeout=60)
    assert slow.received == total
    assert slow.hash.digest() == expected.digest()


class Remote(metakit.Process):
    """What an SSHClient's parent sees, kept for the test."""

    async def init(self, **options: Any) -> None:
        self.got: asyncio.Queue[Any] = asyncio.Queue()
        self.conn = await self.spawn_meta(SSHClient(**options))

    def handle_message(self, sender: metakit.PID, message: Any) -> None:
        self.got.put_nowait(message)


class Lines(metakit.Process):
    """A server's worker that prints three lines and exits 0 (or 3 for ``fail``)."""

    async def init(self, key: asyncssh.SSHKey) -> None:
        self.server = SSHServer("127.0.0.1", 0, authorized_keys=[public(key)])
        await self.spawn_meta(self.server)

    def handle_call(self, sender: metakit.Caller, request: Any) -> Any:
        return self.server.address

    def handle_message(self, sender: metakit.PID, message: Any) -> None:
        match message:
            case SSHConnect(conn, _, command, _, _):
                for i in range(3):
                    self.send(conn, SSHMessage(conn, f"{command} {i}\n".encode()))
                self.send_exit(conn, "normal")


async def test_client_runs_a_command_and_gets_its_exit_status(
    node: Node, key: asyncssh.SSHKey
) -> None:
    server = await node.spawn(Lines, key)
    host, port = await node.call(server, "address")
    options = {"host": host, "port": port, "username": "ada", "client_keys": [key]}
    pid = await node.spawn(Remote, known_hosts=None, command="count", framing=Line(), **options)
    remote: Remote = node._registry.table[pid.id]  # type: ignore[assignment]
    connect = await asyncio.wait_for(remote.got.get(), TIMEOUT)
    assert (connect.user, connect.command) == ("ada", "count")
    lines = [(await asyncio.wait_for(remote.got.get(), TIMEOUT)).data for _ in range(3)]
    assert lines == [b"count 0", b"count 1", b"count 2"]
    end = await asyncio.wait_for(remote.got.get(), TIMEOUT)
    assert end == SSHDisconnect(connect.conn, 0)
    # Errors raise at spawn_meta: a wrong key, a server key not trusted, nobody there.
    stranger = asyncssh.generate_private_key("ssh-ed25519")
    with pytest.raises(asyncssh.PermissionDenied):
        await node.spawn(Remote, **{**options, "client_keys": [stranger], "known_hosts": None})
    with pytest.raises(asyncssh.HostKeyNotVerifiable):
        await node.spawn(Remote, known_hosts=([], [], []), **options)
    with pytest.raises(ConnectionRefusedError):
        await node.spawn(Remote, known_hosts=None, **{**options, "port": 1})
    node.kill(pid)


async def test_server_lifecycle(key: asyncssh.SSHKey) -> None:
    async def exercise(parent: Probe, meta: Any) -> None:
        async with login(meta, key) as conn:
            await conn.create_session(asyncssh.SSHClientSession, "x")
            assert isinstance(await parent.receive(), SSHConnect)

    await check_meta_lifecycle(
        lambda parent: SSHServer("127.0.0.1", 0, authorized_keys=[public(key)]),
        exercise=exercise,
    )


@pytest.mark.skipif(SSH is None, reason="OpenSSH's ssh is not installed")
async def test_openssh_client_exec(node: Node, key: asyncssh.SSHKey, tmp_path: Path) -> None:
    _, (host, port) = await echo_server(node, key)
    key_file = tmp_path / "id_ed25519"
    key_file.write_bytes(key.export_private_key())
    key_file.chmod(0o600)
    proc = await asyncio.create_subprocess_exec(
        SSH,  # type: ignore[arg-type]
        "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-i", str(key_file),
        "-p", str(port), f"ada@{host}", "upper",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(b"one\ntwo\nbye\n"), TIMEOUT)
    assert (proc.returncode, out) == (0, b"ONE\nTWO\n"), err


async def test_binding_errors_raise_at_spawn_meta_and_a_key_is_made(
    probe: Any, key: asyncssh.SSHKey, caplog: pytest.LogCaptureFixture
) -> None:
    worker, server = await serve(probe, key)
    assert server.fingerprint is not None
    assert server.fingerprint.startswith("SHA256:")
    assert f"SSH host key generated: {server.fingerprint}" in caplog.text
    with pytest.raises(OSError, match="address already in use"):
        await worker.spawn_meta(SSHServer(*server.address, authorized_keys=[public(key)]))


async def test_a_client_that_never_logs_in_is_dropped(probe: Any, key: asyncssh.SSHKey) -> None:
    _, server = await serve(probe, key, login_timeout=0.3)
    reader, writer = await asyncio.open_connection(*server.address)
    try:
        # It reads the server's version line, then says nothing: closed at the timeout.
        data = await asyncio.wait_for(reader.read(), TIMEOUT)
        assert data.startswith(b"SSH-2.0-")
        await wait_until(lambda: server.statistics().connections == 0)
    finally:
        writer.close()


async def test_writes_are_held_while_the_client_reads_nothing(
    probe: Any, key: asyncssh.SSHKey
) -> None:
    worker, server = await serve(probe, key, mailbox_size=8)
    async with login(server, key) as conn:
        chan, _ = await conn.create_session(asyncssh.SSHClientSession, "flood")
        chan.pause_reading()  # the client stops reading: its window fills, then asyncssh's buffer
        connect = await worker.receive()
        block = b"x" * 65536
        written, refused = 0, None
        for _ in range(10_000):  # ~640 MiB at most; the bound trips long before
            try:
                worker.send(connect.conn, SSHMessage(connect.conn, block))
            except metakit.MailboxFull as exc:
                refused = exc
                break
            written += 1
            await asyncio.sleep(0)
        assert refused is not None
        stats = worker.node.meta_info(connect.conn).statistics
        assert stats.held_writes >= 1
        assert written < 200, f"{written} writes taken while the client read nothing"
        chan.resume_reading()
        worker.send_exit(connect.conn, "normal")
        assert await worker.receive() == SSHDisconnect(connect.conn, "normal")


async def test_client_lifecycle(key: asyncssh.SSHKey) -> None:
    async with Node("remote@localhost") as remote:
        server = await remote.spawn(Echo, key)  # keeps a session open until told "bye"
        host, port = await remote.call(server, "address")
        options = {"username": "ada", "client_keys": [key], "known_hosts": None}

        async def exercise(parent: Probe, meta: Any) -> None:
            assert isinstance(await parent.receive(), SSHConnect)

        await check_meta_lifecycle(
            lambda parent: SSHClient(host, port, command="sleep", **options),  # type: ignore[arg-type]
            exercise=exercise,
            endings=("kill", "parent", "stop"),
        )


async def test_authorized_keys_from_a_file_or_text_and_a_plain_password_check(
    probe: Any, key: asyncssh.SSHKey, tmp_path: Path
) -> None:
    keys_file = tmp_path / "authorized_keys"
    keys_file.write_text(f"# ours\n{public(key)}\n")
    for given in (keys_file, str(keys_file), f"# ours\n{public(key)}\n"):
        worker, server = await serve(probe, key, authorized_keys=given)
        async with login(server, key) as conn:
            await conn.create_session(asyncssh.SSHClientSession, "x")
            assert (await worker.receive()).user == "ada"
        worker.node.send_exit(server.id, "normal")
    worker, server = await serve(
        probe, key, authorized_keys=None, password=lambda user, pw: pw == "plain"
    )
    host, port = server.address
    options = {"known_hosts": None, "config": None, "client_keys": None, "username": "bo"}
    async with asyncssh.connect(host, port, password="plain", **options) as conn:
        await conn.create_session(asyncssh.SSHClientSession, "y")
        assert (await worker.receive()).user == "bo"


class RawEcho(metakit.Process):
    """Echoes every chunk as it is (``Raw`` framing), counting refused writes."""

    async def init(self, key: asyncssh.SSHKey) -> None:
        self.server = SSHServer("127.0.0.1", 0, authorized_keys=[public(key)])
        await self.spawn_meta(self.server)
        self.refused = 0

    def handle_call(self, sender: metakit.Caller, request: Any) -> Any:
        return self.server.address if request == "address" else self.refused

    def handle_message(self, sender: metakit.PID, message: Any) -> None:
        if isinstance(message, SSHMessage):
            try:
                self.send(message.conn, message)
            except metakit.MailboxFull:
                self.refused += 1


class Stop(asyncssh.SSHClientSession):  # type: ignore[type-arg]
    """Counts what it reads; ``more`` is set by every read."""

    def __init__(self) -> None:
        self.got = 0
        self.more = asyncio.Event()
        self.ended = asyncio.Event()

    def data_received(self, data: bytes, datatype: Any) -> None:
        self.got += len(data)
        self.more.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended.set()


async def test_held_writes_drain_before_reading_resumes(node: Node, key: asyncssh.SSHKey) -> None:
    """A client that reads its echo in bursts: the channel's window pauses the
    server's writes after a few, while the client's data waits in the
    channel. Reading resumes only once the held writes are written, so the
    echo's writes never overflow the session's mailbox; all comes back."""
    pid = await node.spawn(RawEcho, key)
    host, port = await node.call(pid, "address")
    async with asyncssh.connect(
        host, port, username="ada", client_keys=[key], known_hosts=None, config=None
    ) as conn:
        chan, session = await conn.create_session(Stop, "echo", encoding=None, window=65536)
        block, sent = os.urandom(32768), 0
        for _ in range(100):  # 50 MiB in bursts of 512 KiB
            chan.pause_reading()
            for _ in range(16):
                chan.write(block)
                sent += len(block)
            await asyncio.sleep(0)  # let the server take some in while its writes are stuck
            chan.resume_reading()
            session.more.clear()
            await asyncio.wait_for(session.more.wait(), TIMEOUT)
        chan.write_eof()  # the echo exits once it has answered everything
        await asyncio.wait_for(session.ended.wait(), 60)
        assert (session.got, chan.get_exit_status()) == (sent, 0)
    assert await node.call(pid, "refused") == 0
