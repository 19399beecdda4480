"""UDP echo benchmark: metakit's UDPServer vs a hand-written asyncio DatagramProtocol echo.

What is measured (each server variant on the stdlib asyncio loop and on
uvloop, in one run):

* ``raw``: an ``asyncio.DatagramProtocol`` whose ``datagram_received`` calls
  ``transport.sendto(data, addr)`` — the code a user would otherwise write;
* ``raw-tuned`` (control): ``raw`` in a process that first calls
  ``metakit._malloc.warm_allocator()``, the malloc tuning ``Node.start``
  applies, so metakit / raw-tuned is metakit's own cost;
* ``metakit``: a node with one worker Process owning a ``UDPServer`` meta.
  Each datagram goes UDPServer → worker (``UDPPacket``) → the worker's
  ``send(server, UDPPacket(server, addr, data))`` → UDPServer →
  ``transport.sendto``. Everything at its defaults (``recv_buffer`` unset
  unless ``--recv-buffer`` is given, which applies to both variants).

Load: ``bench/udp_loadgen.c``, a one-core C client (epoll, recvmmsg and
sendmmsg on one socket; built on the fly with ``gcc -O2`` into
``$TMPDIR/metakit-bench-$UID/``, rebuilt when the source is newer), in its
own process. It keeps a window of 32 datagrams of 64 bytes in flight to the
server; each carries its slot, a sequence number and its send time, each
echo is checked byte for byte and replaced at once by the next datagram. A
datagram not echoed within 50 ms counts as lost and is replaced, so the
window stays full. Per run: a warm-up, then a measured interval; it reports
echoes/s (pps), p50/p99 latency, loss, its own CPU (``getrusage``) and the
server's (utime + stime from ``/proc/PID/stat``, 10 ms ticks) over the
measured interval, and the busy time of the whole machine (``/proc/stat``).

Every server runs in its own subprocess pinned to CPU 0 (``taskset``), the
load generator is pinned to CPU 1; this script runs on CPU 1 and sleeps
meanwhile. All four servers are started first and the runs are interleaved
round by round (the order rotates), so a disturbance spreads over all of
them; each row shows the best run by packets/s. Before each run the script
waits (up to ``--quiet-wait`` s) for other programs to leave the CPUs idle,
and a run during which they took more than 10 % of a core is done again
once, as long as the time budget (150 s; 22 s with ``--quick``) allows.

The stdlib loop's datagram transport reads each datagram with
``recvfrom(256 KiB)``: glibc serves that buffer with mmap, shrinks it with
mremap and frees it with munmap, for every datagram, until one such buffer is
freed at full size, which raises glibc's mmap threshold (a ``recvfrom`` that
raises does it: an ICMP error reported thanks to metakit's ``IP_RECVERR``, a
one-off 256 KiB allocation, ...). From then on the same stdlib-loop server is
2-3x faster. So that runs do not change the servers' state, the load
generator lets the last window come back before it closes its socket (no
echo hits a closed port, no ICMP error): every stdlib-loop server is
measured in the state a fresh process, and raw forever, is in. uvloop reads
into a reused buffer and has no such effect.

Loss is reported with where it happened, as deltas over each run (warm-up
included): the server socket's kernel drops (``/proc/net/udp`` by the
socket's inode: ``UDPServer.kernel_drops()`` for metakit, the same reading
for raw), metakit's own drops (``UDPServer.statistics()``: ``dropped_full``,
``dropped_oversize``, ``dropped_no_worker``) and the load generator's socket's
kernel drops.

Targets (issue): metakit / raw on the same loop >= 0.7x packets/s; and
metakit on uvloop (the loop metakit picks by default) >= 3x raw on the stdlib
asyncio loop. Packets/s compare the servers only when both were the limit:
when the load generator used >= 90 % of its core, or a server was busy less
than 90 % of its core (another program took the CPU, or the load did not
suffice), a target is judged on server CPU per datagram instead (raw µs /
metakit µs), and the report says why. A miss prints ``MISS``; only errors
make the exit status non-zero.

Run from the repository root (Linux, gcc, two or more CPUs)::

    python bench/udp_echo.py [--quick] [--verbose] [--loop asyncio|uvloop|both]
                             [--variant raw|metakit ...] [--profile]
                             [--window N] [--size N] [--timeout-ms N]
                             [--seconds S] [--repeat N] [--recv-buffer BYTES]
                             [--json PATH]

``--quick`` is a smoke test (one 1 s run per server, < 30 s). A full run
(three 3 s runs per server) takes about a minute on an idle machine and
under three minutes on a busy one. ``--verbose`` adds every
run and the echoes per 250 ms slice. ``--profile`` runs the metakit servers
under cProfile (their figures are then not comparable) and prints their
hottest functions. Internally the servers are this script run as
``--serve VARIANT --loop LOOP``: it prints ``PORT <port>``, answers a
``stats`` line on stdin with ``STATS <json>`` and serves until its stdin
closes or it gets SIGTERM/SIGINT.

``--json PATH`` also writes, once the report is printed, the ratios of its
``targets:`` lines to PATH, for a table runner::

    {"bench": "udp_echo", "command": "python bench/udp_echo.py <the arguments as given>",
     "rows": {KEY: {"asyncio": RATIO, "uvloop": RATIO}}}

Each RATIO is, like the printed ones, a ratio of the two servers' best runs
(the table's rows), unrounded; null where that loop or variant was not run
(or the ratio is not finite). Every key is always there. Same loop, in that
loop's column:

* ``pkts``: ``metakit / raw on LOOP, pkts/s``;
* ``pkts_tuned``: ``metakit / raw-tuned on LOOP, pkts/s``;
* ``tuning_alone``: ``(raw-tuned / raw on LOOP, pkts/s)``, what the malloc
  tuning alone changes;
* ``cpu``, ``cpu_tuned``: the ``..., server CPU/dg`` lines of ``pkts`` and
  ``pkts_tuned`` (raw µs / metakit µs per datagram: higher is better);

across loops, in the ``uvloop`` column (``asyncio`` is always null):

* ``vs_stdlib``: ``metakit on uvloop / raw on asyncio, pkts/s``;
* ``vs_stdlib_cpu``: ``metakit on uvloop / raw on asyncio, server CPU/dg``;
* ``raw_uvloop_vs_stdlib``: ``(raw on uvloop / raw on asyncio, pkts/s)``.

Which of ``pkts`` and ``cpu`` a target is judged on is up to the report (see
Targets). Each key also comes with ``_median`` at its end (e.g.
``pkts_median``): not printed, the median over the rounds of the same ratio
of the two servers' runs in the same round (each one's best run of the round
by pkts/s, when a disturbed run was done again), so that drift between rounds
cancels out; with one round (``--quick``) it equals the best-run ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import dataclasses
import json
import math
import os
import platform
import pstats
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _harness import ServeProcess, build_loadgen, parse_kv, pinned, quiet_note, verdict

HERE = Path(__file__).resolve().parent
LOADGEN_SRC = HERE / "udp_loadgen.c"
VARIANTS = ("raw", "raw-tuned", "metakit")
LOOPS = ("asyncio", "uvloop")

# Targets (the issue that asked for this benchmark).
SAME_LOOP_TARGET = 0.7  # metakit / raw on the same loop, at least
VS_STDLIB_TARGET = 3.0  # metakit on uvloop / raw on the stdlib loop, at least
BUSY = 90.0  # % of a core: above it a process counts as the limit
NOISY = 10.0  # % of a core used by other programs during a run: it is disturbed
METAKIT_DROPS = ("dropped_full", "dropped_oversize", "dropped_no_worker")
# --json: key -> loop -> ratio, None when not measured.
Rows = dict[str, dict[str, float | None]]


# --------------------------------------------------------------------- servers


def udp_drops(inode: int) -> int | None:
    """Kernel drops of the UDP socket with this inode (``/proc/net/udp``), None if unknown."""
    wanted = str(inode)
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table) as rows:
                for row in rows:
                    fields = row.split()
                    if len(fields) > 12 and fields[9] == wanted:
                        return int(fields[12])
        except OSError:
            return None
    return None


class RawEcho(asyncio.DatagramProtocol):
    """raw: send every datagram straight back."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.transport.sendto(data, addr)


async def _serve_raw(recv_buffer: int | None) -> tuple[int, Any, Any]:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(RawEcho, local_addr=("127.0.0.1", 0))
    sock = transport.get_extra_info("socket")
    if recv_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, recv_buffer)
    inode = os.fstat(sock.fileno()).st_ino

    async def stats() -> dict[str, Any]:
        return {"kernel_drops": udp_drops(inode)}

    return transport.get_extra_info("sockname")[1], stats, transport


async def _serve_metakit(recv_buffer: int | None) -> tuple[int, Any, Any]:
    import metakit
    from metakit.udp import UDPPacket, UDPServer

    class EchoWorker(metakit.Process):
        async def init(self) -> None:
            self.server = UDPServer("127.0.0.1", 0, recv_buffer=recv_buffer)
            await self.spawn_meta(self.server)

        def handle_call(self, sender: Any, request: Any) -> Any:
            if request == "port":
                return self.server.address[1]
            stats = dataclasses.asdict(self.server.statistics())
            stats["kernel_drops"] = stats.pop("dropped_kernel", None)
            return stats

        def handle_message(self, sender: Any, message: Any) -> None:
            match message:
                case UDPPacket(server, addr, data):
                    self.send(server, UDPPacket(server, addr, data))

    node = metakit.Node("udp-echo@localhost")
    await node.start()
    pid = await node.spawn(EchoWorker)
    port = await node.call(pid, "port")

    async def stats() -> dict[str, Any]:
        result: dict[str, Any] = await node.call(pid, "stats")
        return result

    return port, stats, node


async def _serve(variant: str, recv_buffer: int | None) -> None:
    loop = asyncio.get_running_loop()
    if variant in ("raw", "raw-tuned"):
        if variant == "raw-tuned":  # the control: the node's malloc tuning, no node
            from metakit._malloc import warm_allocator

            warm_allocator()
        port, stats, owner = await _serve_raw(recv_buffer)
    else:
        port, stats, owner = await _serve_metakit(recv_buffer)
    done = asyncio.Event()
    pending = b""
    tasks: set[asyncio.Task[None]] = set()

    async def report_stats() -> None:
        print("STATS " + json.dumps(await stats()), flush=True)

    def stdin_ready() -> None:
        nonlocal pending
        chunk = os.read(0, 4096)
        if not chunk:
            done.set()
            return
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            if line.strip() == b"stats":
                task = loop.create_task(report_stats())
                tasks.add(task)
                task.add_done_callback(tasks.discard)

    loop.add_reader(0, stdin_ready)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    print(f"PORT {port}", flush=True)
    await done.wait()
    loop.remove_reader(0)
    if variant == "metakit":
        await owner.stop()
    else:
        owner.close()


def serve_main(variant: str, loop_name: str, recv_buffer: int | None, profile: str | None) -> None:
    """The ``--serve`` mode: run one echo server until stdin closes."""
    factory = None
    if loop_name == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    profiler = cProfile.Profile() if profile else None
    if profiler is not None:
        profiler.enable()
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(_serve(variant, recv_buffer))
    finally:
        if profiler is not None and profile:
            profiler.disable()
            profiler.dump_stats(profile)


# ------------------------------------------------------------------- the driver


@dataclass
class Run:
    """One load generator run, with the server's counters over it."""

    sent: int
    received: int
    lost: int
    late: int
    errors: int
    seconds: float
    pps: float
    p50: float
    p99: float
    client_cpu: float  # seconds, user + sys
    server_cpu: float  # seconds, user + sys
    server_user: float  # seconds
    other_cpu: float  # seconds: busy time of the machine not used by server or client
    client_drops: int  # kernel drops at the load generator's socket, -1 if unknown
    wakeups: int  # the load generator's epoll_wait calls that found echoes
    recv_calls: int  # its recvmmsg calls that returned echoes
    unanswered: int  # of the last window, after the interval (0 unless lost)
    series: list[int]
    server_drops: int | None = None  # kernel drops at the server's socket (whole run)
    metakit_drops: int | None = None  # UDPServer's own drops (whole run)
    server_stats: dict[str, int] = field(default_factory=dict)  # deltas over the whole run
    round_no: int = 0  # the round it was measured in, from 0

    @classmethod
    def parse(cls, kv: dict[str, str]) -> Run:
        client = float(kv["cpu_user"]) + float(kv["cpu_sys"])
        server = float(kv["server_cpu_user"]) + float(kv["server_cpu_sys"])
        return cls(
            sent=int(kv["sent"]),
            received=int(kv["received"]),
            lost=int(kv["lost"]),
            late=int(kv["late"]),
            errors=int(kv["errors"]),
            seconds=float(kv["seconds"]),
            pps=float(kv["pps"]),
            p50=float(kv["p50_us"]),
            p99=float(kv["p99_us"]),
            client_cpu=client,
            server_cpu=server,
            server_user=float(kv["server_cpu_user"]),
            other_cpu=max(0.0, float(kv["host_busy"]) - client - server),
            client_drops=int(kv["client_drops"]),
            wakeups=int(kv["wakeups"]),
            recv_calls=int(kv["recv_calls"]),
            unanswered=int(kv["unanswered"]),
            series=[int(x) for x in kv["series"].split(",") if x],
        )

    @property
    def cpu_per_dgram(self) -> float:
        """Server CPU (user + sys) µs per echoed datagram."""
        return 1e6 * self.server_cpu / self.received if self.received else float("inf")

    @property
    def user_per_dgram(self) -> float:
        return 1e6 * self.server_user / self.received if self.received else float("inf")

    @property
    def client_per_dgram(self) -> float:
        return 1e6 * self.client_cpu / self.received if self.received else float("inf")

    @property
    def loss_pct(self) -> float:
        return 100 * self.lost / self.sent if self.sent else 0.0

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
class Result:
    variant: str
    loop: str
    runs: list[Run] = field(default_factory=list)
    profile: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.variant}/{self.loop}"

    @property
    def best(self) -> Run:
        return max(self.runs, key=lambda r: r.pps)

    @property
    def client_limited(self) -> bool:
        return self.best.client_pct >= BUSY

    @property
    def server_saturated(self) -> bool:
        return self.best.server_pct >= BUSY


class Server(ServeProcess):
    """A ``--serve`` subprocess, pinned; stops when its stdin is closed."""

    def __init__(
        self,
        variant: str,
        loop: str,
        cpu: int | None,
        recv_buffer: int | None,
        profile: str | None,
    ) -> None:
        args = [variant, "--loop", loop]
        if recv_buffer:
            args += ["--recv-buffer", str(recv_buffer)]
        if profile:
            args += ["--profile-to", profile]
        super().__init__(__file__, f"{variant}/{loop}", args, cpu, "PORT ")
        self.port = int(self.fields[0])

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.ask("stats", "STATS ")[6:])
        return result


def delta(after: dict[str, Any], before: dict[str, Any], key: str) -> int | None:
    a, b = after.get(key), before.get(key)
    return None if a is None or b is None else int(a) - int(b)


def run_once(opts: argparse.Namespace, binary: Path, server: Server) -> Run:
    args = [
        "127.0.0.1",
        str(server.port),
        str(opts.window),
        str(opts.size),
        str(opts.seconds),
        str(opts.warmup),
        str(opts.timeout_ms),
        str(server.pid),
    ]
    before = server.stats()
    out = subprocess.run(
        pinned(opts.client_cpu, [str(binary), *args]),
        capture_output=True,
        text=True,
        timeout=opts.seconds + opts.warmup + 60,
        check=False,
    )
    if out.returncode != 0 or not out.stdout.strip():
        raise RuntimeError(f"udp_loadgen {' '.join(args)} failed: {out.stderr.strip()}")
    run = Run.parse(parse_kv(out.stdout.strip().splitlines()[-1]))
    if run.received == 0:
        raise RuntimeError(f"the {server.name} server echoed nothing: {out.stdout.strip()}")
    after = server.stats()
    run.server_drops = delta(after, before, "kernel_drops")
    run.server_stats = {k: int(v) - int(before[k]) for k, v in after.items() if k in before}
    if "dropped_full" in after:
        run.server_stats.pop("kernel_drops", None)
        run.metakit_drops = sum(run.server_stats.get(k, 0) for k in METAKIT_DROPS)
    return run


def measure(opts: argparse.Namespace, binary: Path, prof_dir: str) -> list[Result]:
    combos = [(v, loop) for loop in opts.loops for v in opts.variants]
    results = {c: Result(*c) for c in combos}
    servers: dict[tuple[str, str], Server] = {}
    t_end = time.monotonic() + opts.budget
    per_run = opts.seconds + opts.warmup + 0.6  # a run, with its stats exchanges
    left = opts.repeat * len(combos)  # runs still to do

    def slack() -> float:
        """Seconds to spare for waiting and repeating within the budget."""
        return t_end - time.monotonic() - left * per_run

    try:
        for variant, loop in combos:
            profile = None
            if opts.profile:
                profile = str(Path(prof_dir) / f"{variant}-{loop}.prof")
                results[(variant, loop)].profile = profile
            servers[(variant, loop)] = Server(
                variant, loop, opts.server_cpu, opts.recv_buffer, profile
            )
        for round_no in range(opts.repeat):
            shift = round_no % len(combos)
            for combo in combos[shift:] + combos[:shift]:
                result = results[combo]
                for attempt in (1, 2):
                    note = quiet_note(max(0.0, min(opts.quiet_wait, slack())), step=0.3)
                    if note:
                        result.notes.append(f"round {round_no + 1}: {note}")
                    print(f"  round {round_no + 1}: {combo[0]} on {combo[1]}...", file=sys.stderr)
                    run = run_once(opts, binary, servers[combo])
                    run.round_no = round_no
                    result.runs.append(run)
                    if run.other_pct <= NOISY or attempt == 2 or slack() < 2 * per_run:
                        break
                    result.notes.append(
                        f"round {round_no + 1}: other programs took {run.other_pct:.0f}% "
                        "of a core; run again"
                    )
                left -= 1
    finally:
        errors = []
        for server in servers.values():
            try:
                server.stop()
            except RuntimeError as exc:
                errors.append(str(exc))
        if errors:
            raise RuntimeError("; ".join(errors))
    return [results[c] for c in combos]


# -------------------------------------------------------------------- reporting


def _drops(value: int | None) -> str:
    return "?" if value is None or value < 0 else str(value)


def pps_ratio(run: Run, ref: Run) -> float:
    """Packets/s of ``run`` / of ``ref``."""
    return run.pps / ref.pps


def cpu_ratio(run: Run, ref: Run) -> float:
    """Server CPU per datagram of ``ref`` / of ``run`` (> 1: ``run`` is cheaper)."""
    return ref.cpu_per_dgram / run.cpu_per_dgram


def judge(name: str, mk: Result, ref: Result, target: float) -> None:
    """Print ``mk`` vs ``ref`` against ``target``: on pkts/s when both servers were
    the limit, else on server CPU per datagram (``ref`` µs / ``mk`` µs)."""
    pps = pps_ratio(mk.best, ref.best)
    cpu = cpu_ratio(mk.best, ref.best)
    why = [f"the load generator is the limit for {r.label}" for r in (ref, mk) if r.client_limited]
    why += [
        f"{r.label} was only {r.best.server_pct:.0f}% busy"
        for r in (ref, mk)
        if not r.server_saturated
    ]
    if why:
        print(
            f"  {name + ', server CPU/dg':<46} {cpu:6.2f}x  (target >= {target}x)  "
            f"{verdict(cpu >= target)}   judged on CPU: {'; '.join(why)}"
        )
        print(f"  {name + ', pkts/s':<46} {pps:6.2f}x")
    else:
        print(
            f"  {name + ', pkts/s':<46} {pps:6.2f}x  (target >= {target}x)  "
            f"{verdict(pps >= target)}"
        )
        print(f"  {name + ', server CPU/dg':<46} {cpu:6.2f}x")


def report(results: list[Result], opts: argparse.Namespace) -> None:
    print()
    head = (
        f"{'variant':<9} {'loop':<8} {'pkts/s':>8} {'p50 us':>7} {'p99 us':>7} {'loss':>7} "
        f"{'srv us/dg':>9} {'(user)':>6} {'srv%':>5} {'cli us/dg':>9} {'cli%':>5} {'oth%':>5} "
        f"| {'drops srv/mk/cli':>16}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        b = r.best
        mk = "-" if r.variant != "metakit" else _drops(b.metakit_drops)
        drops = f"{_drops(b.server_drops)}/{mk}/{_drops(b.client_drops)}"
        print(
            f"{r.variant:<9} {r.loop:<8} {b.pps:8,.0f} {b.p50:7.0f} {b.p99:7.0f} "
            f"{b.loss_pct:6.2f}% {b.cpu_per_dgram:9.2f} {b.user_per_dgram:6.2f} "
            f"{b.server_pct:5.0f} {b.client_per_dgram:9.2f} {b.client_pct:5.0f} "
            f"{b.other_pct:5.0f} | {drops:>16}"
        )
    print()
    print(
        f"best of {opts.repeat} x {opts.seconds:g} s measured (after a {opts.warmup:g} s "
        f"warm-up) per server, by pkts/s; window {opts.window} x {opts.size}-byte datagrams, "
        f"lost after {opts.timeout_ms} ms."
    )
    print(
        "pkts/s: echoes received per second; loss: datagrams not echoed in time / sent; "
        "srv us/dg: server CPU (user+sys) per echoed datagram, (user) its user part; "
        "cli us/dg: the load generator's; srv%/cli%: % of one core; oth%: other programs' "
        "CPU on the machine meanwhile (> 10 means the figures are disturbed)."
    )
    print(
        "drops: kernel drops at the server's socket / metakit's own drops "
        "(UDPServer.statistics()) / kernel drops at the load generator's socket, over the run."
    )
    noisy = [r.label for r in results if r.best.other_pct > NOISY]
    if noisy:
        print("NOTE: other programs used > 10% of a core during " + ", ".join(noisy) + ".")
    limited = [r.label for r in results if r.client_limited]
    if limited:
        print(
            f"NOTE: the load generator used >= {BUSY:.0f}% of its core for "
            + ", ".join(limited)
            + ": it may be the limit there; compare srv us/dg rather than pkts/s."
        )
    by_key = {(r.variant, r.loop): r for r in results}
    print()
    print("targets:")
    for loop in opts.loops:
        mk, raw = by_key.get(("metakit", loop)), by_key.get(("raw", loop))
        if mk is not None and raw is not None:
            judge(f"metakit / raw on {loop}", mk, raw, SAME_LOOP_TARGET)
        tuned = by_key.get(("raw-tuned", loop))
        if mk is not None and tuned is not None:
            judge(f"metakit / raw-tuned on {loop}", mk, tuned, SAME_LOOP_TARGET)
    mk_uv, raw_std = by_key.get(("metakit", "uvloop")), by_key.get(("raw", "asyncio"))
    if mk_uv is not None and raw_std is not None:
        judge("metakit on uvloop / raw on asyncio", mk_uv, raw_std, VS_STDLIB_TARGET)
    raw_uv = by_key.get(("raw", "uvloop"))
    if raw_uv is not None and raw_std is not None:
        print(
            f"  {'(raw on uvloop / raw on asyncio, pkts/s)':<46} "
            f"{pps_ratio(raw_uv.best, raw_std.best):6.2f}x"
        )
    for loop in opts.loops:
        raw, tuned = by_key.get(("raw", loop)), by_key.get(("raw-tuned", loop))
        if raw is not None and tuned is not None:
            print(
                f"  {f'(raw-tuned / raw on {loop}, pkts/s)':<46} "
                f"{pps_ratio(tuned.best, raw.best):6.2f}x"
            )
    if opts.verbose:
        print()
        print(
            "every run: pkts/s; srv us/dg; p50/p99 us; sent/lost/late/errors/unanswered at "
            "the end; srv%; cli%; oth%; echoes per load generator wakeup; then the server's "
            "counters over the run and the echoes per 250 ms slice:"
        )
        for r in results:
            for i, run in enumerate(r.runs):
                per_wakeup = run.received / run.wakeups if run.wakeups else 0.0
                print(
                    f"  {r.variant:<8} {r.loop:<8} #{i + 1} {run.pps:9,.0f} "
                    f"{run.cpu_per_dgram:6.2f} {run.p50:6.0f}/{run.p99:<6.0f} "
                    f"{run.sent}/{run.lost}/{run.late}/{run.errors}/{run.unanswered} "
                    f"{run.server_pct:4.0f}% {run.client_pct:4.0f}% {run.other_pct:4.0f}% "
                    f"{per_wakeup:5.2f}"
                )
                print(f"      {run.server_stats}")
                print(f"      {run.series}")
            for note in r.notes:
                print(f"  {r.variant:<8} {r.loop:<8} note: {note}")
    else:
        notes = [f"{r.label}: {n}" for r in results for n in r.notes]
        if notes:
            print()
            print("notes: " + "; ".join(notes))


# --json: key, its loop column, the two (variant, loop) it is the ratio of, the ratio.
Pair = tuple[str, str]
COMPARISONS: list[tuple[str, str, Pair, Pair, Callable[[Run, Run], float]]] = [
    *(
        (key, loop, (variant, loop), (ref, loop), how)
        for loop in LOOPS
        for key, variant, ref, how in (
            ("pkts", "metakit", "raw", pps_ratio),
            ("pkts_tuned", "metakit", "raw-tuned", pps_ratio),
            ("tuning_alone", "raw-tuned", "raw", pps_ratio),
            ("cpu", "metakit", "raw", cpu_ratio),
            ("cpu_tuned", "metakit", "raw-tuned", cpu_ratio),
        )
    ),
    ("vs_stdlib", "uvloop", ("metakit", "uvloop"), ("raw", "asyncio"), pps_ratio),
    ("vs_stdlib_cpu", "uvloop", ("metakit", "uvloop"), ("raw", "asyncio"), cpu_ratio),
    ("raw_uvloop_vs_stdlib", "uvloop", ("raw", "uvloop"), ("raw", "asyncio"), pps_ratio),
]


def by_round(result: Result) -> dict[int, Run]:
    """Each round's best run (by pkts/s; a disturbed run may have been done again)."""
    best: dict[int, Run] = {}
    for run in result.runs:
        if run.round_no not in best or run.pps > best[run.round_no].pps:
            best[run.round_no] = run
    return best


def json_rows(results: list[Result]) -> Rows:
    """The ``--json`` rows: every key (and its ``_median``), None where not measured."""
    by_key = {(r.variant, r.loop): r for r in results}
    rows: Rows = {}
    for key, _, _, _, _ in COMPARISONS:
        for name in (key, key + "_median"):
            rows.setdefault(name, {loop: None for loop in LOOPS})
    for key, column, num, den, how in COMPARISONS:
        a, b = by_key.get(num), by_key.get(den)
        if a is None or b is None or not a.runs or not b.runs:
            continue
        best = how(a.best, b.best)
        rounds_a, rounds_b = by_round(a), by_round(b)
        paired = [how(rounds_a[n], rounds_b[n]) for n in sorted(rounds_a) if n in rounds_b]
        median = statistics.median(paired) if paired else math.nan
        rows[key][column] = best if math.isfinite(best) else None
        rows[key + "_median"][column] = median if math.isfinite(median) else None
    return rows


def write_json(path: str, args: list[str], results: list[Result]) -> None:
    """The ``--json`` file: the command line (``args`` as given) and the rows."""
    command = shlex.join(["python", f"bench/{Path(__file__).name}", *args])
    doc = {"bench": "udp_echo", "command": command, "rows": json_rows(results)}
    Path(path).write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n")


def print_profile(result: Result, top: int) -> None:
    assert result.profile is not None
    print()
    print(f"cProfile of the {result.label} server (tottime, top {top}):")
    stats = pstats.Stats(result.profile, stream=sys.stdout)
    stats.strip_dirs().sort_stats("tottime").print_stats(top)


def header(opts: argparse.Namespace, binary: Path) -> None:
    import uvloop

    import metakit

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
    factory = metakit.loop_factory()
    default = "asyncio" if factory is None else factory.__module__.split(".")[0]
    print(
        f"Python {platform.python_version()}, metakit {metakit.__version__}, "
        f"uvloop {uvloop.__version__}, {cpu}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    print(
        f"window {opts.window} x {opts.size}-byte datagrams; {pin}; metakit's default loop "
        f"here: {default}; load generator {binary}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: one 1 s run per server")
    parser.add_argument("--verbose", action="store_true", help="every run and its 250 ms slices")
    parser.add_argument("--loop", choices=(*LOOPS, "both"), default="both")
    parser.add_argument(
        "--variant", action="append", choices=VARIANTS, help="repeatable; default both"
    )
    parser.add_argument("--profile", action="store_true", help="cProfile the metakit servers")
    parser.add_argument("--window", type=int, default=32, help="datagrams in flight")
    parser.add_argument("--size", type=int, default=64, help="datagram size, bytes (>= 20)")
    parser.add_argument("--timeout-ms", type=int, default=50, help="a datagram is lost after it")
    parser.add_argument("--seconds", type=float, help="measured seconds per run")
    parser.add_argument("--repeat", type=int, help="runs per server (best reported)")
    parser.add_argument("--recv-buffer", type=int, help="SO_RCVBUF of the server sockets")
    parser.add_argument(
        "--quiet-wait", type=float, help="seconds to wait for an idle machine before a run"
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
        loop = "uvloop" if opts.loop == "both" else opts.loop
        serve_main(opts.serve, loop, opts.recv_buffer, opts.profile_to)
        return 0

    quick = opts.quick
    opts.seconds = opts.seconds or (1.0 if quick else 3.0)
    opts.warmup = 0.5 if quick else 1.0
    opts.repeat = opts.repeat or (1 if quick else 3)
    if opts.quiet_wait is None:
        opts.quiet_wait = 3.0 if quick else 10.0
    # Seconds for all the runs, waits for an idle machine and repeats included.
    opts.budget = 22.0 if quick else 150.0
    if not 20 <= opts.size <= 65507:
        parser.error("--size must be between 20 and 65507")
    opts.loops = LOOPS if opts.loop == "both" else (opts.loop,)
    opts.variants = opts.variant or (["metakit"] if opts.profile else list(VARIANTS))
    if opts.json is not None and not Path(opts.json).absolute().parent.is_dir():
        parser.error(f"--json: no directory {Path(opts.json).absolute().parent}")

    cpus = os.sched_getaffinity(0)
    if len(cpus) < 2 or shutil.which("taskset") is None:
        opts.server_cpu = opts.client_cpu = None
    elif opts.server_cpu not in cpus or opts.client_cpu not in cpus:
        parser.error(f"--server-cpu/--client-cpu must be among {sorted(cpus)}")
    else:
        os.sched_setaffinity(0, {opts.client_cpu})  # keep this driver off the servers' CPU

    t0 = time.monotonic()
    binary = build_loadgen(LOADGEN_SRC)
    header(opts, binary)
    with tempfile.TemporaryDirectory(prefix="udp-echo-prof-") as prof_dir:
        results = measure(opts, binary, prof_dir)
        report(results, opts)
        if opts.profile:
            print("\n(profiled: the figures above include cProfile's overhead)")
            for r in results:
                print_profile(r, 30)
    if opts.json is not None:
        write_json(opts.json, sys.argv[1:] if argv is None else argv, results)
        print(f"\nratios written to {opts.json}")
    print(f"\n(total {time.monotonic() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
