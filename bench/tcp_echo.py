"""TCP echo benchmark: a metakit connection meta vs hand-written asyncio echo servers.

What is measured (each server variant on the stdlib asyncio loop and on
uvloop, in one run):

* ``raw-protocol``: an ``asyncio.Protocol`` whose ``data_received`` writes
  the bytes back (what a user writes first; the stdlib loop reads each chunk
  into a new 256 KiB ``bytes``);
* ``raw-buffered``: an ``asyncio.BufferedProtocol`` that ``recv_into``\\ s a
  reused 64 KiB buffer per connection and writes back ``bytes`` of what it
  read (the reference for the targets);
* ``raw-tuned`` (control): ``raw-buffered`` in a process that first calls
  ``metakit._malloc.warm_allocator()``, the malloc tuning ``Node.start``
  applies: metakit / raw-tuned is metakit's own cost, raw-tuned /
  raw-buffered the tuning's share;
* ``metakit``: a node with one worker Process and two ``TCPServer`` metas:
  ``Line(max_length=4096)`` framing for the ping-pong, ``Raw()`` for the
  stream. Each read goes connection meta → worker (``TCPMessage``) → the
  worker's ``send(conn, TCPMessage(conn, data))`` → connection meta →
  socket. ``Line`` strips the ``\\n`` on reading and adds it on writing, so
  the wire protocol is the same as the raw servers'. The raw servers echo
  reads as they come: with one line in flight per connection that is the
  same exchange on the wire.

Load: ``bench/tcp_loadgen.c``, a one-core C epoll client (built on the fly
with ``gcc -O2`` into ``$TMPDIR/metakit-bench-$UID/``, rebuilt when the
source is newer), in its own process:

* ping-pong: 50 connections, each sending a 64-byte line (63 bytes and
  ``\\n``) and waiting for its echo before sending the next. Round trips/s,
  p50/p99 latency (first byte written to last byte read back), and CPU time.
* stream: one connection sending 256 MiB while reading the echo back;
  MB/s = 10^6 bytes echoed per second, from the first byte sent to the last
  one back. Best of five runs (a run takes a fraction of a second).

Idle connections (memory; ``raw-protocol``, ``raw-tuned`` and ``metakit``,
both loops): each server in a fresh process of its own; this script (plain
blocking sockets, one connection after the other) opens ``--idle-conns``
connections (2000; ``--quick``: 200), sends one line on each and reads its
echo (every connection has done one round trip, as a real idle client has),
and holds them open. The server reports its VmRSS (``/proc/self/status``,
after a ``gc.collect()`` and glibc's ``malloc_trim(0)``, so that the
connections' memory is not hidden in heap pages that happened to be free and
resident) with one connection open (the baseline: the first connection's
one-off costs do not count) and again with all of them open; the table
shows the growth / ``--idle-conns`` in bytes per connection, the median of
three rounds (``--idle-rounds``; a fresh server each, the order reversed
every round), and the ratios metakit / raw-protocol and metakit / raw-tuned
are medians of the per-round ratios. ``traced`` is the same growth seen by
``tracemalloc``, started before the server listens, in one more server per
variant (``--no-idle-trace`` skips it): Python's allocators only, not
libuv's. Neither figure includes the kernel's socket memory. Memory free
inside Python's object allocator at the baseline is still reused unseen, so
the ``--quick`` 200 connections show about a quarter less than 2000 (in one
check on asyncio; the ratio was the same). Note that
``raw-tuned`` holds its 64 KiB read buffer per connection (a
``BufferedProtocol``): its idle connections cost that much. Every connect,
send and receive has a 10 s timeout, and each server's connections a
deadline of 30 s + 10 ms per connection; then the connections close and the
server stops. This section runs last, after the ping-pong and stream runs.

The server is pinned to CPU 0 and the load generator to CPU 1 (``taskset``;
this script itself runs on CPU 1 and sleeps meanwhile). The load generator
reads the server's CPU time (utime + stime from ``/proc/PID/stat``, all
threads, 10 ms ticks) and its own (``getrusage``) at the start and end of
the measured interval; the table shows the server's CPU µs per round trip
and both processes' CPU as % of one core. A client near 100 % means the
load generator, not the server, is the limit: compare CPU per round trip
then, not round trips/s (DESIGN.md §6). Most of a round trip's server CPU
is the kernel's loopback TCP work (the same for every variant; the load
generator pays as much for its side), so the ``(user)`` column shows the
part the Python code costs.

Other programs disturb a 2-CPU machine: the load generator also reads the
whole machine's busy time (``/proc/stat``), and ``oth%`` is what neither
process used. The script waits for the machine to go idle before each
server and before each redone run (30 s per server in all, ``--quiet-wait``),
and a run during which others took more than 10 % of a core is done again, up
to ``--retries`` times (a disturbed cold run gets a new server process). The
notes under the table say what was redone. The header names
the commit measured and how many files under ``metakit/`` differ from it.

Fresh vs warm: every variant gets a new server process. Its first ping-pong
run (``cold``, no warm-up) measures the first seconds of that fresh process,
connections included. Then the servers stay up side by side and the
``warm`` runs (each after a 1 s unmeasured warm-up) and the streams go round
the variants, five rounds each, the order reversed every round: a slow
drift of a shared machine then hits every variant alike. The table shows
the best run of each variant (by round trips/s; every figure of that run);
the ratios are medians over the rounds of metakit's run / raw's run of the
same round, with every round's ratio printed beside. A fresh stdlib-loop
``asyncio.Protocol`` server starts several times slower until glibc's malloc
adapts to its 256 KiB read buffers (DESIGN.md §6); metakit reads with
``data_received`` too, but its node tunes malloc once at start, so it should
show no such cold start. The streams run
last, on the warm servers.

Targets (metakit vs raw-buffered on the same loop, warm): server CPU per round
trip <= 1.4x, p99 latency <= 1.5x, stream MB/s >= 0.8x; and no cold-start
penalty: metakit's cold round trips/s >= 0.8x its warm ones. A miss prints
``MISS``; only errors make the exit status non-zero (an error in the idle
connections still prints, and writes to ``--json``, what was measured). The
idle connection memory has no target.

Run from the repository root (Linux, gcc, two or more CPUs)::

    python bench/tcp_echo.py [--quick] [--verbose] [--loop asyncio|uvloop|both]
                             [--variant NAME ...] [--profile] [--phase echo,idle]
                             [--idle-conns N] [--idle-rounds N] [--json PATH]

``--phase`` (repeatable or comma-separated) runs a part: ``echo`` the
ping-pong and stream runs, ``idle`` the idle connections (``--idle-conns 0``
skips those too). ``--json PATH`` also writes the ratios, at the end::

    {"bench": "tcp_echo", "command": "python bench/tcp_echo.py <args as given>",
     "rows": {KEY: {"asyncio": float | null, "uvloop": float | null}}}

null where not measured (that loop, phase or variant was not run). Keys:
``cpu_per_rt`` (metakit / raw-buffered, server CPU per round trip, the
median of the paired rounds as printed), ``cpu_per_rt_tuned`` (metakit /
raw-tuned), ``tuning_alone_cpu`` (raw-tuned / raw-buffered), ``stream_mbps``
(metakit / raw-buffered); ``idle_conn_bytes_metakit``,
``idle_conn_bytes_raw`` (raw-protocol), ``idle_conn_bytes_tuned`` (VmRSS
bytes per idle connection, medians), ``idle_conn_ratio`` (metakit /
raw-protocol), ``idle_conn_ratio_tuned`` (metakit / raw-tuned; medians of the
paired rounds), ``idle_conn_traced_metakit``, ``idle_conn_traced_raw``,
``idle_conn_traced_tuned`` (tracemalloc bytes per idle connection).

``--rate N`` paces the warm runs at N round trips/s in all (below every
server's maximum, e.g. 60000): each server then does the same work at the
same rhythm, and CPU per round trip compares their costs without the
kernel's extra wake-ups that a slower server pays at saturation (the paced
generator polls between sends, so it is never asleep to be woken).

A full run takes 3-5 minutes, and the idle connections about half a minute
more. ``--quick`` is a smoke test (1 s runs, one
16 MiB stream, no retries, 200 idle connections, ~40 s). ``--verbose``
adds every run and the round trips per 250 ms slice. ``--profile`` runs the
metakit server under cProfile (its figures are then not comparable) and
prints its hottest functions. Internally the servers are this script run as
``--serve VARIANT --loop LOOP [--trace-malloc]``: it prints ``PORTS <line>
<raw>``, answers a ``mem`` line on stdin with ``MEM <VmRSS> <traced>``
(bytes; traced -1 without ``--trace-malloc``) and serves until its stdin
closes or it gets SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import ctypes
import gc
import json
import math
import os
import platform
import pstats
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any, TypeVar

from _harness import ServeProcess, build_loadgen, run_loadgen, wait_quiet

R = TypeVar("R", "PingPong", "Stream")
HERE = Path(__file__).resolve().parent
LOADGEN_SRC = HERE / "tcp_loadgen.c"
VARIANTS = ("raw-protocol", "raw-buffered", "raw-tuned", "metakit")
LOOPS = ("asyncio", "uvloop")
READ_SIZE = 65536  # the raw-buffered read buffer
MAX_LINE = 4096

# Targets: metakit / raw-buffered on the same loop.
CPU_TARGET = 1.4  # server CPU per round trip, at most
P99_TARGET = 1.5  # p99 latency, at most
STREAM_TARGET = 0.8  # stream MB/s, at least
COLD_TARGET = 0.8  # metakit cold round trips/s / warm, at least
NOISY = 10.0  # a run during which other programs took more % of a core is done again

# Idle connections: the variants measured, rounds, and the deadlines.
IDLE_VARIANTS = ("raw-protocol", "raw-tuned", "metakit")
IDLE_ROUNDS = 3
IDLE_WARM = 1  # connections opened (and echoed, and held) before the baseline
IDLE_IO_TIMEOUT = 10.0  # seconds per connect, send or receive
IDLE_DEADLINE = 30.0  # seconds per server to open and echo its connections, + 10 ms each
PHASES = ("echo", "idle")


# --------------------------------------------------------------------- servers


class EchoProtocol(asyncio.Protocol):
    """raw-protocol: write back whatever ``data_received`` gets."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


class EchoBuffered(asyncio.BufferedProtocol):
    """raw-buffered: read into one reused buffer, write back a copy of the bytes read."""

    def __init__(self) -> None:
        self.view = memoryview(bytearray(READ_SIZE))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view

    def buffer_updated(self, nbytes: int) -> None:
        self.transport.write(bytes(self.view[:nbytes]))


async def _serve_raw(factory: Callable[[], asyncio.BaseProtocol]) -> tuple[int, int, Any]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(factory, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return port, port, server


async def _serve_metakit() -> tuple[int, int, Any]:
    import metakit
    from metakit.framing import Line, Raw
    from metakit.tcp import TCPMessage, TCPServer

    class EchoWorker(metakit.Process):
        async def init(self) -> None:
            self.lines = TCPServer("127.0.0.1", 0, framing=Line(max_length=MAX_LINE))
            await self.spawn_meta(self.lines)
            self.raw = TCPServer("127.0.0.1", 0, framing=Raw())
            await self.spawn_meta(self.raw)

        def handle_call(self, sender: Any, request: Any) -> tuple[int, int]:
            return self.lines.address[1], self.raw.address[1]

        def handle_message(self, sender: Any, message: Any) -> None:
            match message:
                case TCPMessage(conn, data):
                    self.send(conn, TCPMessage(conn, data))

    node = metakit.Node("tcp-echo@localhost")
    await node.start()
    pid = await node.spawn(EchoWorker)
    line_port, raw_port = await node.call(pid, "ports")
    return line_port, raw_port, node


def memory() -> tuple[int, int]:
    """This process's VmRSS and tracemalloc's traced bytes (-1 if not tracing).

    After a gc and glibc's ``malloc_trim(0)``: free heap pages go back to the
    kernel, so that new allocations show in VmRSS instead of reusing memory
    that happened to be free and resident at the baseline.
    """
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
    rss = -1
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024  # kB
                break
    traced = tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else -1
    return rss, traced


async def _serve(variant: str) -> None:
    loop = asyncio.get_running_loop()
    if variant == "raw-protocol":
        line_port, raw_port, owner = await _serve_raw(EchoProtocol)
    elif variant in ("raw-buffered", "raw-tuned"):
        if variant == "raw-tuned":  # the control: the node's malloc tuning, no node
            from metakit._malloc import warm_allocator

            warm_allocator()
        line_port, raw_port, owner = await _serve_raw(EchoBuffered)
    else:
        line_port, raw_port, owner = await _serve_metakit()
    done = asyncio.Event()
    pending = b""

    def stdin_ready() -> None:
        nonlocal pending
        chunk = os.read(0, 4096)
        if not chunk:
            done.set()
            return
        pending += chunk
        while b"\n" in pending:
            request, pending = pending.split(b"\n", 1)
            if request.strip() == b"mem":
                rss, traced = memory()
                print(f"MEM {rss} {traced}", flush=True)

    loop.add_reader(0, stdin_ready)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    print(f"PORTS {line_port} {raw_port}", flush=True)
    await done.wait()
    loop.remove_reader(0)
    if variant == "metakit":
        await owner.stop()
    else:
        owner.close()
        await owner.wait_closed()


def serve_main(variant: str, loop_name: str, profile: str | None, trace: bool = False) -> None:
    """The ``--serve`` mode: run one echo server until stdin closes.

    It answers a ``mem`` line on stdin with ``MEM <VmRSS> <traced>`` (bytes;
    traced is -1 unless ``trace``: tracemalloc started before anything else).
    """
    if trace:
        tracemalloc.start()
    factory = None
    if loop_name == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    profiler = cProfile.Profile() if profile else None
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


@dataclass
class PingPong:
    """One load generator ping-pong run."""

    roundtrips: int
    seconds: float
    rps: float
    p50: float
    p99: float
    client_cpu: float  # seconds, user + sys
    server_cpu: float  # seconds, user + sys
    server_user: float  # seconds
    other_cpu: float  # seconds: busy time of the machine not used by server or client
    series: list[int]

    @classmethod
    def parse(cls, kv: dict[str, str]) -> PingPong:
        client = float(kv["cpu_user"]) + float(kv["cpu_sys"])
        server = float(kv["server_cpu_user"]) + float(kv["server_cpu_sys"])
        return cls(
            roundtrips=int(kv["roundtrips"]),
            seconds=float(kv["seconds"]),
            rps=float(kv["rps"]),
            p50=float(kv["p50_us"]),
            p99=float(kv["p99_us"]),
            client_cpu=client,
            server_cpu=server,
            server_user=float(kv["server_cpu_user"]),
            other_cpu=max(0.0, float(kv["host_busy"]) - client - server),
            series=[int(x) for x in kv["series"].split(",") if x],
        )

    @property
    def cpu_per_rt(self) -> float:
        """Server CPU (user + sys) µs per round trip."""
        return 1e6 * self.server_cpu / self.roundtrips if self.roundtrips else float("inf")

    @property
    def user_per_rt(self) -> float:
        """Server user CPU µs per round trip."""
        return 1e6 * self.server_user / self.roundtrips if self.roundtrips else float("inf")

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
class Stream:
    """One load generator stream run."""

    nbytes: int
    seconds: float
    mbps: float
    client_cpu: float
    server_cpu: float
    other_cpu: float

    @classmethod
    def parse(cls, kv: dict[str, str]) -> Stream:
        client = float(kv["cpu_user"]) + float(kv["cpu_sys"])
        server = float(kv["server_cpu_user"]) + float(kv["server_cpu_sys"])
        return cls(
            nbytes=int(kv["bytes"]),
            seconds=float(kv["seconds"]),
            mbps=float(kv["mbps"]),
            client_cpu=client,
            server_cpu=server,
            other_cpu=max(0.0, float(kv["host_busy"]) - client - server),
        )

    @property
    def other_pct(self) -> float:
        return 100 * self.other_cpu / self.seconds

    @property
    def server_pct(self) -> float:
        return 100 * self.server_cpu / self.seconds

    @property
    def client_pct(self) -> float:
        return 100 * self.client_cpu / self.seconds


@dataclass
class Result:
    variant: str
    loop: str
    cold: PingPong
    warm: list[PingPong]
    streams: list[Stream]
    profile: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def best(self) -> PingPong:
        return max(self.warm, key=lambda r: r.rps)

    @property
    def stream(self) -> Stream:
        return max(self.streams, key=lambda r: r.mbps)


class Server(ServeProcess):
    """A ``--serve`` subprocess, pinned; stops when its stdin is closed."""

    def __init__(
        self, variant: str, loop: str, cpu: int | None, profile: str | None, trace: bool = False
    ) -> None:
        args = [variant, "--loop", loop] + (["--profile-to", profile] if profile else [])
        if trace:
            args.append("--trace-malloc")
        super().__init__(__file__, f"{variant}/{loop}", args, cpu, "PORTS ")
        self.line_port, self.raw_port = (int(x) for x in self.fields[:2])

    def memory(self) -> tuple[int, int]:
        """Its VmRSS and tracemalloc's traced bytes (-1 if not tracing), after a gc."""
        _, rss, traced = self.ask("mem", "MEM ").split()
        return int(rss), int(traced)


def measure_loop(
    opts: argparse.Namespace,
    binary: Path,
    variants: list[str],
    loop: str,
    prof_dir: str | None = None,
) -> list[Result]:
    """Every variant on one loop: a cold run on a fresh server each, then rounds.

    The servers stay up side by side (an idle one costs nothing) and the warm
    runs and the streams go round the variants, the order reversed every
    round, so that slow drifts of the machine (it is shared) hit every
    variant alike and each round gives a paired ratio.

    A run during which other programs took more than ``NOISY`` % of a core is
    done again (after waiting for quiet), up to ``opts.retries`` times; for the
    cold run that means a new server process.
    """
    conns, size = str(opts.conns), str(opts.size)

    def pingpong(server: Server, seconds: float, warmup: float) -> PingPong:
        port, pid = str(server.line_port), str(server.pid)
        args = ["pingpong", "127.0.0.1", port, conns, str(seconds), size, str(warmup), pid]
        if opts.rate and warmup:  # warm runs only: the cold run measures a fresh server flat out
            args.append(str(opts.rate))
        kv = run_loadgen(binary, opts.client_cpu, args, timeout=seconds + warmup + 60)
        return PingPong.parse(kv)

    def stream(server: Server) -> Stream:
        args = [
            "stream",
            "127.0.0.1",
            str(server.raw_port),
            str(opts.stream_bytes),
            str(server.pid),
        ]
        return Stream.parse(run_loadgen(binary, opts.client_cpu, args, timeout=330))

    # Waiting for quiet shares one budget of opts.quiet_wait seconds per server.
    budget = opts.quiet_wait * len(variants)
    waited = 0.0
    redone: dict[tuple[str, str], int] = {}

    def quiet() -> None:
        nonlocal waited
        waited += wait_quiet(max(0.0, budget - waited))[0]

    def disturbed(run: PingPong | Stream, variant: str, what: str, attempt: int) -> bool:
        if run.other_pct <= NOISY or attempt == opts.retries:
            return False
        redone[variant, what] = redone.get((variant, what), 0) + 1
        quiet()
        return True

    def again(fn: Callable[[], R], variant: str, what: str) -> R:
        best: R | None = None
        for attempt in range(opts.retries + 1):
            run = fn()
            if best is None or run.other_pct < best.other_pct:
                best = run
            if not disturbed(run, variant, what, attempt):
                break
        assert best is not None
        return best

    servers: dict[str, Server] = {}
    results: dict[str, Result] = {}
    try:
        # A disturbed cold run is done again on a new process; if all attempts
        # are disturbed, the least disturbed one counts. The warm runs use the
        # last process.
        for variant in variants:
            print(f"  {variant} on {loop}: cold run...", file=sys.stderr, flush=True)
            profile = str(Path(prof_dir) / f"{variant}-{loop}.prof") if prof_dir else None
            cold: PingPong | None = None
            for attempt in range(opts.retries + 1):
                quiet()
                server = servers[variant] = Server(variant, loop, opts.server_cpu, profile)
                run = pingpong(server, opts.cold_seconds, 0)
                if cold is None or run.other_pct < cold.other_pct:
                    cold = run
                if not disturbed(run, variant, "cold run (new server)", attempt):
                    break
                server.stop()
                del servers[variant]
            assert cold is not None
            results[variant] = Result(variant, loop, cold, [], [], profile)
        print(f"  {loop}: {opts.repeat} rounds of warm runs...", file=sys.stderr, flush=True)
        for i in range(opts.repeat):
            for variant in variants if i % 2 == 0 else variants[::-1]:
                server = servers[variant]

                def warm(server: Server = server) -> PingPong:
                    return pingpong(server, opts.seconds, opts.warmup)

                results[variant].warm.append(again(warm, variant, "warm run"))
        print(f"  {loop}: {opts.stream_repeat} rounds of streams...", file=sys.stderr, flush=True)
        for i in range(opts.stream_repeat):
            for variant in variants if i % 2 == 0 else variants[::-1]:
                server = servers[variant]

                def one_stream(server: Server = server) -> Stream:
                    return stream(server)

                results[variant].streams.append(again(one_stream, variant, "stream"))
    finally:
        for server in servers.values():
            server.stop()
    for (variant, what), n in redone.items():
        results[variant].notes.append(f"redone, disturbed by other programs: {n} x {what}")
    if waited >= 1:
        results[variants[0]].notes.append(f"waited {waited:.0f} s for other programs to go idle")
    return [results[v] for v in variants]


@dataclass
class Idle:
    """Memory per idle connection of one variant on one loop."""

    variant: str
    loop: str
    rss: list[float] = field(default_factory=list)  # VmRSS growth / connection, bytes, per round
    traced: float | None = None  # tracemalloc growth / connection, bytes (a server of its own)

    @property
    def bytes_per_conn(self) -> float:
        return median(self.rss)


def _echo_one(sock: socket.socket, line: bytes) -> None:
    """One round trip on a connection: send ``line``, read its echo."""
    sock.sendall(line)
    got = b""
    while len(got) < len(line):
        chunk = sock.recv(len(line) - len(got))
        if not chunk:
            raise RuntimeError("the server closed a connection before its echo")
        got += chunk
    if got != line:
        raise RuntimeError(f"bad echo: {got[:80]!r}")


def idle_once(opts: argparse.Namespace, variant: str, loop: str, trace: bool) -> tuple[int, int]:
    """A fresh server: its VmRSS and traced growth (bytes) for ``opts.idle_conns`` connections.

    ``IDLE_WARM`` connections, opened and echoed first, are part of the
    baseline: one-off costs of the first connection do not count. Every
    connection then opens in turn, does one round trip and stays open; the
    server is asked for its memory once all of them are; then the
    connections close, and the server stops. The traced growth is -1 unless
    ``trace``.
    """
    n = opts.idle_conns
    line = b"i" * (opts.size - 1) + b"\n"
    socks: list[socket.socket] = []
    server = Server(variant, loop, opts.server_cpu, None, trace)
    try:
        deadline = time.monotonic() + IDLE_DEADLINE + 0.01 * n

        def connect() -> None:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{variant}/{loop}: {len(socks)} of {n + IDLE_WARM} idle connections "
                    f"echoed in {IDLE_DEADLINE + 0.01 * n:g} s"
                )
            addr = ("127.0.0.1", server.line_port)
            sock = socket.create_connection(addr, timeout=IDLE_IO_TIMEOUT)
            socks.append(sock)
            _echo_one(sock, line)

        for _ in range(IDLE_WARM):
            connect()
        rss0, traced0 = server.memory()
        for _ in range(n):
            connect()
        rss1, traced1 = server.memory()
    finally:
        for sock in socks:
            sock.close()
        server.stop()
    return rss1 - rss0, (traced1 - traced0 if trace else -1)


def measure_idle(opts: argparse.Namespace, variants: list[str], loop: str) -> list[Idle]:
    """``opts.idle_rounds`` rounds over the variants (a fresh server each), then a traced one.

    The order is reversed every round, as for the other runs; each round
    gives a paired ratio. The tracemalloc figure comes from one more server
    per variant, started with tracemalloc on (its bookkeeping would inflate
    the VmRSS figures).
    """
    results = {v: Idle(v, loop) for v in variants}
    n = opts.idle_conns
    for i in range(opts.idle_rounds):
        print(
            f"  {loop}: idle connections, round {i + 1} of {opts.idle_rounds}...",
            file=sys.stderr,
            flush=True,
        )
        for variant in variants if i % 2 == 0 else variants[::-1]:
            rss, _ = idle_once(opts, variant, loop, trace=False)
            results[variant].rss.append(rss / n)
    if opts.idle_trace:
        print(f"  {loop}: idle connections under tracemalloc...", file=sys.stderr, flush=True)
        for variant in variants:
            _, traced = idle_once(opts, variant, loop, trace=True)
            results[variant].traced = traced / n
    return [results[v] for v in variants]


# -------------------------------------------------------------------- reporting


def ratio_line(name: str, value: float, target: float, at_most: bool, unit: str = "") -> str:
    ok = value <= target if at_most else value >= target
    sign = "<=" if at_most else ">="
    return (
        f"  {name:<34} {value:6.2f}x  (target {sign} {target}x{unit})  {'PASS' if ok else 'MISS'}"
    )


def paired(ours: list[Any], theirs: list[Any], value: Callable[[Any], float]) -> list[float]:
    """Per-round ratios value(ours[i]) / value(theirs[i])."""
    return [value(a) / value(b) for a, b in zip(ours, theirs, strict=False)]


def spread(values: list[float]) -> str:
    return " ".join(f"{v:.2f}" for v in values)


def report(results: list[Result], opts: argparse.Namespace) -> None:
    mib = opts.stream_bytes / (1 << 20)
    print()
    head = (
        f"{'variant':<13} {'loop':<8} {'run':<5} {'rt/s':>8} {'p50 us':>7} {'p99 us':>7} "
        f"{'srv us/rt':>9} {'(user)':>6} {'srv%':>5} {'cli%':>5} {'oth%':>5} | "
        f"{'stream MB/s':>11} {'srv%':>5} {'cli%':>5} {'oth%':>5}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        for run, pp in (("cold", r.cold), ("warm", r.best)):
            line = (
                f"{r.variant:<13} {r.loop:<8} {run:<5} {pp.rps:8,.0f} {pp.p50:7.0f} {pp.p99:7.0f} "
                f"{pp.cpu_per_rt:9.2f} {pp.user_per_rt:6.2f} {pp.server_pct:5.0f} "
                f"{pp.client_pct:5.0f} {pp.other_pct:5.0f} |"
            )
            if run == "warm":
                st = r.stream
                line += f" {st.mbps:11,.0f} {st.server_pct:5.0f} {st.client_pct:5.0f}"
                line += f" {st.other_pct:5.0f}"
            print(line)
    print()
    print(
        f"cold: first {opts.cold_seconds:g} s of a fresh server process (connects included); "
        f"warm: best of {opts.repeat} rounds x {opts.seconds:g} s on the same process, each "
        f"after a {opts.warmup:g} s warm-up. Stream: {mib:g} MiB, best of "
        f"{opts.stream_repeat} rounds, warm. Ratios: median over the rounds of "
        "metakit's run / raw's run in the same round."
    )
    print(
        "srv us/rt: server CPU (user+sys) per round trip, (user) its user part; "
        "srv%/cli%: server/load generator CPU as % of one core; oth%: other programs' CPU "
        "on the machine meanwhile (from /proc/stat; > 10 means the figures are disturbed)."
    )
    busy = [
        f"{r.variant}/{r.loop}"
        for r in results
        if max(r.best.client_pct, r.cold.client_pct) >= 90 or r.stream.client_pct >= 90
    ]
    for r in results:
        for note in r.notes:
            print(f"note: {r.variant} on {r.loop}: {note}")
    noisy = [
        f"{r.variant}/{r.loop}"
        for r in results
        if max(r.best.other_pct, r.cold.other_pct, r.stream.other_pct) > 10
    ]
    if noisy:
        print("NOTE: other programs used > 10% of a core during " + ", ".join(noisy) + ".")
    if busy:
        print(
            "NOTE: the load generator used >= 90% of its core for "
            + ", ".join(busy)
            + ": it may be the limit there; compare srv us/rt rather than rt/s."
        )
    by_key = {(r.variant, r.loop): r for r in results}
    for loop in opts.loops:
        mk = by_key.get(("metakit", loop))
        if mk is None:
            continue
        print()
        print(f"metakit vs raw on {loop}:")
        if opts.rate:
            print(
                f"  (warm runs paced at {opts.rate} rt/s: compare CPU per round trip; the "
                "latency and cold/warm targets are for flat-out runs)"
            )
        ref = by_key.get(("raw-buffered", loop))
        if ref is not None:
            # Round i's metakit run against round i's raw run (back to back),
            # median over the rounds: the machine's drifts cancel in each pair.
            cpu = paired(mk.warm, ref.warm, lambda r: r.cpu_per_rt)
            p99 = paired(mk.warm, ref.warm, lambda r: r.p99)
            mbps = paired(mk.streams, ref.streams, lambda r: r.mbps)
            rps = paired(mk.warm, ref.warm, lambda r: r.rps)
            print(ratio_line("server CPU per rt / raw-buffered", median(cpu), CPU_TARGET, True))
            best = mk.best.cpu_per_rt / ref.best.cpu_per_rt
            print(f"  {'':<34} rounds: {spread(cpu)}; best vs best {best:.2f}x")
            print(ratio_line("p99 latency / raw-buffered", median(p99), P99_TARGET, True))
            print(f"  {'':<34} rounds: {spread(p99)}")
            print(ratio_line("stream MB/s / raw-buffered", median(mbps), STREAM_TARGET, False))
            best = mk.stream.mbps / ref.stream.mbps
            print(f"  {'':<34} rounds: {spread(mbps)}; best vs best {best:.2f}x")
            print(f"  {'rt/s / raw-buffered':<34} {median(rps):6.2f}x  rounds: {spread(rps)}")
        tuned = by_key.get(("raw-tuned", loop))
        if tuned is not None:
            # The control: the same malloc tuning as the node, so this is metakit alone.
            cpu_t = paired(mk.warm, tuned.warm, lambda r: r.cpu_per_rt)
            mbps_t = paired(mk.streams, tuned.streams, lambda r: r.mbps)
            print(
                f"  {'server CPU per rt / raw-tuned':<34} {median(cpu_t):6.2f}x  "
                f"rounds: {spread(cpu_t)}"
            )
            print(
                f"  {'stream MB/s / raw-tuned':<34} {median(mbps_t):6.2f}x  "
                f"rounds: {spread(mbps_t)}"
            )
            if ref is not None:
                share = paired(tuned.warm, ref.warm, lambda r: r.cpu_per_rt)
                share_s = paired(tuned.streams, ref.streams, lambda r: r.mbps)
                print(
                    f"  {'raw-tuned / raw-buffered':<34} CPU per rt {median(share):.2f}x, "
                    f"MB/s {median(share_s):.2f}x (the tuning alone)"
                )
        proto = by_key.get(("raw-protocol", loop))
        if proto is not None:
            print(
                f"  {'server CPU per rt / raw-protocol':<34} "
                f"{mk.best.cpu_per_rt / proto.best.cpu_per_rt:6.2f}x (warm), "
                f"{mk.cold.cpu_per_rt / proto.cold.cpu_per_rt:.2f}x (cold)"
            )
            print(
                f"  {'rt/s / raw-protocol':<34} {mk.best.rps / proto.best.rps:6.2f}x (warm), "
                f"{mk.cold.rps / proto.cold.rps:.2f}x (cold)"
            )
        print(
            ratio_line(
                "metakit cold rt/s / warm rt/s", mk.cold.rps / mk.best.rps, COLD_TARGET, False
            )
            + f"  (cpu/rt {mk.cold.cpu_per_rt / mk.best.cpu_per_rt:.2f}x)"
        )
        for r in results:
            if r.loop == loop and r.variant != "metakit":
                print(
                    f"  {r.variant + ' cold/warm rt/s':<34} {r.cold.rps / r.best.rps:6.2f}x "
                    f"(cpu/rt {r.cold.cpu_per_rt / r.best.cpu_per_rt:.2f}x)"
                )
    if opts.verbose:
        print()
        print("every run (rt/s; srv us/rt; p50/p99 us; cli%; oth%) and rt per 250 ms slice:")
        for r in results:
            for run, pp in [("cold", r.cold)] + [(f"warm{i}", w) for i, w in enumerate(r.warm)]:
                print(
                    f"  {r.variant:<13} {r.loop:<8} {run:<6} {pp.rps:9,.0f} {pp.cpu_per_rt:6.2f} "
                    f"{pp.p50:6.0f}/{pp.p99:<6.0f} {pp.client_pct:4.0f}% {pp.other_pct:4.0f}%  "
                    f"{pp.series}"
                )
            for st in r.streams:
                print(
                    f"  {r.variant:<13} {r.loop:<8} stream {st.mbps:9,.0f} MB/s "
                    f"in {st.seconds:.3f} s, srv {st.server_pct:.0f}% "
                    f"cli {st.client_pct:.0f}% oth {st.other_pct:.0f}%"
                )


def idle_ratios(ours: Idle, theirs: Idle) -> list[float]:
    """Per-round ratios of VmRSS growth per connection (rounds where theirs did not grow: none)."""
    return [a / b for a, b in zip(ours.rss, theirs.rss, strict=False) if b > 0]


def report_idle(idle: list[Idle], opts: argparse.Namespace) -> None:
    print()
    print(
        f"idle connections: {opts.idle_conns} per server, each echoed one {opts.size}-byte line "
        f"and then held open; B/conn: the server's VmRSS growth per connection (baseline "
        f"with {IDLE_WARM} connection open; each reading after a gc and malloc_trim), median "
        f"of {opts.idle_rounds} rounds, a fresh server each"
        + (
            "; traced: tracemalloc's growth per connection (one more server, tracemalloc "
            "started before it listens; Python's allocators only, not libuv's)."
            if opts.idle_trace
            else "."
        )
    )
    head = f"{'variant':<13} {'loop':<8} {'B/conn':>8}  {'rounds':<26} {'traced':>8}"
    print(head)
    print("-" * len(head))
    for r in idle:
        rounds = " ".join(f"{v:,.0f}" for v in r.rss)
        traced = "-" if r.traced is None else f"{r.traced:,.0f}"
        print(f"{r.variant:<13} {r.loop:<8} {r.bytes_per_conn:8,.0f}  {rounds:<26} {traced:>8}")
    by_key = {(r.variant, r.loop): r for r in idle}
    for loop in opts.loops:
        mk = by_key.get(("metakit", loop))
        if mk is None:
            continue
        lines = []
        for ref_name in ("raw-protocol", "raw-tuned"):
            ref = by_key.get((ref_name, loop))
            if ref is None:
                continue
            ratios = idle_ratios(mk, ref)
            if ratios:
                name = f"B/conn / {ref_name}"
                lines.append(f"  {name:<34} {median(ratios):6.2f}x  rounds: {spread(ratios)}")
            if mk.traced is not None and ref.traced:
                name = f"traced B/conn / {ref_name}"
                lines.append(f"  {name:<34} {mk.traced / ref.traced:6.2f}x")
        if lines:
            print()
            print(f"metakit vs raw, idle connection memory on {loop}:")
            print("\n".join(lines))


def finite(value: float | None) -> float | None:
    """``value`` rounded for the JSON file, or None if it is missing or not finite."""
    return round(value, 4) if value is not None and math.isfinite(value) else None


def json_rows(results: list[Result], idle: list[Idle]) -> dict[str, dict[str, float | None]]:
    """The ``--json`` rows: per figure, its value on each loop (None: not measured)."""
    keys = (
        "cpu_per_rt",
        "cpu_per_rt_tuned",
        "tuning_alone_cpu",
        "stream_mbps",
        "idle_conn_bytes_metakit",
        "idle_conn_bytes_raw",
        "idle_conn_bytes_tuned",
        "idle_conn_ratio",
        "idle_conn_ratio_tuned",
        "idle_conn_traced_metakit",
        "idle_conn_traced_raw",
        "idle_conn_traced_tuned",
    )
    rows: dict[str, dict[str, float | None]] = {k: dict.fromkeys(LOOPS) for k in keys}
    runs = {(r.variant, r.loop): r for r in results}
    mems = {(r.variant, r.loop): r for r in idle}

    def cpu(r: PingPong) -> float:
        return r.cpu_per_rt

    def mbps(r: Stream) -> float:
        return r.mbps

    for loop in LOOPS:
        mk, ref, tuned = (runs.get((v, loop)) for v in ("metakit", "raw-buffered", "raw-tuned"))
        row: dict[str, float | None] = {}
        if mk is not None and ref is not None:
            row["cpu_per_rt"] = median(paired(mk.warm, ref.warm, cpu))
            row["stream_mbps"] = median(paired(mk.streams, ref.streams, mbps))
        if mk is not None and tuned is not None:
            row["cpu_per_rt_tuned"] = median(paired(mk.warm, tuned.warm, cpu))
        if tuned is not None and ref is not None:
            row["tuning_alone_cpu"] = median(paired(tuned.warm, ref.warm, cpu))
        mem = {v: mems.get((v, loop)) for v in IDLE_VARIANTS}
        for variant, suffix in (
            ("metakit", "metakit"),
            ("raw-protocol", "raw"),
            ("raw-tuned", "tuned"),
        ):
            m = mem[variant]
            if m is not None:
                row[f"idle_conn_bytes_{suffix}"] = m.bytes_per_conn
                row[f"idle_conn_traced_{suffix}"] = m.traced
        mk_mem = mem["metakit"]
        for ref_name, key in (
            ("raw-protocol", "idle_conn_ratio"),
            ("raw-tuned", "idle_conn_ratio_tuned"),
        ):
            ref_mem = mem[ref_name]
            if mk_mem is not None and ref_mem is not None:
                ratios = idle_ratios(mk_mem, ref_mem)
                row[key] = median(ratios) if ratios else None
        for key, value in row.items():
            rows[key][loop] = finite(value)
    return rows


def write_json(path: str, argv: list[str], results: list[Result], idle: list[Idle]) -> None:
    data = {
        "bench": "tcp_echo",
        "command": " ".join(["python", "bench/tcp_echo.py", *map(shlex.quote, argv)]),
        "rows": json_rows(results, idle),
    }
    Path(path).write_text(json.dumps(data, indent=2) + "\n")


def print_profile(result: Result, top: int) -> None:
    assert result.profile is not None
    print()
    print(f"cProfile of the {result.variant} server on {result.loop} (tottime, top {top}):")
    stats = pstats.Stats(result.profile, stream=sys.stdout)
    stats.strip_dirs().sort_stats("tottime").print_stats(top)


def git_state() -> str:
    """The checkout measured: commit, and how many files under metakit/ differ from it."""
    try:
        git = ["git", "-C", str(HERE.parent)]
        head = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            [*git, "status", "--porcelain", "--", "metakit"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return "not a git checkout"
    return f"commit {head}" + (f" + {len(changed)} changed files in metakit/" if changed else "")


def header(opts: argparse.Namespace, binary: Path) -> None:
    from importlib.metadata import version

    uvloop_version = version("uvloop")
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    pin = (
        f"server on CPU {opts.server_cpu}, load generator on CPU {opts.client_cpu}"
        if opts.server_cpu is not None
        else "not pinned (fewer than 2 CPUs or no taskset)"
    )
    print(
        f"Python {platform.python_version()}, uvloop {uvloop_version}, {cpu}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}"
    )
    print(f"{opts.conns} connections x {opts.size}-byte lines; {pin}; load generator {binary}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: 1 s runs, 16 MiB stream")
    parser.add_argument("--verbose", action="store_true", help="every run and its 250 ms slices")
    parser.add_argument("--loop", choices=(*LOOPS, "both"), default="both")
    parser.add_argument(
        "--variant", action="append", choices=VARIANTS, help="repeatable; default all"
    )
    parser.add_argument("--profile", action="store_true", help="cProfile the metakit server")
    parser.add_argument("--conns", type=int, default=50)
    parser.add_argument("--size", type=int, default=64, help="line size, newline included")
    parser.add_argument(
        "--rate",
        type=int,
        default=0,
        help="warm runs at this offered load (round trips/s, all connections) instead of flat out",
    )
    parser.add_argument("--seconds", type=float, help="measured seconds per warm run")
    parser.add_argument("--cold-seconds", type=float, help="measured seconds of the cold run")
    parser.add_argument("--repeat", type=int, help="rounds of warm runs (5; --quick: 1)")
    parser.add_argument("--stream-mib", type=int, help="MiB per stream run")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        help="seconds per server to wait, in all, for an idle machine (30; --quick: 3)",
    )
    parser.add_argument(
        "--retries", type=int, help="times a disturbed run is done again (2; --quick: 0)"
    )
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument(
        "--idle-conns",
        type=int,
        metavar="N",
        help="idle connections per server for the memory section (2000; --quick: 200; 0 skips)",
    )
    parser.add_argument(
        "--idle-rounds", type=int, default=IDLE_ROUNDS, help="rounds of the idle connections"
    )
    parser.add_argument(
        "--idle-trace",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure the idle connections under tracemalloc (one more server each)",
    )
    parser.add_argument(
        "--phase",
        action="append",
        metavar="PHASE[,PHASE...]",
        help=f"repeatable or comma-separated, of {', '.join(PHASES)}; default all",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the ratios to PATH as JSON")
    # internal: the server subprocess
    parser.add_argument("--serve", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--profile-to", help=argparse.SUPPRESS)
    parser.add_argument("--trace-malloc", action="store_true", help=argparse.SUPPRESS)
    args = sys.argv[1:] if argv is None else argv
    opts = parser.parse_args(args)

    if opts.serve:
        serve_main(opts.serve, opts.loop, opts.profile_to, opts.trace_malloc)
        return 0

    quick = opts.quick
    opts.seconds = opts.seconds or (1.0 if quick else 3.0)
    opts.cold_seconds = opts.cold_seconds or (1.0 if quick else 2.0)
    opts.warmup = 0.5 if quick else 1.0
    opts.repeat = opts.repeat or (1 if quick else 5)
    opts.stream_repeat = 1 if quick else 5
    if opts.retries is None:
        opts.retries = 0 if quick else 2
    opts.stream_bytes = (opts.stream_mib or (16 if quick else 256)) << 20
    if opts.quiet_wait is None:
        opts.quiet_wait = 3.0 if quick else 30.0
    opts.loops = LOOPS if opts.loop == "both" else (opts.loop,)
    variants = opts.variant or (["metakit"] if opts.profile else list(VARIANTS))
    phases = {x.strip() for arg in opts.phase or PHASES for x in arg.split(",") if x.strip()}
    if phases - set(PHASES):
        parser.error(f"unknown --phase {sorted(phases - set(PHASES))}; of {', '.join(PHASES)}")
    if opts.idle_conns is None:
        opts.idle_conns = 200 if quick else 2000
    if opts.idle_conns < 0 or opts.idle_rounds < 1:
        parser.error("--idle-conns must be >= 0 and --idle-rounds >= 1")
    idle_variants = [v for v in IDLE_VARIANTS if v in variants]
    if opts.idle_conns == 0 or not idle_variants:
        phases.discard("idle")
    if "idle" in phases:
        # A descriptor per connection, here and in the server (which inherits the limit).
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = opts.idle_conns + IDLE_WARM + 256
        if hard != resource.RLIM_INFINITY and hard < want:
            parser.error(
                f"--idle-conns {opts.idle_conns} needs {want} descriptors; the limit is {hard}"
            )
        if soft != resource.RLIM_INFINITY and soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))

    cpus = os.sched_getaffinity(0)
    if len(cpus) < 2 or shutil.which("taskset") is None:
        opts.server_cpu = opts.client_cpu = None
    elif opts.server_cpu not in cpus or opts.client_cpu not in cpus:
        parser.error(f"--server-cpu/--client-cpu must be among {sorted(cpus)}")
    else:
        os.sched_setaffinity(0, {opts.client_cpu})  # keep this driver off the server's CPU

    binary = build_loadgen(LOADGEN_SRC)
    header(opts, binary)
    results: list[Result] = []
    idle: list[Idle] = []
    if "echo" in phases:
        with tempfile.TemporaryDirectory(prefix="tcp-echo-prof-") as prof_dir:
            for loop in opts.loops:
                profiles = prof_dir if opts.profile else None
                results += measure_loop(opts, binary, variants, loop, profiles)
            report(results, opts)
            if opts.profile:
                print("\n(profiled: the figures above include cProfile's overhead)")
                for r in results:
                    print_profile(r, 30)
    error = None
    if "idle" in phases:
        # Last, and its failure keeps what was measured (printed, and in the JSON file).
        try:
            for loop in opts.loops:
                idle += measure_idle(opts, idle_variants, loop)
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            error = f"idle connections: {exc}"
        if idle:
            report_idle(idle, opts)
    if opts.json:
        write_json(opts.json, args, results, idle)
    if error is not None:
        print(f"ERROR: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
