"""A meta-process with a blocking main loop: stream a command's output as messages.

``CommandOutput`` owns a child process. Its ``start`` is a plain ``def``, so
metakit runs it in its own thread, where a blocking ``readline()`` is fine;
each line reaches the parent process as an ``OutputLine`` message. When the
meta ends for any reason, ``terminate`` kills the command and closes the
pipe, which wakes the blocked read.

Run: python examples/blocking_meta.py
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import metakit
from metakit import PID, Alias, Down, Meta, Process


@dataclass(frozen=True, slots=True)
class OutputLine:
    source: Alias
    text: str


@dataclass(frozen=True, slots=True)
class CommandExited:
    source: Alias
    returncode: int


class CommandOutput(Meta):
    """Runs ``argv`` and sends each line of its stdout to the parent."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        self.proc: subprocess.Popen[str] | None = None

    async def init(self) -> None:
        # Popen returns once the command is started; the reads that block are in start().
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, text=True)  # noqa: ASYNC220

    def start(self) -> None:  # plain def: runs in a thread, may block
        assert self.proc is not None
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # blocking reads
            self.send(self.parent, OutputLine(self.id, line.rstrip("\n")))
        self.send(self.parent, CommandExited(self.id, self.proc.wait()))

    def terminate(self, reason: Any) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            if self.proc.stdout is not None:
                self.proc.stdout.close()


SCRIPT = """
import time
for i in range(3):
    print("reading", i, flush=True)
    time.sleep(0.05)
"""


class Main(Process):
    async def init(self) -> None:
        meta = await self.spawn_meta(CommandOutput([sys.executable, "-c", SCRIPT]))
        self.monitor(meta)

    def handle_message(self, sender: PID, message: Any) -> None:
        match message:
            case OutputLine(_, text):
                print("got:", text)
            case CommandExited(_, code):
                print("command exited with", code)
            case Down(_, _, reason):
                print("meta ended:", reason)
                raise metakit.Stop()


if __name__ == "__main__":
    metakit.run(Main)
