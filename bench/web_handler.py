"""The HTTP bridge's own cost per request, without sockets or a load generator.

``http.py`` measures whole requests through wrk, where the bridge is a few
microseconds of about forty and this machine's run-to-run noise is larger
than that. This script times the part metakit adds, in one process: a
``WebHandler`` mounted for a plain ``handle_call`` worker, called with the
same ``aiohttp`` request object (``make_mocked_request``) again and again,
against a plain aiohttp handler returning the same response. Both run on
the same loop in alternating rounds; a figure is the process CPU time per
request, the best of ``--repeat`` rounds; the ratio is metakit / plain in
each round, the median over rounds.

Usage::

    python bench/web_handler.py                   # both loops, 7 rounds of 50 000
    python bench/web_handler.py --quick           # a few seconds
    python bench/web_handler.py --loop uvloop --requests 100000 --repeat 9
"""

from __future__ import annotations

import os
import sys

# As in http.py: bench/http.py must not shadow the stdlib's http package.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.append(sys.path.pop(0))

import argparse
import asyncio
import gc
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from statistics import median
from typing import Any

TEXT = "Hello, world!"


@asynccontextmanager
async def handlers() -> AsyncIterator[tuple[Any, Any, Any]]:
    """(plain aiohttp handler, mounted WebHandler, request) on a running node.

    ``bench/instructions.py`` counts the same pair's instructions.
    """
    from aiohttp import web
    from aiohttp.test_utils import make_mocked_request

    import metakit
    from metakit.web import WebHandler

    async def plain(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(text=TEXT)

    class Worker(metakit.Process):
        def handle_call(self, sender: Any, request: Any) -> Any:
            return TEXT

    class Owner(metakit.Process):
        async def init(self, worker: metakit.PID, holder: list[WebHandler]) -> None:
            handler = WebHandler(worker)
            await self.spawn_meta(handler)
            holder.append(handler)

    async with metakit.Node("web-handler-bench@localhost") as node:
        worker = await node.spawn(Worker)
        holder: list[WebHandler] = []
        await node.spawn(Owner, worker, holder)
        yield plain, holder[0], make_mocked_request("GET", "/")


async def serve_many(handler: Any, request: Any, requests: int) -> None:
    """``requests`` requests through ``handler``; a wrong answer is an error."""
    response = None
    for _ in range(requests):
        response = await handler(request)
    if response is None or response.status != 200 or response.text != TEXT:
        raise RuntimeError(f"bad response: {response!r}")


async def measure(requests: int, repeat: int) -> tuple[float, float, float]:
    """Best CPU us per request (plain, metakit) and the median paired ratio."""

    async def rounds(handler: Any) -> float:
        gc.collect()
        t0 = time.process_time()
        await serve_many(handler, request, requests)
        return (time.process_time() - t0) / requests * 1e6

    async with handlers() as (plain, handler, request):
        await rounds(plain)  # warm-up, unmeasured
        await rounds(handler)
        plains, metas, ratios = [], [], []
        for i in range(repeat):
            # Alternate which goes first, so neither always runs on a warmer machine.
            if i % 2:
                m, p = await rounds(handler), await rounds(plain)
            else:
                p, m = await rounds(plain), await rounds(handler)
            plains.append(p)
            metas.append(m)
            ratios.append(m / p)
    return min(plains), min(metas), median(ratios)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds")
    parser.add_argument("--loop", choices=("asyncio", "uvloop", "both"), default="both")
    parser.add_argument("--requests", type=int, default=None, help="per round (50 000)")
    parser.add_argument("--repeat", type=int, default=None, help="rounds (7; --quick: 3)")
    opts = parser.parse_args()
    requests = opts.requests or (5_000 if opts.quick else 50_000)
    repeat = opts.repeat or (3 if opts.quick else 7)
    loops = ("asyncio", "uvloop") if opts.loop == "both" else (opts.loop,)
    print(f"Python {sys.version.split()[0]}; {repeat} rounds of {requests} requests per handler")
    print(f"{'loop':8} {'plain us/req':>13} {'metakit us/req':>15} {'added us':>9} {'ratio':>7}")
    for name in loops:
        factory = None
        if name == "uvloop":
            import uvloop

            factory = uvloop.new_event_loop
        with asyncio.Runner(loop_factory=factory) as runner:
            plain, meta, ratio = runner.run(measure(requests, repeat))
        print(f"{name:8} {plain:13.2f} {meta:15.2f} {meta - plain:9.2f} {ratio:6.2f}x")
    print("us/req: process CPU time per request, best round; ratio: median of paired rounds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
