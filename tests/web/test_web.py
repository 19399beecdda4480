"""WebHandler and WebServer: routing, answers, failure mapping, shutdown."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

import metakit
from metakit import NO_REPLY, Caller, Node
from metakit.testing import TIMEOUT, wait_until
from metakit.web import WebHandler, WebRequest, WebServer


class Api(metakit.Process):
    """A worker answering a few routes; it can also hold requests back."""

    async def init(self) -> None:
        self.held: list[Caller] = []
        self.seen: list[str] = []

    async def handle_call(self, sender: Caller, request: Any) -> Any:
        if not isinstance(request, WebRequest):
            match request:
                case "seen":
                    return list(self.seen)
                case "held":
                    return list(self.held)
            return self.answer_held(request)
        self.seen.append(f"{request.method} {request.path}")
        match request:
            case WebRequest(method="GET", path="/hello"):
                return {"hello": request.query.get("name", "world")}
            case WebRequest(method="GET", path="/text"):
                return "plain text"
            case WebRequest(method="GET", path="/bytes"):
                return b"\x00\x01binary"
            case WebRequest(method="GET", path="/nothing"):
                return None
            case WebRequest(method="POST", path="/echo"):
                return web.Response(
                    body=request.body, status=201, content_type="application/x-echo"
                )
            case WebRequest(method="POST", path="/json"):
                return {"got": request.json()}
            case WebRequest(match_info={"id": user_id}):
                return {"id": user_id, "method": request.method}
            case WebRequest(path="/boom"):
                raise RuntimeError("secret detail")
            case WebRequest(path="/slow"):
                self.held.append(sender)
                return NO_REPLY
            case WebRequest(path="/wrong-type"):
                return 42
            case WebRequest(method="HEAD" | "OPTIONS"):
                return web.Response(headers={"Allow": "GET, POST"})
        return web.Response(status=418)

    def answer_held(self, answer: Any) -> int:
        held, self.held = self.held, []
        for caller in held:
            self.reply(caller, answer)
        return len(held)

    def handle_inspect(self) -> dict[str, str]:
        return {"held": str(len(self.held))}


class MetaOwner(metakit.Process):
    """Owns the metas it is called with: ``await node.call(owner, meta)`` spawns one."""

    async def handle_call(self, sender: Caller, meta: metakit.Meta) -> metakit.Alias:
        return await self.spawn_meta(meta)


def holding(node: Node, pid: metakit.PID) -> bool:
    """Whether the Api worker holds a request back."""
    return node.process_info(pid).inspect["held"] != "0"


def listening(server: WebServer) -> bool:
    try:
        return bool(server.address)
    except metakit.MetakitError:  # "the web server is not listening"
        return False


async def start(
    node: Node, *, handler_opts: dict[str, Any] | None = None, **server_opts: Any
) -> tuple[metakit.PID, WebHandler, WebServer]:
    """An Api worker named "api" owning a WebHandler and a WebServer."""
    handler = WebHandler("api", **(handler_opts or {"timeout": TIMEOUT}))
    app = web.Application()
    app.router.add_route("*", "/users/{id}", handler)
    app.router.add_route("*", "/{tail:(?!missing).*}", handler)
    server = WebServer("127.0.0.1", 0, app, **server_opts)

    class Owner(Api):
        async def init(self) -> None:
            await super().init()
            await self.spawn_meta(handler)
            await self.spawn_meta(server)

    pid = await node.spawn(Owner, name="api")
    return pid, handler, server


@pytest.fixture
async def session() -> Any:
    async with aiohttp.ClientSession() as s:
        yield s


async def test_answers_become_responses(node: Node, session: aiohttp.ClientSession) -> None:
    _, _, server = await start(node)
    url = server.url
    async with session.get(f"{url}/hello", params={"name": "ada"}) as r:
        assert r.status == 200
        assert r.content_type == "application/json"
        assert await r.json() == {"hello": "ada"}
    async with session.get(f"{url}/text") as r:
        assert (r.status, r.content_type, await r.text()) == (200, "text/plain", "plain text")
    async with session.get(f"{url}/bytes") as r:
        assert r.content_type == "application/octet-stream"
        assert await r.read() == b"\x00\x01binary"
    async with session.get(f"{url}/nothing") as r:
        assert r.status == 204
    async with session.post(f"{url}/echo", data=bytes(range(256))) as r:
        assert r.status == 201
        assert await r.read() == bytes(range(256))
    async with session.post(f"{url}/json", json={"a": [1, 2]}) as r:
        assert await r.json() == {"got": {"a": [1, 2]}}
    async with session.put(f"{url}/users/7") as r:
        assert await r.json() == {"id": "7", "method": "PUT"}
    async with session.get(f"{url}/missing") as r:
        assert r.status == 404  # aiohttp's router: the worker never sees it
    async with session.head(f"{url}/anything") as r:
        assert r.status == 200
        assert r.headers["Allow"] == "GET, POST"
    async with session.options(f"{url}/anything") as r:
        assert r.headers["Allow"] == "GET, POST"


async def test_handle_call_raises_gives_generic_500(
    node: Node, session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    _, _, server = await start(node)
    async with session.get(f"{server.url}/boom") as r:
        assert r.status == 500
        body = await r.text()
    assert "secret detail" not in body  # the traceback goes to the log...
    assert "secret detail" in caplog.text
    async with session.get(f"{server.url}/hello") as r:  # ...and the worker carries on
        assert r.status == 200
    async with session.get(f"{server.url}/wrong-type") as r:
        assert r.status == 500


async def test_worker_not_running_is_503(node: Node, session: aiohttp.ClientSession) -> None:
    handler = WebHandler("nobody", timeout=TIMEOUT)
    app = web.Application()
    app.router.add_get("/", handler)
    server = WebServer("127.0.0.1", 0, app)
    owner = await node.spawn(MetaOwner)
    await node.call(owner, server)
    async with session.get(f"{server.url}/") as r:
        assert r.status == 503  # the handler itself is not spawned yet
    await node.call(owner, handler)
    async with session.get(f"{server.url}/") as r:
        assert r.status == 503  # spawned, but no process named "nobody"


async def test_full_mailbox_is_503_with_retry_after(
    node: Node, session: aiohttp.ClientSession
) -> None:
    gate = asyncio.Event()
    started = asyncio.Event()

    class Busy(metakit.Process):
        async def init(self, handler: WebHandler, server: WebServer) -> None:
            await self.spawn_meta(handler)
            await self.spawn_meta(server)

        async def handle_call(self, sender: Caller, request: Any) -> Any:
            started.set()
            await gate.wait()
            return "done"

    handler = WebHandler("busy", timeout=TIMEOUT)
    app = web.Application()
    app.router.add_get("/", handler)
    server = WebServer("127.0.0.1", 0, app)
    pid = await node.spawn(Busy, handler, server, name="busy", mailbox_size=1)
    first = asyncio.ensure_future(session.get(f"{server.url}/"))  # in the handler
    await asyncio.wait_for(started.wait(), TIMEOUT)
    second = asyncio.ensure_future(session.get(f"{server.url}/"))  # queued
    await wait_until(lambda: node.process_info(pid).mailbox == 1)
    async with session.get(f"{server.url}/") as r:  # refused
        assert r.status == 503
        assert r.headers["Retry-After"] == "1"
    gate.set()
    for pending in (first, second):
        async with await pending as r:
            assert await r.text() == "done"


async def test_timeout_is_504_and_late_answer_discarded(
    node: Node, session: aiohttp.ClientSession
) -> None:
    pid, handler, server = await start(node, handler_opts={"timeout": 0.05})
    async with session.get(f"{server.url}/slow") as r:
        assert r.status == 504
    assert await node.call(pid, "late answer") == 1  # released: goes nowhere
    async with session.get(f"{server.url}/hello") as r:
        assert r.status == 200
    assert node.meta_info(handler.id).inspect["timed_out"] == "1"


async def test_client_disconnect_abandons_the_call(node: Node) -> None:
    pid, _, server = await start(node)
    reader, writer = await asyncio.open_connection(*server.address)
    writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    await wait_until(lambda: holding(node, pid))
    [caller] = await node.call(pid, "held")
    writer.close()  # the client goes away while waiting
    await writer.wait_closed()
    await wait_until(lambda: caller.done)  # the pending call is abandoned
    assert await node.call(pid, "too late") == 1  # the reply is discarded, nothing written
    del reader


async def test_body_over_max_body_is_413(node: Node, session: aiohttp.ClientSession) -> None:
    pid, _, server = await start(node, handler_opts={"timeout": TIMEOUT, "max_body": 1000})
    async with session.post(f"{server.url}/echo", data=b"x" * 1000) as r:
        assert r.status == 201
    async with session.post(f"{server.url}/echo", data=b"x" * 1001) as r:
        assert r.status == 413

    async def chunked() -> Any:
        for _ in range(5):
            yield b"y" * 300  # no Content-Length: counted while reading

    async with session.post(f"{server.url}/echo", data=chunked()) as r:
        assert r.status == 413
    assert await node.call(pid, "seen") == ["POST /echo"]  # the worker never saw the big ones


async def test_keep_alive_and_many_concurrent_clients(node: Node) -> None:
    _, _, server = await start(node)
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as one:
        for i in range(100):  # one connection, many requests
            async with one.get(f"{server.url}/hello", params={"name": str(i)}) as r:
                assert await r.json() == {"hello": str(i)}
    info = node.meta_info(server.id).inspect
    assert info["connections"] in ("0", "1")

    async def client(n: int) -> list[str]:
        async with aiohttp.ClientSession() as s:
            names = []
            for i in range(20):
                async with s.get(f"{server.url}/hello", params={"name": f"{n}-{i}"}) as r:
                    names.append((await r.json())["hello"])
            return names

    results = await asyncio.gather(*(client(n) for n in range(50)))
    assert [len(r) for r in results] == [20] * 50
    assert all(names == [f"{n}-{i}" for i in range(20)] for n, names in enumerate(results))


async def test_web_server_bind_errors_and_url(node: Node) -> None:
    _, _, server = await start(node)
    assert server.url.startswith("http://127.0.0.1:")

    owner = await node.spawn(MetaOwner)
    busy = WebServer("127.0.0.1", server.address[1], web.Application())
    with pytest.raises(OSError, match="in use"):
        await node.call(owner, busy)


async def test_shutdown_lets_in_flight_requests_finish(node: Node) -> None:
    pid, _, server = await start(node, shutdown_timeout=TIMEOUT)
    url = server.url
    address = server.address
    async with aiohttp.ClientSession() as s:
        in_flight = asyncio.ensure_future(s.get(f"{url}/slow"))
        await wait_until(lambda: holding(node, pid))
        node.send_exit(server.id, "shutdown")

        # It stops accepting new connections...
        await wait_until(lambda: not listening(server))
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(*address)
        # ...while the request in flight still gets its answer.
        assert await node.call(pid, "finally") == 1
        async with await in_flight as r:
            assert r.status == 200
            assert await r.text() == "finally"


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
async def test_with_curl(node: Node) -> None:
    _, _, server = await start(node)
    proc = await asyncio.create_subprocess_exec(
        "curl",
        "-s",
        "-X",
        "POST",
        "--data-binary",
        '{"k": 1}',
        f"{server.url}/json",
        stdout=subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    assert orjson.loads(out) == {"got": {"k": 1}}


async def test_mounted_on_an_app_under_pytest_aiohttp(node: Node, aiohttp_client: Any) -> None:
    """The adoption path: a WebHandler on someone else's app and runner."""

    class Items(metakit.Process):
        async def init(self, handler: WebHandler) -> None:
            await self.spawn_meta(handler)

        def handle_call(self, sender: Caller, request: Any) -> Any:
            return {"item": request.match_info["id"], "q": request.query.get("q")}

    async def plain(request: web.Request) -> web.Response:
        return web.Response(text="plain aiohttp")

    handler = WebHandler("items", timeout=TIMEOUT)
    app = web.Application()
    app.router.add_get("/plain", plain)
    app.router.add_get("/items/{id}", handler)
    await node.spawn(Items, handler, name="items")
    client = await aiohttp_client(app)  # pytest-aiohttp's own test server
    resp = await client.get("/items/42", params={"q": "x"})
    assert await resp.json() == {"item": "42", "q": "x"}
    resp = await client.get("/plain")
    assert await resp.text() == "plain aiohttp"


async def test_node_stop_lets_in_flight_requests_finish_first(node: Node) -> None:
    # The worker is spawned after the server's owner: a newest-first shutdown
    # would stop it first, and the request in flight would get a 503.
    pid, _, server = await start(node, shutdown_timeout=TIMEOUT)
    address = server.address
    async with aiohttp.ClientSession() as s:
        in_flight = asyncio.ensure_future(s.get(f"{server.url}/slow"))
        await wait_until(lambda: holding(node, pid))
        stopping = asyncio.ensure_future(node.stop(timeout=TIMEOUT))
        # The server stops accepting first...
        await wait_until(lambda: not listening(server))
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(*address)
        # ...while every process still runs, so the request gets its answer.
        assert pid in node.processes()
        assert await node.call(pid, "finally") == 1
        async with await in_flight as r:
            assert r.status == 200
            assert await r.text() == "finally"
        await stopping
    assert node.processes() == []


async def test_node_stop_does_not_wait_all_its_time_for_a_stuck_request(node: Node) -> None:
    ended: list[Any] = []
    cleaned = asyncio.Event()

    class Stuck(Api):
        async def terminate(self, reason: Any) -> None:
            ended.append("terminating")
            await cleaned.wait()  # cleanup of its own: it needs time to run
            ended.append(reason)

    handler = WebHandler("stuck", timeout=TIMEOUT)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    server = WebServer("127.0.0.1", 0, app, shutdown_timeout=TIMEOUT)

    class Owner(Stuck):
        async def init(self) -> None:
            await super().init()
            await self.spawn_meta(handler)
            await self.spawn_meta(server)

    pid = await node.spawn(Owner, name="stuck")
    async with aiohttp.ClientSession() as s:
        in_flight = asyncio.ensure_future(s.get(f"{server.url}/slow"))  # never answered
        await wait_until(lambda: holding(node, pid))
        stopping = asyncio.ensure_future(node.stop(timeout=TIMEOUT / 2))
        # Half the time goes to the request in flight; the other half is the
        # worker's, to end gracefully (it is not killed while it cleans up).
        await wait_until(lambda: ended == ["terminating"])
        cleaned.set()
        await stopping
        assert ended == ["terminating", "shutdown"]
        async with await in_flight as r:
            assert r.status == 503
