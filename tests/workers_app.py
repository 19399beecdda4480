"""A program for tests/test_workers.py: ``metakit.run(..., workers=N)``.

* ``echo PORT``: two workers share PORT (reuse_port); each answers a line
  with ``node pid line``; ``crash`` crashes the worker that reads it,
  ``nodes`` answers with that node's view of the cluster.
* ``echo-cluster PORT``: the same, on a local nats-server the parent starts.
  Each worker prints ``<node> ended: <reason>`` when its Echo ends.
* ``fail``: the workers fail in ``init``.
* ``crashloop``: one worker that dies 50 ms after each start.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import metakit
from metakit import PID, Process
from metakit.framing import Line
from metakit.tcp import TCPMessage, TCPServer


class Echo(Process):
    async def init(self, port: int) -> None:
        server = TCPServer("127.0.0.1", port, framing=Line(max_length=4096), reuse_port=True)
        await self.spawn_meta(server)

    def terminate(self, reason: Any) -> None:
        # One write(2): the workers share the pipe, and print() makes two
        # writes when stdout is unbuffered (PYTHONUNBUFFERED), which interleave.
        os.write(1, f"{self.node.name} ended: {reason}\n".encode())

    def handle_message(self, sender: PID, message: Any) -> None:
        match message:
            case TCPMessage(conn, b"crash"):
                os._exit(3)  # a worker dying hard: the parent restarts it
            case TCPMessage(conn, b"nodes"):
                reply = f"{self.node.name} {os.getpid()} {','.join(self.node.nodes())}"
                self.send(conn, TCPMessage(conn, reply.encode()))
            case TCPMessage(conn, line):
                reply = f"{self.node.name} {os.getpid()} ".encode() + line
                self.send(conn, TCPMessage(conn, reply))


class CrashLoop(Process):
    """Starts, then dies 50 ms later, every time."""

    async def init(self) -> None:
        self.node._loop.call_later(0.05, os._exit, 3)


class Broken(Process):
    async def init(self) -> None:
        raise RuntimeError("cannot start")


if __name__ == "__main__":
    if sys.argv[1] == "fail":
        metakit.run(Broken, workers=2, node_name="broken@localhost")
    elif sys.argv[1] == "crashloop":
        metakit.run(CrashLoop, workers=1, node_name="loop@localhost")
    elif sys.argv[1] == "echo-cluster":
        metakit.run(Echo, int(sys.argv[2]), workers=2, node_name="echo@localhost", cluster=True)
    else:
        metakit.run(Echo, int(sys.argv[2]), workers=2, node_name="echo@localhost")
