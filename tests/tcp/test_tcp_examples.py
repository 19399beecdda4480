"""The TCP examples, run as a user would: a subprocess, and plain sockets talking to it."""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from importlib.util import find_spec
from pathlib import Path

import pytest

from metakit.testing import TIMEOUT

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

pytestmark = [
    pytest.mark.skipif(
        sys.platform == "win32", reason="the examples stop on SIGTERM, which Windows cannot send"
    ),
    # Each example runs on both loops metakit supports (METAKIT_LOOP), like tests/conftest.py.
    pytest.mark.parametrize(
        "loop",
        [
            "asyncio",
            pytest.param(
                "uvloop",
                marks=pytest.mark.skipif(find_spec("uvloop") is None, reason="needs uvloop"),
            ),
        ],
    ),
]


@contextmanager
def serving(name: str, loop: str) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """Run ``examples/<name> 0`` on ``loop``; yield the process and the port it prints.

    The process is killed on the way out if the test has not stopped it.
    """
    with subprocess.Popen(
        [sys.executable, str(EXAMPLES / name), "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "METAKIT_LOOP": loop},
    ) as proc:
        try:
            assert proc.stdout is not None
            readable, _, _ = select.select([proc.stdout], [], [], TIMEOUT * 2)
            assert readable, f"{name} printed nothing within {TIMEOUT * 2:g} s"
            first = proc.stdout.readline()
            match = re.fullmatch(r"listening on 127\.0\.0\.1:(\d+)\n", first)
            assert match, f"first line {first!r}; stderr: {stderr_of(proc)}"
            yield proc, int(match[1])
        finally:
            if proc.poll() is None:
                proc.kill()


def stderr_of(proc: subprocess.Popen[str]) -> str:
    """Kill the process if needed and return what it wrote to stderr."""
    if proc.poll() is None:
        proc.kill()
    return proc.communicate(timeout=TIMEOUT)[1]


def stop(proc: subprocess.Popen[str]) -> None:
    """SIGTERM: the example must exit with code 0, with no traceback on stderr."""
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err


class Client:
    """A blocking socket that reads whole lines, each within ``TIMEOUT``."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        """The next line, without its ``\\n``."""
        deadline = time.monotonic() + TIMEOUT
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no whole line within {TIMEOUT:g} s: {self.buffer!r}")
            self.sock.settimeout(left)
            data = self.sock.recv(65536)
            assert data, f"EOF instead of a line; got {self.buffer!r}"
            self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line

    def lines(self, n: int) -> list[bytes]:
        return [self.line() for _ in range(n)]

    def expect_end(self) -> None:
        """The server closes the connection (EOF, or a reset) with nothing more to read."""
        assert self.buffer == b""
        self.sock.settimeout(TIMEOUT)
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            return
        assert data == b"", f"more data instead of EOF: {data!r}"

    def reset(self) -> None:
        """Close abruptly: SO_LINGER 0 makes close() send an RST, not a FIN."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self) -> None:
        self.sock.close()


def connect(stack: ExitStack, port: int) -> Client:
    """A new client, closed when ``stack`` exits."""
    client = Client(port)
    stack.callback(client.close)
    return client


def test_echo(loop: str) -> None:
    with serving("tcp_echo.py", loop) as (proc, port), ExitStack() as stack:
        a = connect(stack, port)
        b = connect(stack, port)

        a.send(b"hello\n")
        assert a.line() == b"hello"

        a.send(b"wor")  # half a line, then the rest
        b.send(b"from b\n")  # meanwhile another connection is served
        assert b.line() == b"from b"
        a.send(b"ld\n")
        assert a.line() == b"world"

        a.send(b"one\ntwo\n\nthree\r\n")  # several lines in one write; an empty one; CRLF
        assert a.lines(4) == [b"one", b"two", b"", b"three\r"]

        longest = b"x" * 4096
        a.send(longest[:1000])
        a.send(longest[1000:] + b"\n")
        assert a.line() == longest

        b.send(b"y" * 4097 + b"\n")  # over Line(max_length=4096): that connection ends
        b.expect_end()
        a.send(b"still here\n")
        assert a.line() == b"still here"

        stop(proc)
        a.expect_end()  # the server closed the connections it had


def test_chat(loop: str) -> None:
    with serving("tcp_chat.py", loop) as (proc, port), ExitStack() as stack:
        alice = connect(stack, port)
        assert alice.line() == b"nick?"
        alice.send(b"two words\n")
        assert alice.line() == b"nick? (1 to 16 letters, digits or _)"
        alice.send(b"alice\n")
        assert alice.line() == b"* welcome, alice; here: nobody yet"

        bob = connect(stack, port)
        assert bob.line() == b"nick?"
        bob.send(b"bob\r\n")  # as nc -C or telnet sends it
        assert bob.line() == b"* welcome, bob; here: alice"
        assert alice.line() == b"* bob joined"

        carol = connect(stack, port)
        assert carol.line() == b"nick?"
        carol.send(b"alice\n")
        assert carol.line() == b"nick taken, try another:"
        carol.send(b"carol\n")
        assert carol.line() == b"* welcome, carol; here: alice, bob"
        assert alice.line() == b"* carol joined"
        assert bob.line() == b"* carol joined"

        alice.send(b"hello ")  # a line in two writes
        alice.send(b"all\n")
        assert bob.line() == b"<alice> hello all"
        assert carol.line() == b"<alice> hello all"

        # Bob answers after reading alice's line, so the room handled hers first:
        # had she got her own line back, it would come before bob's.
        bob.send(b"hi alice\n")
        assert alice.line() == b"<bob> hi alice"
        assert carol.line() == b"<bob> hi alice"

        # A line sent after /quit, in the same write, is not relayed.
        carol.send(b"/quit\nstill here?\n")
        assert carol.line() == b"bye"
        carol.expect_end()
        assert alice.line() == b"* carol left"
        assert bob.line() == b"* carol left"  # not "<bob> hi alice": no echo to the sender

        bob.close()  # abruptly: no /quit, a plain FIN
        assert alice.line() == b"* bob left"

        stray = connect(stack, port)  # leaves before choosing a nick: nothing to announce
        assert stray.line() == b"nick?"
        stray.close()

        dave = connect(stack, port)
        assert dave.line() == b"nick?"
        dave.send(b"dave\n")
        assert dave.line() == b"* welcome, dave; here: alice"
        assert alice.line() == b"* dave joined"
        dave.reset()  # more abruptly: an RST
        assert alice.line() == b"* dave left"

        # Alice is still connected: the server closes her connection as it stops.
        stop(proc)
        alice.expect_end()
