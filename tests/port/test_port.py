"""Port: real programs as metas, on both loops: their output, their input,
their end, and that no process of their group outlives the port, the worker,
the node, or the node's OS process (DESIGN.md §10, Port)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

import metakit
from metakit import Node
from metakit.framing import Raw
from metakit.port import Port, PortExit, PortMessage, PortStart, PortStderr
from metakit.testing import TIMEOUT, check_meta_lifecycle, wait_until


class Worker(metakit.Process):
    """Spawns one port; keeps what it sends; ``slow`` handles a message at a time, slowly."""

    async def init(self, argv: list[str], options: dict[str, Any], slow: bool = False) -> None:
        self.got: asyncio.Queue[Any] = asyncio.Queue()
        self.slow = asyncio.Event() if slow else None
        self.port = await self.spawn_meta(Port(argv, **options))

    async def handle_message(self, sender: metakit.PID, message: Any) -> None:
        if self.slow is not None and isinstance(message, PortMessage):
            await self.slow.wait()
        self.got.put_nowait(message)

    async def next(self) -> Any:
        return await asyncio.wait_for(self.got.get(), TIMEOUT)

    async def until(self, kind: type) -> Any:
        while not isinstance(message := await self.next(), kind):
            pass
        return message


async def start(node: Node, argv: list[str], slow: bool = False, **options: Any) -> Worker:
    pid = await node.spawn(Worker, argv, options, slow)
    worker: Worker = node._registry.table[pid.id]  # type: ignore[assignment]
    return worker


def group_alive(pgid: int) -> bool:
    """Whether any process of group ``pgid`` is alive (not a zombie)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


async def test_output_input_stderr_and_the_exit_status(node: Node) -> None:
    worker = await start(node, ["sh", "-c", "echo one; echo oops >&2; cat; exit 3"])
    start_msg = await worker.next()
    assert isinstance(start_msg, PortStart)
    port = start_msg.port
    assert await worker.next() == PortMessage(port, b"one")
    assert await worker.next() == PortStderr(port, b"oops")
    worker.send(port, PortMessage(port, b"echoed by cat"))
    assert await worker.next() == PortMessage(port, b"echoed by cat")
    worker.send_exit(port, "normal")  # stdin closes after the write: cat ends, and sh
    assert await worker.next() == PortExit(port, 3, "normal")
    assert not group_alive(start_msg.os_pid)


async def test_a_program_that_ends_by_itself(node: Node) -> None:
    worker = await start(node, ["sh", "-c", "printf 'a\\nb\\n'"], stderr="stdout")
    port = (await worker.next()).port
    assert [await worker.next() for _ in range(3)] == [
        PortMessage(port, b"a"),
        PortMessage(port, b"b"),
        PortExit(port, 0, "exited"),
    ]
    await wait_until(lambda: port not in node.metas())


async def test_term_then_kill_after_the_grace(node: Node) -> None:
    # Ignores the end of its input: SIGTERM after the grace.
    worker = await start(node, ["sleep", "100"], kill_grace=0.1)
    started = await worker.next()
    worker.send_exit(started.port, "normal")
    assert await worker.next() == PortExit(started.port, -signal.SIGTERM, "normal")
    # Ignores SIGTERM too: SIGKILL after another grace.
    script = "trap '' TERM; while :; do sleep 0.05; done"
    worker = await start(node, ["sh", "-c", script], kill_grace=0.1)
    started = await worker.next()
    worker.send_exit(started.port, "normal")
    assert await worker.next() == PortExit(started.port, -signal.SIGKILL, "normal")
    assert not group_alive(started.os_pid)


async def test_a_pipelines_children_die_with_it(node: Node) -> None:
    worker = await start(node, ["sh", "-c", "sleep 100 | sleep 100"], kill_grace=0.1)
    started = await worker.next()
    await wait_until(lambda: group_alive(started.os_pid))
    node.kill(started.port)
    end = await worker.next()
    assert (end.returncode, end.reason) == (-signal.SIGKILL, "kill")
    await wait_until(lambda: not group_alive(started.os_pid), message="the group outlived its port")


async def test_the_worker_ending_stops_the_program(node: Node) -> None:
    worker = await start(node, ["sh", "-c", "sleep 100 & sleep 100"], kill_grace=0.1)
    started = await worker.next()
    node.kill(worker.pid)
    await wait_until(
        lambda: not group_alive(started.os_pid), message="the group outlived its worker"
    )


async def test_the_node_stopping_stops_the_program() -> None:
    async with Node("ports@localhost") as node:
        worker = await start(node, ["sleep", "100"], kill_grace=0.1)
        started = await worker.next()
    assert not group_alive(started.os_pid)


async def test_reading_pauses_for_a_slow_worker(node: Node) -> None:
    worker = await start(
        node, ["yes"], slow=True, high_watermark=8, low_watermark=2, kill_grace=0.1
    )
    started = await worker.next()
    port = started.port
    await wait_until(lambda: node.meta_info(port).statistics.paused_reads >= 1)
    read = node.meta_info(port).statistics.bytes_in
    await asyncio.sleep(0.2)  # time in which `yes` would write megabytes
    later = node.meta_info(port).statistics.bytes_in
    assert later - read < 1 << 20, f"{later - read} bytes read while the worker was behind"
    assert node.process_info(worker.pid).mailbox <= 2 * 8 + 4
    assert worker.slow is not None
    worker.slow.set()
    worker.send_exit(port, "normal")
    end = await worker.until(PortExit)
    assert end.reason == "normal"


async def test_env_cwd_and_start_errors(node: Node, tmp_path: Path) -> None:
    worker = await start(
        node, ["sh", "-c", 'echo "$ONLY $HOME"; pwd'], env={"ONLY": "this"}, cwd=tmp_path
    )
    port = (await worker.next()).port
    assert await worker.next() == PortMessage(port, b"this ")  # nothing else of our environment
    assert await worker.next() == PortMessage(port, str(tmp_path).encode())
    with pytest.raises(FileNotFoundError):
        await start(node, ["/nonexistent/program"])
    with pytest.raises(FileNotFoundError):
        await start(node, ["true"], cwd=tmp_path / "missing")
    with pytest.raises(ValueError, match="argv"):
        Port([])


async def test_raw_framing_and_a_cancelled_start(node: Node) -> None:
    worker = await start(node, ["cat"], framing=Raw())
    port = (await worker.next()).port
    worker.send(port, PortMessage(port, b"\x00\x01 bytes"))
    assert await worker.next() == PortMessage(port, b"\x00\x01 bytes")
    worker.send_exit(port, "normal")
    assert (await worker.next()).returncode == 0
    # spawn_meta cancelled while the program starts: it must not be left running.
    before = set(Path("/proc").iterdir())
    for _ in range(5):
        spawning = asyncio.ensure_future(start(node, ["sleep", "100"]))
        await asyncio.sleep(0)
        spawning.cancel()
        with pytest.raises((asyncio.CancelledError, metakit.MetakitError)):
            await spawning
    await wait_until(lambda: not _sleepers(before), message="a cancelled start left its program")


def _sleepers(before: set[Path]) -> list[int]:
    found = []
    for entry in set(Path("/proc").iterdir()) - before:
        try:
            sleeping = (entry / "cmdline").read_bytes() == b"sleep\x00100\x00"
            if sleeping and (entry / "stat").read_text().split(") ")[1][0] != "Z":
                found.append(int(entry.name))
        except OSError:
            continue
    return found


async def test_port_lifecycle() -> None:
    await check_meta_lifecycle(lambda parent: Port(["sleep", "100"], kill_grace=0.1))


WATCHED = textwrap.dedent(
    """
    import asyncio, sys
    import metakit
    from metakit.port import Port, PortStart

    class Holder(metakit.Process):
        async def init(self):
            await self.spawn_meta(Port(["sh", "-c", "sleep 100 | sleep 100"], kill_grace=0.2))

        def handle_message(self, sender, message):
            if isinstance(message, PortStart):
                print(message.os_pid, flush=True)

    metakit.run(Holder)
    """
)


def test_a_killed_node_process_leaves_no_program_behind() -> None:
    # SIGKILL: the node cannot stop its ports; its watchdog kills their group.
    root = Path(__file__).resolve().parents[2]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
    }
    with subprocess.Popen(
        [sys.executable, "-c", WATCHED], stdout=subprocess.PIPE, text=True, env=env
    ) as proc:
        try:
            assert proc.stdout is not None
            pgid = int(proc.stdout.readline())
            assert group_alive(pgid)
            proc.kill()
            proc.wait(TIMEOUT)
            end = time.monotonic() + TIMEOUT
            while group_alive(pgid):
                assert time.monotonic() < end, "the port's group outlived the node's process"
                time.sleep(0.02)
        finally:
            if proc.poll() is None:
                proc.kill()
