"""The servers of ``bench/workers.py``: one port, shared by N worker processes.

Run by the driver, never by hand (but it works)::

    python bench/_workers_app.py metakit HTTP_PORT TCP_PORT WORKERS
    python bench/_workers_app.py raw     HTTP_PORT TCP_PORT WORKERS

* ``metakit``: ``metakit.run(Hello, http_port, tcp_port, workers=WORKERS)``.
  Each worker is a node (``bench-1@localhost`` …) whose ``Hello`` Process
  spawns a ``WebHandler`` on ``GET /`` of a ``WebServer`` (answering the
  ``str`` ``"Hello, World!"`` from a plain ``handle_call``, as in
  ``bench/http.py``) and a ``TCPServer`` with ``Line`` framing whose lines
  it echoes with ``send(conn, TCPMessage(conn, line))`` (as in
  ``bench/tcp_echo.py``), both with ``reuse_port=True``. The event loop is
  metakit's choice: uvloop, or the stdlib loop with ``METAKIT_LOOP=asyncio``.
* ``raw`` (the reference): WORKERS processes started the same way (the
  ``spawn`` start method, SIGTERM on the parent's death), each running a
  plain aiohttp handler (``web.Response(text="Hello, World!")``, the
  ``AppRunner``/``TCPSite`` settings ``WebServer`` uses) and an
  ``asyncio.BufferedProtocol`` echo, both with ``reuse_port=True``, on the
  loop ``METAKIT_LOOP`` names (``metakit.loop_factory()``).

Every worker prints ``READY <name> <pid> <loop class>`` on stdout once both
of its servers listen; the driver waits for WORKERS such lines, and reads
each worker's CPU from ``/proc/<pid>/stat``. SIGTERM to the parent stops
everything: metakit's parent forwards it to its workers (DESIGN.md §9); the
raw parent here does the same.

Spawned workers re-import this file (as ``__mp_main__``, which multiprocessing
makes their ``__main__``), so the classes and functions below are found by
reference; the ``__name__`` guard keeps the workers from starting servers of
their own.
"""

from __future__ import annotations

import os
import sys

# Run as a script, bench/ comes first on sys.path, and bench/http.py would
# shadow the stdlib's http package that aiohttp imports: move it to the end.
# The spawned workers get this sys.path from the parent.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.append(sys.path.pop(0))

import asyncio
import multiprocessing
import multiprocessing.connection
import signal
from typing import Any

import metakit
from metakit.framing import Line
from metakit.tcp import TCPMessage, TCPServer
from metakit.web import WebHandler, WebServer

TEXT = "Hello, World!"
MAX_LINE = 4096
READ_SIZE = 65536


def ready(name: str) -> None:
    loop = asyncio.get_running_loop()
    kind = f"{type(loop).__module__}.{type(loop).__name__}"
    # os.write: one line in one write, however many workers share the pipe.
    os.write(1, f"READY {name} {os.getpid()} {kind}\n".encode())


# --------------------------------------------------------------------- metakit


class Hello(metakit.Process):
    """A worker's one Process: answers the web requests and echoes the lines."""

    async def init(self, http_port: int, tcp_port: int) -> None:
        from aiohttp import web

        await self.register_name("web")  # WebHandler("web"), as in bench/http.py
        handler = WebHandler("web")
        app = web.Application()
        app.router.add_get("/", handler)
        await self.spawn_meta(handler)
        await self.spawn_meta(WebServer("127.0.0.1", http_port, app, reuse_port=True))
        tcp = TCPServer("127.0.0.1", tcp_port, framing=Line(max_length=MAX_LINE), reuse_port=True)
        await self.spawn_meta(tcp)
        ready(self.node.name)

    def handle_call(self, sender: Any, request: Any) -> str:
        return TEXT

    def handle_message(self, sender: Any, message: Any) -> None:
        match message:
            case TCPMessage(conn, data):
                self.send(conn, TCPMessage(conn, data))


# ------------------------------------------------------------------------- raw


class EchoBuffered(asyncio.BufferedProtocol):
    """As bench/tcp_echo.py's raw-buffered: one reused buffer, write back a copy."""

    def __init__(self) -> None:
        self.view = memoryview(bytearray(READ_SIZE))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view

    def buffer_updated(self, nbytes: int) -> None:
        self.transport.write(bytes(self.view[:nbytes]))


async def _raw_serve(index: int, http_port: int, tcp_port: int) -> None:
    from aiohttp import web

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=TEXT)

    loop = asyncio.get_running_loop()
    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(
        app, handle_signals=False, shutdown_timeout=10.0, handler_cancellation=True
    )
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", http_port, backlog=128, reuse_port=True).start()
    echo = await loop.create_server(EchoBuffered, "127.0.0.1", tcp_port, reuse_port=True)
    done = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    ready(f"raw-{index}")
    await done.wait()
    echo.close()
    await runner.cleanup()


def _raw_worker(index: int, http_port: int, tcp_port: int) -> None:
    from metakit._workers import _die_with_parent

    _die_with_parent()  # as metakit's workers: none outlives the parent
    with asyncio.Runner(loop_factory=metakit.loop_factory()) as runner:
        runner.run(_raw_serve(index, http_port, tcp_port))


def raw_main(http_port: int, tcp_port: int, workers: int) -> int:
    """N raw workers; SIGTERM/SIGINT is forwarded to them, then they are waited for."""
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_raw_worker, args=(i, http_port, tcp_port), name=f"raw-{i}")
        for i in range(1, workers + 1)
    ]
    stop = False

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for p in procs:
        p.start()
    # Wait for the signal, or for a worker that died on its own (then stop all).
    while not stop and all(p.is_alive() for p in procs):
        multiprocessing.connection.wait([p.sentinel for p in procs], timeout=0.5)
    for p in procs:
        p.terminate()
    for p in procs:
        p.join(10)
        if p.is_alive():
            p.kill()
            p.join()
    return 0 if stop else 1


def main(argv: list[str]) -> int:
    kind, http_port, tcp_port, workers = argv[0], int(argv[1]), int(argv[2]), int(argv[3])
    if kind == "raw":
        return raw_main(http_port, tcp_port, workers)
    metakit.run(
        Hello,
        http_port,
        tcp_port,
        workers=workers,
        node_name="bench@localhost",
        log_level="warning",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
