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


def test_ssh_console() -> None:
    # Run as a user would; log in with the key it prints (asyncssh's client).
    import asyncio
    import re
    import signal

    import asyncssh

    with subprocess.Popen(
        [sys.executable, str(EXAMPLES / "ssh_console.py")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HOME": "/nonexistent", "PYTHONUNBUFFERED": "1"},
    ) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().startswith("console host key SHA256:")
            line = proc.stdout.readline()
            match = re.fullmatch(r"ssh -p (\d+) -i (\S+) .* (\S+)@127\.0\.0\.1\n", line)
            assert match, line
            port, key_file, user = int(match[1]), match[2], match[3]

            async def ps() -> str:
                async with asyncssh.connect(
                    "127.0.0.1", port, username=user, client_keys=[key_file],
                    known_hosts=None, config=None,
                ) as conn:  # fmt: skip
                    result = await conn.run("ps --sort mailbox", timeout=TIMEOUT)
                    assert result.exit_status == 0, result.stderr
                    return str(result.stdout)

            table = asyncio.run(ps())
            assert table.splitlines()[0].split()[:2] == ["PID", "NAME"]
            for name in ("ticker-1", "ticker-2", "ticker-3", "console", "tickers"):
                assert f" {name} " in table, table
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=TIMEOUT)
            assert proc.returncode == 0, err
            assert not Path(key_file).exists()  # the key made for the run is gone
        finally:
            if proc.poll() is None:
                proc.kill()


def test_port_tail(tmp_path: Path) -> None:
    # The example follows a file with tail -F and serves what it sees.
    import re
    import signal
    import time
    import urllib.request

    log = tmp_path / "app.log"
    log.write_text("")
    with subprocess.Popen(
        [sys.executable, str(EXAMPLES / "port_tail.py"), str(log), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    ) as proc:
        try:
            assert proc.stdout is not None
            match = re.search(r"listening on (http://\S+)", proc.stdout.readline())
            assert match
            url = match[1]
            events = urllib.request.urlopen(url + "/events", timeout=TIMEOUT)
            deadline = time.monotonic() + TIMEOUT
            seen = ""
            while "second" not in seen:  # tail -F starts watching a moment after it starts
                assert time.monotonic() < deadline, f"served {seen!r}"
                with log.open("a") as f:
                    f.write("first\nsecond\n")
                time.sleep(0.1)  # a poll's pause, with a deadline
                with urllib.request.urlopen(url + "/", timeout=TIMEOUT) as page:
                    seen = page.read().decode()
            assert seen.splitlines()[:2] == ["first", "second"]
            assert events.readline() == b'data: "first"\n'
            events.close()
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=TIMEOUT)
            assert proc.returncode == 0, err
        finally:
            if proc.poll() is None:
                proc.kill()


def test_observer_demo() -> None:
    # Run as a user would; read one sample over the stream with aiohttp's client.
    import asyncio
    import re
    import signal
    from typing import Any

    import aiohttp

    with subprocess.Popen(
        [sys.executable, str(EXAMPLES / "observer_demo.py"), "--port", "0", "--processes", "50"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            match = re.fullmatch(r"observer at (http://127\.0\.0\.1:\d+/)\?token=(\S+)\n", line)
            assert match, line
            page, token = match[1], match[2]

            async def sample() -> Any:
                async with aiohttp.ClientSession() as http:
                    async with http.get(page) as refused:
                        assert refused.status == 401  # no token
                    async with http.get(f"{page}?token={token}") as ok:
                        assert ok.status == 200
                    stream = f"{page}stream?token={token}".replace("http", "ws", 1)
                    async with http.ws_connect(stream) as ws:
                        while True:  # the hello, then samples: until the traffic shows
                            got = (await ws.receive_json(timeout=TIMEOUT)).get("sample")
                            metas = got["metas"]["rows"] if got else []
                            if any(m[2] == "TCPClient" and m[11] > 0 for m in metas):
                                return got

            got = asyncio.run(asyncio.wait_for(sample(), TIMEOUT * 2))
            names = {row[2] for row in got["processes"]["rows"]}
            for name in ("workers", "worker-1", "pinger", "echo", "backlog", "observer"):
                assert name in names, names
            assert [e[0] for e in got["events"]] == ["tick"]
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=TIMEOUT)
            assert proc.returncode == 0, err
        finally:
            if proc.poll() is None:
                proc.kill()
