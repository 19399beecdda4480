"""metakit.run(main, workers=N): spawned workers sharing a port, restarted
when they crash, stopped with the parent (DESIGN.md §9)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from metakit.testing import TIMEOUT

APP = Path(__file__).with_name("workers_app.py")

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="SO_REUSEPORT spreading is Linux's")


def _reserve() -> socket.socket:
    """A port nobody else takes: bound with SO_REUSEPORT but not listening."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def _ask(port: int, line: bytes) -> list[str] | None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as conn:
            conn.sendall(line + b"\n")
            data = conn.makefile("rb").readline()
    except OSError:
        return None
    return data.decode().split() if data else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def test_workers_share_a_port_restart_on_a_crash_and_stop_with_the_parent() -> None:
    reserved = _reserve()
    port = reserved.getsockname()[1]
    parent = subprocess.Popen([sys.executable, str(APP), "echo", str(port)])
    try:
        deadline = time.monotonic() + TIMEOUT * 2
        seen: dict[str, int] = {}
        while len(seen) < 2:  # the kernel spreads connections over both workers
            assert time.monotonic() < deadline, f"answers came from {seen} only"
            answer = _ask(port, b"hello")
            if answer is not None:
                seen[answer[0]] = int(answer[1])
        assert sorted(seen) == ["echo-1@localhost", "echo-2@localhost"]
        # A worker that crashes is started again (a new process, the same node name).
        victim = seen["echo-1@localhost"]
        os.kill(victim, signal.SIGKILL)
        while True:
            assert time.monotonic() < deadline + TIMEOUT, "echo-1 was not restarted"
            answer = _ask(port, b"again")
            if answer and answer[0] == "echo-1@localhost" and int(answer[1]) != victim:
                break
        workers = _children(parent.pid)
        assert len(workers) >= 2
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(TIMEOUT * 2) == 0
        # (multiprocessing's resource tracker, a child too, ends just after its parent.)
        deadline = time.monotonic() + TIMEOUT
        while [pid for pid in workers if _alive(pid)]:
            assert time.monotonic() < deadline, "a worker outlived its parent"
            time.sleep(0.01)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        reserved.close()


def test_ctrl_c_to_the_process_group_stops_each_worker_once_gracefully() -> None:
    # A terminal's Ctrl-C is SIGINT to the whole foreground process group:
    # the parent and its workers. Each worker must stop its node gracefully
    # (its processes end with "shutdown"), not be forced by a second signal.
    reserved = _reserve()
    port = reserved.getsockname()[1]
    parent = subprocess.Popen(
        [sys.executable, str(APP), "echo", str(port)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own group, as a shell gives a job
    )
    try:
        deadline = time.monotonic() + TIMEOUT * 2
        seen: set[str] = set()
        while len(seen) < 2:
            assert time.monotonic() < deadline, f"answers came from {seen} only"
            answer = _ask(port, b"hello")
            if answer is not None:
                seen.add(answer[0])
        os.killpg(parent.pid, signal.SIGINT)
        out, _ = parent.communicate(timeout=TIMEOUT * 2)
        assert parent.returncode == 0
        assert sorted(out.splitlines()) == [
            "echo-1@localhost ended: shutdown",
            "echo-2@localhost ended: shutdown",
        ]
    finally:
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)
            parent.wait()
        reserved.close()


def test_a_worker_failing_at_start_up_stops_them_all_with_status_1() -> None:
    parent = subprocess.Popen([sys.executable, str(APP), "fail"], stderr=subprocess.PIPE, text=True)
    try:
        _, err = parent.communicate(timeout=TIMEOUT * 2)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
    assert parent.returncode == 1, err
    assert "failed at start-up" in err


def test_sigterm_during_start_up_leaves_no_worker() -> None:
    reserved = _reserve()
    port = reserved.getsockname()[1]
    parent = subprocess.Popen([sys.executable, str(APP), "echo", str(port)])
    try:
        deadline = time.monotonic() + TIMEOUT
        while not _children(parent.pid):  # the workers are being spawned
            assert time.monotonic() < deadline, "no worker was started"
            time.sleep(0.005)
        workers = _children(parent.pid)
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(TIMEOUT * 2) in (0, 1)
        deadline = time.monotonic() + TIMEOUT
        while [pid for pid in workers if _alive(pid)]:
            assert time.monotonic() < deadline, "a worker outlived its parent"
            time.sleep(0.01)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        reserved.close()


def test_a_worker_crashing_in_a_loop_is_restarted_with_a_growing_backoff() -> None:
    parent = subprocess.Popen(
        [sys.executable, str(APP), "crashloop"], stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        lines: list[str] = []
        assert parent.stderr is not None
        while len([line for line in lines if "restarting in" in line]) < 4:
            assert time.monotonic() < deadline, lines
            lines.append(parent.stderr.readline())
        parent.send_signal(signal.SIGTERM)
        _, rest = parent.communicate(timeout=TIMEOUT)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
    delays = [
        float(line.split("restarting in ")[1].split(" s")[0])
        for line in lines + rest.splitlines()
        if "restarting in" in line
    ]
    assert delays[:4] == [0.1, 0.2, 0.4, 0.8], delays  # doubling: the parent never spins
    assert parent.returncode == 0


def test_workers_with_cluster_true_share_one_namespace() -> None:
    reserved = _reserve()
    port = reserved.getsockname()[1]
    parent = subprocess.Popen([sys.executable, str(APP), "echo-cluster", str(port)])
    try:
        deadline = time.monotonic() + TIMEOUT * 2
        while True:
            assert time.monotonic() < deadline, "the workers never saw each other"
            answer = _ask(port, b"nodes")
            if answer and answer[2] == "echo-1@localhost,echo-2@localhost":
                break
            time.sleep(0.01)
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(TIMEOUT * 2) == 0
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        reserved.close()
