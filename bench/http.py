"""HTTP benchmark: a metakit worker behind ``WebHandler`` vs a plain aiohttp handler.

What is measured (each server variant on the stdlib asyncio loop and on
uvloop, in one run):

* ``aiohttp-text``: ``async def hello(request): return
  web.Response(text="Hello, World!")`` (13 bytes, ``text/plain;
  charset=utf-8``) on ``GET /``;
* ``metakit-text``: a metakit node whose worker Process answers each
  ``WebRequest`` with the ``str`` ``"Hello, World!"`` (a plain ``def
  handle_call``) through a ``WebHandler`` on ``GET /``, served by a
  ``WebServer`` meta;
* ``aiohttp-json``: ``web.Response(body=orjson.dumps({"message": "Hello,
  World!"}), content_type="application/json")`` (what ``web.json_response``
  does, with orjson as metakit uses);
* ``metakit-json``: the worker returns the dict ``{"message": "Hello,
  World!"}``; ``WebHandler`` encodes it with orjson;
* ``aiohttp-text-tuned``, ``aiohttp-json-tuned`` (controls): exactly the
  ``aiohttp-text`` / ``aiohttp-json`` servers, in a process that first calls
  ``metakit._malloc.warm_allocator()``, the glibc malloc tuning a metakit
  ``Node`` applies to its OS process at start. The targets stay metakit vs
  plain aiohttp; metakit / tuned is metakit's own cost, tuned / plain
  aiohttp the tuning's share ("the tuning alone").

Only with ``--variant`` (not in the default run): ``hop-text`` and
``hop-json``, a plain aiohttp handler that awaits a bare one-hop reply (a
Future appended to a ``deque``, a ``loop.call_soon`` drain per burst that
resolves it, as the floors of ``bench/messaging.py``) before answering like
the aiohttp variants: the cost of the Task suspension that any design
handing the request to another actor pays, with no metakit in it.

The aiohttp servers use what ``WebServer`` uses: ``web.AppRunner(app,
handle_signals=False, shutdown_timeout=10.0, handler_cancellation=True)``
and a ``web.TCPSite`` with ``backlog=128`` (never ``run_app``). Access
logging is aiohttp's default in both (the ``aiohttp.access`` logger, which
logs nothing unless it is enabled for INFO; no server configures logging,
and each reports the logger's state when it starts). Before measuring, the
driver fetches one response from every server and checks that the aiohttp
and metakit variants of a kind answer the same status, body and headers
(``Date`` aside).

Load: ``wrk -t1 -c50 -d<secs>s --latency http://127.0.0.1:PORT/`` (Debian
package ``wrk``), keep-alive, 50 connections; req/s, p50 and p99 from its
output. Without ``wrk`` (or with ``--loadgen aiohttp``) the load comes from
this script run as an aiohttp client in ``--gen-procs`` separate processes
(50 connections between them, each looping GET and read), which is much
slower than wrk: the server is then not saturated and the server CPU per
request is the measure. The report says which generator was used.

The servers run pinned to CPU 0, the load generator to CPU 1 (``taskset``;
this script runs on CPU 1 and sleeps meanwhile). All the servers of a loop
are started at once (idle ones cost nothing), each is warmed up with an
unmeasured run, then the measured runs go round the variants (order reversed
every round, so that a round's runs of a kind are back to back). The table
shows the best run of each variant (by req/s); every ratio is the MEDIAN
over the rounds of the ratio of the two variants' runs in the same round
(paired rounds: a shared machine drifts, and the pairs cancel it), every
round's ratio printed beside. Server CPU is utime + stime from
``/proc/PID/stat`` (10 ms ticks) at the start and end of each run; the
generator's from ``getrusage``; "other" is the rest of the machine's busy
time (``/proc/stat``), and a run during which other programs used more than
10 % of a core is done again (while time allows).

Target: metakit >= 0.85x plain aiohttp on the same loop, for text and for
JSON (medians of paired rounds). With the server saturated in every round
(one Python core against wrk, srv% near 100) the req/s ratio is the
measure; otherwise the server-CPU-per-request ratio (aiohttp's / metakit's,
the "efficiency") is. Both ratios are printed, and beside them metakit vs
the tuned control and the tuning alone (tuned / plain aiohttp). A miss
prints ``MISS``; only errors make the exit status non-zero.

``--json PATH`` writes, at the end, ``{"bench": "http", "command": "python
bench/http.py <args as given>", "rows": {KEY: {"asyncio": x, "uvloop": x}}}``,
each ``x`` a float, or null for a loop not run (or a variant missing). Every
value is a median of paired rounds:

* ``hello_rps``, ``json_rps``: metakit-KIND / aiohttp-KIND req/s;
* ``hello_rps_tuned``, ``json_rps_tuned``: metakit-KIND / aiohttp-KIND-tuned
  req/s;
* ``hello_cpu``, ``json_cpu``: aiohttp-KIND's server CPU per request /
  metakit-KIND's (the efficiency: > 1 means metakit is cheaper);
  ``hello_cpu_tuned``, ``json_cpu_tuned``: the same against the tuned control;
* ``tuning_alone_text``, ``tuning_alone_json``: aiohttp-KIND-tuned /
  aiohttp-KIND req/s; ``tuning_alone_text_cpu``, ``tuning_alone_json_cpu``:
  aiohttp-KIND's server CPU per request / aiohttp-KIND-tuned's.

(``hello`` is the text kind.) The req/s ratios are the measure only with
saturated servers; with the aiohttp fallback generator, read the ``_cpu`` ones.

Run from the repository root (Linux, two or more CPUs; ``apt-get install
wrk``)::

    python bench/http.py [--quick] [--loop asyncio|uvloop|both] [--variant NAME ...]
                         [--loadgen auto|wrk|aiohttp] [--seconds S] [--repeat N]
                         [--profile [--profile-dir DIR]] [--json PATH]

``--quick`` is a smoke test (1 s runs, one round, under a minute); a full
run (three rounds) takes about three and a half minutes. ``--profile`` runs
the servers (by default ``aiohttp-text`` and ``metakit-text``) under
cProfile, switched on (by SIGUSR1/SIGUSR2) for the measured runs only, so
their figures are then not comparable; it prints each one's top 25 functions
by tottime, its tottime by package per request, its function calls per
request and metakit's own functions. Internally the servers are this script
run as ``--serve VARIANT --loop LOOP``: it prints ``READY <port> <loop
class> <access log>`` and serves until its stdin closes or it gets
SIGTERM/SIGINT; the fallback generator is ``--client URL ...``.
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
import http.client
import json
import logging
import math
import platform
import pstats
import re
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _harness import ServeProcess, host_busy, pinned, proc_cpu, quiet_note, verdict

VARIANTS = (
    "aiohttp-text",
    "aiohttp-text-tuned",  # the control: aiohttp-text with the node's malloc tuning
    "metakit-text",
    "aiohttp-json",
    "aiohttp-json-tuned",
    "metakit-json",
)
EXTRA_VARIANTS = ("hop-text", "hop-json")  # only with --variant: see the docstring
PROFILE_VARIANTS = ["aiohttp-text", "metakit-text"]
LOOPS = ("asyncio", "uvloop")
KINDS = ("text", "json")
ROW_NAMES = {"text": "hello", "json": "json"}  # --json row names by kind
TEXT = "Hello, World!"
MESSAGE = {"message": TEXT}

TARGET = 0.85  # metakit / aiohttp on the same loop, at least
SATURATED = 90.0  # server CPU %: at or above it, the server is the limit
NOISY = 10.0  # a run during which other programs took more % of a core is done again
TOP = 25


# --------------------------------------------------------------------- servers


async def _serve_aiohttp(kind: str) -> tuple[int, Any]:
    import orjson
    from aiohttp import web

    if kind == "text":

        async def hello(request: web.Request) -> web.Response:
            return web.Response(text=TEXT)
    else:

        async def hello(request: web.Request) -> web.Response:
            return web.Response(body=orjson.dumps(MESSAGE), content_type="application/json")

    app = web.Application()
    app.router.add_get("/", hello)
    # The settings WebServer uses (metakit/web/server.py), access logging left as is.
    runner = web.AppRunner(
        app, handle_signals=False, shutdown_timeout=10.0, handler_cancellation=True
    )
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=128)
    await site.start()
    return runner.addresses[0][1], runner


async def _serve_hop(kind: str) -> tuple[int, Any]:
    """aiohttp, the handler awaiting a bare one-hop reply: the floor of any actor design."""
    from collections import deque

    import orjson
    from aiohttp import web

    loop = asyncio.get_running_loop()
    pending: deque[asyncio.Future[Any]] = deque()
    scheduled = False
    answer: Any = TEXT if kind == "text" else MESSAGE

    def drain() -> None:  # the "worker": answers everything queued so far
        nonlocal scheduled
        scheduled = False
        while pending:
            future = pending.popleft()
            if not future.done():
                future.set_result(answer)

    async def hello(request: web.Request) -> web.Response:
        nonlocal scheduled
        future = loop.create_future()
        pending.append(future)
        if not scheduled:
            scheduled = True
            loop.call_soon(drain)
        result = await future
        if isinstance(result, str):
            return web.Response(text=result)
        return web.Response(body=orjson.dumps(result), content_type="application/json")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(
        app, handle_signals=False, shutdown_timeout=10.0, handler_cancellation=True
    )
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=128)
    await site.start()
    return runner.addresses[0][1], runner


async def _serve_metakit(kind: str) -> tuple[int, Any]:
    from aiohttp import web

    import metakit
    from metakit.web import WebHandler, WebServer

    answer: Any = TEXT if kind == "text" else MESSAGE
    handler = WebHandler("web")
    app = web.Application()
    app.router.add_get("/", handler)
    server = WebServer("127.0.0.1", 0, app)

    class Worker(metakit.Process):
        async def init(self) -> None:
            await self.spawn_meta(handler)
            await self.spawn_meta(server)

        def handle_call(self, sender: Any, request: Any) -> Any:
            return answer

    node = metakit.Node("http-bench@localhost")
    await node.start()
    await node.spawn(Worker, name="web")
    return server.address[1], node


def kind_of(variant: str) -> str:
    """``text`` or ``json``: ``aiohttp-text-tuned`` -> ``text``."""
    return variant.split("-")[1]


async def _serve(variant: str, profiler: cProfile.Profile | None) -> None:
    loop = asyncio.get_running_loop()
    framework, kind = variant.split("-")[0], kind_of(variant)
    if framework == "aiohttp":
        if variant.endswith("-tuned"):  # the control: the node's malloc tuning, no node
            from metakit._malloc import warm_allocator

            warm_allocator()
        port, owner = await _serve_aiohttp(kind)
    elif framework == "hop":
        port, owner = await _serve_hop(kind)
    else:
        port, owner = await _serve_metakit(kind)
    done = asyncio.Event()

    def stdin_ready() -> None:
        if not os.read(0, 4096):
            done.set()

    loop.add_reader(0, stdin_ready)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    if profiler is not None:  # the driver profiles the measured runs only
        loop.add_signal_handler(signal.SIGUSR1, profiler.enable)
        loop.add_signal_handler(signal.SIGUSR2, profiler.disable)
    access = "on" if logging.getLogger("aiohttp.access").isEnabledFor(logging.INFO) else "off"
    print(f"READY {port} {type(loop).__module__}.{type(loop).__name__} {access}", flush=True)
    await done.wait()
    loop.remove_reader(0)
    if framework != "metakit":
        await owner.cleanup()
    else:
        await owner.stop()


def serve_main(variant: str, loop_name: str, profile: str | None) -> None:
    """The ``--serve`` mode: run one server until stdin closes."""
    # Import everything first so that the profile shows serving, not importing.
    import aiohttp.web  # noqa: F401
    import orjson  # noqa: F401

    import metakit.web  # noqa: F401

    factory = None
    if loop_name == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    profiler = cProfile.Profile() if profile else None
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(_serve(variant, profiler))
    finally:
        if profiler is not None and profile:
            profiler.disable()
            profiler.dump_stats(profile)


# ------------------------------------------------------ the fallback load generator


async def _client(url: str, conns: int, start_at: float, seconds: float) -> dict[str, Any]:
    import aiohttp

    offset = time.perf_counter() - time.time()
    start = start_at + offset
    end = start + seconds
    latencies: list[float] = []
    errors = 0
    cpu: list[float] = []

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        while True:
            t0 = time.perf_counter()
            if t0 >= end:
                return
            ok = False
            try:
                async with session.get(url) as resp:
                    await resp.read()
                    ok = resp.status == 200
            except (aiohttp.ClientError, OSError):
                pass
            t1 = time.perf_counter()
            if t0 >= start and t1 <= end:
                if ok:
                    latencies.append(t1 - t0)
                else:
                    errors += 1

    async def clock() -> None:
        await asyncio.sleep(max(0.0, start - time.perf_counter()))
        cpu.append(time.process_time())
        await asyncio.sleep(max(0.0, end - time.perf_counter()))
        cpu.append(time.process_time())

    connector = aiohttp.TCPConnector(limit=conns)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(clock(), *(worker(session) for _ in range(conns)))
    return {
        "count": len(latencies),
        "errors": errors,
        "cpu": cpu[1] - cpu[0],
        "latencies": latencies,
    }


def client_main(url: str, conns: int, start_at: float, seconds: float, out: str) -> None:
    """The ``--client`` mode: load ``url`` from ``start_at`` (epoch) for ``seconds``.

    Writes the results as JSON to the file ``out`` (not to stdout: a pipe may
    be left non-blocking by the event loop, and the latencies are long).
    """
    factory = None
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:
        pass
    with asyncio.Runner(loop_factory=factory) as runner:
        result = runner.run(_client(url, conns, start_at, seconds))
    Path(out).write_text(json.dumps(result))


# ------------------------------------------------------------------- the driver


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


@dataclass
class Run:
    """One measured run against one server."""

    requests: int
    seconds: float
    rps: float
    p50: float  # µs
    p99: float  # µs
    errors: int
    server_cpu: float  # seconds
    client_cpu: float  # seconds
    other_cpu: float  # seconds
    wall: float  # seconds over which the CPU figures were taken

    @property
    def cpu_per_req(self) -> float:
        """Server CPU µs per request."""
        return 1e6 * self.server_cpu / self.requests if self.requests else float("inf")

    @property
    def server_pct(self) -> float:
        return 100 * self.server_cpu / self.wall

    @property
    def client_pct(self) -> float:
        return 100 * self.client_cpu / self.wall

    @property
    def other_pct(self) -> float:
        return 100 * self.other_cpu / self.wall


_UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}


def _time_us(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if m is None:
        raise ValueError(f"unexpected wrk time {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(out: str) -> dict[str, float]:
    """Requests, seconds, req/s, p50/p99 (µs) and errors from wrk --latency output."""

    def find(pattern: str) -> re.Match[str]:
        m = re.search(pattern, out, re.MULTILINE)
        if m is None:
            raise RuntimeError(f"wrk output without {pattern!r}:\n{out}")
        return m

    done = find(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m)")
    errors = 0
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if socket:
        errors += sum(int(x) for x in socket.groups())
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        errors += int(non2xx.group(1))
    return {
        "requests": int(done.group(1)),
        "seconds": _time_us(done.group(2) + done.group(3)) / 1e6,
        "rps": float(find(r"^Requests/sec:\s+([\d.]+)").group(1)),
        "p50": _time_us(find(r"^\s+50%\s+(\S+)").group(1)),
        "p99": _time_us(find(r"^\s+99%\s+(\S+)").group(1)),
        "errors": errors,
    }


class Server(ServeProcess):
    """A ``--serve`` subprocess, pinned; stops when its stdin is closed."""

    def __init__(self, variant: str, loop: str, cpu: str | None, profile: str | None) -> None:
        self.variant = variant
        self.warm = False
        self.profiled = bool(profile)
        args = [variant, "--loop", loop] + (["--profile-to", profile] if profile else [])
        super().__init__(__file__, f"{variant}/{loop}", args, cpu, "READY ", stop_timeout=15)
        port, self.loop_class, self.access_log = self.fields
        self.port = int(port)
        self.url = f"http://127.0.0.1:{self.port}/"

    def profile(self, on: bool) -> None:
        """Start or stop the profiler of a ``--profile-to`` server."""
        if self.profiled:
            os.kill(self.pid, signal.SIGUSR1 if on else signal.SIGUSR2)
            time.sleep(0.05)  # let its loop handle the signal


def fetch(url: str) -> tuple[int, bytes, dict[str, str]]:
    """One GET: status, body and headers."""
    host, port = url.split("//", 1)[1].rstrip("/").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        return resp.status, resp.read(), {k: v for k, v in resp.getheaders()}
    finally:
        conn.close()


class LoadGen:
    """wrk, or the aiohttp client fallback in ``procs`` processes."""

    def __init__(self, opts: argparse.Namespace, tmp: str) -> None:
        self.opts = opts
        self.tmp = tmp
        wrk = shutil.which("wrk")
        if opts.loadgen == "wrk" and wrk is None:
            raise SystemExit("http: --loadgen wrk, but wrk is not installed (apt-get install wrk)")
        self.wrk = wrk if opts.loadgen != "aiohttp" else None
        self.procs = max(1, min(opts.gen_procs, opts.conns))
        self.name = "wrk" if self.wrk else f"aiohttp client x {self.procs} process(es)"

    def describe(self) -> str:
        if self.wrk:
            version = subprocess.run(
                [self.wrk, "--version"], capture_output=True, text=True, check=False
            )
            first = (version.stdout or version.stderr).splitlines()[0].split(" Copyright")[0]
            return f"{first} ({self.wrk}), -t1 -c{self.opts.conns} --latency"
        return (
            "aiohttp client fallback"
            + (" (wrk not installed)" if self.opts.loadgen == "auto" else " (--loadgen aiohttp)")
            + f": {self.procs} process(es), {self.opts.conns} connections in all"
        )

    def run(self, server: Server, seconds: int) -> Run:
        """A measured run (profiled, when the server is)."""
        if self.wrk:
            return self._run_wrk(server, seconds, profile=True)
        return self._run_aiohttp(server, seconds)

    def warm_up(self, server: Server) -> Run | None:
        """An unmeasured run with wrk; the fallback warms up in the lead of its first run."""
        if self.wrk:
            return self._run_wrk(server, self.opts.warmup, profile=False)
        return None

    def _run_wrk(self, server: Server, seconds: int, *, profile: bool) -> Run:
        cmd = [
            self.wrk,
            "-t1",
            f"-c{self.opts.conns}",
            f"-d{seconds}s",
            "--latency",
            server.url,
        ]
        if profile:
            server.profile(True)
        cpu0, srv0, busy0, t0 = children_cpu(), proc_cpu(server.pid), host_busy(), time.time()
        out = subprocess.run(
            pinned(self.opts.client_cpus, cmd),
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            check=False,
        )
        t1, busy1, srv1, cpu1 = time.time(), host_busy(), proc_cpu(server.pid), children_cpu()
        if profile:
            server.profile(False)
        if out.returncode != 0:
            raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr.strip()}")
        w = parse_wrk(out.stdout)
        client, srv = cpu1 - cpu0, srv1 - srv0
        return Run(
            requests=int(w["requests"]),
            seconds=w["seconds"],
            rps=w["rps"],
            p50=w["p50"],
            p99=w["p99"],
            errors=int(w["errors"]),
            server_cpu=srv,
            client_cpu=client,
            other_cpu=max(0.0, busy1 - busy0 - client - srv),
            wall=t1 - t0,
        )

    def _run_aiohttp(self, server: Server, seconds: int) -> Run:
        # The clients load the server from the moment they have connected
        # (~0.5 s after starting) but count from start_at: on a server's first
        # run that lead is its warm-up.
        lead = 1.0 if server.warm else 0.5 + self.opts.warmup
        server.warm = True
        start_at = time.time() + lead
        per = [self.opts.conns // self.procs] * self.procs
        for i in range(self.opts.conns % self.procs):
            per[i] += 1
        here = str(Path(__file__).resolve())
        outs = [os.path.join(self.tmp, f"client-{i}.json") for i in range(self.procs)]
        procs = [
            subprocess.Popen(
                pinned(
                    self.opts.client_cpus,
                    [
                        sys.executable,
                        here,
                        "--client",
                        server.url,
                        "--conns",
                        str(n),
                        "--start-at",
                        repr(start_at),
                        "--seconds",
                        str(seconds),
                        "--out",
                        out,
                    ],
                ),
            )
            for n, out in zip(per, outs, strict=True)
        ]
        time.sleep(max(0.0, start_at - time.time()))
        server.profile(True)
        srv0, busy0, t0 = proc_cpu(server.pid), host_busy(), time.time()
        time.sleep(max(0.0, start_at + seconds - time.time()))
        t1, busy1, srv1 = time.time(), host_busy(), proc_cpu(server.pid)
        server.profile(False)
        results = []
        for p, out in zip(procs, outs, strict=True):
            p.wait(timeout=seconds + 60)
            if p.returncode != 0:
                raise RuntimeError(f"the aiohttp load generator failed ({p.returncode})")
            results.append(json.loads(Path(out).read_text()))
            os.unlink(out)
        latencies = sorted(x for r in results for x in r["latencies"])
        requests = len(latencies)
        client = sum(r["cpu"] for r in results)
        srv = srv1 - srv0

        def pct(q: float) -> float:
            if not latencies:
                return float("nan")
            return 1e6 * latencies[min(len(latencies) - 1, int(q * len(latencies)))]

        return Run(
            requests=requests,
            seconds=float(seconds),
            rps=requests / seconds,
            p50=pct(0.50),
            p99=pct(0.99),
            errors=sum(r["errors"] for r in results),
            server_cpu=srv,
            client_cpu=client,
            other_cpu=max(0.0, busy1 - busy0 - client - srv),
            wall=t1 - t0,
        )


@dataclass
class Result:
    variant: str
    loop: str
    runs: list[Run] = field(default_factory=list)
    warmup: Run | None = None
    loop_class: str = ""
    access_log: str = ""
    profile: str | None = None
    profiled_requests: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def best(self) -> Run:
        return max(self.runs, key=lambda r: r.rps)


def _ratio(x: float, y: float) -> float:
    return x / y if y else float("nan")


def _median(values: list[float]) -> float:
    """The median of the finite values (a round with no CPU tick gives no ratio), or NaN."""
    finite = [v for v in values if math.isfinite(v)]
    return statistics.median(finite) if finite else float("nan")


class Paired:
    """Ratios of ``num``'s runs to ``den``'s, round by round; medians over the rounds.

    Round i's run of each was measured in the same pass round the variants
    (so close in time): the machine's drifts cancel in each pair.
    """

    def __init__(self, num: Result, den: Result) -> None:
        self.pairs = list(zip(num.runs, den.runs, strict=False))
        self.rounds_rps = self.each(lambda r: r.rps)
        self.rounds_efficiency = [_ratio(d.cpu_per_req, n.cpu_per_req) for n, d in self.pairs]
        self.rps = _median(self.rounds_rps)
        self.efficiency = _median(self.rounds_efficiency)  # den's CPU/req / num's
        self.cpu = _median(self.each(lambda r: r.cpu_per_req))  # num's / den's
        self.p50 = _median(self.each(lambda r: r.p50))
        self.p99 = _median(self.each(lambda r: r.p99))
        self.saturated = all(min(n.server_pct, d.server_pct) >= SATURATED for n, d in self.pairs)

    def each(self, value: Callable[[Run], float]) -> list[float]:
        return [_ratio(value(n), value(d)) for n, d in self.pairs]

    def spread(self) -> str:
        """Every round's req/s and efficiency ratios."""
        rps = " ".join(f"{x:.2f}" for x in self.rounds_rps)
        eff = " ".join(f"{x:.2f}" for x in self.rounds_efficiency)
        return f"req/s {rps}; efficiency {eff}"


def json_rows(results: list[Result]) -> dict[str, dict[str, float | None]]:
    """The ``--json`` rows (see the module docstring): None where a loop or variant is missing."""
    by_key = {(r.variant, r.loop): r for r in results}
    rows: dict[str, dict[str, float | None]] = {}

    def put(key: str, loop: str, value: float | None) -> None:
        finite = round(value, 4) if value is not None and math.isfinite(value) else None
        rows.setdefault(key, dict.fromkeys(LOOPS))[loop] = finite

    for loop in LOOPS:
        for kind in KINDS:
            name = ROW_NAMES[kind]
            a = by_key.get((f"aiohttp-{kind}", loop))
            t = by_key.get((f"aiohttp-{kind}-tuned", loop))
            m = by_key.get((f"metakit-{kind}", loop))
            for rps_key, cpu_key, num, den in (
                (f"{name}_rps", f"{name}_cpu", m, a),
                (f"{name}_rps_tuned", f"{name}_cpu_tuned", m, t),
                (f"tuning_alone_{kind}", f"tuning_alone_{kind}_cpu", t, a),
            ):
                p = Paired(num, den) if num is not None and den is not None else None
                put(rps_key, loop, p.rps if p else None)
                put(cpu_key, loop, p.efficiency if p else None)
    return rows


def check_responses(servers: dict[str, Server]) -> list[str]:
    """Fetch one response from each server; check it and compare the variants of a kind."""
    lines = []
    got = {name: fetch(s.url) for name, s in servers.items()}
    for name, (status, body, _) in got.items():
        kind = kind_of(name)
        want = TEXT.encode() if kind == "text" else json.dumps(MESSAGE, separators=(",", ":"))
        if isinstance(want, str):
            want = want.encode()
        if status != 200 or body != want:
            raise RuntimeError(f"{name} answered {status} {body!r}, expected 200 {want!r}")
    for kind in KINDS:
        answers = [(name, got[name]) for name in got if kind_of(name) == kind]
        if len(answers) < 2:
            continue
        first, (_, body, headers) = answers[0]
        ref = {k: v for k, v in headers.items() if k != "Date"}
        diff = [
            f"{name} {h}"
            for name, (_, _, h) in answers[1:]
            if {k: v for k, v in h.items() if k != "Date"} != ref
        ]
        same = "identical" if not diff else f"DIFFERENT: {first} {ref} vs " + "; ".join(diff)
        lines.append(
            f"{kind}: {len(body)}-byte body, {ref.get('Content-Type')!r}; headers {same}"
            f" ({', '.join(sorted(headers))})"
        )
    return lines


def measure_loop(
    opts: argparse.Namespace, gen: LoadGen, loop: str, variants: list[str], prof_dir: str
) -> tuple[list[Result], list[str]]:
    """Start every variant's server on ``loop``, warm each up, then go round measuring."""
    notes: list[str] = []
    t0 = time.monotonic()
    note = quiet_note(min(opts.quiet_wait, opts.spare))
    opts.spare -= time.monotonic() - t0
    if note:
        notes.append(f"{loop}: {note}")
    servers: dict[str, Server] = {}
    results = {
        v: Result(
            v, loop, profile=str(Path(prof_dir) / f"{v}-{loop}.prof") if opts.profile else None
        )
        for v in variants
    }
    try:
        for v in variants:
            servers[v] = Server(v, loop, opts.server_cpus, results[v].profile)
            results[v].loop_class = servers[v].loop_class
            results[v].access_log = servers[v].access_log
        notes += [f"{loop}: {line}" for line in check_responses(servers)]
        for v in variants if gen.wrk else ():
            print(f"  {v} on {loop}: warm-up", file=sys.stderr, flush=True)
            results[v].warmup = gen.warm_up(servers[v])
        for rnd in range(opts.repeat):
            order = variants if rnd % 2 == 0 else variants[::-1]
            for v in order:
                print(f"  {v} on {loop}: run {rnd + 1}", file=sys.stderr, flush=True)
                run = gen.run(servers[v], opts.seconds)
                while (
                    run.other_pct > NOISY
                    and opts.spare > opts.seconds + 2
                    and len(results[v].notes) < opts.retries
                ):
                    results[v].notes.append(
                        f"run {rnd + 1} disturbed ({run.other_pct:.0f}% other CPU): again"
                    )
                    results[v].profiled_requests += run.requests  # profiled all the same
                    t0 = time.monotonic()
                    quiet_note(min(2.0, opts.spare - opts.seconds - 2))
                    run = gen.run(servers[v], opts.seconds)
                    opts.spare -= time.monotonic() - t0
                results[v].profiled_requests += run.requests
                results[v].runs.append(run)
    finally:
        for s in servers.values():
            s.stop()
    return list(results.values()), notes


# -------------------------------------------------------------------- reporting


def report(
    results: list[Result], notes: list[str], opts: argparse.Namespace, gen: LoadGen
) -> dict[str, bool]:
    """Print the table and the ratios; return the pass/miss per (loop, kind)."""
    print()
    head = (
        f"{'variant':<18} {'loop':<8} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'srv us/req':>10} {'srv%':>5} {'gen%':>5} {'oth%':>5} {'errors':>6}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        b = r.best
        print(
            f"{r.variant:<18} {r.loop:<8} {b.rps:8,.0f} {b.p50 / 1e3:7.2f} {b.p99 / 1e3:7.2f} "
            f"{b.cpu_per_req:10.1f} {b.server_pct:5.0f} {b.client_pct:5.0f} {b.other_pct:5.0f} "
            f"{b.errors:6d}"
        )
    print()
    warm = (
        f"an unmeasured {opts.warmup} s run"
        if gen.wrk
        else f"~{opts.warmup} s of unmeasured load before its first run"
    )
    print(
        f"Table: best of {opts.repeat} x {opts.seconds} s per variant (by req/s), each server "
        f"warmed up with {warm}; {opts.conns} keep-alive connections; load generator: "
        f"{gen.name}. Ratios below: medians of paired rounds, not of the best runs."
    )
    print(
        "srv us/req: server CPU (user+sys, /proc/PID/stat) per request; srv%/gen%: server / "
        "load generator CPU as % of one core; oth%: other programs' CPU meanwhile (> 10 means "
        "disturbed); errors: socket errors + non-2xx answers."
    )
    for line in notes:
        print(f"note: {line}")
    for r in results:
        for line in r.notes:
            print(f"note: {r.variant} on {r.loop}: {line}")
    noisy = [f"{r.variant}/{r.loop}" for r in results if r.best.other_pct > NOISY]
    if noisy:
        print("NOTE: other programs used > 10% of a core during " + ", ".join(noisy) + ".")
    errs = [f"{r.variant}/{r.loop}" for r in results if r.best.errors]
    if errs:
        print("NOTE: errors during " + ", ".join(errs) + ".")
    by_key = {(r.variant, r.loop): r for r in results}
    verdicts: dict[str, bool] = {}
    for loop in opts.loops:
        pairs: list[tuple[str, Result, Result]] = []
        for kind in KINDS:
            a = by_key.get((f"aiohttp-{kind}", loop))
            m = by_key.get((f"metakit-{kind}", loop))
            if a is not None and m is not None:
                pairs.append((kind, a, m))
        if not pairs:
            continue
        print()
        print(
            f"metakit vs plain aiohttp on {loop} (target >= {TARGET}x; every ratio the median "
            f"of {opts.repeat} paired round(s), run / run in the same round):"
        )
        unsaturated = False
        for kind, a, m in pairs:
            p = Paired(m, a)
            saturated = p.saturated
            unsaturated |= not saturated
            measure = p.rps if saturated else p.efficiency
            ok = measure >= TARGET
            verdicts[f"{loop} {kind}"] = ok
            what = "req/s" if saturated else "aiohttp/metakit CPU per req"
            disturbed = max(ar.other_pct for ar in a.runs + m.runs) > NOISY
            print(
                f"  {kind:<5} req/s {p.rps:5.2f}x   server CPU/req {p.cpu:5.2f}x "
                f"(efficiency {p.efficiency:4.2f}x)   p50 {p.p50:5.2f}x   "
                f"p99 {p.p99:5.2f}x   -> {what} {measure:5.3f}x  {verdict(ok)}"
                + ("  (disturbed: run again on an idle machine)" if disturbed else "")
            )
            print(f"  {'':<5} rounds: {p.spread()}")
            t = by_key.get((f"aiohttp-{kind}-tuned", loop))
            if t is not None:
                pt, pa = Paired(m, t), Paired(t, a)
                print(
                    f"  {'':<5} vs aiohttp-{kind}-tuned: req/s {pt.rps:5.2f}x, efficiency "
                    f"{pt.efficiency:4.2f}x (metakit's own cost)   rounds: {pt.spread()}"
                )
                print(
                    f"  {'':<5} tuning alone, aiohttp-{kind}-tuned / aiohttp-{kind}: req/s "
                    f"{pa.rps:5.2f}x, efficiency {pa.efficiency:4.2f}x   rounds: {pa.spread()}"
                )
        for kind in KINDS:
            a = by_key.get((f"aiohttp-{kind}", loop))
            h = by_key.get((f"hop-{kind}", loop))
            if a is not None and h is not None:
                ph = Paired(h, a)
                print(
                    f"  (floor: hop-{kind} / aiohttp-{kind}: req/s {ph.rps:4.2f}x,"
                    f" server CPU/req {ph.cpu:4.2f}x)"
                )
        if unsaturated:
            print(
                f"  (a server below {SATURATED:.0f}% of its core in some round, the load "
                "generator being the limit or other programs taking that core: the "
                "CPU-per-request ratio is the measure there)"
            )
    return verdicts


def print_profile(result: Result, top: int) -> None:
    assert result.profile is not None
    print()
    print(f"cProfile of the {result.variant} server on {result.loop} (tottime, top {top}):")
    stats = pstats.Stats(result.profile, stream=sys.stdout)
    requests = result.profiled_requests
    by_pkg: dict[str, float] = {}
    total = 0.0
    for (filename, _, func), (_, _, tottime, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        total += tottime
        if "select.epoll" in func:
            pkg = "epoll wait"
        elif filename.endswith("/asyncio/runners.py") and func == "run":
            pkg = "uvloop C code"  # uvloop's loop runs inside Runner.run, unseen by cProfile
        elif filename == "~":
            pkg = "builtins (C)"
        elif "/metakit/" in filename:
            pkg = "metakit"
        elif "/aiohttp/" in filename:
            pkg = "aiohttp"
        elif "/asyncio/" in filename:
            pkg = "asyncio"
        elif "/multidict/" in filename or "/yarl/" in filename:
            pkg = "multidict/yarl"
        elif "/site-packages/" in filename:
            pkg = filename.split("/site-packages/", 1)[1].split("/", 1)[0]
        else:
            pkg = "stdlib/other"
        by_pkg[pkg] = by_pkg.get(pkg, 0.0) + tottime
    mine = [
        (tottime, calls, f"{Path(filename).name}:{line}({func})")
        for (filename, line, func), (_, calls, tottime, _, _) in stats.stats.items()  # type: ignore[attr-defined]
        if "/metakit/" in filename
    ]
    stats.strip_dirs().sort_stats("tottime").print_stats(top)
    print(f"tottime by package ({requests:,} requests served while profiled):")
    for pkg, t in sorted(by_pkg.items(), key=lambda kv: -kv[1]):
        per = f"{1e6 * t / requests:7.2f} us/req" if requests else ""
        print(f"  {pkg:<16} {t:7.3f} s  {100 * t / total:5.1f}%  {per}")
    calls_all = sum(v[1] for v in stats.stats.values())  # type: ignore[attr-defined]
    if requests:
        print(f"function calls per request: {calls_all / requests:.1f}")
    if mine and requests:
        print("metakit's functions (tottime us/req, calls/req):")
        for tottime, calls, name in sorted(mine, reverse=True)[:12]:
            print(f"  {1e6 * tottime / requests:6.2f}  {calls / requests:5.2f}  {name}")


def header(opts: argparse.Namespace, gen: LoadGen) -> None:
    import aiohttp
    import orjson
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
        f"server on CPU {opts.server_cpus}, load generator on CPU {opts.client_cpus}"
        if opts.server_cpus is not None
        else "not pinned (fewer than 2 CPUs or no taskset)"
    )
    print(
        f"Python {platform.python_version()}, aiohttp {aiohttp.__version__}, "
        f"uvloop {uvloop.__version__}, orjson {orjson.__version__}, {cpu}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}"
    )
    print(f"load generator: {gen.describe()}; {pin}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: 1 s runs, < 1 min")
    parser.add_argument("--loop", choices=(*LOOPS, "both"), default="both")
    parser.add_argument(
        "--variant",
        action="append",
        choices=VARIANTS + EXTRA_VARIANTS,
        help="repeatable; default all",
    )
    parser.add_argument(
        "--loadgen",
        choices=("auto", "wrk", "aiohttp"),
        default="auto",
        help="wrk if installed (auto), or force one",
    )
    parser.add_argument("--conns", type=int, default=50)
    parser.add_argument("--seconds", type=int, help="seconds per measured run (whole)")
    parser.add_argument(
        "--repeat", type=int, help="rounds: measured runs per variant (3; --quick: 1)"
    )
    parser.add_argument(
        "--gen-procs",
        type=int,
        help="aiohttp fallback processes (default: one per CPU left to the generator, max 4)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="cProfile the servers; print the top 25"
    )
    parser.add_argument("--profile-dir", help="keep the --profile .prof files in this directory")
    parser.add_argument("--quiet-wait", type=float, help="seconds to wait for an idle machine")
    parser.add_argument(
        "--retries", type=int, help="times a disturbed run is done again (per variant)"
    )
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument(
        "--json", metavar="PATH", help="write the ratios (medians of paired rounds) as JSON"
    )
    # internal: the server and client subprocesses
    parser.add_argument("--serve", choices=VARIANTS + EXTRA_VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--profile-to", help=argparse.SUPPRESS)
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)

    if opts.serve:
        serve_main(opts.serve, opts.loop, opts.profile_to)
        return 0
    if opts.client:
        client_main(opts.client, opts.conns, opts.start_at, opts.seconds, opts.out)
        return 0

    started = time.monotonic()
    quick = opts.quick
    opts.seconds = opts.seconds or (1 if quick else 4)
    opts.warmup = 1 if quick else 2
    opts.repeat = opts.repeat or (1 if quick else 3)
    if opts.quiet_wait is None:
        opts.quiet_wait = 2.0 if quick else 10.0
    if opts.retries is None:
        opts.retries = 0 if quick else 2
    # seconds the run may spend waiting for quiet and redoing disturbed runs,
    # on top of its ~20 s (quick) or ~2 min (full)
    opts.spare = 4.0 if quick else 35.0
    opts.loops = LOOPS if opts.loop == "both" else (opts.loop,)
    variants = opts.variant or (PROFILE_VARIANTS if opts.profile else list(VARIANTS))
    variants = [v for v in VARIANTS + EXTRA_VARIANTS if v in variants]

    gen_is_wrk = opts.loadgen == "wrk" or (opts.loadgen == "auto" and shutil.which("wrk"))
    cpus = os.sched_getaffinity(0)
    if len(cpus) < 2 or shutil.which("taskset") is None:
        opts.server_cpus = opts.client_cpus = None
        others = cpus
    elif opts.server_cpu not in cpus or opts.client_cpu not in cpus:
        parser.error(f"--server-cpu/--client-cpu must be among {sorted(cpus)}")
    else:
        opts.server_cpus = str(opts.server_cpu)
        others = cpus - {opts.server_cpu}
        if not gen_is_wrk:
            # the fallback may use every CPU the server does not
            opts.client_cpus = ",".join(map(str, sorted(others)))
        else:
            opts.client_cpus = str(opts.client_cpu)
        os.sched_setaffinity(0, {opts.client_cpu})  # keep this driver off the server's CPU
    if opts.gen_procs is None:
        opts.gen_procs = max(1, min(4, len(others)))

    results: list[Result] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="http-bench-") as tmp:
        prof_dir = opts.profile_dir or tmp
        if opts.profile_dir:
            os.makedirs(prof_dir, exist_ok=True)
        gen = LoadGen(opts, tmp)
        header(opts, gen)
        for loop in opts.loops:
            res, n = measure_loop(opts, gen, loop, variants, prof_dir)
            results += res
            notes += n
        for r in results:
            if r.access_log != "off":
                notes.append(f"{r.variant} on {r.loop}: access log {r.access_log}")
        loops = sorted({f"{r.loop}={r.loop_class}" for r in results})
        access = "off in all" if all(r.access_log == "off" for r in results) else "NOT off in all"
        notes.append("event loops: " + ", ".join(loops) + f"; aiohttp access log {access}")
        verdicts = report(results, notes, opts, gen)
        if opts.profile:
            print("\n(profiled: the figures above include cProfile's overhead)")
            for r in results:
                print_profile(r, TOP)
    if verdicts:
        print()
        print(
            f"target metakit >= {TARGET}x plain aiohttp: "
            + ", ".join(f"{k} {verdict(v)}" for k, v in verdicts.items())
        )
    print(f"load generator: {gen.describe()}")
    if opts.json:
        given = sys.argv[1:] if argv is None else argv
        doc = {
            "bench": "http",
            "command": " ".join(["python", "bench/http.py", *map(shlex.quote, given)]),
            "rows": json_rows(results),
        }
        Path(opts.json).write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {opts.json}")
    print(f"total {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
