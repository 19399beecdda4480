"""A web chat: each room is a supervised process, each browser a WebSocket.

Open the page, pick a nick and a room: you see the room's last 50 messages
and who is there, then messages, joins and leaves as they happen.

Who owns what:

* ``Lobby``, one process per node, owns the ``WebServer`` (the page from
  ``static/`` on ``/``, a ``WebSocketHandler`` on ``/ws``) and opens rooms.
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
  skipped). When the last member has left, it tells the lobby that opened
  it (``RoomEmpty``), which stops it and its supervisor: an empty room
  costs nothing.

Many workers (``--workers N``): N processes serve one port (SO_REUSEPORT),
each a node (``chat-1@localhost`` ...) with its own lobby, joined over a
nats-server (started for them unless ``--cluster URL`` names one). Nothing
above changes but this:

* a room's name is a *cluster* name, so there is one room ``tea`` for all
  the workers, wherever it was opened: a lobby finds it with ``whereis``
  and calls it, whichever node it is on;
* the room links to its members' connections on every node, so a member
  on a worker that dies (SIGKILL, say) leaves once its node is judged down
  (within 3 heartbeats); a room on that worker closes its other members'
  connections, whose pages reconnect (to a live worker) and join again;
* the room writes to its members on its own node with ``broadcast``, and to
  those on another node with one ``Fan`` message to that node's lobby,
  which broadcasts there: one message per node, not one per member;
* ``joined`` says which node the page's connection is on (``node``).

How messages flow (JSON both ways: ``codec="json"``)::

    page {"type": "join", "room", "nick"}  -> lobby --call(Join)--> room
        room -> page    {"type": "joined", "room", "nick", "node", "history", "members"}
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
     [--workers N [--cluster URL]]
     (PORT: 8080 by default; 0 picks a free one)
Try: open http://127.0.0.1:8080 in two browser windows; Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import math
import re
import socket
import sys
import time
from collections import deque
from collections.abc import Iterable, Sequence
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
IDLE = 1.0  # seconds a room with nobody in it (restarted after a crash) stays open


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
        workers: serve from this many worker processes sharing the port
            (None: this process alone).
        cluster: the NATS server the workers share rooms on (None: one
            started for them).
        reuse_port: bind with SO_REUSEPORT (what a worker does).
    """

    port: int = 8080
    origins: tuple[str, ...] = ()
    rate: float = RATE
    burst: int = BURST
    crash_demo: bool = False
    room_restarts: int = 10
    workers: int | None = None
    cluster: str | None = None
    reuse_port: bool = False


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
    """A lobby asks a room (a call) to seat ``conn`` as ``nick``.

    The reply is True (seated), False (the nick is taken there) or None (the
    room is closing: it has just emptied).

    Attributes:
        conn: the member's connection.
        nick: the nick it wants.
        lobby: the lobby of the connection's node, which writes to it.
    """

    conn: Alias
    nick: str
    lobby: PID


@dataclass(frozen=True, slots=True)
class Say:
    """A lobby passes on what ``conn``, a member, says in the room."""

    conn: Alias
    text: str


@dataclass(frozen=True, slots=True)
class Fan:
    """A room asks the lobby of another node to write ``data`` to ``conns``, its
    connections there: one message per node, not one per member."""

    conns: tuple[Alias, ...]
    data: Any


@dataclass(frozen=True, slots=True)
class RoomEmpty:
    """A room tells the lobby that opened it that its last member has left."""

    room: str
    pid: PID


def let_cross() -> None:
    """On a cluster, let the lobbies' and rooms' messages cross nodes (under
    names of their own: the module is ``__main__`` in one place, something
    else in another)."""
    from metakit.cluster import message

    for cls in (Join, Say, Fan):
        message(cls, name=f"examples.chat.{cls.__name__}")


class Room(Process):
    """One room: its members and its history, under a supervisor of its own.

    Started with ``init(room, owner, crash_demo, cluster)``: its name, the
    lobby that opened it, whether ``/crash`` crashes it, and whether to
    claim its name across the cluster (one room of a name in the namespace,
    wherever its members are connected).
    """

    trap_exit = True  # a member's connection ending arrives as Exit(conn, reason)

    async def init(
        self, room: str, owner: PID, crash_demo: bool = False, cluster: bool = False
    ) -> None:
        self.room = room
        self.owner = owner
        self.crash_demo = crash_demo
        self.members: dict[Alias, str] = {}  # connection -> nick
        self.lobby_of: dict[Alias, PID] = {}  # connection -> the lobby that writes to it
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self.closing = False  # emptied: the owner is stopping it
        # Restarted (after a crash) with nobody left, it tells its owner so.
        self.idle = asyncio.get_running_loop().call_later(IDLE, self.node.send, self.pid, "idle?")
        await self.register_name(f"room:{room}", cluster=cluster)  # NameTaken: another has it

    def terminate(self, reason: Any) -> None:
        self.idle.cancel()

    def handle_call(self, sender: Caller, request: Join) -> bool | None:
        """Seat a new member; False if the nick is taken here, None if closing."""
        conn, nick = request.conn, request.nick
        if self.closing:
            return None
        if nick in self.members.values():
            return False
        # Linked both ways: if this room crashes, the connection closes (1011)
        # and its page reconnects; when the connection ends (or its node goes
        # down), we get an Exit.
        self.link(conn)
        self.publish({"type": "join", "nick": nick})
        self.members[conn] = nick
        self.lobby_of[conn] = request.lobby
        joined = {
            "type": "joined",
            "room": self.room,
            "nick": nick,
            "node": request.lobby.node,  # which node the page's connection is on
            "history": list(self.history),
            "members": sorted(self.members.values()),
        }
        self.publish(joined, [conn])
        return True

    def handle_message(self, sender: PID, message: Any) -> None:
        match message:
            case Say(conn, "/crash") if self.crash_demo and conn in self.members:
                raise RuntimeError(f"room {self.room!r} was asked to crash")
            case Say(conn, text) if conn in self.members:
                nick = self.members[conn]
                said = {"type": "message", "nick": nick, "text": text, "ts": time.time()}
                self.history.append(said)
                self.publish(said)
            case Exit(conn, _) if conn in self.members:
                nick = self.members.pop(conn)
                del self.lobby_of[conn]
                self.publish({"type": "leave", "nick": nick})
                self.empty_yet()
            case "idle?":
                self.empty_yet()

    def empty_yet(self) -> None:
        """With no member left, close: refuse joins, and ask the owner to stop us."""
        if not self.members and not self.closing:
            self.closing = True
            self.send(self.owner, RoomEmpty(self.room, self.pid))

    def publish(self, data: Any, to: Iterable[Alias] | None = None) -> None:
        """Write ``data`` to members (all by default): the ones on this node
        directly, those on another node through its lobby, one message each."""
        here = self.node.name
        local: list[Alias] = []
        away: dict[PID, list[Alias]] = {}
        for conn in self.members if to is None else to:
            lobby = self.lobby_of[conn]
            if lobby.node == here:
                local.append(conn)
            else:
                away.setdefault(lobby, []).append(conn)
        broadcast(self, local, data)  # JSON encoded once
        for lobby, conns in away.items():
            try:
                self.send(lobby, Fan(tuple(conns), data))
            except metakit.MetakitError:  # its node is going: those members leave with it
                pass


@dataclass(slots=True, eq=False)
class OpenRoom:
    """A room this lobby has opened.

    Attributes:
        name: the room's name.
        supervisor: the room's own supervisor (the room process is its child).
        watch: the lobby's monitor of that supervisor.
    """

    name: str
    supervisor: PID
    watch: Ref


class Lobby(Process):
    """The chat's main process (one per node): the web server, the
    connections, the rooms it opened.

    ``call(lobby, "url")`` gives the URL it serves (a ``str``).
    """

    async def init(self, settings: Settings) -> None:
        self.settings = settings
        self.cluster = self.node.cluster is not None
        if self.cluster:
            let_cross()
        self.rooms: dict[str, OpenRoom] = {}  # name -> the room this lobby opened under it
        self.watches: dict[Ref, OpenRoom] = {}  # monitor of a room's supervisor -> the room
        self.seats: dict[Alias, PID] = {}  # connection -> the room process it joined
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
        server = WebServer("127.0.0.1", settings.port, app, reuse_port=settings.reuse_port)
        await self.spawn_meta(server)  # binds here: a busy port raises here
        self.url = server.url
        port = server.address[1]
        ws.origins = frozenset(  # read by the handler at each upgrade
            [f"http://127.0.0.1:{port}", f"http://localhost:{port}", *settings.origins]
        )
        # One write per line: workers share stdout, and print() writes the
        # newline separately, so two workers' lines could run together.
        print(f"listening on {self.url}\n", end="", flush=True)

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
            case Fan(conns, data):  # a room on another node writing to members here
                broadcast(self, conns, data)
            case WSDisconnect(conn, _, _):
                self.limits.pop(conn, None)
                self.cut.discard(conn)
                self.seats.pop(conn, None)  # and its room gets an Exit
            case RoomEmpty(name, pid):
                room = self.rooms.get(name)
                if room is not None and await self.room_pid(room) == pid:
                    await self.close_room(room)
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
        seated: bool | None = None
        for _ in range(2):  # once more if the room was closing
            try:
                pid = await self.room_process(name)
                seated = await self.call(pid, Join(conn, nick, self.pid))
            except metakit.MetakitError as exc:  # it crashed meanwhile, or a node is going
                self.log.info("joining %s failed: %r", name, exc)
                return f"room {name} is restarting, try again"
            if seated is not None:
                break
            room = self.rooms.get(name)
            if room is None:  # another lobby's room: it is stopping it
                break
            await self.close_room(room)  # ours, emptied just now: stop it, open it afresh
        if seated:
            self.seats[conn] = pid
            return None
        if seated is None:
            return f"room {name} is restarting, try again"
        return f"the nick {nick} is taken in {name}"

    async def room_process(self, name: str) -> PID:
        """The process of room ``name``, wherever it runs (opened here if none is)."""
        found = self.node.whereis(f"room:{name}")
        if found is not None:
            return found
        room = self.rooms.get(name)
        if room is not None:
            return await self.room_of(room)  # ours, between a crash and its restart
        spec = ChildSpec(
            Room,
            args=(name, self.pid, self.settings.crash_demo, self.cluster),
            shutdown=1.0,  # a room has nothing to finish
        )
        try:
            supervisor = await self.spawn(
                Supervisor, [spec], max_restarts=self.settings.room_restarts, max_seconds=60
            )
        except metakit.NameTaken as exc:  # a lobby on another node opened it first
            if isinstance(exc.owner, PID):  # (our view of the names is a moment behind)
                return exc.owner
            raise
        # Watched, not linked: a room's supervisor giving up ends that room, not the lobby.
        room = OpenRoom(name, supervisor, self.monitor(supervisor))
        self.rooms[name] = self.watches[room.watch] = room
        return await self.room_of(room)

    async def room_of(self, room: OpenRoom) -> PID:
        """:meth:`room_pid`, or ``NoProcess`` if it has none."""
        pid = await self.room_pid(room)
        if pid is None:
            raise metakit.NoProcess(room.name)
        return pid

    async def room_pid(self, room: OpenRoom) -> PID | None:
        """The room's process now (asked of its supervisor: it may have restarted
        it), or None."""
        try:
            [(_, pid)] = await self.call(room.supervisor, "which_children")
        except (metakit.NoProcess, metakit.ProcessExited):
            return None  # its supervisor has given up: its Down is on the way
        return pid  # type: ignore[no-any-return]

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

        Its members are gone already (the crash closed their connections, 1011);
        the next join opens the room afresh.
        """
        if self.rooms.get(room.name) is room:
            del self.rooms[room.name]
        self.log.warning("room %s has ended: %r", room.name, reason)

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
            except metakit.MetakitError:  # the room has just crashed; the link closes conn
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
    parser.add_argument(
        "--workers",
        type=burst,
        metavar="N",
        help="serve the port from N worker processes, one node each, sharing the "
        "rooms over NATS (needs metakit[cluster])",
    )
    parser.add_argument(
        "--cluster",
        metavar="URL",
        help="with --workers: the NATS server to share rooms on "
        "(default: a nats-server started for them)",
    )
    args = parser.parse_args(argv)
    if args.cluster and not args.workers:
        parser.error("--cluster goes with --workers")
    return Settings(
        port=args.port,
        origins=tuple(args.origin),
        rate=args.rate,
        burst=args.burst,
        crash_demo=args.crash_demo,
        workers=args.workers,
        cluster=args.cluster,
    )


def reserve_port(port: int) -> socket.socket:
    """A socket bound to 127.0.0.1:``port`` with SO_REUSEPORT, not listening:
    it holds the port (a free one for 0) for the workers to share, and takes
    no connection itself."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    return sock


def main(argv: Sequence[str] | None = None) -> None:
    """Run the chat until SIGINT or SIGTERM."""
    settings = parse_args(argv)
    if settings.workers is None:
        reason = metakit.run(Lobby, settings)
        if reason != "shutdown":  # the lobby failed: say so, with status 1
            sys.exit(f"chat stopped: {reason!r}")
        return
    try:
        from metakit.cluster import Cluster
    except ImportError:
        sys.exit("--workers needs the cluster extra: pip install 'metakit[cluster]'")
    with reserve_port(settings.port) as held:
        port = held.getsockname()[1]
        cluster: Any = Cluster(settings.cluster, namespace="chat") if settings.cluster else True
        worker = dataclasses.replace(settings, port=port, reuse_port=True)
        # Each worker runs a Lobby on its own node, chat-1@localhost ...; exits 1 if
        # one cannot start, restarts one that crashes.
        metakit.run(
            Lobby, worker, workers=settings.workers, node_name="chat@localhost", cluster=cluster
        )


if __name__ == "__main__":
    main()
