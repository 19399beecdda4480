"""Adopting metakit in an existing aiohttp service: mount a WebHandler on your app.

The app below is an ordinary aiohttp app with its own routes (``/health``),
run with aiohttp's own ``AppRunner``. A metakit node lives in the same event
loop, started and stopped by a ``cleanup_ctx``; the ``/api/...`` routes are
answered by an ``Api`` process through a ``WebHandler``. Until the node is
up (and after it stops) the handler answers 503.

Run: python examples/web_mount.py [PORT]   (default 8081; 0 picks a free port)
Try: curl http://127.0.0.1:8081/health
     curl 'http://127.0.0.1:8081/api/items?limit=2'
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

import metakit
from metakit import Caller, Process
from metakit.web import WebHandler, WebRequest

ITEMS = ["apple", "banana", "cherry", "date"]


class Api(Process):
    """Owns the handler; answers the /api requests."""

    async def init(self, handler: WebHandler) -> None:
        await self.spawn_meta(handler)

    def handle_call(self, sender: Caller, request: WebRequest) -> Any:
        match request:
            case WebRequest(method="GET", match_info={"tail": "items"}):
                limit = int(request.query.get("limit", len(ITEMS)))
                return {"items": ITEMS[:limit]}
            case WebRequest(method="GET", match_info={"tail": tail}):
                return web.Response(status=404, text=f"no /api/{tail}\n")
        return web.Response(status=405)


async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")  # a plain aiohttp handler, untouched


def make_app() -> web.Application:
    handler = WebHandler("api", timeout=5.0)

    async def metakit_node(app: web.Application) -> AsyncIterator[None]:
        async with metakit.Node("web-mount@localhost") as node:
            await node.spawn(Api, handler, name="api")
            yield  # the app serves here; leaving the block stops the node

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_route("*", "/api/{tail:.*}", handler)
    app.cleanup_ctx.append(metakit_node)
    return app


async def main(port: int) -> None:
    # handler_cancellation: a request whose client left stops waiting for the worker.
    runner = web.AppRunner(make_app(), handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    host, bound = runner.addresses[0][:2]
    print(f"listening on http://{host}:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 8081))
