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
