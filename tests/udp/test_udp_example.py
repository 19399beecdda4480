"""examples/udp_echo.py, run as a user would, with plain sockets."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from metakit.testing import TIMEOUT

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "udp_echo.py"


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_udp_echo_example(loop: str) -> None:
    env = {"METAKIT_LOOP": loop, "PYTHONUNBUFFERED": "1", "PATH": ""}
    with subprocess.Popen(
        [sys.executable, str(EXAMPLE), "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    ) as proc:
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline()
            match = re.fullmatch(r"listening on 127\.0\.0\.1:(\d+)\n", first)
            assert match, (first, proc.stderr.read() if proc.stderr else "")
            address = ("127.0.0.1", int(match[1]))
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(TIMEOUT)
                sock.bind(("127.0.0.1", 0))
                for payload in (b"hello", b"", b"x" * 60000):
                    sock.sendto(payload, address)
                    data, peer = sock.recvfrom(65535)
                    assert (data, peer) == (payload, address)
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=TIMEOUT)
            assert proc.returncode == 0, err
            assert "received=3, sent=3" in out
            assert "Traceback" not in err
        finally:
            if proc.poll() is None:
                proc.kill()
