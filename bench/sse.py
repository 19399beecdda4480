"""SSE benchmark: one event broadcast to 1000 streams, metakit's SSEHandler vs plain aiohttp.

What is measured (each server variant on the stdlib asyncio loop and on
uvloop, in one run): 1000 clients hold an event stream open (``GET
/events``); on a trigger the server stamps ``t0 = time.monotonic_ns()`` and
writes all of them one event, ``data: {"seq":<seq>,"t0":<t0>}``. The time is
from t0 to the moment the LAST client has read it (and, beside it, to the
first one), per event; p50 and p99 over the measured events of a run.

* ``metakit``: a Process owning a ``WebServer``, an ``SSEHandler(pid,
  heartbeat=None)`` on ``/events`` (each stream an ``SSEConnection`` meta)
  and a ``WebHandler`` on ``/bcast/{seq}`` and ``/count``; it keeps the
  ``SSEConnect``'d aliases in a set (``SSEDisconnect`` removes them) and its
  ``handle_call`` for ``/bcast/<seq>`` does ``broadcast(self, conns,
  {"seq": seq, "t0": time.monotonic_ns()})`` (encoded once, written to each
  idle stream at once) and answers how many streams took it;
* ``raw``: the hand-written aiohttp program: a ``web.StreamResponse`` per
  request with the same headers, ``prepare``d, kept in a set while its
  handler waits (aiohttp cancels it when the client goes); ``/bcast/<seq>``
  stamps t0, encodes the event once (``b"data: " + orjson.dumps(...) +
  b"\\n\\n"``, the bytes metakit's encoder makes) and loops ``await
  resp.write(payload)`` over the set;
* ``raw-transport`` (reference, no target): the same, but writing the
  chunk-framed bytes (made once) with ``transport.write`` past aiohttp's
  writer: about the floor for an aiohttp server.

The trigger comes from the load generator: a keep-alive ``GET
/bcast/<seq>`` on a connection of its own, sent once the previous event has
reached every client and a 20 ms gap has passed. So broadcasts never
overlap, the generator is idle when one starts, the count and pace are the
generator's (the servers need no timer of their own), and the trigger's own
HTTP work happens before t0 (its answer after the last write): the
measured span holds only the broadcast. A server-side timer
would need a start/stop protocol, could fire during connection setup, and
at a fixed rate a slow broadcast would run into the next. ``trig`` (t0 minus
the request's send time) shows the trigger's way in separately.

Same for both: the response headers (``Content-Type: text/event-stream;
charset=utf-8``, ``Cache-Control: no-cache, no-transform``,
``X-Accel-Buffering: no``; aiohttp answers HTTP/1.1 chunked; the load
generator checks that every stream has the same headers, Date aside, and
the report that the variants do), the bytes on the wire per event
(checked), no heartbeat (``heartbeat=None``: the raw program has none; the
generator skips comments anyway), the ``AppRunner``/``TCPSite`` settings
``WebServer`` uses (``handle_signals=False``, ``shutdown_timeout=10``,
``handler_cancellation=True``, ``keepalive_timeout=75``, ``backlog=128``),
the loop, and glibc's malloc tuning (the raw servers call
``metakit._malloc.warm_allocator()``, which ``Node.start`` calls).

Load: ``bench/sse_loadgen.c``, a one-core C epoll client (HTTP/1.1, chunked
decoding, SSE line parsing enough to read each event's seq and t0; built on
the fly with ``gcc -O2`` into ``$TMPDIR/metakit-bench-$UID/``). It also
reads its own CPU (``getrusage``), the server's
(``/proc/PID/task/*/schedstat``, to the ns) and the machine's busy time over
the measured interval; the report prints its CPU per broadcast against the
server's and says when it may be the limit. It waits for the events in
``epoll_wait`` as a client does (``--gen-wait sleep``, the default);
``--gen-wait spin`` makes it poll through each broadcast instead, so that
the server's writes never wake a sleeping reader (kernel time on the
server's side that a remote client would not cost it; its own CPU is then
the broadcast's time). Both processes' clocks are CLOCK_MONOTONIC
(system-wide on Linux). The servers
are pinned to CPU 0 and the generator to CPU 1 (``taskset``; this script
runs on CPU 1 and sleeps meanwhile). Per loop, one server process per
variant (all up at once: an idle one costs nothing); each run opens fresh
streams (not measured), waits for the server to count them all, makes 20
unmeasured broadcasts (fresh streams' first events are slower, by up to
2x for the first ten) then 100 measured ones (``--quick``: 20), and closes
them; the next run starts once the previous server has seen every stream
go. Five rounds go round the variants (order reversed every round); the
table shows each variant's best run (by p50), and the ratios are medians
over the rounds of metakit's run / raw's run in the same round (a shared
machine drifts; the pairs cancel it), every round's ratio printed beside.
A run during which other programs used more than 10 % of a core is done
again (within a time budget).

Target: metakit's all-received p50 <= 1.1x raw's on the same loop (p99 and
server CPU per broadcast are printed beside, no target). A miss prints
``MISS``; only errors make the exit status non-zero.

Run from the repository root (Linux, gcc, taskset, two or more CPUs)::

    python bench/sse.py [--quick] [--verbose] [--loop asyncio|uvloop|both]
                        [--repeat N] [--clients N] [--variant NAME ...]
                        [--gen-wait sleep|spin] [--profile]

``--quick`` is a smoke test (one round, under a minute); a full run takes
three to five minutes. ``--verbose`` adds every run's per-event times.
``--profile`` runs cProfile in the servers around the broadcast only (from
before t0 to after the last write) and prints each one's top functions and
time per broadcast by package; the figures are then not comparable.
Internally the servers are this script run as ``--serve VARIANT --loop
LOOP``: it prints ``READY <port> <loop class>``, answers ``stats`` on stdin
with ``STATS <streams> <gc log>``, and stops when its stdin closes or on
SIGTERM/SIGINT.
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
import platform
import pstats
import resource
import shutil
import signal
import statistics
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from _harness import ServeProcess, build_loadgen, quiet_note, run_loadgen, verdict

HERE = Path(__file__).resolve().parent
LOADGEN_SRC = HERE / "sse_loadgen.c"
VARIANTS = ("metakit", "raw", "raw-transport")
LOOPS = ("asyncio", "uvloop")
# What SSEHandler answers with (metakit/web/sse.py); the raw servers send the same.
HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache, no-transform",
    "X-Accel-Buffering": "no",
}
TARGET = 1.1  # metakit / raw all-received p50, at most
NOISY = 10.0  # a run during which other programs took more % of a core is done again
STREAMS_GONE_WAIT = 15.0  # seconds for a server to see every stream of the last run go
TOP = 25

# --------------------------------------------------------------------- servers

PROFILER: cProfile.Profile | None = None  # on around each broadcast with --profile


def event_bytes(seq: int, t0: int) -> bytes:
    """One event, as a hand-written server encodes it (the bytes SSEHandler writes)."""
    return b"data: " + orjson.dumps({"seq": seq, "t0": t0}) + b"\n\n"


def _runner(app: Any) -> Any:
    from aiohttp import web

    # The settings WebServer uses (metakit/web/server.py).
    return web.AppRunner(
        app,
        handle_signals=False,
        shutdown_timeout=10.0,
        handler_cancellation=True,
        keepalive_timeout=75.0,
    )


async def _serve_raw(direct: bool) -> tuple[int, Any, Any]:
    from aiohttp import web

    from metakit._malloc import warm_allocator

    warm_allocator()  # the tuning every metakit node gets (Node.start)
    streams: set[web.StreamResponse] = set()
    transports: set[Any] = set()  # raw-transport: the streams' transports

    async def events(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers=HEADERS)
        await resp.prepare(request)
        transport = request.transport
        if transport is None:  # the client has gone already
            return resp
        streams.add(resp)
        transports.add(transport)
        try:
            # Serve until the client goes: aiohttp then cancels this handler.
            await asyncio.get_running_loop().create_future()
        finally:
            streams.discard(resp)
            transports.discard(transport)
        return resp

    async def bcast(request: web.Request) -> web.Response:
        seq = int(request.match_info["seq"])
        if PROFILER is not None:
            PROFILER.enable()
        payload = event_bytes(seq, time.monotonic_ns())
        took = 0
        if direct:
            chunk = b"%x\r\n%s\r\n" % (len(payload), payload)  # aiohttp's chunk framing
            for transport in transports:
                if not transport.is_closing():
                    transport.write(chunk)
                    took += 1
        else:
            for resp in tuple(streams):  # a write may wait to drain: the set may change
                try:
                    await resp.write(payload)
                    took += 1
                except ConnectionResetError:  # closing: its handler is ending
                    pass
        if PROFILER is not None:
            PROFILER.disable()
        return web.Response(text=str(took))

    async def count(request: web.Request) -> web.Response:
        return web.Response(text=str(len(streams)))

    app = web.Application()
    app.router.add_get("/events", events)
    app.router.add_get("/bcast/{seq}", bcast)
    app.router.add_get("/count", count)
    runner = _runner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=128)
    await site.start()
    return runner.addresses[0][1], runner, lambda: len(streams)


async def _serve_metakit() -> tuple[int, Any, Any]:
    from aiohttp import web

    import metakit
    from metakit.web import SSEConnect, SSEDisconnect, SSEHandler, WebHandler, WebServer

    class Feed(metakit.Process):
        async def init(self, box: list[Any]) -> None:
            self.conns: set[metakit.Alias] = set()
            app = web.Application()
            self.sse = SSEHandler(self.pid, heartbeat=None)
            await self.spawn_meta(self.sse)
            control = WebHandler(self.pid)
            await self.spawn_meta(control)
            app.router.add_get("/events", self.sse)
            app.router.add_get("/bcast/{seq}", control)
            app.router.add_get("/count", control)
            self.server = WebServer("127.0.0.1", 0, app)
            await self.spawn_meta(self.server)
            box.append(self)

        def handle_message(self, sender: Any, message: Any) -> None:
            match message:
                case SSEConnect(conn):
                    self.conns.add(conn)
                case SSEDisconnect(conn):
                    self.conns.discard(conn)

        def handle_call(self, sender: Any, request: Any) -> str:
            if request.path == "/count":
                return str(len(self.conns))
            seq = int(request.match_info["seq"])
            if PROFILER is not None:
                PROFILER.enable()
            took = metakit.broadcast(self, self.conns, {"seq": seq, "t0": time.monotonic_ns()})
            if PROFILER is not None:
                PROFILER.disable()
            return str(took)

    node = metakit.Node("sse-bench@localhost")
    await node.start()
    box: list[Feed] = []
    await node.spawn(Feed, box)
    feed = box[0]
    # Streams the worker knows, or metas not yet ended: a run starts when both are 0.
    return (
        feed.server.address[1],
        node,
        lambda: max(len(feed.conns), feed.sse.statistics().connections),
    )


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

    def take(self) -> str:
        """``gen:start:duration ...`` for every collection logged; the log is then emptied."""
        items = " ".join(f"{g}:{s}:{d}" for g, s, d in self.events)
        self.events.clear()
        return items


async def _serve(variant: str) -> None:
    loop = asyncio.get_running_loop()
    if variant == "metakit":
        port, owner, streams = await _serve_metakit()
    else:
        port, owner, streams = await _serve_raw(direct=variant == "raw-transport")
    done = asyncio.Event()
    gc_log = GCLog()
    gc.callbacks.append(gc_log)

    def stdin_ready() -> None:
        data = os.read(0, 4096)
        if not data:
            done.set()
        for _ in range(data.count(b"\n")):  # each line asks for the stream count and GC log
            print(f"STATS {streams()} {gc_log.take()}", flush=True)

    loop.add_reader(0, stdin_ready)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    print(f"READY {port} {type(loop).__module__}.{type(loop).__name__}", flush=True)
    await done.wait()
    loop.remove_reader(0)
    gc.callbacks.remove(gc_log)
    if variant == "metakit":
        await owner.stop()
    else:
        await owner.cleanup()


def serve_main(variant: str, loop_name: str, profile: str | None) -> None:
    """The ``--serve`` mode: serve /events, /bcast/{seq} and /count until stdin closes."""
    global PROFILER
    import aiohttp.web  # noqa: F401  (imported before serving, the same for all)

    import metakit.web  # noqa: F401

    # 1000 clients: make sure the descriptors are there (the same for all).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 8192 if hard == resource.RLIM_INFINITY else min(hard, 8192)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    factory = None
    if loop_name == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    if profile:
        PROFILER = cProfile.Profile(time.process_time)  # CPU time: waits do not count
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(_serve(variant))
    finally:
        if PROFILER is not None and profile:
            PROFILER.dump_stats(profile)


# ------------------------------------------------------------------- the driver


def percentile(values: list[float], p: float) -> float:
    """The value at rank round(p * (n - 1)) of the sorted values (ws.py's rule)."""
    s = sorted(values)
    return s[int(p * (len(s) - 1) + 0.5)] if s else float("nan")


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


@dataclass
class Run:
    """One load generator run: its broadcasts and the CPU they took."""

    seconds: float
    client_cpu: float  # seconds, user + sys
    server_cpu: float  # seconds, to the ns (schedstat) where there is one, else ticks
    other_cpu: float  # seconds: the machine's busy time not used by server or client
    t0_ns: int  # the measured interval, CLOCK_MONOTONIC
    t1_ns: int
    wire_bytes: float  # per stream per event
    hdr_hash: str
    last: list[float]  # µs, per broadcast: t0 to the last client
    first: list[float]  # µs: t0 to the first client
    trig: list[float]  # µs: the trigger's send to t0
    gc_time: float = 0.0  # seconds in collections started in the interval
    gc_counts: tuple[int, int, int] = (0, 0, 0)

    @classmethod
    def parse(cls, kv: dict[str, str]) -> Run:
        client = float(kv["cpu_user"]) + float(kv["cpu_sys"])
        ticks = float(kv["server_cpu_user"]) + float(kv["server_cpu_sys"])
        run_s = float(kv["server_run"])
        server = run_s if run_s >= 0 else ticks
        return cls(
            seconds=float(kv["seconds"]),
            client_cpu=client,
            server_cpu=server,
            other_cpu=max(0.0, float(kv["host_busy"]) - client - server),
            t0_ns=int(kv["t0_ns"]),
            t1_ns=int(kv["t1_ns"]),
            wire_bytes=float(kv["wire_bytes"]),
            hdr_hash=kv["hdr_hash"],
            last=_floats(kv["last_us"]),
            first=_floats(kv["first_us"]),
            trig=_floats(kv["trig_us"]),
        )

    def add_gc(self, items: list[str]) -> None:
        """Keep the server's collections that started in the measured interval."""
        counts = [0, 0, 0]
        total = 0
        for item in items:
            gen, start, duration = (int(x) for x in item.split(":"))
            if self.t0_ns <= start < self.t1_ns:
                counts[gen] += 1
                total += duration
        self.gc_time = total / 1e9
        self.gc_counts = (counts[0], counts[1], counts[2])

    @property
    def p50(self) -> float:
        return percentile(self.last, 0.5)

    @property
    def p99(self) -> float:
        return percentile(self.last, 0.99)

    @property
    def srv_per_bc(self) -> float:
        """Server CPU µs per broadcast (the trigger's request and the idle gaps included)."""
        return 1e6 * self.server_cpu / len(self.last)

    @property
    def gen_per_bc(self) -> float:
        """Load generator CPU µs per broadcast."""
        return 1e6 * self.client_cpu / len(self.last)

    @property
    def other_pct(self) -> float:
        return 100 * self.other_cpu / self.seconds


@dataclass
class Result:
    variant: str
    loop: str
    runs: list[Run] = field(default_factory=list)
    loop_class: str = ""
    profile: str | None = None
    broadcasts: int = 0  # served, warm-ups and disturbed runs included
    notes: list[str] = field(default_factory=list)

    @property
    def best(self) -> Run:
        return min(self.runs, key=lambda r: r.p50)


class Server(ServeProcess):
    """A ``--serve`` subprocess, pinned; stops when its stdin is closed."""

    def __init__(self, variant: str, loop: str, cpu: int | None, profile: str | None) -> None:
        args = [variant, "--loop", loop] + (["--profile-to", profile] if profile else [])
        super().__init__(__file__, f"{variant}/{loop}", args, cpu, "READY ", stop_timeout=15)
        port, self.loop_class = self.fields
        self.port = int(port)
        self.gc_items: list[str] = []

    def streams(self) -> int:
        """The streams it still holds; its GC log is kept for the next run."""
        _, n, *items = self.ask("stats", "STATS").split()
        self.gc_items += items
        return int(n)

    def wait_empty(self) -> None:
        """Until the last run's streams have all gone (bounded)."""
        deadline = time.monotonic() + STREAMS_GONE_WAIT
        while (n := self.streams()) and time.monotonic() < deadline:
            time.sleep(0.05)
        if n:
            raise RuntimeError(f"the {self.name} server still holds {n} streams after its run")


def run_once(opts: argparse.Namespace, binary: Path, server: Server) -> Run:
    server.wait_empty()
    server.gc_items.clear()
    args = [
        "127.0.0.1",
        str(server.port),
        "/events",
        str(opts.clients),
        str(opts.broadcasts),
        str(opts.warmup),
        str(opts.gap_ms),
        opts.gen_wait,
        str(server.pid),
    ]
    run = Run.parse(run_loadgen(binary, opts.client_cpu, args, 120))
    server.wait_empty()  # the streams are gone, and the GC log of the run is in
    run.add_gc(server.gc_items)
    return run


def measure_loop(
    opts: argparse.Namespace, binary: Path, loop: str, prof_dir: str
) -> tuple[list[Result], list[str]]:
    """Start every variant's server on ``loop``, then go round measuring."""
    notes: list[str] = []
    note = quiet_note(opts.quiet_wait)
    if note:
        notes.append(f"{loop}: {note}")
    profiles = {v: str(Path(prof_dir) / f"{v}-{loop}.prof") for v in opts.variants}
    results = {
        v: Result(v, loop, profile=profiles[v] if opts.profile else None) for v in opts.variants
    }
    servers: dict[str, Server] = {}
    try:
        for v in opts.variants:
            servers[v] = Server(v, loop, opts.server_cpu, results[v].profile)
            results[v].loop_class = servers[v].loop_class
        per_run = opts.broadcasts + opts.warmup
        for rnd in range(opts.repeat):
            order = opts.variants if rnd % 2 == 0 else opts.variants[::-1]
            for v in order:
                print(f"  {v} on {loop}: run {rnd + 1}", file=sys.stderr, flush=True)
                run = run_once(opts, binary, servers[v])
                results[v].broadcasts += per_run
                while (
                    run.other_pct > NOISY
                    and time.monotonic() < opts.deadline
                    and len(results[v].notes) < opts.retries
                ):
                    results[v].notes.append(
                        f"run {rnd + 1} disturbed ({run.other_pct:.0f}% other CPU): again"
                    )
                    quiet_note(2.0)
                    run = run_once(opts, binary, servers[v])
                    results[v].broadcasts += per_run
                results[v].runs.append(run)
    finally:
        for s in servers.values():
            s.stop()
    return list(results.values()), notes


# -------------------------------------------------------------------- reporting


def _ratio_line(
    a: Result, b: Result, what: str, target: float | None
) -> tuple[str, list[str], bool | None]:
    """``b / a`` over the rounds: p50 (the measure), p99 and server CPU per broadcast."""
    pairs = list(zip(a.runs, b.runs, strict=False))
    p50s = [rb.p50 / ra.p50 for ra, rb in pairs]
    p99s = [rb.p99 / ra.p99 for ra, rb in pairs]
    cpus = [rb.srv_per_bc / ra.srv_per_bc for ra, rb in pairs]
    p50 = statistics.median(p50s)
    ok = None if target is None else p50 <= target
    tail = f"(target <= {target}x)  {verdict(ok)}" if ok is not None else "(reference)"
    line = (
        f"  {what:<31}: p50 {p50:4.2f}x {tail}, p99 {statistics.median(p99s):4.2f}x, "
        f"server CPU/broadcast {statistics.median(cpus):4.2f}x"
    )
    rounds = [
        f"  {'':<33}rounds p50: {' '.join(f'{x:.2f}' for x in p50s)}",
        f"  {'':<33}rounds p99: {' '.join(f'{x:.2f}' for x in p99s)}",
    ]
    return line, rounds, ok


def report(results: list[Result], notes: list[str], opts: argparse.Namespace) -> dict[str, bool]:
    print()
    print(
        f"broadcast: one event to {opts.clients} SSE streams, time from the server's t0 to the "
        f"last client having it; {opts.broadcasts} events per run after {opts.warmup} unmeasured, "
        f"{opts.gap_ms} ms apart (best of {opts.repeat} rounds, by p50; ratios: median of rounds)"
    )
    head = (
        f"  {'variant':<13} {'loop':<8} {'p50 ms':>7} {'p99 ms':>7} {'min ms':>7} "
        f"{'1st p50':>7} {'trig ms':>7} {'srv ms/bc':>9} {'gen ms/bc':>9} {'oth%':>5} "
        f"{'gc ms/bc':>8} {'gc 0/1/2':>9} {'B/ev':>5}"
    )
    print(head)
    print("  " + "-" * (len(head) - 2))
    for r in results:
        b = r.best
        print(
            f"  {r.variant:<13} {r.loop:<8} {b.p50 / 1e3:7.2f} {b.p99 / 1e3:7.2f} "
            f"{min(b.last) / 1e3:7.2f} {percentile(b.first, 0.5) / 1e3:7.3f} "
            f"{percentile(b.trig, 0.5) / 1e3:7.3f} {b.srv_per_bc / 1e3:9.2f} "
            f"{b.gen_per_bc / 1e3:9.2f} {b.other_pct:5.0f} "
            f"{1e3 * b.gc_time / len(b.last):8.3f} {'/'.join(map(str, b.gc_counts)):>9} "
            f"{b.wire_bytes:5.1f}"
        )
    by_key = {(r.variant, r.loop): r for r in results}
    verdicts: dict[str, bool] = {}
    for loop in opts.loops:
        raw, mk = by_key.get(("raw", loop)), by_key.get(("metakit", loop))
        rt = by_key.get(("raw-transport", loop))
        for base, other, what, target in (
            (raw, mk, f"metakit/raw on {loop}", TARGET),
            (raw, rt, f"raw-transport/raw on {loop}", None),
            (rt, mk, f"metakit/raw-transport on {loop}", None),
        ):
            if base is None or other is None:
                continue
            line, rounds, ok = _ratio_line(base, other, what, target)
            print(line)
            for x in rounds:
                print(x)
            if ok is not None:
                verdicts[f"{loop} p50"] = ok
    print()
    print(
        "p50/p99/min: t0 to the last client, over a run's events (p99 of 100 is the 2nd slowest,"
        " of 20 the slowest); 1st p50: t0 to the first client; trig: the trigger request's send"
        " to t0; srv ms/bc, gen ms/bc: server CPU (schedstat, ns) and load generator CPU"
        " (getrusage) per broadcast over the measured interval, the trigger request included;"
        " oth%: other programs' CPU meanwhile (> 10 means disturbed); gc ms/bc, gc 0/1/2: the"
        " server's time in the cyclic GC per broadcast and its collections by generation;"
        " B/ev: bytes read per stream per event (chunk framing included)."
    )
    # The load generator must not be the limit: it reads every stream the server writes.
    for r in results if opts.gen_wait == "sleep" else ():
        b = r.best
        share = b.gen_per_bc / b.p50 if b.p50 else 0.0
        if b.gen_per_bc >= 0.8 * b.srv_per_bc or share >= 0.8:
            print(
                f"NOTE: {r.variant}/{r.loop}: the load generator used {b.gen_per_bc / 1e3:.2f} ms"
                f" CPU per broadcast against the server's {b.srv_per_bc / 1e3:.2f} ms"
                f" ({100 * share:.0f}% of the p50): it may be the limit."
            )
    cpu_line = ", ".join(
        f"{r.variant}/{r.loop} {r.best.gen_per_bc / r.best.srv_per_bc:.2f}" for r in results
    )
    print(f"load generator CPU / server CPU per broadcast (best runs): {cpu_line}")
    if opts.gen_wait == "spin":
        print(
            "(--gen-wait spin: the load generator polls through each broadcast, so its CPU is"
            " the broadcast's time, not a measure of its load)"
        )
    for loop in opts.loops:
        runs = [(r.variant, run) for r in results if r.loop == loop for run in r.runs]
        if len({run.hdr_hash for _, run in runs}) > 1:
            print(f"NOTE: on {loop} the variants' response headers differ (Date aside)")
        if len({round(run.wire_bytes, 2) for _, run in runs}) > 1:
            sizes = ", ".join(sorted({f"{v} {run.wire_bytes:.2f}" for v, run in runs}))
            print(f"NOTE: on {loop} the variants' bytes per event differ: {sizes}")
    for line in notes:
        print(f"note: {line}")
    for r in results:
        for line in r.notes:
            print(f"note: {r.variant} on {r.loop}: {line}")
    noisy = [f"{r.variant}/{r.loop}" for r in results if r.best.other_pct > NOISY]
    if noisy:
        print("NOTE: other programs used > 10% of a core during " + ", ".join(noisy) + ".")
    print("event loops: " + ", ".join(sorted({f"{r.loop}={r.loop_class}" for r in results})))
    if opts.verbose:
        print()
        print("every run (last-client ms per event):")
        for r in results:
            for i, run in enumerate(r.runs):
                lasts = " ".join(f"{x / 1e3:.2f}" for x in run.last)
                print(
                    f"  {r.variant:<13} {r.loop:<8} run {i + 1}: p50 {run.p50 / 1e3:.2f} p99 "
                    f"{run.p99 / 1e3:.2f} ms, srv {run.srv_per_bc / 1e3:.2f} gen "
                    f"{run.gen_per_bc / 1e3:.2f} ms/bc, oth {run.other_pct:.0f}%, gc "
                    f"{1e3 * run.gc_time:.1f} ms {'/'.join(map(str, run.gc_counts))}: {lasts}"
                )
    return verdicts


def package(filename: str) -> str:
    if filename == "~":
        return "builtins (C)"
    for part, name in (
        ("/metakit/", "metakit"),
        ("/aiohttp/", "aiohttp"),
        ("/asyncio/", "asyncio"),
    ):
        if part in filename:
            return name
    if "/site-packages/" in filename:
        return filename.split("/site-packages/", 1)[1].split("/", 1)[0]
    if filename.endswith("/sse.py") or filename == Path(__file__).name:
        return "bench (user code)"
    return "stdlib/other"


def print_profile(result: Result) -> None:
    assert result.profile is not None
    if not Path(result.profile).exists():
        print(f"\n(no profile written for {result.variant} on {result.loop})")
        return
    n = result.broadcasts
    print()
    print(
        f"cProfile (CPU time) of the {result.variant} server on {result.loop}, the broadcasts"
        f" only ({n}, warm-ups included), tottime, top {TOP}:"
    )
    stats = pstats.Stats(result.profile, stream=sys.stdout)
    by_pkg: dict[str, float] = {}
    total = 0.0
    for (filename, _, _), (_, _, tottime, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        total += tottime
        by_pkg[package(filename)] = by_pkg.get(package(filename), 0.0) + tottime
    stats.strip_dirs().sort_stats("tottime").print_stats(TOP)
    print(f"tottime by package, per broadcast ({n} broadcasts):")
    for pkg, t in sorted(by_pkg.items(), key=lambda kv: -kv[1]):
        print(f"  {pkg:<18} {t:7.3f} s  {100 * t / total:5.1f}%  {1e3 * t / n:8.3f} ms/broadcast")


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
    print("response headers (all variants): " + "; ".join(f"{k}: {v}" for k, v in HEADERS.items()))
    print(f"{pin}; load generator {binary} (C, one core, epoll, {opts.gen_wait})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="smoke test, under a minute")
    parser.add_argument("--verbose", action="store_true", help="every run's per-event times")
    parser.add_argument("--loop", choices=(*LOOPS, "both"), default="both")
    parser.add_argument(
        "--variant", action="append", choices=VARIANTS, help="repeatable; default all"
    )
    parser.add_argument("--repeat", type=int, help="rounds (5; --quick: 1)")
    parser.add_argument("--clients", type=int, default=1000, help="SSE streams")
    parser.add_argument("--broadcasts", type=int, help="measured per run (100; --quick: 20)")
    parser.add_argument("--warmup", type=int, default=20, help="unmeasured broadcasts per run")
    parser.add_argument("--gap-ms", type=int, default=20, help="pause after each broadcast")
    parser.add_argument(
        "--gen-wait",
        choices=("sleep", "spin"),
        default="sleep",
        help="the load generator waits for events in epoll_wait (sleep) or polls (spin)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="cProfile the broadcasts in the servers"
    )
    parser.add_argument("--quiet-wait", type=float, help="seconds to wait for an idle machine")
    parser.add_argument("--retries", type=int, help="times a disturbed run is done again")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    # internal: the server subprocess
    parser.add_argument("--serve", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--profile-to", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)

    if opts.serve:
        serve_main(opts.serve, opts.loop, opts.profile_to)
        return 0

    started = time.monotonic()
    quick = opts.quick
    opts.repeat = opts.repeat or (1 if quick else 5)
    opts.broadcasts = opts.broadcasts or (20 if quick else 100)
    if opts.quiet_wait is None:
        opts.quiet_wait = 2.0 if quick else 10.0
    if opts.retries is None:
        opts.retries = 0 if quick else 2
    opts.deadline = started + (40 if quick else 240)  # no retries past this
    opts.loops = LOOPS if opts.loop == "both" else (opts.loop,)
    chosen = opts.variant or list(VARIANTS)
    opts.variants = [v for v in VARIANTS if v in chosen]

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
    with tempfile.TemporaryDirectory(prefix="sse-bench-") as prof_dir:
        for loop in opts.loops:
            res, n = measure_loop(opts, binary, loop, prof_dir)
            results += res
            notes += n
        verdicts = report(results, notes, opts)
        if opts.profile:
            print("\n(profiled: the figures above include cProfile's overhead)")
            for r in results:
                print_profile(r)
    if verdicts:
        print()
        print("targets: " + ", ".join(f"{k} {verdict(v)}" for k, v in verdicts.items()))
    print(f"total {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
