"""WebSocket benchmark: metakit's WebSocketHandler vs plain aiohttp WebSocket handlers.

What is measured (each server variant on the stdlib asyncio loop and on
uvloop, in one run):

* echo: 50 connections ping-ponging 32-byte text messages (one in flight per
  connection).

  - ``aiohttp``: ``ws = web.WebSocketResponse(...); await ws.prepare(request);
    async for msg in ws: await ws.send_str(msg.data)`` (text messages);
  - ``metakit``: a worker Process owning a ``WebSocketHandler``; each message
    reaches it as ``WSMessage(conn, data)`` and it answers with
    ``self.send(conn, WSMessage(conn, data))``; served by a ``WebServer``.

* fan-out: 1000 connected clients; connection 0 sends ``"bcast <seq>"``; the
  server stamps ``t0 = time.monotonic_ns()`` and sends every connection one
  32-byte text message ``"B <seq> <t0> xxx..."``. Measured: from t0 to the
  moment the LAST client has it (and to the first one), over 20 broadcasts
  after 3 unmeasured ones, 20 ms apart; p50 and p99 (of 20 values, the p99 is
  the slowest one).

  - ``aiohttp``: the handler keeps a set of its WebSocketResponses and, on a
    trigger, loops ``await peer.send_str(text)`` over them (a write to a
    closing peer is skipped);
  - ``metakit``: a "room" Process is the handler's worker: it keeps the
    ``WSConnect`` aliases in a set and, on a trigger, calls
    ``metakit.websocket.broadcast(self, members, text)`` (the documented way
    to write one message to many connections; it skips gone ones instead of
    raising); the idle connection metas write at once.

Same WebSocket options for both: ``heartbeat=None`` (no pings),
``compress=False`` (no per-message deflate: the load generator does not
offer it either, so the wire carries plain frames for both; deflate on
32-byte messages would measure zlib), ``max_msg_size=2**20 + 1`` (what
``WebSocketHandler(max_message=2**20)`` gives aiohttp), and aiohttp's other
defaults. The aiohttp servers use what ``WebServer`` uses: ``web.AppRunner(app,
handle_signals=False, shutdown_timeout=10.0, handler_cancellation=True)`` and
a ``web.TCPSite`` with ``backlog=128``.

Load: ``bench/ws_loadgen.c``, a one-core C epoll WebSocket client (masked
client frames, RFC 6455 handshake; built on the fly with ``gcc -O2`` into
``$TMPDIR/metakit-bench-$UID/``), in its own process, which reads the server's
CPU time (utime + stime from ``/proc/PID/stat``, 10 ms ticks) and its own
(``getrusage``) over the measured interval; both processes' clocks are
CLOCK_MONOTONIC. The servers are pinned to CPU 0 and the load generator to
CPU 1 (``taskset``; this script runs on CPU 1 and sleeps meanwhile). Each
phase (echo, fan-out) gets fresh servers, both variants at once (an idle
one costs nothing); the measured runs go round the variants (order reversed
every round), five rounds; the table shows the best run of each (echo: by
round trips/s, each run after a 1 s unmeasured warm-up on fresh connections;
fan-out: by p50), and the ratios are medians over the rounds of metakit's
run / aiohttp's run in the same round (a shared machine drifts; the pairs
cancel it), every round's ratio printed beside. A run during which other
programs used more than 10 % of a core is done again.

Targets, metakit vs plain aiohttp on the same loop: echo >= 0.75x (round
trips/s when both servers are saturated, else the server-CPU-per-round-trip
ratio aiohttp/metakit; both are printed), fan-out time <= 1.3x at p50 and at
p99. A miss prints ``MISS``; only errors make the exit status non-zero.

Run from the repository root (Linux, gcc, two or more CPUs)::

    python bench/ws.py [--quick] [--verbose] [--loop asyncio|uvloop|both]
                       [--variant aiohttp|aiohttp-tuned|metakit ...]
                       [--phase echo|fanout|both] [--profile] [--json PATH]

``--quick`` is a smoke test (one 1 s echo run and one fan-out run per
variant, under a minute); a full run takes four to six minutes. ``--verbose``
adds every run. ``--profile`` runs the servers (by default only ``metakit``;
add ``--variant aiohttp --variant metakit`` for both) under cProfile, one
profile per phase (the figures are then not comparable), and prints each
one's top functions by tottime and its tottime by package. Internally the
servers are this script run as ``--serve VARIANT --loop LOOP``: it prints
``READY <port> <loop class>`` and serves ``/echo`` and ``/room`` until its
stdin closes or it gets SIGTERM/SIGINT.

``--json PATH`` also writes, once the report is printed, the ratios of its
``metakit/aiohttp...`` lines to PATH, for a table runner::

    {"bench": "ws", "command": "python bench/ws.py <the arguments as given>",
     "rows": {KEY: {"asyncio": RATIO, "uvloop": RATIO}}}

Every RATIO is the figure the report prints: a median over the rounds of
metakit's run / the reference's run in the same round (not a ratio of the
table's best runs), unrounded; null where that loop, phase or variant was
not run (or the ratio is not finite). Every key is always there. KEY is
metakit vs plain ``aiohttp``, or with ``_tuned`` at its end (e.g.
``echo_tuned``) vs ``aiohttp-tuned`` (the control: the aiohttp server in a
process that first calls ``metakit._malloc.warm_allocator()``, the malloc
tuning ``Node.start`` applies), on the same loop:

* ``echo``: the echo target ratio, the ``-> ... Nx (target >= 0.75x)`` figure:
  ``echo_rps`` when both servers were saturated in every round, else
  ``1 / echo_cpu`` (see ``echo_saturated``); higher is better;
* ``echo_rps``: ``rt/s`` (metakit / aiohttp round trips per second);
* ``echo_cpu``: ``server CPU/rt`` (metakit / aiohttp server CPU per round trip;
  this one is 1 / the median of aiohttp / metakit);
* ``echo_p50``, ``echo_p99``: ``p50``, ``p99`` (round-trip latency);
* ``echo_saturated``: 1.0 if ``echo`` is ``echo_rps``, 0.0 if it is the CPU
  efficiency (a server was not saturated in some round);
* ``broadcast_p50``, ``broadcast_p99``: the fan-out ``p50``, ``p99`` figures
  (time until all the clients have the broadcast, metakit / aiohttp; lower is
  better; target <= 1.3x);
* ``broadcast_cpu``: ``server CPU per broadcast``.
"""

from __future__ import annotations

import os
import sys

# Run as a script, this file's directory comes first on sys.path, and
# bench/http.py would shadow the stdlib's http package, which aiohttp
# imports: move that entry to the end (bench/_harness.py is still found).
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.append(sys.path.pop(0))

import argparse
import asyncio
import cProfile
import gc
import json
import math
import platform
import pstats
import resource
import shlex
import shutil
import signal
import statistics
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _harness import ServeProcess, build_loadgen, quiet_note, run_loadgen, verdict

HERE = Path(__file__).resolve().parent
LOADGEN_SRC = HERE / "ws_loadgen.c"
VARIANTS = ("aiohttp", "aiohttp-tuned", "metakit")
LOOPS = ("asyncio", "uvloop")
PHASES = ("echo", "fanout")
MSG_SIZE = 32
MAX_MESSAGE = 1 << 20
# The WebSocketResponse options of both variants (WebSocketHandler maps
# max_message=2**20 to max_msg_size=2**20 + 1: aiohttp's limit is exclusive).
WS_OPTIONS: dict[str, Any] = {"heartbeat": None, "compress": False, "max_msg_size": MAX_MESSAGE + 1}

ECHO_TARGET = 0.75  # metakit / aiohttp, at least
FANOUT_TARGET = 1.3  # metakit / aiohttp fan-out time, at most
SATURATED = 90.0  # server CPU %: at or above it, the server is the limit
NOISY = 10.0  # a run during which other programs took more % of a core is done again
TOP = 30
# The --json rows (the docstring says what each is); each also with "_tuned".
JSON_KEYS = (
    "echo",
    "echo_rps",
    "echo_cpu",
    "echo_p50",
    "echo_p99",
    "echo_saturated",
    "broadcast_p50",
    "broadcast_p99",
    "broadcast_cpu",
)
# --json: key -> loop -> ratio, None when not measured.
Rows = dict[str, dict[str, float | None]]


def broadcast_text(trigger: str, t0: int) -> str:
    """The broadcast message for trigger ``"bcast <seq>"`` started at ``t0`` (ns)."""
    return f"B {trigger[6:]} {t0} ".ljust(MSG_SIZE, "x")


# --------------------------------------------------------------------- servers


async def _serve_aiohttp() -> tuple[int, Any]:
    from aiohttp import WSMsgType, web

    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(**WS_OPTIONS)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                await ws.send_str(msg.data)
        return ws

    sockets: set[web.WebSocketResponse] = set()

    async def room(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(**WS_OPTIONS)
        await ws.prepare(request)
        sockets.add(ws)
        try:
            async for msg in ws:
                if msg.type is WSMsgType.TEXT and msg.data.startswith("bcast "):
                    text = broadcast_text(msg.data, time.monotonic_ns())
                    for peer in tuple(sockets):
                        try:
                            await peer.send_str(text)
                        except ConnectionResetError:  # closing: it is leaving
                            pass
        finally:
            sockets.discard(ws)
        return ws

    app = web.Application()
    app.router.add_get("/echo", echo)
    app.router.add_get("/room", room)
    # The settings WebServer uses (metakit/web/server.py).
    runner = web.AppRunner(
        app, handle_signals=False, shutdown_timeout=10.0, handler_cancellation=True
    )
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=128)
    await site.start()
    return runner.addresses[0][1], runner


async def _serve_metakit() -> tuple[int, Any]:
    from aiohttp import web

    import metakit
    from metakit.web import WebServer
    from metakit.websocket import WebSocketHandler, WSConnect, WSDisconnect, WSMessage, broadcast

    def mount(owner: metakit.Process, app: web.Application, path: str) -> WebSocketHandler:
        handler = WebSocketHandler(
            owner.pid,
            heartbeat=WS_OPTIONS["heartbeat"],
            compress=WS_OPTIONS["compress"],
            max_message=MAX_MESSAGE,
        )
        app.router.add_get(path, handler)
        return handler

    class Echo(metakit.Process):
        async def init(self, app: web.Application) -> None:
            await self.spawn_meta(mount(self, app, "/echo"))

        def handle_message(self, sender: Any, message: Any) -> None:
            match message:
                case WSMessage(conn, data):
                    self.send(conn, WSMessage(conn, data))

    class Room(metakit.Process):
        async def init(self, app: web.Application) -> None:
            self.members: set[metakit.Alias] = set()
            await self.spawn_meta(mount(self, app, "/room"))

        def handle_message(self, sender: Any, message: Any) -> None:
            match message:
                case WSMessage(_, str(data)) if data.startswith("bcast "):
                    broadcast(self, self.members, broadcast_text(data, time.monotonic_ns()))
                case WSConnect(conn):
                    self.members.add(conn)
                case WSDisconnect(conn):
                    self.members.discard(conn)

    class Web(metakit.Process):
        async def init(self, app: web.Application) -> None:
            self.server = WebServer("127.0.0.1", 0, app)
            await self.spawn_meta(self.server)

        def handle_call(self, sender: Any, request: Any) -> int:
            return self.server.address[1]

    node = metakit.Node("ws-bench@localhost")
    await node.start()
    app = web.Application()
    await node.spawn(Echo, app)
    await node.spawn(Room, app)
    web_pid = await node.spawn(Web, app)
    port = await node.call(web_pid, "port")
    return port, node


class GCLog:
    """The server's garbage collections: (generation, start ns, duration ns), monotonic clock."""

    def __init__(self) -> None:
        self.events: deque[tuple[int, int, int]] = deque(maxlen=100_000)
        self._start = 0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.monotonic_ns()
        else:
            self.events.append((info["generation"], self._start, time.monotonic_ns() - self._start))

    def line(self) -> str:
        """``GC gen:start:duration ...`` for every collection logged; the log is then emptied."""
        items = " ".join(f"{g}:{s}:{d}" for g, s, d in self.events)
        self.events.clear()
        return f"GC {items}"


async def _serve(variant: str) -> None:
    loop = asyncio.get_running_loop()
    if variant in ("aiohttp", "aiohttp-tuned"):
        if variant == "aiohttp-tuned":  # the control: the node's malloc tuning, no node
            from metakit._malloc import warm_allocator

            warm_allocator()
        port, owner = await _serve_aiohttp()
    else:
        port, owner = await _serve_metakit()
    done = asyncio.Event()
    gc_log = GCLog()
    gc.callbacks.append(gc_log)

    def stdin_ready() -> None:
        data = os.read(0, 4096)
        if not data:
            done.set()
        for _ in range(data.count(b"\n")):  # each line asks for the GC log
            print(gc_log.line(), flush=True)

    loop.add_reader(0, stdin_ready)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    print(f"READY {port} {type(loop).__module__}.{type(loop).__name__}", flush=True)
    await done.wait()
    loop.remove_reader(0)
    gc.callbacks.remove(gc_log)
    if variant != "metakit":
        await owner.cleanup()
    else:
        await owner.stop()


def serve_main(variant: str, loop_name: str, profile: str | None) -> None:
    """The ``--serve`` mode: serve /echo and /room until stdin closes."""
    # Import everything first so that the profile shows serving, not importing.
    import aiohttp.web  # noqa: F401

    import metakit.web
    import metakit.websocket  # noqa: F401

    # 1000 clients: make sure the descriptors are there (the same for both).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 8192 if hard == resource.RLIM_INFINITY else min(hard, 8192)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    factory = None
    if loop_name == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    # CPU time, not wall time: idle waits and time descheduled do not count.
    profiler = cProfile.Profile(time.process_time) if profile else None
    if profiler is not None:
        profiler.enable()
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(_serve(variant))
    finally:
        if profiler is not None and profile:
            profiler.disable()
            profiler.dump_stats(profile)


# ------------------------------------------------------------------- the driver


def percentile(values: list[float], p: float) -> float:
    """The loadgen's rule: the value at rank round(p * (n - 1)) of the sorted values."""
    s = sorted(values)
    return s[int(p * (len(s) - 1) + 0.5)] if s else float("nan")


@dataclass
class Cpu:
    """CPU figures common to both kinds of run."""

    seconds: float
    client_cpu: float  # seconds, user + sys
    server_cpu: float  # seconds, user + sys
    other_cpu: float  # seconds: busy time of the machine not used by server or client
    t0_ns: int  # the measured interval, CLOCK_MONOTONIC
    t1_ns: int
    gc_time: float = 0.0  # seconds the server spent in collections started in the interval
    gc_counts: tuple[int, int, int] = (0, 0, 0)  # those collections, by generation

    @staticmethod
    def fields(kv: dict[str, str]) -> dict[str, float]:
        client = float(kv["cpu_user"]) + float(kv["cpu_sys"])
        server = float(kv["server_cpu_user"]) + float(kv["server_cpu_sys"])
        return {
            "seconds": float(kv["seconds"]),
            "client_cpu": client,
            "server_cpu": server,
            "other_cpu": max(0.0, float(kv["host_busy"]) - client - server),
            "t0_ns": int(kv["t0_ns"]),
            "t1_ns": int(kv["t1_ns"]),
        }

    def add_gc(self, events: list[tuple[int, int, int]]) -> None:
        """Keep the server's collections that started in the measured interval."""
        counts = [0, 0, 0]
        total = 0
        for gen, start, duration in events:
            if self.t0_ns <= start < self.t1_ns:
                counts[gen] += 1
                total += duration
        self.gc_time = total / 1e9
        self.gc_counts = (counts[0], counts[1], counts[2])

    @property
    def server_pct(self) -> float:
        return 100 * self.server_cpu / self.seconds

    @property
    def client_pct(self) -> float:
        return 100 * self.client_cpu / self.seconds

    @property
    def other_pct(self) -> float:
        return 100 * self.other_cpu / self.seconds


@dataclass
class Echo(Cpu):
    """One ping-pong run."""

    roundtrips: int = 0
    served: int = 0  # round trips, the warm-up included
    rps: float = 0.0
    p50: float = 0.0  # µs
    p99: float = 0.0  # µs
    series: list[int] = field(default_factory=list)

    @classmethod
    def parse(cls, kv: dict[str, str]) -> Echo:
        return cls(
            **cls.fields(kv),
            roundtrips=int(kv["roundtrips"]),
            served=int(kv["all"]),
            rps=float(kv["rps"]),
            p50=float(kv["p50_us"]),
            p99=float(kv["p99_us"]),
            series=[int(x) for x in kv["series"].split(",") if x],
        )

    @property
    def cpu_per_rt(self) -> float:
        """Server CPU µs per round trip."""
        return 1e6 * self.server_cpu / self.roundtrips if self.roundtrips else float("inf")

    @property
    def key(self) -> float:
        return self.rps


@dataclass
class Fanout(Cpu):
    """One run of broadcasts."""

    last: list[float] = field(default_factory=list)  # µs, per broadcast
    first: list[float] = field(default_factory=list)  # µs, per broadcast

    @classmethod
    def parse(cls, kv: dict[str, str]) -> Fanout:
        return cls(
            **cls.fields(kv),
            last=[float(x) for x in kv["last_us"].split(",")],
            first=[float(x) for x in kv["first_us"].split(",")],
        )

    @property
    def p50(self) -> float:
        return percentile(self.last, 0.5)

    @property
    def p99(self) -> float:
        return percentile(self.last, 0.99)

    @property
    def first_p50(self) -> float:
        return percentile(self.first, 0.5)

    @property
    def cpu_per_bcast(self) -> float:
        """Server CPU µs per broadcast (the triggers and the idle gaps included)."""
        return 1e6 * self.server_cpu / len(self.last)

    @property
    def key(self) -> float:
        return -self.p50


@dataclass
class Result:
    variant: str
    loop: str
    phase: str
    runs: list[Any] = field(default_factory=list)
    loop_class: str = ""
    profile: str | None = None
    served: int = 0  # round trips or broadcasts served, disturbed runs included
    notes: list[str] = field(default_factory=list)

    @property
    def best(self) -> Any:
        return max(self.runs, key=lambda r: r.key)


class Server(ServeProcess):
    """A ``--serve`` subprocess, pinned; stops when its stdin is closed."""

    def __init__(self, variant: str, loop: str, cpu: int | None, profile: str | None) -> None:
        self.variant = variant
        args = [variant, "--loop", loop] + (["--profile-to", profile] if profile else [])
        super().__init__(__file__, f"{variant}/{loop}", args, cpu, "READY ", stop_timeout=15)
        port, self.loop_class = self.fields
        self.port = int(port)

    def gc_events(self) -> list[tuple[int, int, int]]:
        """The collections the server logged since the last call: (gen, start ns, duration ns)."""
        events = []
        for item in self.ask("", "GC").split()[1:]:
            gen, start, duration = item.split(":")
            events.append((int(gen), int(start), int(duration)))
        return events


def run_once(opts: argparse.Namespace, binary: Path, phase: str, server: Server) -> Any:
    server.gc_events()  # forget the collections so far
    run = _run_once(opts, binary, phase, server)
    run.add_gc(server.gc_events())
    return run


def _run_once(opts: argparse.Namespace, binary: Path, phase: str, server: Server) -> Any:
    port, pid = str(server.port), str(server.pid)
    if phase == "echo":
        args = [
            "pingpong",
            "127.0.0.1",
            port,
            "/echo",
            str(opts.conns),
            str(opts.seconds),
            str(MSG_SIZE),
            str(opts.warmup),
            pid,
        ]
        return Echo.parse(run_loadgen(binary, opts.client_cpu, args, opts.seconds + 60))
    args = [
        "fanout",
        "127.0.0.1",
        port,
        "/room",
        str(opts.clients),
        str(opts.broadcasts),
        str(opts.bcast_warmup),
        str(opts.gap_ms),
        pid,
    ]
    return Fanout.parse(run_loadgen(binary, opts.client_cpu, args, 120))


def served(opts: argparse.Namespace, run: Any) -> int:
    """Round trips or broadcasts the server handled in a run, warm-up included."""
    return run.served if isinstance(run, Echo) else opts.broadcasts + opts.bcast_warmup


def measure_phase(
    opts: argparse.Namespace, binary: Path, loop: str, phase: str, prof_dir: str
) -> tuple[list[Result], list[str]]:
    """Start every variant's server for one phase on ``loop``, then go round measuring."""
    notes: list[str] = []
    note = quiet_note(opts.quiet_wait)
    if note:
        notes.append(f"{phase} on {loop}: {note}")
    results = {
        v: Result(
            v,
            loop,
            phase,
            profile=str(Path(prof_dir) / f"{v}-{loop}-{phase}.prof") if opts.profile else None,
        )
        for v in opts.variants
    }
    servers: dict[str, Server] = {}
    try:
        for v in opts.variants:
            servers[v] = Server(v, loop, opts.server_cpu, results[v].profile)
            results[v].loop_class = servers[v].loop_class
        for rnd in range(opts.repeat):
            order = opts.variants if rnd % 2 == 0 else opts.variants[::-1]
            for v in order:
                print(f"  {phase}: {v} on {loop}: run {rnd + 1}", file=sys.stderr, flush=True)
                run = run_once(opts, binary, phase, servers[v])
                results[v].served += served(opts, run)
                while (
                    run.other_pct > NOISY
                    and time.monotonic() < opts.deadline
                    and len(results[v].notes) < opts.retries
                ):
                    results[v].notes.append(
                        f"run {rnd + 1} disturbed ({run.other_pct:.0f}% other CPU): again"
                    )
                    quiet_note(2.0)
                    run = run_once(opts, binary, phase, servers[v])
                    results[v].served += served(opts, run)
                results[v].runs.append(run)
    finally:
        for s in servers.values():
            s.stop()
    return list(results.values()), notes


# -------------------------------------------------------------------- reporting


def report_echo(results: list[Result], opts: argparse.Namespace, rows: Rows) -> dict[str, bool]:
    print()
    print(
        f"echo: {opts.conns} connections ping-ponging {MSG_SIZE}-byte text messages "
        f"(best of {opts.repeat} rounds x {opts.seconds:g} s, by rt/s; ratios: median of rounds)"
    )
    head = (
        f"  {'variant':<13} {'loop':<8} {'rt/s':>8} {'p50 us':>7} {'p99 us':>7} "
        f"{'srv us/rt':>9} {'srv%':>5} {'gen%':>5} {'oth%':>5} {'gc%':>5} {'gc 0/1/2':>10}"
    )
    print(head)
    print("  " + "-" * (len(head) - 2))
    for r in results:
        b = r.best
        print(
            f"  {r.variant:<13} {r.loop:<8} {b.rps:8,.0f} {b.p50:7.0f} {b.p99:7.0f} "
            f"{b.cpu_per_rt:9.2f} {b.server_pct:5.0f} {b.client_pct:5.0f} {b.other_pct:5.0f} "
            f"{100 * b.gc_time / b.seconds:5.1f} {'/'.join(map(str, b.gc_counts)):>10}"
        )
    by_key = {(r.variant, r.loop): r for r in results}
    verdicts: dict[str, bool] = {}
    for loop, ref in [(lp, v) for lp in opts.loops for v in ("aiohttp", "aiohttp-tuned")]:
        a, m = by_key.get((ref, loop)), by_key.get(("metakit", loop))
        if a is None or m is None:
            continue
        pairs = list(zip(a.runs, m.runs, strict=False))
        saturated = all(min(ar.server_pct, mr.server_pct) >= SATURATED for ar, mr in pairs)
        rps = [mr.rps / ar.rps for ar, mr in pairs]
        efficiency = [ar.cpu_per_rt / mr.cpu_per_rt for ar, mr in pairs]
        rounds = rps if saturated else efficiency
        measure = statistics.median(rounds)
        ok = measure >= ECHO_TARGET
        if ref == "aiohttp":  # the target; the tuned control is printed beside
            verdicts[f"echo {loop}"] = ok
        what = "rt/s" if saturated else "CPU efficiency (server not saturated)"
        p50 = statistics.median(mr.p50 / ar.p50 for ar, mr in pairs)
        p99 = statistics.median(mr.p99 / ar.p99 for ar, mr in pairs)
        rps_ratio, cpu_ratio = statistics.median(rps), 1 / statistics.median(efficiency)
        print(
            f"  metakit/{ref} on {loop:<7}: rt/s {rps_ratio:4.2f}x, server CPU/rt "
            f"{cpu_ratio:4.2f}x, p50 {p50:4.2f}x, p99 {p99:4.2f}x "
            f"-> {what} {measure:4.2f}x (target >= {ECHO_TARGET}x)  {verdict(ok)}"
        )
        tuned = "" if ref == "aiohttp" else "_tuned"
        for key, value in (
            ("echo", measure),
            ("echo_rps", rps_ratio),
            ("echo_cpu", cpu_ratio),
            ("echo_p50", p50),
            ("echo_p99", p99),
            ("echo_saturated", 1.0 if saturated else 0.0),
        ):
            rows[key + tuned][loop] = value if math.isfinite(value) else None
        print(f"  {'':<29}rounds: {' '.join(f'{x:.2f}' for x in rounds)}")
    return verdicts


def report_fanout(results: list[Result], opts: argparse.Namespace, rows: Rows) -> dict[str, bool]:
    print()
    print(
        f"fan-out: one {MSG_SIZE}-byte text message to {opts.clients} clients, time from the "
        f"server's start of the broadcast to the last client having it; {opts.broadcasts} "
        f"broadcasts per run after {opts.bcast_warmup} unmeasured, {opts.gap_ms} ms apart "
        f"(best of {opts.repeat} rounds, by p50; ratios: median of rounds)"
    )
    head = (
        f"  {'variant':<13} {'loop':<8} {'p50 ms':>7} {'p99 ms':>7} {'min ms':>7} "
        f"{'1st p50':>7} {'srv ms/bc':>9} {'srv%':>5} {'gen%':>5} {'oth%':>5} "
        f"{'gc ms/bc':>8} {'gc 0/1/2':>10}"
    )
    print(head)
    print("  " + "-" * (len(head) - 2))
    for r in results:
        b = r.best
        print(
            f"  {r.variant:<13} {r.loop:<8} {b.p50 / 1e3:7.2f} {b.p99 / 1e3:7.2f} "
            f"{min(b.last) / 1e3:7.2f} {b.first_p50 / 1e3:7.3f} {b.cpu_per_bcast / 1e3:9.2f} "
            f"{b.server_pct:5.0f} {b.client_pct:5.0f} {b.other_pct:5.0f} "
            f"{1e3 * b.gc_time / len(b.last):8.2f} {'/'.join(map(str, b.gc_counts)):>10}"
        )
    by_key = {(r.variant, r.loop): r for r in results}
    verdicts: dict[str, bool] = {}
    for loop, ref in [(lp, v) for lp in opts.loops for v in ("aiohttp", "aiohttp-tuned")]:
        a, m = by_key.get((ref, loop)), by_key.get(("metakit", loop))
        if a is None or m is None:
            continue
        pairs = list(zip(a.runs, m.runs, strict=False))
        p50s = [mr.p50 / ar.p50 for ar, mr in pairs]
        p99s = [mr.p99 / ar.p99 for ar, mr in pairs]
        p50, p99 = statistics.median(p50s), statistics.median(p99s)
        cpu = statistics.median(mr.cpu_per_bcast / ar.cpu_per_bcast for ar, mr in pairs)
        ok50, ok99 = p50 <= FANOUT_TARGET, p99 <= FANOUT_TARGET
        if ref == "aiohttp":
            verdicts[f"fan-out {loop} p50"] = ok50
            verdicts[f"fan-out {loop} p99"] = ok99
        print(
            f"  metakit/{ref} on {loop:<7}: p50 {p50:4.2f}x {verdict(ok50)}, "
            f"p99 {p99:4.2f}x {verdict(ok99)} (target <= {FANOUT_TARGET}x); "
            f"server CPU per broadcast {cpu:4.2f}x"
        )
        print(f"  {'':<29}rounds p50: {' '.join(f'{x:.2f}' for x in p50s)}")
        print(f"  {'':<29}rounds p99: {' '.join(f'{x:.2f}' for x in p99s)}")
        tuned = "" if ref == "aiohttp" else "_tuned"
        for key, value in (("broadcast_p50", p50), ("broadcast_p99", p99), ("broadcast_cpu", cpu)):
            rows[key + tuned][loop] = value if math.isfinite(value) else None
    return verdicts


def report(
    results: list[Result], notes: list[str], opts: argparse.Namespace, rows: Rows
) -> dict[str, bool]:
    """Print the report; put its ratios in ``rows`` (see :func:`json_rows`)."""
    verdicts: dict[str, bool] = {}
    echo = [r for r in results if r.phase == "echo"]
    fan = [r for r in results if r.phase == "fanout"]
    if echo:
        verdicts |= report_echo(echo, opts, rows)
    if fan:
        verdicts |= report_fanout(fan, opts, rows)
    print()
    print(
        "srv us/rt, srv ms/bc: server CPU (user+sys, /proc/PID/stat, 10 ms ticks) per round trip"
        " / per broadcast; srv%/gen%: server / load generator CPU as % of one core; oth%: other"
        " programs' CPU meanwhile (> 10 means disturbed); 1st p50: time to the first client;"
        " p99 of 20 broadcasts is the slowest one; gc%, gc ms/bc: the server's time in the"
        " cyclic garbage collector (gc.callbacks, wall clock) during the measured interval, as %"
        " of it / per broadcast; gc 0/1/2: those collections by generation (2 = full)."
    )
    for line in notes:
        print(f"note: {line}")
    for r in results:
        for line in r.notes:
            print(f"note: {r.phase} {r.variant} on {r.loop}: {line}")
    noisy = [f"{r.phase} {r.variant}/{r.loop}" for r in results if r.best.other_pct > NOISY]
    if noisy:
        print("NOTE: other programs used > 10% of a core during " + ", ".join(noisy) + ".")
    busy = [f"{r.variant}/{r.loop}" for r in echo if r.best.client_pct >= 90]
    if busy:
        print(
            "NOTE: the load generator used >= 90% of its core for echo "
            + ", ".join(busy)
            + ": it may be the limit there; compare srv us/rt rather than rt/s."
        )
    loops = sorted({f"{r.loop}={r.loop_class}" for r in results})
    print("event loops: " + ", ".join(loops))
    if opts.verbose:
        print()
        print("every run:")
        for r in results:
            for i, run in enumerate(r.runs):
                if r.phase == "echo":
                    print(
                        f"  echo   {r.variant:<13} {r.loop:<8} run {i + 1}: {run.rps:8,.0f} rt/s "
                        f"{run.cpu_per_rt:6.2f} us/rt p50/p99 {run.p50:.0f}/{run.p99:.0f} us "
                        f"srv {run.server_pct:.0f}% gen {run.client_pct:.0f}% "
                        f"oth {run.other_pct:.0f}% gc {1e3 * run.gc_time:.1f} ms "
                        f"{'/'.join(map(str, run.gc_counts))}  per 250 ms: {run.series}"
                    )
                else:
                    lasts = " ".join(f"{x / 1e3:.2f}" for x in run.last)
                    print(
                        f"  fanout {r.variant:<13} {r.loop:<8} run {i + 1}: p50 "
                        f"{run.p50 / 1e3:.2f} p99 {run.p99 / 1e3:.2f} ms, "
                        f"{run.cpu_per_bcast / 1e3:.2f} ms CPU/bc, oth {run.other_pct:.0f}%, "
                        f"gc {1e3 * run.gc_time:.1f} ms {'/'.join(map(str, run.gc_counts))}; "
                        f"last-client ms: {lasts}"
                    )
    return verdicts


def json_rows() -> Rows:
    """Every ``--json`` key, each loop not measured (None) yet."""
    keys = [key + tuned for key in JSON_KEYS for tuned in ("", "_tuned")]
    return {key: {loop: None for loop in LOOPS} for key in keys}


def write_json(path: str, args: list[str], rows: Rows) -> None:
    """The ``--json`` file: the command line (``args`` as given) and ``rows``."""
    command = shlex.join(["python", f"bench/{Path(__file__).name}", *args])
    doc = {"bench": "ws", "command": command, "rows": rows}
    Path(path).write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n")


def package(filename: str, function: str) -> str:
    if filename.endswith("asyncio/runners.py") and function == "run":
        # the event loop's own C code (uvloop) or what cProfile cannot see below run()
        return "loop internals"
    if filename == "~":
        return "builtins (C)"
    for part, name in (
        ("/metakit/", "metakit"),
        ("/aiohttp/", "aiohttp"),
        ("/asyncio/", "asyncio"),
        ("/multidict/", "multidict/yarl"),
        ("/yarl/", "multidict/yarl"),
    ):
        if part in filename:
            return name
    if "/site-packages/" in filename:
        return filename.split("/site-packages/", 1)[1].split("/", 1)[0]
    if filename == Path(__file__).name or filename.endswith("/ws.py"):
        return "bench (user code)"
    return "stdlib/other"


def print_profile(result: Result) -> None:
    assert result.profile is not None
    if not Path(result.profile).exists():
        print(f"\n(no profile written for {result.variant} on {result.loop})")
        return
    units = result.served
    unit = "round trip" if result.phase == "echo" else "broadcast"
    print()
    print(
        f"cProfile (CPU time) of the {result.variant} server, {result.phase}, on {result.loop} "
        f"(tottime, top {TOP}; {units:,} {unit}s served, connection setup included):"
    )
    stats = pstats.Stats(result.profile, stream=sys.stdout)
    by_pkg: dict[str, float] = {}
    total = 0.0
    for (filename, _, function), (_, _, tottime, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        total += tottime
        pkg = package(filename, function)
        by_pkg[pkg] = by_pkg.get(pkg, 0.0) + tottime
    stats.strip_dirs().sort_stats("tottime").print_stats(TOP)
    print(f"tottime by package ({units:,} {unit}s):")
    for pkg, t in sorted(by_pkg.items(), key=lambda kv: -kv[1]):
        scale = 1e6 if unit == "round trip" else 1e3
        per = f"{scale * t / units:8.2f} {'us' if scale == 1e6 else 'ms'}/{unit}" if units else ""
        print(f"  {pkg:<18} {t:7.3f} s  {100 * t / total:5.1f}%  {per}")


def header(opts: argparse.Namespace, binary: Path) -> None:
    import aiohttp
    import uvloop

    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    pin = (
        f"servers on CPU {opts.server_cpu}, load generator on CPU {opts.client_cpu}"
        if opts.server_cpu is not None
        else "not pinned (fewer than 2 CPUs or no taskset)"
    )
    print(
        f"Python {platform.python_version()}, aiohttp {aiohttp.__version__}, "
        f"uvloop {uvloop.__version__}, {cpu}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    opts_text = ", ".join(f"{k}={v}" for k, v in WS_OPTIONS.items())
    print(f"WebSocketResponse options (both variants): {opts_text}")
    print(f"{pin}; load generator {binary} (C, one core, epoll)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="smoke test, under a minute")
    parser.add_argument("--verbose", action="store_true", help="every run")
    parser.add_argument("--loop", choices=(*LOOPS, "both"), default="both")
    parser.add_argument(
        "--variant", action="append", choices=VARIANTS, help="repeatable; default both"
    )
    parser.add_argument("--phase", choices=(*PHASES, "both"), default="both")
    parser.add_argument(
        "--profile", action="store_true", help="cProfile the servers (default: metakit only)"
    )
    parser.add_argument("--conns", type=int, default=50, help="echo connections")
    parser.add_argument("--clients", type=int, default=1000, help="fan-out connections")
    parser.add_argument("--broadcasts", type=int, default=20, help="measured per fan-out run")
    parser.add_argument("--seconds", type=float, help="measured seconds per echo run")
    parser.add_argument("--repeat", type=int, help="rounds per phase (5; --quick: 1)")
    parser.add_argument("--quiet-wait", type=float, help="seconds to wait for an idle machine")
    parser.add_argument(
        "--retries", type=int, help="times a disturbed run is done again (per variant)"
    )
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument(
        "--json",
        metavar="PATH",
        help="also write the report's ratios to PATH, as JSON (see the module docstring)",
    )
    # internal: the server subprocess
    parser.add_argument("--serve", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--profile-to", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)

    if opts.serve:
        serve_main(opts.serve, opts.loop, opts.profile_to)
        return 0

    started = time.monotonic()
    quick = opts.quick
    opts.seconds = opts.seconds or (1.0 if quick else 3.0)
    opts.warmup = 0.5 if quick else 1.0
    opts.repeat = opts.repeat or (1 if quick else 5)
    opts.bcast_warmup = 3
    opts.gap_ms = 20
    if opts.quiet_wait is None:
        opts.quiet_wait = 2.0 if quick else 10.0
    if opts.retries is None:
        opts.retries = 0 if quick else 2
    opts.deadline = started + (40 if quick else 200)  # no retries past this
    opts.loops = LOOPS if opts.loop == "both" else (opts.loop,)
    phases = PHASES if opts.phase == "both" else (opts.phase,)
    variants = opts.variant or (["metakit"] if opts.profile else list(VARIANTS))
    opts.variants = [v for v in VARIANTS if v in variants]
    if opts.json is not None and not Path(opts.json).absolute().parent.is_dir():
        parser.error(f"--json: no directory {Path(opts.json).absolute().parent}")

    cpus = os.sched_getaffinity(0)
    if len(cpus) < 2 or shutil.which("taskset") is None:
        opts.server_cpu = opts.client_cpu = None
    elif opts.server_cpu not in cpus or opts.client_cpu not in cpus:
        parser.error(f"--server-cpu/--client-cpu must be among {sorted(cpus)}")
    else:
        os.sched_setaffinity(0, {opts.client_cpu})  # keep this driver off the servers' CPU

    binary = build_loadgen(LOADGEN_SRC)
    header(opts, binary)
    results: list[Result] = []
    notes: list[str] = []
    rows = json_rows()
    with tempfile.TemporaryDirectory(prefix="ws-bench-") as prof_dir:
        for loop in opts.loops:
            for phase in phases:
                res, n = measure_phase(opts, binary, loop, phase, prof_dir)
                results += res
                notes += n
        verdicts = report(results, notes, opts, rows)
        if opts.profile:
            print("\n(profiled: the figures above include cProfile's overhead)")
            for r in results:
                print_profile(r)
    if verdicts:
        print()
        print("targets: " + ", ".join(f"{k} {verdict(v)}" for k, v in verdicts.items()))
    if opts.json is not None:
        write_json(opts.json, sys.argv[1:] if argv is None else argv, rows)
        print(f"ratios written to {opts.json}")
    print(f"total {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
