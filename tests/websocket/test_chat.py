"""examples/chat, run as a user would (a subprocess), driven by real WebSocket clients.

The server runs on the same loop as the test (asyncio's or uvloop's: the
conftest runs every async test on both), chosen with ``METAKIT_LOOP``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from metakit.testing import TIMEOUT, wait_until

ROOT = Path(__file__).resolve().parents[2]
CHAT = ROOT / "examples" / "chat"


class Client:
    """One WebSocket client of the chat."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    async def send(self, **message: Any) -> None:
        await self.ws.send_json(message)

    async def receive(self) -> Any:
        return await self.ws.receive_json(timeout=TIMEOUT)

    async def join(self, room: str, nick: str) -> Any:
        await self.send(type="join", room=room, nick=nick)
        return await self.receive()

    async def closed(self) -> int:
        """Wait for the server to close this connection; the code in its close frame."""
        msg = await self.ws.receive(timeout=TIMEOUT)
        assert msg.type is aiohttp.WSMsgType.CLOSE, msg
        # Not ws.close_code: the server drops TCP right after its close frame,
        # and aiohttp's client says 1006 when its late reply cannot be sent.
        code: int = msg.data
        return code

    async def close(self) -> None:
        await self.ws.close()


class Chat:
    """The chat server subprocess and a client session."""

    def __init__(self, proc: asyncio.subprocess.Process, url: str) -> None:
        self.proc = proc
        self.url = url
        self.clients: list[Client] = []
        self.terminated = False
        self.err: str | None = None  # stderr, once it has exited
        self.session = aiohttp.ClientSession()

    async def connect(self, origin: str | None = "") -> Client:
        """A WebSocket client; its ``Origin`` is the page's unless given (None: none)."""
        ws = await self.session.ws_connect(
            self.url.replace("http", "ws") + "/ws",
            origin=self.url if origin == "" else origin,
        )
        client = Client(ws)
        self.clients.append(client)
        return client

    async def join(self, room: str, nick: str) -> tuple[Client, Any]:
        client = await self.connect()
        return client, await client.join(room, nick)

    async def get(self, path: str) -> tuple[int, str, bytes]:
        async with self.session.get(URL(self.url + path, encoded=True)) as r:
            return r.status, r.content_type, await r.read()

    async def headers(self, path: str) -> Mapping[str, str]:
        async with self.session.get(URL(self.url + path, encoded=True)) as r:
            assert r.status == 200, path
            return r.headers

    def terminate(self) -> None:
        """Send SIGTERM, once: a second one during the shutdown would be fatal."""
        if not self.terminated:
            self.terminated = True
            self.proc.send_signal(signal.SIGTERM)

    async def close_clients(self) -> None:
        for client in self.clients:
            await client.close()
        self.clients.clear()
        await self.session.close()

    def fds(self) -> int:
        """How many file descriptors the server process has open now."""
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    async def stop(self) -> str:
        """SIGTERM; the server must exit with 0. Returns what it wrote on stderr."""
        if self.err is None:
            self.terminate()
            _, err = await asyncio.wait_for(self.proc.communicate(), TIMEOUT)
            self.err = err.decode()
        assert self.proc.returncode == 0, self.err
        return self.err


StartChat = Callable[..., Awaitable[Chat]]


@pytest.fixture
async def start_chat() -> AsyncIterator[StartChat]:
    """A factory: ``await start_chat(*flags)`` runs ``python examples/chat 0 *flags``
    on the test's own kind of loop; each must exit with 0 on SIGTERM at the end."""
    uvloop = type(asyncio.get_running_loop()).__module__.startswith("uvloop")
    env = {
        **os.environ,
        "METAKIT_LOOP": "uvloop" if uvloop else "asyncio",
        # The metakit of this checkout, whatever the environment has installed.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    procs: list[asyncio.subprocess.Process] = []
    chats: list[Chat] = []

    async def start(*flags: str) -> Chat:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(CHAT),
            "0",
            *flags,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        procs.append(proc)
        assert proc.stdout is not None
        first = (await asyncio.wait_for(proc.stdout.readline(), TIMEOUT)).decode()
        match = re.fullmatch(r"listening on (http://127\.0\.0\.1:\d+)\n", first)
        assert match, first
        chat = Chat(proc, match[1])
        chats.append(chat)
        return chat

    try:
        yield start
        for chat in chats:
            await chat.close_clients()
            await chat.stop()
    finally:
        for chat in chats:
            await chat.close_clients()
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.communicate()


@pytest.fixture
async def chat(start_chat: StartChat) -> Chat:
    """``python examples/chat 0``: the defaults."""
    return await start_chat()


async def test_page_and_static_files(chat: Chat) -> None:
    status, kind, body = await chat.get("/")
    assert (status, kind) == (200, "text/html")
    assert b'<script src="/static/chat.js"' in body
    for name, kind in [("chat.js", "javascript"), ("style.css", "text/css")]:
        status, got_kind, body = await chat.get(f"/static/{name}")
        assert status == 200
        assert kind in got_kind
        assert body == (CHAT / "static" / name).read_bytes()
    assert (await chat.get("/static/nope.js"))[0] == 404
    status, _, body = await chat.get("/static/%2E%2E/chat.py")  # no way out of static/
    assert status in (403, 404)
    assert b"metakit" not in body


async def test_two_users_chat_and_leave(chat: Chat) -> None:
    ada, joined = await chat.join("tea", "ada")
    assert joined == {
        "type": "joined",
        "room": "tea",
        "nick": "ada",
        "node": "main@localhost",
        "history": [],
        "members": ["ada"],
    }
    bob, joined = await chat.join("tea", "bob")
    assert joined["members"] == ["ada", "bob"]
    assert await ada.receive() == {"type": "join", "nick": "bob"}

    await bob.send(type="say", text="hello <ada> & all")
    await ada.send(type="say", text="hi bob")
    for client in (ada, bob):  # everyone gets every message, the sender too, in order
        first, second = await client.receive(), await client.receive()
        assert first["type"] == second["type"] == "message"
        assert (first["nick"], first["text"]) == ("bob", "hello <ada> & all")
        assert (second["nick"], second["text"]) == ("ada", "hi bob")
        assert isinstance(first["ts"], float)
        assert first["ts"] <= second["ts"]

    await bob.close()
    assert await ada.receive() == {"type": "leave", "nick": "bob"}
    # The nick is free again, and the newcomer sees the history.
    _, joined = await chat.join("tea", "bob")
    assert joined["members"] == ["ada", "bob"]
    assert [m["text"] for m in joined["history"]] == ["hello <ada> & all", "hi bob"]
    assert await ada.receive() == {"type": "join", "nick": "bob"}


async def test_a_taken_nick_is_refused(chat: Chat) -> None:
    ada, _ = await chat.join("den", "ada")
    imp, refused = await chat.join("den", "ada")
    assert refused == {"type": "error", "text": "the nick ada is taken in den"}
    # The connection carries on: it may pick another nick...
    joined = await imp.join("den", "ada2")
    assert (joined["type"], joined["members"]) == ("joined", ["ada", "ada2"])
    assert await ada.receive() == {"type": "join", "nick": "ada2"}
    # ...and nicks are per room.
    _, joined = await chat.join("other-den", "ada")
    assert joined["members"] == ["ada"]


async def test_the_last_50_messages_only(start_chat: StartChat) -> None:
    chat = await start_chat("--burst", "60")  # 55 messages at once
    ada, _ = await chat.join("log", "ada")
    for i in range(55):
        await ada.send(type="say", text=f"m{i}")
    for i in range(55):
        assert (await ada.receive())["text"] == f"m{i}"
    _, joined = await chat.join("log", "bob")
    history = joined["history"]
    assert [m["text"] for m in history] == [f"m{i}" for i in range(5, 55)]
    assert {m["nick"] for m in history} == {"ada"}
    assert [m["ts"] for m in history] == sorted(m["ts"] for m in history)


BAD = [
    ({"type": "say", "text": "hi"}, "join a room first"),
    ({"type": "join", "room": "ok", "nick": ""}, "a nick is"),
    ({"type": "join", "room": "ok", "nick": "a b"}, "a nick is"),
    ({"type": "join", "room": "ok", "nick": "x" * 17}, "a nick is"),
    ({"type": "join", "room": "ok", "nick": "<b>"}, "a nick is"),
    ({"type": "join", "room": "bad room", "nick": "ada"}, "a room name is"),
    ({"type": "join", "room": "x" * 33, "nick": "ada"}, "a room name is"),
    ({"type": "join", "room": "ok", "nick": 5}, "unknown message"),
    ({"type": "join", "room": "ok"}, "unknown message"),
    ({"type": "say", "text": ["hi"]}, "unknown message"),
    ({"type": "dance"}, "unknown message"),
    ([1, 2, 3], "unknown message"),
    ("join", "unknown message"),
    (None, "unknown message"),
]


async def test_bad_input_gets_an_error_and_nothing_breaks(chat: Chat) -> None:
    for n, (message, complaint) in enumerate(BAD):
        client = await chat.connect()
        await client.ws.send_json(message)
        error = await client.receive()
        assert error["type"] == "error", message
        assert error["text"].startswith(complaint), (message, error)
        # The same connection goes on as if nothing had happened.
        assert (await client.join(f"ok{n}", "ada"))["type"] == "joined"
        await client.send(type="say", text="fine")
        assert (await client.receive())["text"] == "fine"
        await client.close()


async def test_bad_messages_in_a_room(chat: Chat) -> None:
    ada, _ = await chat.join("strict", "ada")
    await ada.send(type="say", text="x" * 501)
    assert await ada.receive() == {"type": "error", "text": "not sent: over 500 characters"}
    await ada.send(type="say", text="   ")  # blank: dropped without a word
    await ada.send(type="say", text="é" * 500)
    assert (await ada.receive())["text"] == "é" * 500
    assert await ada.join("strict", "ada") == {"type": "error", "text": "already in a room"}

    # Not JSON, or too big: the library closes that connection, and only that one.
    garbled = await chat.connect()
    await garbled.ws.send_str("{not json")
    assert await garbled.closed() == 1007
    huge = await chat.connect()
    await huge.ws.send_str('{"type": "say", "text": "' + "x" * 5000 + '"}')
    assert await huge.closed() == 1009
    await ada.send(type="say", text="still here")
    assert (await ada.receive())["text"] == "still here"


async def test_a_crashed_room_closes_its_connections_and_restarts(start_chat: StartChat) -> None:
    chat = await start_chat("--crash-demo")
    ada, _ = await chat.join("boom", "ada")
    bob, _ = await chat.join("boom", "bob")
    carol, _ = await chat.join("calm", "carol")
    assert await ada.receive() == {"type": "join", "nick": "bob"}

    await ada.send(type="say", text="/crash")
    assert await ada.closed() == 1011
    assert await bob.closed() == 1011

    # Another room did not notice.
    await carol.send(type="say", text="all quiet")
    assert (await carol.receive())["text"] == "all quiet"

    # The supervisor restarted the room, empty: the same nicks join again.
    ada, joined = await chat.join("boom", "ada")
    assert (joined["type"], joined["history"], joined["members"]) == ("joined", [], ["ada"])
    bob, joined = await chat.join("boom", "bob")
    assert joined["members"] == ["ada", "bob"]
    assert await ada.receive() == {"type": "join", "nick": "bob"}
    await bob.send(type="say", text="we are back")
    for client in (ada, bob):
        assert (await client.receive())["text"] == "we are back"

    # Once more: it restarts every time (within the supervisor's limits).
    await bob.send(type="say", text="/crash")
    assert await ada.closed() == 1011
    assert await bob.closed() == 1011
    _, joined = await chat.join("boom", "bob")
    assert joined["members"] == ["bob"]

    err = await chat.stop()
    assert err.count("RuntimeError: room 'boom' was asked to crash") == 2


async def test_sigterm_closes_the_connections_and_exits_0(chat: Chat) -> None:
    ada, _ = await chat.join("end", "ada")
    chat.terminate()
    assert await ada.closed() == 1001  # going away
    err = await chat.stop()
    assert "Traceback" not in err


async def test_crash_is_an_ordinary_message_by_default(chat: Chat) -> None:
    ada, _ = await chat.join("boom", "ada")
    carol, _ = await chat.join("calm", "carol")
    for _ in range(11):  # once more than the room supervisor's limit
        await ada.send(type="say", text="/crash")
        said = await ada.receive()
        assert (said["type"], said["nick"], said["text"]) == ("message", "ada", "/crash")
    await carol.send(type="say", text="all quiet")
    assert (await carol.receive())["text"] == "all quiet"
    err = await chat.stop()
    assert "asked to crash" not in err


async def test_crash_demo_crashing_again_and_again_never_stops_the_server(
    start_chat: StartChat,
) -> None:
    chat = await start_chat("--crash-demo")
    carol, _ = await chat.join("calm", "carol")
    baseline = chat.fds()
    for _ in range(15):  # the eleven, and more
        ada, joined = await chat.join("boom", "ada")
        assert joined["type"] == "joined", joined
        await ada.send(type="say", text="/crash")
        assert await ada.closed() == 1011
        await ada.close()
        # Another room did not notice.
        await carol.send(type="say", text="all quiet")
        assert (await carol.receive())["text"] == "all quiet"
    # The crashed room is there for whoever joins next, empty.
    _, joined = await chat.join("boom", "bob")
    assert (joined["type"], joined["history"], joined["members"]) == ("joined", [], ["bob"])
    await wait_until(lambda: chat.fds() <= baseline + 1, message="fds left behind")  # bob's
    err = await chat.stop()
    assert err.count("RuntimeError: room 'boom' was asked to crash") == 15
    assert "chat stopped" not in err


FOREIGN = ["https://evil.example", "http://127.0.0.1:1", "http://localhost", "null", None]


async def test_a_page_from_another_origin_cannot_connect(chat: Chat) -> None:
    carol, _ = await chat.join("calm", "carol")
    port = URL(chat.url).port
    for origin in [*FOREIGN, f"https://127.0.0.1:{port}", f"{chat.url}.evil.example"]:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await chat.connect(origin=origin)
        assert refused.value.status == 403, origin
    # The origins the page is served on.
    for n, origin in enumerate([chat.url, f"http://localhost:{port}"]):
        client = await chat.connect(origin=origin)
        assert (await client.join("here", f"ok{n}"))["type"] == "joined"
    await carol.send(type="say", text="all quiet")
    assert (await carol.receive())["text"] == "all quiet"


async def test_more_origins_from_the_command_line(start_chat: StartChat) -> None:
    chat = await start_chat("--origin", "https://chat.example.com", "--origin", "http://a.test:81")
    for n, origin in enumerate([chat.url, "https://chat.example.com", "http://a.test:81"]):
        client = await chat.connect(origin=origin)
        assert (await client.join("calm", f"ok{n}"))["type"] == "joined"
    for origin in FOREIGN:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await chat.connect(origin=origin)
        assert refused.value.status == 403, origin


async def until_closed(client: Client) -> list[Any]:
    """What the server sends ``client`` until it closes it with 1000."""
    frames = []
    while (msg := await client.ws.receive(timeout=TIMEOUT)).type is aiohttp.WSMsgType.TEXT:
        frames.append(json.loads(msg.data))
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1000), msg
    return frames


async def said_until_leave(client: Client, nick: str) -> list[str]:
    """The texts ``client`` sees said until ``nick`` leaves."""
    texts = []
    while (msg := await client.receive()) != {"type": "leave", "nick": nick}:
        assert msg["type"] == "message", msg
        texts.append(msg["text"])
    return texts


async def test_a_client_over_the_rate_limit_is_told_why_and_closed(chat: Chat) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    ada, _ = await chat.join("fast", "ada")  # a join counts: 19 left of the burst of 20
    bob, _ = await chat.join("fast", "bob")
    assert await ada.receive() == {"type": "join", "nick": "bob"}
    for i in range(19):
        await ada.send(type="say", text=f"m{i}")
    for client in (ada, bob):
        for i in range(19):
            assert (await client.receive())["text"] == f"m{i}"
    # One at a time, each answered before the next: only refills are left.
    for i in range(19, 100):
        await ada.send(type="say", text=f"m{i}")
        reply = await ada.receive()
        if reply["type"] != "message":
            break
        assert reply["text"] == f"m{i}"
    elapsed = loop.time() - started
    notice = "too many messages: at most 20 at once, then 5 a second; disconnected"
    assert reply == {"type": "closing", "text": notice}
    assert await until_closed(ada) == []
    said = await said_until_leave(bob, "ada")
    assert said == [f"m{n}" for n in range(19, i)]
    assert 1 + i <= 20 + 5 * elapsed  # the burst, then 5 a second
    await bob.send(type="say", text="all quiet")
    assert (await bob.receive())["text"] == "all quiet"


async def test_a_flood_is_cut_short(chat: Chat) -> None:
    carol, _ = await chat.join("calm", "carol")
    baseline = chat.fds()
    loop = asyncio.get_running_loop()
    started = loop.time()
    imp, _ = await chat.join("fast", "imp")
    bob, _ = await chat.join("fast", "bob")
    try:
        for i in range(5000):
            await imp.send(type="say", text=f"m{i}")
    except ConnectionResetError:  # the server has closed it already
        pass
    # The server closes it; what the flooder sees of that is up to TCP (data it
    # sent that the server never read makes the close a reset).
    while (await imp.ws.receive(timeout=TIMEOUT)).type is aiohttp.WSMsgType.TEXT:
        pass
    elapsed = loop.time() - started
    said = await said_until_leave(bob, "imp")
    assert said == [f"m{i}" for i in range(len(said))]
    assert 1 + len(said) <= 20 + 5 * elapsed
    # Everyone else carries on, and the connection is gone.
    await imp.close()
    for client in (bob, carol):
        await client.send(type="say", text="all quiet")
        assert (await client.receive())["text"] == "all quiet"
    await wait_until(lambda: chat.fds() <= baseline + 1, message="fds left behind")  # bob's


async def test_the_rate_limit_from_the_command_line(start_chat: StartChat) -> None:
    chat = await start_chat("--rate", "0.5", "--burst", "3")
    loop = asyncio.get_running_loop()
    started = loop.time()
    ada, _ = await chat.join("slow", "ada")
    for i in range(100):  # the third is one too many, but for a refill
        await ada.send(type="say", text=f"m{i}")
        reply = await ada.receive()
        if reply["type"] != "message":
            break
        assert reply["text"] == f"m{i}"
    elapsed = loop.time() - started
    notice = "too many messages: at most 3 at once, then 0.5 a second; disconnected"
    assert reply == {"type": "closing", "text": notice}
    assert await until_closed(ada) == []
    assert 1 + i <= 3 + 0.5 * elapsed


async def test_the_page_has_a_content_security_policy(chat: Chat) -> None:
    for path in ["/", "/static/index.html"]:  # the same page, either way
        headers = await chat.headers(path)
        directives = {}
        for directive in headers["Content-Security-Policy"].split(";"):
            name, *values = directive.split()
            directives[name] = values
        assert directives["default-src"] == ["'none'"]
        assert directives["script-src"] == ["'self'"]  # no inline script, no eval
        assert directives["connect-src"] == ["'self'"]  # and ws: to the same host
        assert directives["style-src"] == ["'self'"]
        assert directives["img-src"] == ["'self'"]
        assert directives["frame-ancestors"] == ["'none'"]
        assert directives["base-uri"] == ["'none'"]
        assert directives["form-action"] == ["'none'"]
    for path in ["/", "/static/chat.js", "/static/style.css"]:
        assert (await chat.headers(path))["X-Content-Type-Options"] == "nosniff"
