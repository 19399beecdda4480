"""A line-based chat room that any ``nc`` can join.

A client first picks a nick; after that each line it sends goes to everyone
else as ``<nick> text``, and the others see ``* nick joined`` and
``* nick left``. ``/quit`` says goodbye and closes the connection.

One ``Room`` process owns the ``TCPServer``, so every connection's messages
come to it, one at a time: the members live in a plain dict, with no locks.
A connection that drops without ``/quit`` (EOF, reset, a line over 4096
bytes) ends with a ``TCPDisconnect`` like any other, and leaves the same way.

Run: python examples/tcp_chat.py [PORT]   (default 7000; 0 picks a free port)
Try: nc 127.0.0.1 7000   in two or three terminals; Ctrl-C stops the server.
"""

from __future__ import annotations

import re
import sys
from typing import Any

import metakit
from metakit import PID, Alias, Process
from metakit.framing import Line
from metakit.tcp import TCPConnect, TCPDisconnect, TCPMessage, TCPServer

NICK = re.compile(r"\w{1,16}")
# Line framing refuses to send a line over max_length, so cap what we relay:
# 1000 characters (4 bytes each at most) plus "<nick> " fits in 4096 bytes.
MAX_TEXT = 1000


class Room(Process):
    async def init(self, port: int) -> None:
        self.members: dict[Alias, str | None] = {}  # connection -> nick (None: not chosen yet)
        server = TCPServer("127.0.0.1", port, framing=Line(max_length=4096))
        await self.spawn_meta(server)  # binds here: a busy port raises here
        host, port = server.address
        print(f"listening on {host}:{port}", flush=True)

    def handle_message(self, sender: PID, message: Any) -> None:
        match message:
            case TCPConnect(conn):
                self.members[conn] = None
                self.write(conn, "nick?")
            case TCPMessage(conn, line) if conn in self.members:
                self.received(conn, line.decode(errors="replace").strip())
            case TCPDisconnect(conn, _):  # whatever the reason: EOF, reset, /quit, ...
                self.leave(conn)
            # A TCPMessage from a connection that has left (lines it sent after
            # /quit) matches nothing and is dropped.

    def received(self, conn: Alias, text: str) -> None:
        nick = self.members[conn]
        if text == "/quit":
            self.write(conn, "bye")
            # The exit is handled after the writes already queued: "bye" goes first.
            self.send_exit(conn, "normal")
            # Leave now, not at its TCPDisconnect: the connection ends once "bye"
            # is out, and a write to it after that would raise NoProcess.
            self.leave(conn)
        elif nick is None:
            self.choose_nick(conn, text)
        elif len(text) > MAX_TEXT:
            self.write(conn, f"* not sent: over {MAX_TEXT} characters")
        elif text:
            self.broadcast(f"<{nick}> {text}", but=conn)

    def choose_nick(self, conn: Alias, nick: str) -> None:
        if not NICK.fullmatch(nick):
            self.write(conn, "nick? (1 to 16 letters, digits or _)")
        elif nick in self.members.values():
            self.write(conn, "nick taken, try another:")
        else:
            others = sorted(n for n in self.members.values() if n is not None)
            self.broadcast(f"* {nick} joined")
            self.members[conn] = nick
            self.write(conn, f"* welcome, {nick}; here: {', '.join(others) or 'nobody yet'}")

    def leave(self, conn: Alias) -> None:
        nick = self.members.pop(conn, None)  # None: never joined, or has left already
        if nick is not None:
            self.broadcast(f"* {nick} left")

    def broadcast(self, text: str, *, but: Alias | None = None) -> None:
        for conn, nick in self.members.items():
            if nick is not None and conn != but:
                self.write(conn, text)

    def write(self, conn: Alias, text: str) -> None:
        self.send(conn, TCPMessage(conn, text.encode()))


if __name__ == "__main__":
    metakit.run(Room, int(sys.argv[1]) if len(sys.argv) > 1 else 7000)
