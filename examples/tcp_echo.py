"""A TCP echo server: every line a client sends comes back to it.

``Echo`` owns a ``TCPServer`` with ``Line`` framing, so each ``TCPMessage``
it receives is one whole line (without its newline), however the bytes were
split on the wire; writing ``TCPMessage(conn, line)`` sends it back with the
newline. A line longer than 4096 bytes ends that connection.

Run: python examples/tcp_echo.py [PORT]   (default 7000; 0 picks a free port)
Try: nc 127.0.0.1 7000   then type lines; Ctrl-C stops the server.
"""

from __future__ import annotations

import sys
from typing import Any

import metakit
from metakit import PID, Process
from metakit.framing import Line
from metakit.tcp import TCPMessage, TCPServer


class Echo(Process):
    async def init(self, port: int) -> None:
        server = TCPServer("127.0.0.1", port, framing=Line(max_length=4096))
        await self.spawn_meta(server)  # binds here: a busy port raises here
        host, port = server.address
        print(f"listening on {host}:{port}", flush=True)

    def handle_message(self, sender: PID, message: Any) -> None:
        match message:
            case TCPMessage(conn, line):
                self.send(conn, TCPMessage(conn, line))
            # TCPConnect and TCPDisconnect need nothing here: the server
            # opens and closes the connections.


if __name__ == "__main__":
    metakit.run(Echo, int(sys.argv[1]) if len(sys.argv) > 1 else 7000)
