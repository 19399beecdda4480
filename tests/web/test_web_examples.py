"""The web examples, run as a user would: a subprocess, and real HTTP clients."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from metakit.testing import TIMEOUT

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@contextmanager
def serving(name: str, loop: str = "asyncio") -> Iterator[str]:
    """Run ``examples/<name> 0``; yield its base URL; stop it with SIGTERM."""
    env = {"METAKIT_LOOP": loop, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(
        [sys.executable, str(EXAMPLES / name), "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    ) as proc:
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline()
            match = re.fullmatch(r"listening on (http://127\.0\.0\.1:\d+)\n", first)
            assert match, (first, proc.stderr.read() if proc.stderr else "")
            yield match[1]
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=TIMEOUT)
            assert proc.returncode == 0, err
        finally:
            if proc.poll() is None:
                proc.kill()


def get(url: str, data: bytes | None = None) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, data=data, timeout=TIMEOUT) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_web_hello_pool_under_supervisor(loop: str) -> None:
    with serving("web_hello.py", loop) as url:
        workers = set()
        for i in range(8):
            status, body = get(f"{url}/hello?name=n{i}")
            assert status == 200
            answer = json.loads(body)
            assert answer["hello"] == f"n{i}"
            workers.add(answer["worker"])
        assert workers == {0, 1, 2, 3}  # round-robin over the pool
        assert get(f"{url}/count", data=b"a\nb\nc\n") == (200, b'{"bytes":6,"lines":3}')
        assert get(f"{url}/nope")[0] == 404
        assert get(f"{url}/crash")[0] == 503  # the worker stopped mid-request...
        for _ in range(8):  # ...and the pool keeps answering
            assert get(f"{url}/hello")[0] == 200


def test_web_mount_on_an_existing_app() -> None:
    with serving("web_mount.py") as url:
        assert get(f"{url}/health") == (200, b"ok\n")
        assert json.loads(get(f"{url}/api/items?limit=2")[1]) == {"items": ["apple", "banana"]}
        assert get(f"{url}/api/other")[0] == 404
        if shutil.which("curl"):
            out = subprocess.run(
                ["curl", "-s", f"{url}/api/items"],
                capture_output=True,
                timeout=TIMEOUT,
                check=True,
            ).stdout
            assert json.loads(out)["items"][-1] == "date"
