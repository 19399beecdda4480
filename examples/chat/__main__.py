"""A web chat: each room is a supervised process, each browser a WebSocket.

Open the page, pick a nick and a room: you see the room's last 50 messages
and who is there, then messages, joins and leaves as they happen.

Who owns what:

* ``Lobby``, one process, owns the ``WebServer`` (the page from ``static/``
  on ``/``, a ``WebSocketHandler`` on ``/ws``) and opens the rooms.
  Every WebSocket becomes a connection meta *of the lobby*, so each
  ``WSMessage`` and ``WSDisconnect`` comes to it, one at a time: it checks
  the input, remembers which room each connection joined, and passes on.
* ``Room``, one process per room, registered as ``room:<name>``, is started
  on the first join, under a ``Supervisor`` of its own that the lobby
  *monitors* (never links to: a room ending is news to the lobby, not its
  end). It owns the members (connection -> nick) and the history, and
  writes to its members itself: any process may ``send(conn,
  WSMessage(conn, data))``, and ``broadcast(self, conns, data)`` does that
  for many at once (JSON encoded once; a member that has just left is
  skipped). When the last member has left, the lobby stops the room and
  its supervisor: an empty room costs nothing.

How messages flow (JSON both ways: ``codec="json"``)::

    page {"type": "join", "room", "nick"}  -> lobby --call(Join)--> room
        room -> page    {"type": "joined", "room", "nick", "history", "members"}
        room -> others  {"type": "join", "nick"}
        or, the nick is taken here: lobby -> page {"type": "error", "text"}
    page {"type": "say", "text"}  -> lobby --send(Say)--> room
        room -> everyone, sender too  {"type": "message", "nick", "text", "ts"}
    the page goes: WSDisconnect -> lobby, Exit -> room -> others {"type": "leave", "nick"}
    too fast: lobby -> page {"type": "closing", "text"}, then closes it (1000)

Bad input (a long nick, an unknown message...) gets ``{"type": "error",
"text"}`` and the connection carries on; a frame that is not JSON, or over
4 KiB, makes the library close that connection (1007, 1009).

Safe to open to anyone (each limit a flag, see ``--help``):

* only pages served here open a WebSocket: an ``Origin`` other than
  ``http://127.0.0.1:PORT``, ``http://localhost:PORT`` or an ``--origin``
  gets 403, so a page elsewhere cannot use its visitor's browser to chat;
* each connection may send 20 messages at once, then 5 a second (a token
  bucket, ``--burst``, ``--rate``); the first one past that gets
  ``{"type": "closing", "text"}`` saying why, and the connection is closed
  (1000) — the page goes back to its form and shows the text;
* the page comes with a Content-Security-Policy that runs only scripts
  from here (none inline) and connects only here;
* an empty room stops, and a room crashing stops only itself (below).

Supervision, on purpose: a room *links* to each member's connection, and
traps exits, so a connection that ends reaches it as ``Exit``. Run with
``--crash-demo`` and say ``/crash`` in a room: it raises, the links close
its members' connections with 1011, its supervisor starts an empty room
under the same name, and the pages (``static/chat.js``) reconnect and join
again with the same nick, free in the new room. Other rooms carry on.
Without the flag, ``/crash`` is a message like any other. More than 10
restarts of one room within a minute and its supervisor gives up: that
room ends (its members were closed by the crash) and opens afresh on the
next join; the lobby and the other rooms carry on.

Run: python examples/chat [PORT] [--origin URL]... [--rate N] [--burst N] [--crash-demo]
     (PORT: 8080 by default; 0 picks a free one)
Try: open http://127.0.0.1:8080 in two browser windows; Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

import metakit
from metakit import PID, Alias, Caller, ChildSpec, Down, Exit, Process, Ref, Supervisor
from metakit.web import WebServer
from metakit.websocket import WebSocketHandler, WSDisconnect, WSMessage, broadcast

STATIC = Path(__file__).resolve().with_name("static")
NICK = re.compile(r"\w{1,16}")
ROOM = re.compile(r"[\w-]{1,32}")
MAX_TEXT = 500  # characters; a WebSocket message over 4 KiB closes the connection (1009)
HISTORY = 50
# The rate limit per connection: a page typing never comes near it; a script flooding does.
RATE = 5.0  # messages a second, on average
BURST = 20  # messages at once


@dataclass(frozen=True, slots=True)
class Settings:
    """How the chat runs: what its command line says (see :func:`parse_args`).

    Attributes:
        port: the port to serve on, at 127.0.0.1; 0 picks a free one.
        origins: more origins the page may come from (``https://chat.example``
            behind a proxy, say) besides ``http://127.0.0.1:PORT`` and
            ``http://localhost:PORT``, where it is served.
        rate: messages a second each connection may send, on average...
        burst: ...and at once: past that, the connection is told why and
            closed (see :class:`TokenBucket`).
        crash_demo: ``/crash`` said in a room crashes it (a demonstration of
            supervision); otherwise it is a message like any other.
        room_restarts: how many restarts a room gets within a minute
            before its supervisor gives up.
    """

    port: int = 8080
    origins: tuple[str, ...] = ()
    rate: float = RATE
    burst: int = BURST
    crash_demo: bool = False
    room_restarts: int = 10


class TokenBucket:
    """A rate limit: ``burst`` messages at once, then ``rate`` a second.

    It holds up to ``burst`` tokens and gains ``rate`` a second; a message
    takes one. Times are ``time.monotonic()`` seconds, passed in (so a test
    can pass its own).
    """

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = now

    def take(self, now: float) -> bool:
        """Take a token for one message; False if there is none (over the limit)."""
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


@dataclass(frozen=True, slots=True)
class Join:
    """The lobby asks a room (a call) to seat ``conn`` as ``nick``; the reply is a bool."""

    conn: Alias
    nick: str


@dataclass(frozen=True, slots=True)
class Say:
    """The lobby passes on what ``conn``, a member, says in the room."""

    conn: Alias
    text: str


class Room(Process):
    """One room: its members and its history, under a supervisor of its own.

    Started with ``init(room, crash_demo)``: its name, and whether ``/crash``
    crashes it.
    """

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


@dataclass(slots=True, eq=False)
class OpenRoom:
    """What the lobby knows of one room it has opened.

    Attributes:
        name: the room's name.
        supervisor: the room's own supervisor (the room process is its child).
        watch: the lobby's monitor of that supervisor.
        seated: connections seated here whose ``WSDisconnect`` has not come yet.
    """

    name: str
    supervisor: PID
    watch: Ref
    seated: int = 0


class Lobby(Process):
    """The chat's main process: the web server, the connections, the rooms.

    ``call(lobby, "url")`` gives the URL it serves (a ``str``).
    """

    async def init(self, settings: Settings) -> None:
        self.settings = settings
        self.rooms: dict[str, OpenRoom] = {}  # name -> the room open under it
        self.watches: dict[Ref, OpenRoom] = {}  # monitor of a room's supervisor -> the room
        # connection -> the room it sits in, and the room process it joined
        self.seats: dict[Alias, tuple[OpenRoom, PID]] = {}
        self.limits: dict[Alias, TokenBucket] = {}  # connection -> its rate limit
        self.cut: set[Alias] = set()  # connections over the limit, closing
        # Only pages from here may connect (a page elsewhere could otherwise act for
        # its visitor); no origin at all until the port is known.
        ws = WebSocketHandler(self.pid, codec="json", max_message=4096, origins=())
        await self.spawn_meta(ws)
        app = web.Application()
        app.on_response_prepare.append(secure_headers)
        app.router.add_get("/", index)
        app.router.add_get("/ws", ws)
        app.router.add_static("/static/", STATIC)
        server = WebServer("127.0.0.1", settings.port, app)
        await self.spawn_meta(server)  # binds here: a busy port raises here
        self.url = server.url
        port = server.address[1]
        ws.origins = frozenset(  # read by the handler at each upgrade
            [f"http://127.0.0.1:{port}", f"http://localhost:{port}", *settings.origins]
        )
        print(f"listening on {self.url}", flush=True)

    def handle_call(self, sender: Caller, request: Any) -> Any:
        """``"url"``: the URL the page is served on."""
        if request == "url":
            return self.url
        return super().handle_call(sender, request)

    async def handle_message(self, sender: PID, message: Any) -> None:
        match message:
            case WSMessage(conn, data):
                if self.admit(conn):
                    problem = await self.handle_request(conn, data)
                    if problem is not None:
                        self.tell(conn, {"type": "error", "text": problem})
            case WSDisconnect(conn, _, _):
                self.limits.pop(conn, None)
                self.cut.discard(conn)
                seat = self.seats.pop(conn, None)  # and its room gets an Exit
                if seat is not None:
                    await self.leave(seat[0])
            case Down(_, watch, reason) if watch in self.watches:
                self.room_ended(self.watches.pop(watch), reason)
            case _:  # WSConnect: nothing to do until it sends
                pass

    async def handle_request(self, conn: Alias, data: Any) -> str | None:
        """Do what a page asks, or say what is wrong."""
        match data:
            case {"type": "join", "room": str(room), "nick": str(nick)}:
                return await self.join(conn, room, nick)
            case {"type": "say", "text": str(text)}:
                return self.say(conn, text)
            case _:
                return "unknown message"

    def tell(self, conn: Alias, data: Any) -> None:
        """Write to one connection. Through broadcast, even to one: it skips a
        connection gone or far behind, where send would raise (and end the lobby)."""
        broadcast(self, [conn], data)

    def admit(self, conn: Alias) -> bool:
        """Whether a message from ``conn`` is within its rate limit.

        The first one over it closes the connection (1000) after a notice
        saying why; what it sent after that is ignored.
        """
        if conn in self.cut:
            return False
        now = time.monotonic()
        bucket = self.limits.get(conn)
        if bucket is None:
            bucket = self.limits[conn] = TokenBucket(self.settings.rate, self.settings.burst, now)
        if bucket.take(now):
            return True
        # Cut, rather than told to slow down: every message costs the lobby, which
        # every connection shares, and a flood would go on arriving.
        self.cut.add(conn)
        rate, burst = self.settings.rate, self.settings.burst
        text = f"too many messages: at most {burst} at once, then {rate:g} a second; disconnected"
        self.tell(conn, {"type": "closing", "text": text})
        try:
            self.send_exit(conn, "normal")  # after the notice
        except metakit.NoProcess:  # gone already: its WSDisconnect is on the way
            pass
        return False

    async def join(self, conn: Alias, name: str, nick: str) -> str | None:
        """Seat ``conn`` in room ``name`` as ``nick``, or say what is wrong."""
        if conn in self.seats:
            return "already in a room"
        if not NICK.fullmatch(nick):
            return "a nick is 1 to 16 letters, digits or _"
        if not ROOM.fullmatch(name):
            return "a room name is 1 to 32 letters, digits, _ or -"
        room: OpenRoom | None = None
        try:
            room, pid = await self.room_process(name)
            seated = await self.call(pid, Join(conn, nick))
        except metakit.MetakitError as exc:  # it crashed meanwhile, or the node is stopping
            self.log.info("joining %s failed: %r", name, exc)
            seated = None
        if seated:
            assert room is not None
            room.seated += 1
            self.seats[conn] = (room, pid)
            return None
        if room is not None and room.seated == 0:
            await self.close_room(room)  # opened for this join only
        if seated is None:
            return f"room {name} is restarting, try again"
        return f"the nick {nick} is taken in {name}"

    async def room_process(self, name: str) -> tuple[OpenRoom, PID]:
        """The room open as ``name`` (opened now if there is none) and its process."""
        room = self.rooms.get(name)
        if room is not None:
            try:
                return room, await self.room_pid(room)
            except (metakit.NoProcess, metakit.ProcessExited):
                self.forget(room)  # its supervisor has given up: its Down is on the way
        supervisor = await self.spawn(
            Supervisor,
            [
                ChildSpec(
                    Room,
                    args=(name, self.settings.crash_demo),
                    name=f"room:{name}",
                    shutdown=1.0,  # a room has nothing to finish
                )
            ],
            max_restarts=self.settings.room_restarts,
            max_seconds=60,
        )
        # Watched, not linked: a room's supervisor giving up ends that room, not the lobby.
        room = OpenRoom(name, supervisor, self.monitor(supervisor))
        self.rooms[name] = self.watches[room.watch] = room
        return room, await self.room_pid(room)

    async def room_pid(self, room: OpenRoom) -> PID:
        """The room's process now (asked of its supervisor: it may have restarted it)."""
        [(_, pid)] = await self.call(room.supervisor, "which_children")
        if pid is None:
            raise metakit.NoProcess(room.name)
        assert isinstance(pid, PID)
        return pid

    async def leave(self, room: OpenRoom) -> None:
        """One connection seated in ``room`` has gone; the last one closes the room."""
        room.seated -= 1
        if room.seated == 0:
            await self.close_room(room)

    async def close_room(self, room: OpenRoom) -> None:
        """Stop an empty room: its supervisor, which stops the room process."""
        if self.rooms.get(room.name) is not room:
            return  # it has ended already
        self.forget(room)
        gone = self.node.wait_exit(room.supervisor, timeout=5.0)
        try:
            self.send_exit(room.supervisor, "shutdown")  # from its parent: not trapped
        except metakit.NoProcess:
            pass
        try:
            await gone  # the room's name is free again before the next join
        except TimeoutError:
            self.log.warning("room %s did not stop in time; killing it", room.name)
            self.node.kill(room.supervisor)

    def forget(self, room: OpenRoom) -> None:
        """Drop ``room`` from the open rooms; its ``Down`` no longer matters."""
        if self.rooms.get(room.name) is room:
            del self.rooms[room.name]
        if self.watches.pop(room.watch, None) is not None:
            self.demonitor(room.watch)

    def room_ended(self, room: OpenRoom, reason: Any) -> None:
        """A room's supervisor has ended on its own: it gave up (too many crashes).

        Its members are gone already (the crash closed their connections, 1011)
        and their seats go with their ``WSDisconnect``; the next join opens
        the room afresh.
        """
        if self.rooms.get(room.name) is room:
            del self.rooms[room.name]
        self.log.warning("room %s has ended: %r", room.name, reason)

    def say(self, conn: Alias, text: str) -> str | None:
        """Pass ``text`` on to the room of ``conn``, or say what is wrong."""
        seat = self.seats.get(conn)
        if seat is None:
            return "join a room first"
        if len(text) > MAX_TEXT:
            return f"not sent: over {MAX_TEXT} characters"
        if text.strip():
            try:
                self.send(seat[1], Say(conn, text))
            except metakit.NoProcess:  # the room has just crashed; the link closes conn
                pass
        return None


# What the page may load and run: its own files only, so that text slipping
# into the page (an XSS) can run no script and send nowhere. 'self' in
# connect-src covers ws: and wss: to the same host and port (CSP Level 3).
CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)


async def secure_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Every response: the page's policy (also for /static/index.html), and no type sniffing."""
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"


async def index(request: web.Request) -> web.FileResponse:
    """The page."""
    return web.FileResponse(STATIC / "index.html")


def origin(text: str) -> str:
    """``text`` as a browser writes it in an ``Origin`` header (for argparse)."""
    url = urlsplit(text.strip().lower())
    if url.scheme not in ("http", "https") or not url.hostname or url.path not in ("", "/"):
        raise argparse.ArgumentTypeError(f"not an origin like https://chat.example: {text!r}")
    if url.query or url.fragment or url.username is not None:
        raise argparse.ArgumentTypeError(f"not an origin like https://chat.example: {text!r}")
    try:
        port = url.port
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port in {text!r}") from None
    host = f"[{url.hostname}]" if ":" in url.hostname else url.hostname
    if port is None or port == {"http": 80, "https": 443}[url.scheme]:
        return f"{url.scheme}://{host}"  # a default port is left out (RFC 6454 §6.1)
    return f"{url.scheme}://{host}:{port}"


def rate(text: str) -> float:
    """A rate above 0 (for argparse)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"not a rate above 0 (messages a second): {text!r}")
    return value


def burst(text: str) -> int:
    """A whole number above 0 (for argparse)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"not a whole number above 0: {text!r}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    """The settings from a command line (``sys.argv[1:]`` by default)."""
    parser = argparse.ArgumentParser(
        prog="python examples/chat", description="A web chat on metakit."
    )
    parser.add_argument(
        "port", nargs="?", type=int, default=8080, help="port at 127.0.0.1 (0: any free one)"
    )
    parser.add_argument(
        "--origin",
        action="append",
        type=origin,
        default=[],
        metavar="URL",
        help="also accept WebSockets from pages at this origin (repeatable), "
        "besides http://127.0.0.1:PORT and http://localhost:PORT",
    )
    parser.add_argument(
        "--rate",
        type=rate,
        default=RATE,
        metavar="N",
        help="messages a second each connection may send, on average (default: %(default)g)",
    )
    parser.add_argument(
        "--burst",
        type=burst,
        default=BURST,
        metavar="N",
        help="messages each connection may send at once (default: %(default)s); "
        "past the limit it is told why and closed",
    )
    parser.add_argument(
        "--crash-demo",
        action="store_true",
        help="let /crash said in a room crash it, to watch its supervisor restart it",
    )
    args = parser.parse_args(argv)
    return Settings(
        port=args.port,
        origins=tuple(args.origin),
        rate=args.rate,
        burst=args.burst,
        crash_demo=args.crash_demo,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Run the chat until SIGINT or SIGTERM."""
    reason = metakit.run(Lobby, parse_args(argv))
    if reason != "shutdown":  # the lobby failed: say so, with status 1
        sys.exit(f"chat stopped: {reason!r}")


if __name__ == "__main__":
    main()
