"""WebSocketHandler and WebSocketClient against real clients and servers."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections import Counter
from typing import Any

import aiohttp
import pytest
import websockets
from aiohttp import web

import metakit
from metakit import Node
from metakit.testing import TIMEOUT, Probe, wait_until
from metakit.web import WebServer
from metakit.websocket import (
    Backoff,
    WebSocketClient,
    WebSocketHandler,
    WSConnect,
    WSDisconnect,
    WSMessage,
    broadcast,
)


async def serve(probe: Any, **options: Any) -> tuple[Probe, WebSocketHandler, str]:
    """A Probe worker owning a WebSocketHandler on /ws and a WebServer; returns the ws URL."""
    worker: Probe = await probe()
    handler = WebSocketHandler(worker.pid, **options)
    await worker.spawn_meta(handler)
    app = web.Application()
    app.router.add_get("/ws", handler)
    server = WebServer("127.0.0.1", 0, app)
    await worker.spawn_meta(server)
    return worker, handler, server.url.replace("http", "ws") + "/ws"


class Echo(metakit.Process):
    """Echoes every message back to its connection."""

    def handle_message(self, sender: metakit.PID, message: Any) -> None:
        if isinstance(message, WSMessage):
            self.send(message.conn, WSMessage(message.conn, message.data))


async def echo_server(node: Node, **options: Any) -> str:
    class Owner(Echo):
        async def init(self, urls: list[str]) -> None:
            handler = WebSocketHandler(self.pid, **options)
            await self.spawn_meta(handler)
            app = web.Application()
            app.router.add_get("/ws", handler)
            server = WebServer("127.0.0.1", 0, app)
            await self.spawn_meta(server)
            urls.append(server.url.replace("http", "ws") + "/ws")

    urls: list[str] = []
    await node.spawn(Owner, urls)
    return urls[0]


async def test_text_binary_and_lifecycle(node: Node, probe: Any) -> None:
    worker, _, url = await serve(probe)
    async with aiohttp.ClientSession() as s, s.ws_connect(url + "?room=a") as ws:
        hello = await worker.receive()
        assert isinstance(hello, WSConnect)
        assert hello.request_info.query["room"] == "a"
        conn = hello.conn
        await ws.send_str("text")
        assert await worker.receive() == WSMessage(conn, "text")
        await ws.send_bytes(b"\x00bin")
        assert await worker.receive() == WSMessage(conn, b"\x00bin")
        worker.send(conn, WSMessage(conn, "to you"))
        assert await ws.receive_str() == "to you"
        worker.send(conn, WSMessage(conn, b"\xff"))
        assert await ws.receive_bytes() == b"\xff"
    assert await worker.receive() == WSDisconnect(conn, 1000, "")
    await wait_until(lambda: conn not in node.metas())


async def test_json_codec(node: Node, probe: Any) -> None:
    worker, _, url = await serve(probe, codec="json")
    async with aiohttp.ClientSession() as s, s.ws_connect(url) as ws:
        conn = (await worker.receive()).conn
        await ws.send_json({"a": [1, 2]})
        assert await worker.receive() == WSMessage(conn, {"a": [1, 2]})
        worker.send(conn, WSMessage(conn, {"b": None}))
        assert await ws.receive_json() == {"b": None}
        await ws.send_str("{not json")
        msg = await ws.receive()
        assert msg.type is aiohttp.WSMsgType.CLOSE
        assert msg.data == 1007
    bye = await worker.receive()
    assert (bye.conn, bye.code) == (conn, 1007)


async def test_websockets_client_against_server(node: Node) -> None:
    url = await echo_server(node)
    async with websockets.connect(url) as ws:
        for text in ("a", "b" * 1000, "ünïcode"):
            await ws.send(text)
            assert await ws.recv() == text
        await ws.send(b"\x01\x02")
        assert await ws.recv() == b"\x01\x02"


async def test_metakit_client_against_server(node: Node, probe: Any) -> None:
    url = await echo_server(node, codec="json")
    owner: Probe = await probe()
    conn = await owner.spawn_meta(WebSocketClient(url, codec="json"))
    assert isinstance(await owner.receive(), WSConnect)
    owner.send(conn, WSMessage(conn, {"n": 1}))
    assert await owner.receive() == WSMessage(conn, {"n": 1})
    owner.send_exit(conn, "normal")
    assert await owner.receive() == WSDisconnect(conn, 1000, "normal")


class KillsOnEcho(metakit.Process):
    """Kills its client connection from the handler the client's read runs."""

    async def init(self, url: str, holder: list[WebSocketClient]) -> None:
        client = WebSocketClient(url)
        holder.append(client)
        conn = await self.spawn_meta(client)
        self.send(conn, WSMessage(conn, "ping"))

    def handle_message(self, sender: metakit.PID, message: Any) -> None:
        if isinstance(message, WSMessage):
            self.send_exit(message.conn, "kill")


async def test_a_client_killed_inside_its_own_read_leaves_no_task(node: Node) -> None:
    url = await echo_server(node)
    holder: list[WebSocketClient] = []
    await node.spawn(KillsOnEcho, url, holder)
    [client] = holder
    await wait_until(lambda: not client.alive)
    # Its main loop (which was running the parent's handler) is stopped too.
    await wait_until(lambda: client._mk_main is None or client._mk_main.done())


async def test_message_at_the_limit_and_over(node: Node, probe: Any) -> None:
    worker, _, url = await serve(probe, max_message=1000)
    async with aiohttp.ClientSession() as s, s.ws_connect(url) as ws:
        conn = (await worker.receive()).conn
        await ws.send_bytes(b"x" * 1000)
        assert await worker.receive() == WSMessage(conn, b"x" * 1000)
        await ws.send_bytes(b"x" * 1001)
        msg = await ws.receive()
        assert msg.type is aiohttp.WSMsgType.CLOSE
        assert msg.data == 1009  # message too big
    bye = await worker.receive()
    assert (bye.conn, bye.code) == (conn, 1009)


async def test_origin_refused_before_upgrade(node: Node, probe: Any) -> None:
    worker, handler, url = await serve(probe, origins=["http://good.example"])
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await s.ws_connect(url, origin="http://evil.example")
        assert info.value.status == 403
        async with s.ws_connect(url, origin="http://good.example"):
            assert isinstance(await worker.receive(), WSConnect)
    assert node.meta_info(handler.id).inspect["refused_origin"] == "1"


async def test_ping_timeout_drops_dead_peer(node: Node, probe: Any) -> None:
    worker, _, url = await serve(probe, heartbeat=0.05)
    async with aiohttp.ClientSession() as s:
        ws = await s.ws_connect(url, autoping=False)  # never answers pings
        conn = (await worker.receive()).conn
        bye = await worker.receive()
        assert (bye.conn, bye.code) == (conn, 1006)
        await ws.close()


async def test_abrupt_reset_by_client(node: Node, probe: Any) -> None:
    worker, _, url = await serve(probe)
    async with aiohttp.ClientSession() as s:
        ws = await s.ws_connect(url)
        conn = (await worker.receive()).conn
        sock = ws._response.connection.transport.get_extra_info("socket")  # type: ignore[union-attr]
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        ws._response.connection.transport.abort()  # type: ignore[union-attr]
        bye = await worker.receive()
        assert (bye.conn, bye.code) == (conn, 1006)
        await ws.close()


@pytest.mark.parametrize(("reason", "code"), [("normal", 1000), ("shutdown", 1001)])
async def test_send_exit_closes_after_queued_messages(
    node: Node, probe: Any, reason: str, code: int
) -> None:
    worker, _, url = await serve(probe)
    async with aiohttp.ClientSession() as s, s.ws_connect(url) as ws:
        conn = (await worker.receive()).conn
        for i in range(20):
            worker.send(conn, WSMessage(conn, f"m{i}"))
        worker.send_exit(conn, reason)
        got = [await ws.receive_str() for _ in range(20)]
        assert got == [f"m{i}" for i in range(20)]
        msg = await ws.receive()
        assert msg.type is aiohttp.WSMsgType.CLOSE
        assert msg.data == code
    assert await worker.receive() == WSDisconnect(conn, code, reason)


async def test_worker_crash_closes_its_connections_with_1011(node: Node, probe: Any) -> None:
    owner: Probe = await probe()

    class Fragile(metakit.Process):
        def handle_message(self, sender: metakit.PID, message: Any) -> None:
            if isinstance(message, WSMessage) and message.data == "crash":
                raise RuntimeError("worker crashed")

    worker = await node.spawn(Fragile)
    handler = WebSocketHandler(worker)
    await owner.spawn_meta(handler)
    app = web.Application()
    app.router.add_get("/ws", handler)
    server = WebServer("127.0.0.1", 0, app)
    await owner.spawn_meta(server)
    url = server.url.replace("http", "ws") + "/ws"
    async with aiohttp.ClientSession() as s:
        sockets = [await s.ws_connect(url) for _ in range(3)]
        await wait_until(lambda: handler.statistics().connections == 3)
        await sockets[0].send_str("crash")
        for ws in sockets:
            msg = await ws.receive()
            assert msg.type is aiohttp.WSMsgType.CLOSE
            assert msg.data == 1011
            await ws.close()


async def test_slow_worker_pauses_reading(node: Node, probe: Any) -> None:
    gate = asyncio.Event()

    class Slow(metakit.Process):
        async def init(self, urls: list[str]) -> None:
            self.got = 0
            handler = WebSocketHandler(self.pid, high_watermark=8, low_watermark=2)
            await self.spawn_meta(handler)
            app = web.Application()
            app.router.add_get("/ws", handler)
            server = WebServer("127.0.0.1", 0, app)
            await self.spawn_meta(server)
            urls.append(server.url.replace("http", "ws") + "/ws")

        async def handle_message(self, sender: metakit.PID, message: Any) -> None:
            if isinstance(message, WSMessage):
                await gate.wait()
                self.got += 1

        def handle_inspect(self) -> dict[str, str]:
            return {"got": str(self.got)}

    urls: list[str] = []
    pid = await node.spawn(Slow, urls)
    [url] = urls
    async with aiohttp.ClientSession() as s, s.ws_connect(url) as ws:
        for i in range(200):
            await ws.send_str(str(i))
        await wait_until(lambda: node.process_info(pid).mailbox >= 8)
        # It stopped reading: the high watermark, plus the resume marker.
        assert node.process_info(pid).mailbox <= 8 + 2
        gate.set()
        await wait_until(lambda: node.process_info(pid).inspect["got"] == "200")


async def test_thousand_connections(node: Node) -> None:
    url = await echo_server(node, heartbeat=None)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as s:
        sockets = await asyncio.gather(*(s.ws_connect(url) for _ in range(1000)))
        for i, ws in enumerate(sockets):
            await ws.send_str(f"hello {i}")
        answers = [await ws.receive_str() for ws in sockets]
        assert answers == [f"hello {i}" for i in range(1000)]
        await asyncio.gather(*(ws.close() for ws in sockets))


async def test_slow_reader_holds_writes_and_pushes_back(node: Node, probe: Any) -> None:
    # The peer reads nothing: the library's send must wait for the socket to
    # drain, the connection holds its mailbox meanwhile, and its bound pushes
    # back on the worker. Then the peer reads: everything arrives, in order.
    worker, _, url = await serve(probe, mailbox_size=8)
    block = bytes(range(256)) * 256  # 64 KiB
    async with aiohttp.ClientSession() as s, s.ws_connect(url) as ws:
        conn = (await worker.receive()).conn
        sent = 0
        refused = False
        for _ in range(10_000):
            try:
                worker.send(conn, WSMessage(conn, sent.to_bytes(8, "big") + block[8:]))
            except metakit.MailboxFull:
                refused = True
                break
            sent += 1
            await asyncio.sleep(0)  # let the connection write what it can
        assert refused
        assert node.meta_info(conn).inspect["writing"] == "held"
        for i in range(sent):
            data = await asyncio.wait_for(ws.receive_bytes(), TIMEOUT)
            assert int.from_bytes(data[:8], "big") == i
        await wait_until(lambda: node.meta_info(conn).inspect["writing"] == "on")
        worker.send(conn, WSMessage(conn, "more"))  # taken again
        assert await asyncio.wait_for(ws.receive_str(), TIMEOUT) == "more"
        assert int(node.meta_info(conn).inspect["messages_out"]) == sent + 1


async def test_broadcast_reaches_everyone_and_skips_the_gone(node: Node, probe: Any) -> None:
    worker, _, url = await serve(probe, codec="json")
    async with aiohttp.ClientSession() as s:
        sockets = [await s.ws_connect(url) for _ in range(3)]
        conns = [(await worker.receive()).conn for _ in sockets]
        await sockets[2].close()
        assert (await worker.receive()).conn == conns[2]  # its WSDisconnect
        await wait_until(lambda: conns[2] not in node.metas())
        took = broadcast(worker, conns, {"say": "hi", "n": 1})
        assert took == 2  # the closed one is skipped, not an error
        for ws in sockets[:2]:
            assert await asyncio.wait_for(ws.receive_json(), TIMEOUT) == {"say": "hi", "n": 1}
        with pytest.raises(TypeError):
            broadcast(worker, conns, {"not json": object()})
        for ws in sockets[:2]:
            await ws.close()


async def test_broadcast_through_clients_keeps_text_and_binary(node: Node, probe: Any) -> None:
    worker, _, url = await serve(probe)
    owner: Probe = await probe()
    clients = [await owner.spawn_meta(WebSocketClient(url)) for _ in range(2)]
    for _ in clients:
        assert isinstance(await owner.receive(), WSConnect)
    for _ in clients:
        assert isinstance(await worker.receive(), WSConnect)
    assert broadcast(owner, clients, "text, é") == 2
    assert broadcast(owner, clients, b"\x00bytes") == 2
    got = Counter([(await worker.receive()).data for _ in range(4)])
    assert got == {"text, é": 2, b"\x00bytes": 2}  # a str stays text, bytes binary
    for conn in clients:
        owner.send_exit(conn, "normal")
        assert isinstance(await owner.receive(), WSDisconnect)


async def test_broadcast_skips_a_full_connection_and_counts_it(node: Node, probe: Any) -> None:
    worker, _, url = await serve(probe, mailbox_size=8)
    block = bytes(range(256)) * 256  # 64 KiB
    async with aiohttp.ClientSession() as s, s.ws_connect(url), s.ws_connect(url) as fast:
        slow_conn = (await worker.receive()).conn
        fast_conn = (await worker.receive()).conn
        # The slow peer reads nothing until its connection's mailbox is full.
        for _ in range(10_000):
            try:
                worker.send(slow_conn, WSMessage(slow_conn, block))
            except metakit.MailboxFull:
                break
            await asyncio.sleep(0)
        else:
            pytest.fail("the slow connection never filled up")
        assert broadcast(worker, [slow_conn, fast_conn], "news") == 1
        assert await asyncio.wait_for(fast.receive_str(), TIMEOUT) == "news"
        assert int(node.meta_info(slow_conn).inspect["dropped"]) == 1


async def test_client_reconnects_and_delivers_what_waited(node: Node, probe: Any) -> None:
    worker, _, url = await serve(probe)
    owner: Probe = await probe()
    client = WebSocketClient(url, reconnect=Backoff(initial=0.01, maximum=0.05), mailbox_size=5)
    conn = await owner.spawn_meta(client)
    assert isinstance(await owner.receive(), WSConnect)
    server_side = (await worker.receive()).conn
    worker.send_exit(server_side, "kill")  # the server drops it
    bye = await owner.receive()
    assert isinstance(bye, WSDisconnect)
    assert bye.code == 1006
    # While it is down, messages wait (up to the mailbox bound)...
    for i in range(5):
        owner.send(conn, WSMessage(conn, f"queued {i}"))
    with pytest.raises(metakit.MailboxFull):
        owner.send(conn, WSMessage(conn, "one too many"))
    # ...then it is back, and they go out in order.
    assert isinstance(await owner.receive(), WSConnect)
    assert client.connects == 2
    new_side = None
    got = []
    while len(got) < 5:
        message = await worker.receive()
        if isinstance(message, WSConnect):
            new_side = message.conn
        elif isinstance(message, WSMessage):
            got.append(message.data)
    assert new_side is not None
    assert got == [f"queued {i}" for i in range(5)]
    owner.send_exit(conn, "normal")


async def test_client_connect_errors_raise_at_spawn(node: Node, probe: Any) -> None:
    owner: Probe = await probe()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        with pytest.raises(ConnectionRefusedError):
            await owner.spawn_meta(WebSocketClient(f"ws://127.0.0.1:{port}/ws"))
    _, _, url = await serve(probe, origins=["http://only.example"])
    with pytest.raises(websockets.exceptions.InvalidStatus):
        await owner.spawn_meta(WebSocketClient(url))


async def test_unsendable_write_closes_with_1011(node: Node, probe: Any) -> None:
    worker, _, url = await serve(probe)
    async with aiohttp.ClientSession() as s, s.ws_connect(url) as ws:
        conn = (await worker.receive()).conn
        worker.send(conn, WSMessage(conn, {"not": "str or bytes"}))  # no codec: a mistake
        msg = await ws.receive()
        assert msg.type is aiohttp.WSMsgType.CLOSE
        assert msg.data == 1011  # the peer is told, not left waiting
    bye = await worker.receive()
    assert (bye.conn, bye.code) == (conn, 1011)
    assert isinstance(bye.reason, TypeError)


async def test_client_down_keeps_writes_and_ignores_a_links_normal(node: Node, probe: Any) -> None:
    worker, _, url = await serve(probe)
    owner: Probe = await probe()
    client = WebSocketClient(url, reconnect=Backoff(initial=0.05, maximum=0.05))
    conn = await owner.spawn_meta(client)
    assert isinstance(await owner.receive(), WSConnect)
    server_side = (await worker.receive()).conn
    worker.send_exit(server_side, "kill")
    assert isinstance(await owner.receive(), WSDisconnect)
    assert node.meta_info(conn).inspect["writing"] == "held"

    class Friend(metakit.Process):
        async def init(self) -> None:
            self.link(conn)
            self.send(self.pid, "bye")

        def handle_message(self, sender: metakit.PID, message: Any) -> None:
            raise metakit.Stop("normal")

    friend = await node.spawn(Friend)
    await wait_until(lambda: friend not in node.processes())
    assert conn in node.metas()  # a link's "normal" does not end it, down or not
    for i in range(3):
        owner.send(conn, WSMessage(conn, f"while down {i}"))
    assert isinstance(await owner.receive(), WSConnect)  # back
    got = []
    while len(got) < 3:
        message = await worker.receive()
        if isinstance(message, WSMessage):
            got.append(message.data)
    assert got == [f"while down {i}" for i in range(3)]
    assert client.statistics().dropped == 0
    owner.send_exit(conn, "normal")


class Recording(Echo):
    """An echo owning a WebSocketHandler (and a WebServer, if asked) that notes
    what it handles, and its terminate."""

    async def init(self, seen: list[Any], web_server: bool, holder: list[Recording]) -> None:
        holder.append(self)
        self.seen = seen
        self.handler = WebSocketHandler(self.pid)
        await self.spawn_meta(self.handler)
        if web_server:
            app = web.Application()
            app.router.add_get("/ws", self.handler)
            self.server = WebServer("127.0.0.1", 0, app)
            await self.spawn_meta(self.server)

    def handle_message(self, sender: metakit.PID, message: Any) -> None:
        self.seen.append(type(message).__name__)
        super().handle_message(sender, message)

    def terminate(self, reason: Any) -> None:
        self.seen.append(f"terminate {reason}")


async def stop_while_connected(node: Node, url: str) -> None:
    """Stop the node while a client is connected: it must get a 1001 close frame."""
    async with aiohttp.ClientSession() as s, s.ws_connect(url) as ws:
        await ws.send_str("hi")
        assert await ws.receive_str() == "hi"
        stopping = asyncio.ensure_future(node.stop(timeout=TIMEOUT))
        msg = await ws.receive()
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1001)
        await stopping


async def test_node_stop_says_going_away_while_workers_run(node: Node) -> None:
    # node.stop() closes WebSockets (1001) before it stops any process: the
    # worker sees WSDisconnect before its own terminate, and the client a close frame.
    seen: list[Any] = []
    holder: list[Recording] = []
    await node.spawn(Recording, seen, True, holder)
    url = holder[0].server.url.replace("http", "ws") + "/ws"
    await stop_while_connected(node, url)
    assert seen == ["WSConnect", "WSMessage", "WSDisconnect", "terminate shutdown"]


async def test_a_handler_going_away_refuses_new_connections(node: Node, probe: Any) -> None:
    _, handler, url = await serve(probe)
    handler.quiesce()  # what node.stop() does first
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await s.ws_connect(url)
        assert info.value.status == 503


async def test_node_stop_waits_for_the_disconnects_without_a_web_server(node: Node) -> None:
    # The handler on an aiohttp runner of the user's own, not a WebServer: the
    # node itself waits until the worker has had WSDisconnect.
    seen: list[Any] = []
    holder: list[Recording] = []
    await node.spawn(Recording, seen, False, holder)
    app = web.Application()
    app.router.add_get("/ws", holder[0].handler)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        await stop_while_connected(node, f"ws://127.0.0.1:{runner.addresses[0][1]}/ws")
    finally:
        await runner.cleanup()
    assert seen == ["WSConnect", "WSMessage", "WSDisconnect", "terminate shutdown"]
