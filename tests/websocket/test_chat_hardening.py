"""examples/chat on a node of the test's own: what an anonymous user must not be able to do.

The chat's ``Lobby`` runs on the ``node`` fixture (which fails the test on a
leaked process, meta, task, thread or socket), driven by real WebSocket
clients over 127.0.0.1, so the test can count the node's processes.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import pytest

import metakit
from metakit.testing import TIMEOUT, LeakCheck, wait_until

CHAT = Path(__file__).resolve().parents[2] / "examples" / "chat" / "chat.py"


def load_chat() -> ModuleType:
    """The example as a module (its ``__main__`` guard keeps it from running)."""
    spec = importlib.util.spec_from_file_location("chat_example", CHAT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


chat = load_chat()


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
        code: int = msg.data
        return code

    async def close(self) -> None:
        await self.ws.close()


class Server:
    """A running Lobby and the clients' session."""

    def __init__(self, node: metakit.Node, lobby: metakit.PID, url: str) -> None:
        self.node = node
        self.lobby = lobby
        self.url = url
        self.session = aiohttp.ClientSession()

    async def connect(self, origin: str | None = "") -> Client:
        """A WebSocket client; its ``Origin`` is the page's unless given (None: none)."""
        ws = await self.session.ws_connect(
            self.url.replace("http", "ws") + "/ws", origin=self.url if origin == "" else origin
        )
        return Client(ws)

    async def join(self, room: str, nick: str) -> Client:
        client = await self.connect()
        joined = await client.join(room, nick)
        assert joined["type"] == "joined", joined
        return client

    def alive(self) -> bool:
        return self.lobby in self.node.processes()


Serve = Callable[..., Awaitable[Server]]


@pytest.fixture
async def serve(node: metakit.Node) -> AsyncIterator[Serve]:
    """A factory: ``await serve(**settings)`` spawns the Lobby on port 0."""
    servers: list[Server] = []

    async def start(**settings: Any) -> Server:
        lobby = await node.spawn(chat.Lobby, chat.Settings(port=0, **settings))
        server = Server(node, lobby, await node.call(lobby, "url"))
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.session.close()


async def test_a_room_supervisor_giving_up_never_stops_the_server(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    server = await serve(crash_demo=True, room_restarts=0)  # the first crash is one too many
    carol = await server.join("calm", "carol")
    ada = await server.join("boom", "ada")
    bob = await server.join("boom", "bob")
    assert await ada.receive() == {"type": "join", "nick": "bob"}

    await ada.send(type="say", text="/crash")
    assert await ada.closed() == 1011
    assert await bob.closed() == 1011
    await ada.close()
    await bob.close()
    await wait_until(lambda: "giving up: 1 restarts within 60 s" in caplog.text)

    assert server.alive()
    await carol.send(type="say", text="all quiet")
    assert (await carol.receive())["text"] == "all quiet"
    # The room is there again for whoever joins, empty.
    ada = await server.join("boom", "ada")
    await ada.send(type="say", text="back")
    assert (await ada.receive())["text"] == "back"
    await ada.close()
    await carol.close()


async def test_empty_rooms_stop(serve: Serve, node: metakit.Node) -> None:
    server = await serve()
    carol = await server.join("calm", "carol")
    baseline = len(node.processes())
    leaks = LeakCheck()

    for n in range(300):
        client = await server.join(f"room{n}", "ada")
        await client.close()
    await wait_until(
        lambda: len(node.processes()) <= baseline,
        message=f"{len(node.processes()) - baseline} processes more than before",
    )
    await leaks.check()  # tasks, threads, sockets

    # A room with two members stays while one of them is there.
    ada = await server.join("pair", "ada")
    bob = await server.join("pair", "bob")
    assert await ada.receive() == {"type": "join", "nick": "bob"}
    with_room = len(node.processes())
    assert with_room > baseline
    await bob.close()
    assert await ada.receive() == {"type": "leave", "nick": "bob"}
    assert len(node.processes()) == with_room
    await ada.send(type="say", text="alone")
    assert (await ada.receive())["text"] == "alone"
    await ada.close()
    await wait_until(lambda: len(node.processes()) <= baseline)

    # A room that stopped starts again, empty, on the next join.
    ada = await server.connect()
    joined = await ada.join("pair", "ada")
    assert (joined["history"], joined["members"]) == ([], ["ada"])
    await ada.close()

    assert server.alive()
    await carol.send(type="say", text="still here")
    assert (await carol.receive())["text"] == "still here"
    await carol.close()


def test_origins_from_the_command_line_are_written_as_browsers_write_them() -> None:
    assert chat.parse_args([]).origins == ()
    settings = chat.parse_args(
        ["--origin", "HTTPS://Chat.Example:443/", "--origin", "http://[::1]:8080"]
    )
    assert settings.origins == ("https://chat.example", "http://[::1]:8080")
    for bad in [
        "chat.example",
        "ftp://chat.example",
        "https://x/chat",
        "https://x?a",
        "http://x:y",
    ]:
        with pytest.raises(SystemExit):
            chat.parse_args(["--origin", bad])


def test_the_rate_limit_is_a_burst_then_a_steady_rate() -> None:
    # Times a float holds exactly: a quarter of a second is one token at 4 a second.
    bucket = chat.TokenBucket(rate=4.0, burst=20, now=100.0)
    assert [bucket.take(100.0) for _ in range(21)] == [True] * 20 + [False]
    assert not bucket.take(100.125)  # half a message's worth
    assert bucket.take(100.25)
    assert not bucket.take(100.25)
    # Steady at the rate: never cut.
    assert all(bucket.take(100.25 + n / 4) for n in range(1, 100))
    # Idle for long: the burst again, no more.
    assert [bucket.take(1000.0) for _ in range(21)] == [True] * 20 + [False]


@pytest.mark.parametrize(
    ("flags", "complaint"),
    [
        (["--rate", "0"], "argument --rate: not a rate above 0 (messages a second): '0'"),
        (["--rate", "-1"], "argument --rate: not a rate above 0"),
        (["--rate", "inf"], "argument --rate: not a rate above 0"),
        (["--rate", "nan"], "argument --rate: not a rate above 0"),
        (["--burst", "0"], "argument --burst: not a whole number above 0: '0'"),
        (["--burst", "2.5"], "argument --burst: not a whole number above 0"),
    ],
)
def test_the_rate_limit_cannot_be_turned_off(
    flags: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        chat.parse_args(flags)
    assert complaint in capsys.readouterr().err


async def test_the_node_keeps_serving_through_every_attack(
    serve: Serve, node: metakit.Node
) -> None:
    server = await serve(crash_demo=True)
    carol = await server.join("calm", "carol")
    processes, metas = len(node.processes()), len(node.metas())
    leaks = LeakCheck()

    async def carol_is_served() -> None:
        await carol.send(type="say", text="all quiet")
        assert (await carol.receive())["text"] == "all quiet"

    for origin in ["https://evil.example", "null", None]:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await server.connect(origin=origin)
        assert refused.value.status == 403
    await carol_is_served()

    for n in range(5):  # floods, each cut short
        imp = await server.join("flood", f"imp{n}")
        try:
            for i in range(1000):
                await imp.send(type="say", text=f"m{i}")
        except ConnectionResetError:  # closed already
            pass
        while (await imp.ws.receive(timeout=TIMEOUT)).type is aiohttp.WSMsgType.TEXT:
            pass
        await imp.close()
        await carol_is_served()

    for _ in range(12):  # crashes, over the supervisor's limit
        ada = await server.join("boom", "ada")
        await ada.send(type="say", text="/crash")
        assert await ada.closed() == 1011
        await ada.close()
        await carol_is_served()

    for n in range(100):  # rooms, left empty
        ada = await server.join(f"room{n}", "ada")
        await ada.close()
    await carol_is_served()

    await wait_until(
        lambda: (len(node.processes()), len(node.metas())) == (processes, metas),
        message="processes or metas left behind",
    )
    await leaks.check()  # tasks, threads, sockets
    assert server.alive()
    await carol.close()
