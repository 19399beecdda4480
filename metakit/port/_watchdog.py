"""The node's port watchdog: kills the process groups of its ports if the node's
OS process dies without stopping them (SIGKILL, a crash).

One small Python process per node OS process, started with the first port, in
a session of its own. Its stdin is a pipe whose write end only this process
holds (non-inheritable, so no port's program keeps it open): the node writes
``+PGID`` when a port starts and ``-PGID`` when it has ended. When the pipe
reads EOF — this process has gone, however — the watchdog sends SIGTERM to
every group still listed, waits ``grace`` seconds, sends SIGKILL, and exits.
A clean stop lists no group, so the watchdog just exits; so does the
watchdog once the last port has ended (the node closes the pipe), to start
again with the next port: no process stays behind an idle node.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import threading

__all__ = ["Watchdog"]

_PROGRAM = r"""
import os, signal, sys, time
groups = set()
for line in sys.stdin:
    sign, pgid = line[0], int(line[1:])
    (groups.add if sign == "+" else groups.discard)(pgid)
for sig in (signal.SIGTERM, signal.SIGKILL):
    for pgid in groups:
        try:
            os.killpg(pgid, sig)
        except OSError:
            pass
    if sig == signal.SIGTERM and groups:
        time.sleep(float(sys.argv[1]))
"""


class Watchdog:
    """The watchdog process of this OS process (shared by every node in it)."""

    _instance: Watchdog | None = None
    _lock = threading.Lock()

    def __init__(self, grace: float) -> None:
        self.groups = 0
        self._proc = subprocess.Popen(
            [sys.executable, "-S", "-c", _PROGRAM, str(grace)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # no terminal signal reaches it with ours
            close_fds=True,
        )
        assert self._proc.stdin is not None
        self._pipe = self._proc.stdin
        os.set_inheritable(self._pipe.fileno(), False)

    @classmethod
    def get(cls, grace: float) -> Watchdog:
        """The running watchdog, started now if there is none."""
        with cls._lock:
            _collect()
            dog = cls._instance
            if dog is None or dog._proc.poll() is not None:
                dog = cls._instance = Watchdog(grace)
            return dog

    def _say(self, line: str) -> None:
        try:
            self._pipe.write(line.encode())
            self._pipe.flush()
        except OSError:  # it died: nothing watches; the ports still stop themselves
            pass

    def watch(self, pgid: int) -> None:
        """Kill group ``pgid`` if this process dies before :meth:`release`."""
        self.groups += 1
        self._say(f"+{pgid}\n")

    def release(self, pgid: int) -> None:
        """Group ``pgid`` has ended (or been killed): forget it; with no group
        left, the watchdog ends."""
        self._say(f"-{pgid}\n")
        self.groups -= 1
        if self.groups <= 0:
            with Watchdog._lock:
                if Watchdog._instance is self:
                    Watchdog._instance = None
            try:
                self._pipe.close()  # EOF, with no group listed: it exits at once
            except OSError:
                pass
            self._reap(0)

    def _reap(self, tries: int) -> None:
        # Collect its exit status without blocking the loop; if the loop ends
        # first, the Popen is kept (no warning, no zombie) until the next
        # watchdog's start collects it.
        if self._proc.poll() is not None:
            return
        _exiting.add(self._proc)
        if tries >= 200:  # 10 s: something is wrong with it
            self._proc.kill()
            return
        with contextlib.suppress(RuntimeError):  # no loop any more
            asyncio.get_running_loop().call_later(0.05, self._reap, tries + 1)


_exiting: set[subprocess.Popen[bytes]] = set()  # watchdogs told to exit, not yet collected


def _collect() -> None:
    for proc in list(_exiting):
        if proc.poll() is not None:
            _exiting.discard(proc)
