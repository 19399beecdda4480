"""Every example runs, as a user would run it, and says what it should."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from metakit.testing import TIMEOUT

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 4,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        check=False,
    )


def test_hello_node() -> None:
    result = run_example("hello_node.py")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "count is 6"
    assert "went down: RuntimeError('asked to crash')" in lines[1]
    assert lines[2].startswith("restarted as <PID")
    assert lines[2].endswith("count is 0")
    assert lines[3] == "exit reason: normal"


def test_blocking_meta() -> None:
    result = run_example("blocking_meta.py")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "got: reading 0",
        "got: reading 1",
        "got: reading 2",
        "command exited with 0",
        "meta ended: normal",
    ]


def test_cluster_ping() -> None:
    result = run_example("cluster_ping.py")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("pong is <PID pong@localhost.")
    assert [line.split(" (")[0] for line in lines[1:4]] == [
        "ping 1 -> pong 1",
        "ping 2 -> pong 2",
        "ping 3 -> pong 3",
    ]
    assert lines[4] == "nodes: ['ping@localhost', 'pong@localhost']"
    assert lines[5] == "killed the pong node (SIGKILL)"
    down, after = lines[6].split(" after ")
    assert down == "Down: noconnection"
    assert float(after.split(" s")[0]) <= 3.0  # within 3 heartbeats of 1 s
    assert lines[7:] == ["NodeDown: pong@localhost noconnection", "nodes: ['ping@localhost']"]
