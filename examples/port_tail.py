"""Follow a file with ``tail -F`` as a port, and serve its last lines over HTTP.

One process, ``Tail``, owns three metas: a ``Port`` running ``tail -F FILE``
(each line it prints is a ``PortMessage``), a ``WebHandler`` answering
``GET /`` with the last lines it has seen, and an ``SSEHandler`` streaming
new lines as they come (``GET /events``, for ``curl -N`` or an
``EventSource``). If ``tail`` ends (it should not), so does the example,
with its exit status; stopping the example stops ``tail`` (stdin closed,
then SIGTERM to its process group).

Run: python examples/port_tail.py FILE [--port N] [--lines N]   (port 8080; 0: a free one)
Try: curl http://127.0.0.1:8080/      curl -N http://127.0.0.1:8080/events
     echo hello >> FILE
"""

from __future__ import annotations

import argparse
from collections import deque
from typing import Any

from aiohttp import web

import metakit
from metakit import PID, Alias, Caller, Process, broadcast
from metakit.port import Port, PortExit, PortMessage, PortStderr
from metakit.web import (
    SSEConnect,
    SSEDisconnect,
    SSEHandler,
    WebHandler,
    WebRequest,
    WebServer,
)


class Tail(Process):
    """The last lines of a file, as ``tail -F`` sees them, over HTTP."""

    async def init(self, path: str, port: int, keep: int) -> None:
        self.lines: deque[str] = deque(maxlen=keep)
        self.streams: set[Alias] = set()
        # -n 0: from now on (a big file's past is not what we serve); -F: across
        # rotations and files that appear later.
        await self.spawn_meta(Port(["tail", "-n", "0", "-F", path], kill_grace=1.0))
        web_handler = WebHandler(self.pid)
        sse = SSEHandler(self.pid)
        await self.spawn_meta(web_handler)
        await self.spawn_meta(sse)
        app = web.Application()
        app.router.add_get("/", web_handler)
        app.router.add_get("/events", sse)
        server = WebServer("127.0.0.1", port, app)
        await self.spawn_meta(server)  # binds here: a busy port raises here
        print(f"following {path}; listening on {server.url}", flush=True)

    def handle_call(self, sender: Caller, request: WebRequest) -> Any:
        """``GET /``: the last lines, oldest first."""
        return "".join(f"{line}\n" for line in self.lines)

    def handle_message(self, sender: PID, message: Any) -> None:
        match message:
            case PortMessage(_, data):
                line = data.decode(errors="replace")
                self.lines.append(line)
                broadcast(self, self.streams, line)  # JSON-encoded once for all
            case PortStderr(_, data):  # tail's own notices ("file truncated"...)
                self.log.info("tail: %s", data.decode(errors="replace"))
            case PortExit(_, returncode, _):
                raise metakit.Stop(f"tail exited with {returncode}")
            case SSEConnect(conn, _, _):
                self.streams.add(conn)
            case SSEDisconnect(conn, _):
                self.streams.discard(conn)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Serve the last lines of a file.")
    parser.add_argument("file")
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    parser.add_argument("--lines", type=int, default=100, help="lines to keep")
    args = parser.parse_args()
    metakit.run(Tail, args.file, args.port, args.lines, node_name="tail@localhost")
