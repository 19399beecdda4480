"""examples/custom_meta.py: a meta of one's own on the public seam, over real Unix sockets."""

from __future__ import annotations

import asyncio
import errno
import importlib.util
import os
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from importlib.util import find_spec
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import metakit
from metakit import Alias, Node
from metakit.errors import MailboxFull
from metakit.testing import TIMEOUT, Probe, check_meta_lifecycle, wait_until

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="Unix-domain sockets")

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "custom_meta.py"


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("custom_meta", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


example = _load(EXAMPLE)
Room = example.Room
UnixConnect = example.UnixConnect
UnixDisconnect = example.UnixDisconnect
UnixLine = example.UnixLine
UnixLineServer = example.UnixLineServer

MakeProbe = Callable[[], Awaitable[Probe]]


def server_sockets(path: str) -> set[str]:
    """This process's sockets bound to ``path``: the listener and the accepted ones.

    ``LeakCheck`` (so the ``node`` fixture and ``check_meta_lifecycle``) leaves
    Unix sockets out, so the tests look for these themselves (Linux only).
    """
    try:
        with open("/proc/net/unix") as table:
            next(table)
            inodes = {f[6] for line in table if len(f := line.split()) > 7 and f[7] == path}
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return set()
    found = set()
    for fd in fds:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            found.add(target)
    return found


async def gone(path: str) -> None:
    """Wait until the server at ``path`` has closed every socket and removed its file."""
    await wait_until(
        lambda: not os.path.exists(path) and not server_sockets(path),
        message=f"still there: file={os.path.exists(path)}, sockets={server_sockets(path)}",
    )


async def readline(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.readline(), TIMEOUT)


async def test_every_line_goes_to_every_member(node: Node, tmp_path: Path) -> None:
    path = str(tmp_path / "chat.sock")
    room = await node.spawn(Room, path)
    ra, wa = await asyncio.open_unix_connection(path)
    assert await readline(ra) == b"* you are #1\n"
    rb, wb = await asyncio.open_unix_connection(path)
    assert await readline(rb) == b"* you are #2\n"
    wa.write(b"hello\n")
    assert await readline(ra) == b"#1: hello\n"
    assert await readline(rb) == b"#1: hello\n"
    wb.write(b"hi\nthere\n")
    for reader in (ra, rb):
        assert await readline(reader) == b"#2: hi\n"
        assert await readline(reader) == b"#2: there\n"
    wb.write(b"/quit\n")
    assert await readline(rb) == b"* bye\n"
    assert await asyncio.wait_for(rb.read(), TIMEOUT) == b""  # closed after "bye"
    metas = node.process_info(room).metas  # the server and its connections
    [server] = [m for m in metas if node.meta_info(m).behavior == "UnixLineServer"]
    await wait_until(lambda: node.meta_info(server).statistics.connections == 1)
    # The room ends: its server stops listening, removes its file, ends the rest.
    node.send_exit(room, "shutdown")
    assert await asyncio.wait_for(ra.read(), TIMEOUT) == b""
    await gone(path)
    for writer in (wa, wb):
        writer.close()
        await writer.wait_closed()


async def test_a_half_closed_client_still_gets_its_answers(node: Node, tmp_path: Path) -> None:
    path = str(tmp_path / "chat.sock")
    await node.spawn(Room, path)
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(b"one\ntwo\n")
    writer.write_eof()  # eof_received -> input_ended: answer, then close
    assert await asyncio.wait_for(reader.read(), TIMEOUT) == b"* you are #1\n#1: one\n#1: two\n"
    writer.close()
    await writer.wait_closed()


class SlowWorker(metakit.Process):
    """Serves a UnixLineServer, stuck on its first line until ``release`` is set."""

    async def init(self, path: str, holder: list[SlowWorker]) -> None:
        holder.append(self)
        self.release = asyncio.Event()
        self.conn: Alias | None = None
        self.lines: list[bytes] = []
        self.reasons: list[Any] = []
        await self.spawn_meta(UnixLineServer(path, high_watermark=4, low_watermark=1))

    async def handle_message(self, sender: metakit.PID, message: Any) -> None:
        match message:
            case UnixConnect(conn):
                self.conn = conn
            case UnixLine(_, data):
                await self.release.wait()
                self.lines.append(data)
            case UnixDisconnect(_, reason):
                self.reasons.append(reason)


async def test_a_slow_worker_pauses_reading_and_loses_nothing(node: Node, tmp_path: Path) -> None:
    path = str(tmp_path / "slow.sock")
    holder: list[SlowWorker] = []
    pid = await node.spawn(SlowWorker, path, holder)
    [worker] = holder
    reader, writer = await asyncio.open_unix_connection(path)
    expected = [b"line %d" % i for i in range(100_000)]
    flood = b"".join(line + b"\n" for line in expected)  # 1.1 MB: more than the buffers hold
    writer.write(flood)
    writer.write_eof()
    conn = await wait_until(lambda: worker.conn)
    await wait_until(lambda: node.meta_info(conn).statistics.paused_reads >= 1)
    for _ in range(100):  # reading stays paused: the rest waits in the kernel and the client
        await asyncio.sleep(0)
    info = node.meta_info(conn)
    assert info.inspect["reading"] == "paused"
    assert info.statistics.bytes_in < len(flood)
    # At most the high watermark, and the marker that resumes reading, wait at the worker.
    assert node.process_info(pid).mailbox <= 4 + 2, node.process_info(pid).mailbox
    assert info.statistics.messages_in < len(expected)  # the rest waits in the connection
    worker.release.set()
    await wait_until(lambda: worker.reasons)
    assert worker.lines == expected  # nothing lost, in order
    assert worker.reasons == ["closed"]  # once, after the last line
    assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""
    writer.close()
    await writer.wait_closed()


async def test_send_exit_closes_after_the_queued_lines(
    node: Node, probe: MakeProbe, tmp_path: Path
) -> None:
    path = str(tmp_path / "close.sock")
    worker = await probe()
    server = UnixLineServer(path)
    await worker.spawn_meta(server)
    reader, writer = await asyncio.open_unix_connection(path)
    hello = await worker.receive()
    assert isinstance(hello, UnixConnect)
    conn = hello.conn
    for i in range(3):
        worker.send(conn, UnixLine(conn, b"reply %d" % i))
    worker.send_exit(conn, "normal")  # in order, after the three replies
    assert await asyncio.wait_for(reader.read(), TIMEOUT) == b"reply 0\nreply 1\nreply 2\n"
    assert await worker.receive() == UnixDisconnect(conn, "normal")
    await wait_until(lambda: conn not in node.metas())
    assert worker.pending() == []  # exactly one Disconnect
    assert server.statistics() == example.UnixLineServerStatistics(1, 0, 0)
    assert len(server_sockets(path)) == 1  # the listener only: the connection's is closed
    writer.close()
    await writer.wait_closed()


async def test_a_peer_that_does_not_read_holds_writes(
    node: Node, probe: MakeProbe, tmp_path: Path
) -> None:
    path = str(tmp_path / "hold.sock")
    worker = await probe()
    await worker.spawn_meta(UnixLineServer(path, mailbox_size=8))
    reader, writer = await asyncio.open_unix_connection(path)
    conn = (await worker.receive()).conn
    sent = 0
    for _ in range(10_000):  # the client reads nothing until the connection pushes back
        try:
            worker.send(conn, UnixLine(conn, b"%06d" % sent + b"x" * 4000))
        except MailboxFull:
            break
        sent += 1
        await asyncio.sleep(0)  # let the connection write what it can
    else:
        pytest.fail("the connection never pushed back")
    info = node.meta_info(conn)
    assert info.inspect["writing"] == "held"
    assert info.inspect["reading"] == "paused"  # a peer that does not read is not read either
    assert info.statistics.held_writes >= 1
    for i in range(sent):  # the peer catches up: everything, in order
        assert (await readline(reader))[:6] == b"%06d" % i
    await wait_until(lambda: node.meta_info(conn).inspect["writing"] == "on")
    worker.send(conn, UnixLine(conn, b"more"))
    assert await readline(reader) == b"more\n"
    writer.close()
    await writer.wait_closed()
    assert await worker.receive() == UnixDisconnect(conn, "closed")


async def test_binding_errors_raise_at_spawn_meta(
    node: Node, probe: MakeProbe, tmp_path: Path
) -> None:
    worker = await probe()
    with pytest.raises(FileNotFoundError):
        await worker.spawn_meta(UnixLineServer(str(tmp_path / "no" / "such.sock")))
    path = str(tmp_path / "busy.sock")
    await worker.spawn_meta(UnixLineServer(path))
    with pytest.raises(OSError, match="listening") as raised:
        await worker.spawn_meta(UnixLineServer(path))  # would steal the live server's file
    assert raised.value.errno == errno.EADDRINUSE
    # The check connected to the live server (and left): it still serves.
    assert isinstance(await worker.receive(), UnixConnect)
    assert isinstance(await worker.receive(), UnixDisconnect)
    _, writer = await asyncio.open_unix_connection(path)
    assert isinstance(await worker.receive(), UnixConnect)
    writer.close()
    await writer.wait_closed()


async def test_the_server_passes_the_lifecycle_check(tmp_path: Path) -> None:
    path = str(tmp_path / "life.sock")

    async def exercise(parent: Probe, server: Any) -> None:
        reader, writer = await asyncio.open_unix_connection(path)
        hello = await parent.receive()
        assert isinstance(hello, UnixConnect)
        writer.write(b"ping\n")
        assert await parent.receive() == UnixLine(hello.conn, b"ping")
        parent.send(hello.conn, UnixLine(hello.conn, b"pong"))
        assert await readline(reader) == b"pong\n"
        writer.close()
        await writer.wait_closed()

    await check_meta_lifecycle(lambda parent: UnixLineServer(path), exercise=exercise)
    await gone(path)


@pytest.mark.parametrize(
    "loop",
    [
        "asyncio",
        pytest.param(
            "uvloop", marks=pytest.mark.skipif(find_spec("uvloop") is None, reason="needs uvloop")
        ),
    ],
)
def test_the_example_runs_as_a_script(loop: str, tmp_path: Path) -> None:
    path = str(tmp_path / "chat.sock")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "METAKIT_LOOP": loop}
    with subprocess.Popen(
        [sys.executable, str(EXAMPLE), path],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    ) as proc:
        try:
            assert proc.stdout is not None
            readable, _, _ = select.select([proc.stdout], [], [], TIMEOUT * 2)
            assert readable, "printed nothing"
            assert proc.stdout.readline() == f"listening on {path}\n"
            with socket.socket(socket.AF_UNIX) as a, socket.socket(socket.AF_UNIX) as b:
                for sock in (a, b):
                    sock.settimeout(TIMEOUT)
                    sock.connect(path)
                fa, fb = a.makefile("rwb"), b.makefile("rwb")
                assert fa.readline() == b"* you are #1\n"
                assert fb.readline() == b"* you are #2\n"
                fa.write(b"hello\n")
                fa.flush()
                assert fa.readline() == fb.readline() == b"#1: hello\n"
                fb.write(b"/quit\n")
                fb.flush()
                assert fb.readline() == b"* bye\n"
                assert fb.readline() == b""
                proc.send_signal(signal.SIGTERM)
                assert fa.readline() == b""  # the server ended its connections
                fa.close()
                fb.close()
            out, err = proc.communicate(timeout=TIMEOUT)
            assert proc.returncode == 0, err
            assert out == "stopped: accepted=2, rejected=0\n", (out, err)
            assert "Traceback" not in err
            assert not os.path.exists(path)  # it removed its socket file
        finally:
            if proc.poll() is None:
                proc.kill()
