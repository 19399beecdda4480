"""Messaging benchmark: metakit's send, call and idle-process cost vs bare asyncio floors.

What is measured (each on the stdlib asyncio loop and on uvloop, in one run):

1. One-way ``send`` throughput, messages/s. A sender Process sends its
   receiver ``--burst`` messages per handler invocation, then sends itself a
   "continue" message. The receiver counts and resolves a future at N.

   * metakit, receiver with a plain ``def handle_message``;
   * metakit, receiver with an ``async def handle_message``;
   * floor A: a bare ``deque`` + ``loop.call_soon`` mailbox (the sender appends
     and schedules a drain only when none is scheduled; the drain pops
     everything and calls the handler);
   * floor B: ``asyncio.Queue``, ``put_nowait`` by the producer and a consumer
     task doing ``await q.get()``;
   * metakit, the plain receiver fed through ``node.send`` (the send from
     outside any process) by the same sender: its ratio to ``Process.send``
     is the price of sending from outside.

   The floors are pure asyncio (no metakit): the producer is a floor A mailbox
   too and continues itself the same way, and the receiver is an object doing
   the same work as the metakit receiver.

2. ``call`` round trip, microseconds: a Process with an async handler doing
   sequential ``await self.call(server, i)`` (and ``await node.call(...)`` from
   outside any process) against a plain ``handle_call`` that returns the
   request, vs a bare request/reply: the client creates a Future, appends
   (request, future) to a deque, schedules the server's drain with
   ``call_soon`` if none is scheduled, and awaits the future, which the drain
   resolves.

3. Memory per idle process: spawn ``--procs`` idle processes (plain handlers,
   no name) in a fresh interpreter and report the growth traced by
   ``tracemalloc`` (started before the node is created) and, for reference,
   the growth of VmRSS (measured in a first pass without tracemalloc).

Timing: each section is warmed up once, then run ``--repeat`` times, the
variants interleaved round by round; the table shows the best run (highest
msgs/s, lowest us/call), and each ratio is the median over rounds of the
ratio within a round (paired: both sides ran back to back). ``gc.collect()`` runs before
each timed section so that earlier garbage is not charged to it; the cyclic
GC stays enabled, as users run it. Nothing is pinned or tuned.

Run from the repository root::

    python bench/messaging.py [--quick] [--verbose] [--loop asyncio|uvloop|both]
                              [--repeat N] [--burst N] [--json PATH]

``--quick`` shrinks every size for a smoke test (a few seconds). ``--json
PATH`` also writes the ratios as ``{"bench", "command", "rows": {key:
{"asyncio": x, "uvloop": y}}}`` (keys ``send``, ``node_send``, ``call``,
``node_call``, ``idle_process_bytes``) for ``bench/table.py``. ``--verbose``
adds every sample with its median, the spawn time and the tracemalloc top
allocation sites. Missed targets are printed as MISS; the exit status is
non-zero only on errors (a crashed or stuck run is one).

Under the table, the metakit receiver's backlog when its sender finished: a
metakit drain handles at most 256 messages per loop turn, so a sender of
bigger bursts runs ahead (the floors drain everything at once).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tracemalloc
import types
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from typing import Any

try:
    import metakit
except ImportError:  # not installed: run from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import metakit

uvloop: types.ModuleType | None
try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a default dependency on Linux
    uvloop = None

REPO = Path(__file__).resolve().parents[1]

# Targets (DESIGN.md §6; bench/table.py judges the stricter hot-path goals).
TARGET_SEND_RATIO = 0.4  # plain-handler send >= 0.4x floor A
TARGET_NODE_SEND_RATIO = 0.95  # node.send costs what Process.send costs
TARGET_CALL_RATIO = 2.0  # Process.call <= 2x the bare request/reply
TARGET_PROC_BYTES = 2048  # idle process <= 2 KiB


@dataclass(frozen=True)
class Params:
    messages: int  # per send run (a multiple of burst)
    burst: int  # messages per sender handler invocation
    calls: int  # round trips per call run
    procs: int  # idle processes for the memory section
    repeat: int  # timed runs per measurement
    timeout: float  # seconds before a run that has not finished is an error


FULL = Params(messages=1_000_000, burst=1000, calls=100_000, procs=10_000, repeat=5, timeout=120)
QUICK = Params(messages=20_000, burst=1000, calls=5_000, procs=1_000, repeat=2, timeout=30)


# -- 1. send throughput ----------------------------------------------------------


class _Watched(metakit.Process):
    """Fails the run's future if the process ends early: a crash fails the run at once."""

    done: asyncio.Future[Any] | None = None

    def terminate(self, reason: Any) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_exception(RuntimeError(f"{self!r} ended early: {reason!r}"))


class _Sink(_Watched):
    done: asyncio.Future[Any]

    def init(self, n: int, done: asyncio.Future[None]) -> None:
        self.count = 0
        self.n = n
        self.done = done


class PlainSink(_Sink):
    def handle_message(self, sender: metakit.PID, message: Any) -> None:
        self.count += 1
        if self.count == self.n:
            self.done.set_result(None)


class CoroutineSink(_Sink):
    async def handle_message(self, sender: metakit.PID, message: Any) -> None:
        self.count += 1
        if self.count == self.n:
            self.done.set_result(None)


class Burster(_Watched):
    """Sends ``burst`` messages per invocation, then tells itself to continue."""

    def init(
        self,
        to: metakit.PID,
        n: int,
        burst: int,
        backlog: list[int],
        done: asyncio.Future[None],
        via_node: bool = False,
    ) -> None:
        self.done = done
        self.via_node = via_node
        self.to = to
        self.n = n
        self.burst = burst
        self.backlog = backlog

    def handle_message(self, sender: metakit.PID, start: int) -> None:
        # via_node: the same burst through node.send, the send from outside a process.
        send = self.node.send if self.via_node else self.send
        to = self.to
        for j in range(self.burst):
            send(to, j)
        start += self.burst
        if start < self.n:
            send(self.pid, start)
        else:
            # How far the receiver is behind when the sender is done (a note).
            self.backlog.append(self.node.process_info(to).mailbox)


class FloorSink:
    """The floors' receiver: the same work as PlainSink, on a plain object."""

    def __init__(self, n: int, done: asyncio.Future[None]) -> None:
        self.count = 0
        self.n = n
        self.done = done

    def handle(self, message: Any) -> None:
        self.count += 1
        if self.count == self.n:
            self.done.set_result(None)


def floor_mailbox(
    loop: asyncio.AbstractEventLoop, handle: Callable[[Any], None]
) -> Callable[[Any], None]:
    """Floor A: a deque plus at most one ``call_soon`` per burst; returns ``send``."""
    q: deque[Any] = deque()
    append = q.append
    popleft = q.popleft
    call_soon = loop.call_soon
    scheduled = False

    def drain() -> None:
        nonlocal scheduled
        handle_ = handle  # locals, as metakit's drain has them
        pop = popleft
        while q:
            handle_(pop())
        scheduled = False

    def send(message: Any) -> None:
        nonlocal scheduled
        append(message)
        if not scheduled:
            scheduled = True
            call_soon(drain)

    return send


def floor_producer(
    loop: asyncio.AbstractEventLoop, send: Callable[[Any], None], n: int, burst: int
) -> Callable[[Any], None]:
    """The floors' sender, shaped like Burster; returns the send that starts it."""

    def produce(start: int) -> None:
        send_ = send  # a local, as in Burster
        for j in range(burst):
            send_(j)
        start += burst
        if start < n:
            to_self(start)

    to_self = floor_mailbox(loop, produce)
    return to_self


async def _finish(done: asyncio.Future[Any], p: Params) -> Any:
    """Wait for a run to end; a run that never ends is an error, not a slow result."""
    return await asyncio.wait_for(done, p.timeout)


async def send_metakit(
    node: metakit.Node, sink_cls: type[_Sink], p: Params, notes: Notes, via_node: bool = False
) -> float:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    backlog: list[int] = []
    sink = await node.spawn(sink_cls, p.messages, done)
    src = await node.spawn(Burster, sink, p.messages, p.burst, backlog, done, via_node)
    gc.collect()
    t0 = perf_counter()
    node.send(src, 0)
    await _finish(done, p)
    elapsed = perf_counter() - t0
    node.kill(src)
    node.kill(sink)
    notes.backlog[sink_cls.__name__] = max(notes.backlog.get(sink_cls.__name__, 0), *backlog)
    return elapsed


async def send_floor_a(p: Params) -> float:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    sink = FloorSink(p.messages, done)
    start = floor_producer(loop, floor_mailbox(loop, sink.handle), p.messages, p.burst)
    gc.collect()
    t0 = perf_counter()
    start(0)
    await _finish(done, p)
    return perf_counter() - t0


async def send_floor_b(p: Params) -> float:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    sink = FloorSink(p.messages, done)
    queue: asyncio.Queue[Any] = asyncio.Queue()

    async def consume() -> None:
        get = queue.get
        handle = sink.handle
        while True:
            handle(await get())

    consumer = loop.create_task(consume())
    await asyncio.sleep(0)  # the consumer now waits in get()
    start = floor_producer(loop, queue.put_nowait, p.messages, p.burst)
    gc.collect()
    t0 = perf_counter()
    start(0)
    await _finish(done, p)
    elapsed = perf_counter() - t0
    consumer.cancel()
    await asyncio.gather(consumer, return_exceptions=True)
    return elapsed


# -- 2. call round trip ----------------------------------------------------------


class EchoServer(metakit.Process):
    def handle_call(self, sender: metakit.Caller, request: Any) -> Any:
        return request


class CallClient(_Watched):
    def init(self, server: metakit.PID) -> None:
        self.server = server

    async def handle_message(self, sender: metakit.PID, message: Any) -> None:
        n, done = message
        self.done = done
        call = self.call
        server = self.server
        reply = None
        t0 = perf_counter()
        for i in range(n):
            reply = await call(server, i)
        elapsed = perf_counter() - t0
        if reply != n - 1:
            done.set_exception(RuntimeError(f"bad reply {reply!r}"))
        else:
            done.set_result(elapsed)


async def call_process(node: metakit.Node, client: metakit.PID, p: Params) -> float:
    done: asyncio.Future[float] = asyncio.get_running_loop().create_future()
    gc.collect()
    node.send(client, (p.calls, done))
    elapsed: float = await _finish(done, p)
    return elapsed / p.calls


async def call_node(node: metakit.Node, server: metakit.PID, p: Params) -> float:
    n = p.calls
    call = node.call
    reply = None
    gc.collect()
    t0 = perf_counter()
    for i in range(n):
        reply = await call(server, i)
    elapsed = perf_counter() - t0
    if reply != n - 1:
        raise RuntimeError(f"bad reply {reply!r}")
    return elapsed / n


async def call_floor(p: Params) -> float:
    n = p.calls
    loop = asyncio.get_running_loop()
    q: deque[tuple[Any, asyncio.Future[Any]]] = deque()
    append = q.append
    popleft = q.popleft
    call_soon = loop.call_soon
    create_future = loop.create_future
    scheduled = False

    def handle_call(request: Any) -> Any:
        return request

    def drain() -> None:
        nonlocal scheduled
        pop = popleft
        while q:
            request, future = pop()
            future.set_result(handle_call(request))
        scheduled = False

    reply = None
    gc.collect()
    t0 = perf_counter()
    for i in range(n):
        future = create_future()
        append((i, future))
        if not scheduled:
            scheduled = True
            call_soon(drain)
        reply = await future
    elapsed = perf_counter() - t0
    if reply != n - 1:
        raise RuntimeError(f"bad reply {reply!r}")
    return elapsed / n


# -- the timed suite, one loop -------------------------------------------------


@dataclass
class Notes:
    backlog: dict[str, int]
    loop_class: str = ""
    debug: bool = False


async def suite(p: Params) -> tuple[dict[str, list[float]], Notes]:
    """Every timed measurement on the running loop: name -> samples."""
    loop = asyncio.get_running_loop()
    notes = Notes(backlog={}, loop_class=f"{type(loop).__module__}.{type(loop).__name__}")
    notes.debug = loop.get_debug()
    samples: dict[str, list[float]] = {}
    async with metakit.Node("bench@localhost") as node:
        server = await node.spawn(EchoServer)
        client = await node.spawn(CallClient, server)
        # A send run returns seconds for p.messages messages; a call run, seconds per call.
        sections: dict[str, Callable[[Params], Awaitable[float]]] = {
            "send_plain": lambda q: send_metakit(node, PlainSink, q, notes),
            "send_coro": lambda q: send_metakit(node, CoroutineSink, q, notes),
            "send_node": lambda q: send_metakit(node, PlainSink, q, notes, via_node=True),
            "floor_a": send_floor_a,
            "floor_b": send_floor_b,
            "call_process": lambda q: call_process(node, client, q),
            "call_node": lambda q: call_node(node, server, q),
            "call_floor": call_floor,
        }
        warmup = dataclasses.replace(
            p, messages=max(p.burst, p.messages // 10 // p.burst * p.burst), calls=p.calls // 10
        )
        for run in sections.values():
            await run(warmup)
        names = list(sections)
        for round_no in range(p.repeat):
            # Rotate the order so no variant always runs first (or after the slowest).
            shift = round_no % len(names)
            for name in names[shift:] + names[:shift]:
                value = await sections[name](p)
                if name.startswith(("send", "floor")):
                    value = p.messages / value  # msgs/s
                samples.setdefault(name, []).append(value)
    return samples, notes


# -- 3. memory per idle process (run in a fresh interpreter) -----------------------


class Idle(metakit.Process):
    def handle_message(self, sender: metakit.PID, message: Any) -> None:
        pass


def vmrss() -> int | None:
    """Resident set size in bytes, from /proc/self/status (None elsewhere)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _site(frame: tracemalloc.Frame) -> str:
    path = Path(frame.filename)
    try:
        shown = str(path.relative_to(REPO))
    except ValueError:
        shown = path.name
    return f"{shown}:{frame.lineno}"


async def memory_child(n: int) -> dict[str, Any]:
    # Pass 1, without tracemalloc: RSS growth and spawn time.
    gc.collect()
    rss0 = vmrss()
    async with metakit.Node("mem1@localhost") as node:
        t0 = perf_counter()
        for _ in range(n):
            await node.spawn(Idle)
        spawn_s = perf_counter() - t0
        gc.collect()
        rss1 = vmrss()
    # Pass 2: tracemalloc started before the node exists.
    gc.collect()
    tracemalloc.start()
    try:
        async with metakit.Node("mem2@localhost") as node:
            gc.collect()
            before = tracemalloc.take_snapshot()
            traced0 = tracemalloc.get_traced_memory()[0]  # includes `before` itself
            for _ in range(n):
                await node.spawn(Idle)
            gc.collect()
            traced1 = tracemalloc.get_traced_memory()[0]
            after = tracemalloc.take_snapshot()
            if len(node.processes()) != n:
                raise RuntimeError(f"expected {n} processes, found {len(node.processes())}")
    finally:
        tracemalloc.stop()
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__)]
    diff = after.filter_traces(ignore).compare_to(before.filter_traces(ignore), "lineno")
    top = [
        {"site": _site(d.traceback[0]), "bytes": d.size_diff, "blocks": d.count_diff}
        for d in diff[:5]
    ]
    return {
        "procs": n,
        "traced": traced1 - traced0,
        "rss": None if rss0 is None or rss1 is None else rss1 - rss0,
        "spawn_s": spawn_s,
        "top": top,
    }


def memory(loop_name: str, p: Params) -> dict[str, Any]:
    """Run memory_child in a fresh interpreter, so RSS is not blurred by the timed runs."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-child", loop_name]
    cmd += ["--procs", str(p.procs)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=p.timeout)
    if out.returncode:
        sys.stderr.write(out.stderr)
        raise RuntimeError(f"memory child ({loop_name}) exited with {out.returncode}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# -- driver and report -----------------------------------------------------------


def loop_factories() -> dict[str, Callable[[], asyncio.AbstractEventLoop] | None]:
    factories: dict[str, Callable[[], asyncio.AbstractEventLoop] | None] = {"asyncio": None}
    if uvloop is not None:
        factories["uvloop"] = uvloop.new_event_loop
    return factories


def run_on(loop_name: str, coro: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coro`` on a fresh loop of the given kind."""
    with asyncio.Runner(loop_factory=loop_factories()[loop_name]) as runner:
        return runner.run(coro)


@dataclass(frozen=True)
class Row:
    label: str
    unit: str
    key: str
    fmt: Callable[[float], str]
    target: str = ""
    check: Callable[[float], bool] | None = None


def _mega(v: float) -> str:
    return f"{v / 1e6:.2f} M"


def _ratio(v: float) -> str:
    return f"{v:.2f}x"


def _us(v: float) -> str:
    return f"{v * 1e6:.2f}"


def _bytes(v: float) -> str:
    return f"{v:.0f} B"


ROWS = [
    Row("send, plain handler", "msgs/s", "send_plain", _mega),
    Row("send, coroutine handler", "msgs/s", "send_coro", _mega),
    Row("floor A: deque + call_soon", "msgs/s", "floor_a", _mega),
    Row("floor B: asyncio.Queue", "msgs/s", "floor_b", _mega),
    Row(
        "ratio plain / floor A",
        "",
        "plain_a",
        _ratio,
        f">= {TARGET_SEND_RATIO:.2f}x",
        lambda v: v >= TARGET_SEND_RATIO,
    ),
    Row("ratio coroutine / floor A", "", "coro_a", _ratio),
    Row("send, node.send (outside a process)", "msgs/s", "send_node", _mega),
    Row(
        "ratio node.send / Process.send",
        "",
        "node_send",
        _ratio,
        f">= {TARGET_NODE_SEND_RATIO:.2f}x",
        lambda v: v >= TARGET_NODE_SEND_RATIO,
    ),
    Row("ratio plain / floor B", "", "plain_b", _ratio),
    Row("ratio coroutine / floor B", "", "coro_b", _ratio),
    Row("call, Process.call", "us/call", "call_process", _us),
    Row("call, node.call (outside)", "us/call", "call_node", _us),
    Row("floor: future + deque + call_soon", "us/call", "call_floor", _us),
    Row(
        "ratio Process.call / floor",
        "",
        "call_ratio",
        _ratio,
        f"<= {TARGET_CALL_RATIO:.2f}x",
        lambda v: v <= TARGET_CALL_RATIO,
    ),
    Row("ratio node.call / floor", "", "node_call_ratio", _ratio),
    Row(
        "idle process, tracemalloc",
        "B/proc",
        "mem_traced",
        _bytes,
        f"<= {TARGET_PROC_BYTES} B",
        lambda v: v <= TARGET_PROC_BYTES,
    ),
    Row("idle process, VmRSS delta", "B/proc", "mem_rss", _bytes),
]


def paired(samples: dict[str, list[float]], a: str, b: str) -> float:
    """The median over rounds of a / b, each ratio from one round (same conditions)."""
    return statistics.median(x / y for x, y in zip(samples[a], samples[b], strict=True))


def summarize(samples: dict[str, list[float]], mem: dict[str, Any]) -> dict[str, float]:
    best = {k: (max(v) if k.startswith(("send", "floor")) else min(v)) for k, v in samples.items()}
    best["plain_a"] = paired(samples, "send_plain", "floor_a")
    best["coro_a"] = paired(samples, "send_coro", "floor_a")
    best["plain_b"] = paired(samples, "send_plain", "floor_b")
    best["coro_b"] = paired(samples, "send_coro", "floor_b")
    best["node_send"] = paired(samples, "send_node", "send_plain")
    best["call_ratio"] = paired(samples, "call_process", "call_floor")
    best["node_call_ratio"] = paired(samples, "call_node", "call_floor")
    best["mem_traced"] = mem["traced"] / mem["procs"]
    if mem["rss"] is not None:
        best["mem_rss"] = mem["rss"] / mem["procs"]
    return best


def report(
    p: Params,
    results: dict[str, dict[str, float]],
    raw: dict[str, tuple[dict[str, list[float]], Notes, dict[str, Any]]],
    verbose: bool,
) -> None:
    loops = list(results)
    versions = f"python {platform.python_version()}, metakit {metakit.__version__}"
    if uvloop is not None:
        versions += f", uvloop {getattr(uvloop, '__version__', '?')}"
    title = (
        f"metakit messaging benchmark  ({versions}, {os.cpu_count()} cores, "
        f"best of {p.repeat} runs; ratios: medians of paired rounds)"
    )
    width = 44
    header = f"{'':<{width + 10}}" + "".join(f"{'loop=' + name:>15}" for name in loops)
    print()
    print(title)
    print(header + "   target")
    print("-" * (len(header) + 24))
    for row in ROWS:
        line = f"{row.label:<{width}}{row.unit:<10}"
        for name in loops:
            value = results[name].get(row.key)
            line += f"{'n/a' if value is None else row.fmt(value):>15}"
        if row.check is not None:
            missed = [
                name
                for name in loops
                if row.key in results[name] and not row.check(results[name][row.key])
            ]
            verdict = (
                "PASS"
                if not missed
                else "MISS" + (f" ({', '.join(missed)})" if len(missed) < len(loops) else "")
            )
            line += f"   {row.target:<10} {verdict}"
        print(line)
    print()
    print(
        f"sizes: {p.messages:,} messages per send run in bursts of {p.burst}, "
        f"{p.calls:,} calls per call run, {p.procs:,} idle processes"
    )
    all_notes = {name: raw[name][1] for name in loops}
    print("loops: " + ", ".join(f"{name} = {n.loop_class}" for name, n in all_notes.items()))
    backlogs = "; ".join(
        f"{name} {n.backlog.get('PlainSink', 0):,} / {n.backlog.get('CoroutineSink', 0):,}"
        for name, n in all_notes.items()
    )
    print(f"metakit receiver backlog when its sender finished (plain / coroutine): {backlogs} msgs")
    for name, n in all_notes.items():
        if n.debug:
            print(f"WARNING: the {name} loop runs in debug mode; its timings mean nothing")
    if uvloop is None:
        print("uvloop is not installed: its column is missing")
    if not verbose:
        return
    for name in loops:
        samples, _, mem = raw[name]
        print(f"\n[{name}] every sample (best first), median:")
        for key, values in samples.items():
            per_s = key.startswith(("send", "floor"))
            fmt = _mega if per_s else _us
            ordered = sorted(values, reverse=per_s)
            shown = " ".join(fmt(v) for v in ordered)
            print(f"  {key:<14} {shown}   median {fmt(statistics.median(values))}")
        print(f"[{name}] spawn: {mem['spawn_s'] / mem['procs'] * 1e6:.1f} us/process (no tracing)")
        print(f"[{name}] tracemalloc top 5 by line, per idle process:")
        for site in mem["top"]:
            print(
                f"  {site['bytes'] / mem['procs']:8.1f} B  "
                f"{site['blocks'] / mem['procs']:5.2f} blocks  {site['site']}"
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--verbose", action="store_true", help="samples and allocation sites")
    parser.add_argument("--loop", choices=["asyncio", "uvloop", "both"], default="both")
    parser.add_argument("--repeat", type=int, help="timed runs per measurement")
    parser.add_argument("--burst", type=int, help="messages per sender invocation (1000)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON here")
    parser.add_argument("--memory-child", choices=["asyncio", "uvloop"], help=argparse.SUPPRESS)
    parser.add_argument("--procs", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    p = QUICK if args.quick else FULL
    if args.repeat:
        p = dataclasses.replace(p, repeat=max(1, args.repeat))
    if args.burst:
        burst = max(1, args.burst)
        p = dataclasses.replace(p, burst=burst, messages=-(-p.messages // burst) * burst)
    if args.memory_child:
        result = run_on(args.memory_child, memory_child(args.procs or p.procs))
        print(json.dumps(result))
        return 0

    available = loop_factories()
    wanted = ["asyncio", "uvloop"] if args.loop == "both" else [args.loop]
    loops = [name for name in wanted if name in available]
    if not loops:
        parser.error(f"loop {args.loop} is not available")
    results: dict[str, dict[str, float]] = {}
    raw: dict[str, tuple[dict[str, list[float]], Notes, dict[str, Any]]] = {}
    t0 = perf_counter()
    for name in loops:
        mem = memory(name, p)
        samples, notes = run_on(name, suite(p))
        raw[name] = (samples, notes, mem)
        results[name] = summarize(samples, mem)
    report(p, results, raw, args.verbose)
    print(f"\n(total {perf_counter() - t0:.1f} s)")
    if args.json:
        keys = {
            "send": "plain_a",
            "node_send": "node_send",
            "call": "call_ratio",
            "node_call": "node_call_ratio",
            "idle_process_bytes": "mem_traced",
        }
        rows = {
            key: {name: results.get(name, {}).get(src) for name in ("asyncio", "uvloop")}
            for key, src in keys.items()
        }
        command = "python bench/messaging.py " + " ".join(sys.argv[1:])
        out = {"bench": "messaging", "command": command.strip(), "rows": rows}
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
