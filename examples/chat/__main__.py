"""A web chat: each room is a supervised process, each browser a WebSocket.

Open the page, pick a nick and a room: you see the room's last 50 messages
and who is there, then messages, joins and leaves as they happen.

Who owns what:

* ``Lobby``, one process, owns the ``WebServer`` (the page from ``static/``
  on ``/``, a ``WebSocketHandler`` on ``/ws``) and the rooms' ``Supervisor``.
  Every WebSocket becomes a connection meta *of the lobby*, so each
  ``WSMessage`` and ``WSDisconnect`` comes to it, one at a time: it checks
  the input, remembers which room each connection joined, and passes on.
* ``Room``, one process per room, registered as ``room:<name>``, is started
  on the first join (``StartChild`` asks the supervisor). It owns the
  members (connection -> nick) and the history, and writes to its members
  itself: any process may ``send(conn, WSMessage(conn, data))``, and
  ``broadcast(self, conns, data)`` does that for many at once (JSON encoded
  once; a member that has just left is skipped).

How messages flow (JSON both ways: ``codec="json"``)::

    page {"type": "join", "room", "nick"}  -> lobby --call(Join)--> room
        room -> page    {"type": "joined", "room", "nick", "history", "members"}
        room -> others  {"type": "join", "nick"}
        or, the nick is taken here: lobby -> page {"type": "error", "text"}
    page {"type": "say", "text"}  -> lobby --send(Say)--> room
        room -> everyone, sender too  {"type": "message", "nick", "text", "ts"}
    the page goes: WSDisconnect -> lobby, Exit -> room -> others {"type": "leave", "nick"}

Bad input (a long nick, an unknown message...) gets ``{"type": "error",
"text"}`` and the connection carries on; a frame that is not JSON, or over
4 KiB, makes the library close that connection (1007, 1009).

Supervision, on purpose: a room *links* to each member's connection, and
traps exits, so a connection that ends reaches it as ``Exit``. Run with
``--crash-demo`` and say ``/crash`` in a room: it raises, the links close
its members' connections with 1011, the supervisor starts an empty room
under the same name, and the pages (``static/chat.js``) reconnect and join
again with the same nick, free in the new room. Other rooms carry on.
Without the flag, ``/crash`` is a message like any other. More than 10
crashes within a minute and the supervisor gives up, taking the lobby with
it: the program exits with status 1.

Run: python examples/chat [PORT] [--crash-demo]   (default 8080; 0 picks a free port)
Try: open http://127.0.0.1:8080 in two browser windows; Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

import metakit
from metakit import PID, Alias, Caller, ChildSpec, Exit, Process, StartChild, Supervisor
from metakit.web import WebServer
from metakit.websocket import WebSocketHandler, WSDisconnect, WSMessage, broadcast

STATIC = Path(__file__).resolve().with_name("static")
NICK = re.compile(r"\w{1,16}")
ROOM = re.compile(r"[\w-]{1,32}")
MAX_TEXT = 500  # characters; a WebSocket message over 4 KiB closes the connection (1009)
HISTORY = 50


@dataclass(frozen=True, slots=True)
class Settings:
    """How the chat runs: what its command line says (see :func:`parse_args`).

    Attributes:
        port: the port to serve on, at 127.0.0.1; 0 picks a free one.
        crash_demo: ``/crash`` said in a room crashes it (a demonstration of
            supervision); otherwise it is a message like any other.
        room_restarts: how many restarts the rooms get within a minute
            before their supervisor gives up.
    """

    port: int = 8080
    crash_demo: bool = False
    room_restarts: int = 10


@dataclass(frozen=True, slots=True)
class Join:
    conn: Alias
    nick: str


@dataclass(frozen=True, slots=True)
class Say:
    conn: Alias
    text: str


class Room(Process):
    trap_exit = True  # a member's connection ending arrives as Exit(conn, reason)

    def init(self, room: str, crash_demo: bool = False) -> None:
        self.room = room
        self.crash_demo = crash_demo
        self.members: dict[Alias, str] = {}  # connection -> nick
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY)

    def handle_call(self, sender: Caller, request: Join) -> bool:
        """Seat a new member; False if the nick is taken here."""
        conn, nick = request.conn, request.nick
        if nick in self.members.values():
            return False
        # Linked both ways: if this room crashes, the connection closes (1011)
        # and its page reconnects; when the connection ends, we get an Exit.
        self.link(conn)
        broadcast(self, self.members, {"type": "join", "nick": nick})
        self.members[conn] = nick
        broadcast(
            self,
            [conn],
            {
                "type": "joined",
                "room": self.room,
                "nick": nick,
                "history": list(self.history),
                "members": sorted(self.members.values()),
            },
        )
        return True

    def handle_message(self, sender: PID, message: Any) -> None:
        match message:
            case Say(conn, "/crash") if self.crash_demo and conn in self.members:
                raise RuntimeError(f"room {self.room!r} was asked to crash")
            case Say(conn, text) if conn in self.members:
                nick = self.members[conn]
                said = {"type": "message", "nick": nick, "text": text, "ts": time.time()}
                self.history.append(said)
                broadcast(self, self.members, said)
            case Exit(conn, _) if conn in self.members:
                broadcast(self, self.members, {"type": "leave", "nick": self.members.pop(conn)})


class Lobby(Process):
    """The chat's main process: the web server, the connections, the rooms' supervisor.

    ``call(lobby, "url")`` gives the URL it serves (a ``str``).
    """

    async def init(self, settings: Settings) -> None:
        self.settings = settings
        self.seats: dict[Alias, PID] = {}  # connection -> the room it joined
        self.rooms = await self.spawn(
            Supervisor, [], max_restarts=settings.room_restarts, max_seconds=60, link=True
        )
        ws = WebSocketHandler(self.pid, codec="json", max_message=4096)
        await self.spawn_meta(ws)
        app = web.Application()
        app.router.add_get("/", index)
        app.router.add_get("/ws", ws)
        app.router.add_static("/static/", STATIC)
        server = WebServer("127.0.0.1", settings.port, app)
        await self.spawn_meta(server)  # binds here: a busy port raises here
        self.url = server.url
        print(f"listening on {self.url}", flush=True)

    def handle_call(self, sender: Caller, request: Any) -> Any:
        """``"url"``: the URL the page is served on."""
        if request == "url":
            return self.url
        return super().handle_call(sender, request)

    async def handle_message(self, sender: PID, message: Any) -> None:
        match message:
            case WSMessage(conn, {"type": "join", "room": str(room), "nick": str(nick)}):
                problem = await self.join(conn, room, nick)
            case WSMessage(conn, {"type": "say", "text": str(text)}):
                problem = self.say(conn, text)
            case WSMessage(conn, _):
                problem = "unknown message"
            case WSDisconnect(conn, _, _):
                self.seats.pop(conn, None)  # and its room gets an Exit
                return
            case _:  # WSConnect: nothing to do until it joins
                return
        if problem is not None:
            self.send(conn, WSMessage(conn, {"type": "error", "text": problem}))

    async def join(self, conn: Alias, room: str, nick: str) -> str | None:
        """Seat ``conn`` in ``room`` as ``nick``, or say what is wrong."""
        if conn in self.seats:
            return "already in a room"
        if not NICK.fullmatch(nick):
            return "a nick is 1 to 16 letters, digits or _"
        if not ROOM.fullmatch(room):
            return "a room name is 1 to 32 letters, digits, _ or -"
        try:
            pid = await self.room_pid(room)
            if not await self.call(pid, Join(conn, nick)):
                return f"the nick {nick} is taken in {room}"
        except (metakit.NoProcess, metakit.ProcessExited):  # it crashed meanwhile
            return f"room {room} is restarting, try again"
        self.seats[conn] = pid
        return None

    async def room_pid(self, room: str) -> PID:
        """The PID of ``room``; the supervisor starts it if it is new."""
        name = f"room:{room}"
        pid = self.node.whereis(name)
        if pid is None:
            spec = ChildSpec(
                Room, args=(room, self.settings.crash_demo), name=name, restart="permanent"
            )
            try:
                pid = await self.call(self.rooms, StartChild(spec))
            except metakit.NameTaken:  # the supervisor has just restarted it
                pid = self.node.whereis(name)
        if pid is None:
            raise metakit.NoProcess(name)
        return pid

    def say(self, conn: Alias, text: str) -> str | None:
        """Pass ``text`` on to the room of ``conn``, or say what is wrong."""
        room = self.seats.get(conn)
        if room is None:
            return "join a room first"
        if len(text) > MAX_TEXT:
            return f"not sent: over {MAX_TEXT} characters"
        if text.strip():
            try:
                self.send(room, Say(conn, text))
            except metakit.NoProcess:  # the room has just crashed; the link closes conn
                pass
        return None


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html")


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    """The settings from a command line (``sys.argv[1:]`` by default)."""
    parser = argparse.ArgumentParser(
        prog="python examples/chat", description="A web chat on metakit."
    )
    parser.add_argument(
        "port", nargs="?", type=int, default=8080, help="port at 127.0.0.1 (0: any free one)"
    )
    parser.add_argument(
        "--crash-demo",
        action="store_true",
        help="let /crash said in a room crash it, to watch its supervisor restart it",
    )
    args = parser.parse_args(argv)
    return Settings(port=args.port, crash_demo=args.crash_demo)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the chat until SIGINT or SIGTERM."""
    reason = metakit.run(Lobby, parse_args(argv))
    if reason != "shutdown":  # the supervisor gave up (too many crashes), say
        sys.exit(f"chat stopped: {reason!r}")


if __name__ == "__main__":
    main()
