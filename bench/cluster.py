"""Cluster benchmark: metakit nodes talking over NATS vs raw nats-py doing the same job.

Two OS processes, a sender and a receiver, each with a metakit node
(``Cluster(url, namespace="bench", heartbeat=1.0)``) *and* a plain nats-py
connection, on the same event loop, talk through one nats-server
(``metakit.cluster.local_server()``) started by this script, which only
orchestrates. The sender is pinned to CPU 0, the receiver to CPU 1 (every
thread, ``os.sched_setaffinity``); the nats-server shares both CPUs (Go
spreads its threads over them; ``--server-cpus`` pins it). Everything runs
on the stdlib asyncio loop and on uvloop (``--loop``); both sides of a
comparison always run on the same loop, in the same two processes, one
after the other, so the raw side gets the node's malloc tuning too
(DESIGN.md §6).

What is measured:

1. ``send`` throughput, messages/s from the first send (sender's clock) to
   the last receipt (receiver's clock; CLOCK_MONOTONIC is system-wide), two
   payloads: a small tuple ``(i, b"x" * 32)`` and 1 KiB of bytes.

   * ``metakit``: a Process on the sender node ``self.send``\\ s N messages to a
     counting Process on the receiver node (found with ``whereis`` of its
     cluster name). metakit encodes each frame at ``send`` and publishes
     what a loop turn queued for a node as one NATS message (DESIGN.md §8).
   * ``raw``: the natural nats-py program, ``await nc.publish(subject,
     msgpack.packb(value))`` per message; the receiver subscribes with a
     callback that ``msgpack.unpackb``\\ s and counts. This is the reference
     for the target: "batch per loop turn, not a publish per message" is
     how metakit is meant to beat the per-message cost of the wire, so the
     raw side is not batched by hand.
   * ``raw-batched`` (a reference, no target): what hand-batching costs,
     one ``packb`` of a chunk's values per publish (split under the
     server's ``max_payload``); the receiver unpacks the list and counts
     each item. It shows the wire's own ceiling.

   Every variant has the same program shape: the sender sends in chunks of
   ``--chunk`` (1000) messages with ``await asyncio.sleep(0)`` after each, and
   every ``--window`` (5000) messages it asks the receiver how many it has
   (metakit: ``self.call(sink, ("upto", k))``, ordered behind the sends;
   raw: ``nc.request`` to a responder that answers once its count reaches
   k), then waits for the answer to the *previous* window: at most two
   windows are in flight, so neither side just buffers in memory. The
   final answer carries the receiver's count and its time of the last
   receipt.

2. ``call`` round trip, sequential: ``await self.call(echo, (i, b"x" * 32))``
   from a Process on the sender node to a Process on the receiver node
   whose ``handle_call`` returns the request (``metakit``), the same with
   ``await node.call(...)`` from outside any process (``node.call``, a
   reference), and ``await nc.request(subject, packb(value))`` to a
   responder doing ``await msg.respond(msg.data)``, the reply unpacked
   (``raw``). p50/p99/mean in µs.

3. Node-down detection: a watcher node and a victim node (a receiver-role
   process) with the same heartbeat (1.0 s, and 0.2 s); a Process on the
   watcher ``monitor``\\ s the victim's counting Process; after a random
   pause of up to one heartbeat (the kill's phase against the heartbeats),
   the victim is SIGKILLed; the time is from the kill to the ``Down``
   reaching the monitoring Process (target: <= 3 x heartbeat, DESIGN.md §8).

Rounds: after one unmeasured warm-up run of each variant, ``--repeat``
rounds go through the variants, the order reversed every round; the tables
show each variant's best run, the ratios are the median over the rounds of
metakit's run / raw's run in the same round (each round's ratio printed
beside). CPU: utime + stime of the sender, receiver and nats-server from
``/proc/PID/stat`` (all threads, 10 ms ticks) around each run, as % of one
core and µs per message (with the sender's and receiver's kernel part and
their minor page faults per 1000 messages: big buffers that glibc serves
with mmap show there); ``oth%`` is what other programs took meanwhile
(``/proc/stat``). A run during which others took more than 10 % of a core
is done again (``--retries``); the script waits for an idle machine before
each loop (``--quiet-wait``). ``fr/pub`` is frames per NATS message from
``Cluster.statistics()``.

Targets: metakit send >= 0.8x raw msgs/s (both payloads), metakit call p50
<= 1.3x raw p50, node down <= 3 x heartbeat. A miss prints ``MISS``; only
errors make the exit status non-zero.

Run from the repository root (Linux; ``pip install 'metakit[cluster]'``)::

    python bench/cluster.py [--quick] [--verbose] [--loop asyncio|uvloop|both]
                            [--repeat N] [--phase send|call|down ...]
                            [--payload small|1k ...] [--profile]

A full run takes 4-6 minutes on a quiet machine. ``--quick`` is a smoke
test (small runs, one round, heartbeat 0.2 only; ~10 s). ``--verbose``
adds every run. ``--phase`` and ``--payload`` (repeatable) run a part.
``--profile`` runs the sender and receiver under cProfile during the
metakit runs only (the figures are then not comparable) and prints their
hottest functions, tottime by package and metakit's own functions.
Internally the two sides are this script run as ``--child
sender|receiver``: it prints one JSON line when ready, answers JSON command
lines on stdin, and stops when stdin closes; it dies with this script
(``PR_SET_PDEATHSIG``). Ctrl-C stops every child and the server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import os
import platform
import pstats
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from statistics import median
from typing import Any

import msgpack  # type: ignore[import-untyped, unused-ignore]
from _harness import host_busy, proc_cpu, verdict, wait_quiet

HERE = Path(__file__).resolve().parent
try:
    import metakit
    from metakit.cluster import Cluster, local_server
except ImportError:  # not installed: run from a checkout
    sys.path.insert(0, str(HERE.parent))
    import metakit
    from metakit.cluster import Cluster, local_server

NAMESPACE = "bench"
LOOPS = ("asyncio", "uvloop")
PAYLOADS = ("small", "1k")
SEND_VARIANTS = ("metakit", "raw", "raw-batched")
CALL_VARIANTS = ("metakit", "node.call", "raw")
SEND_TARGET = 0.8  # metakit msgs/s / raw, at least
CALL_TARGET = 1.3  # metakit call p50 / raw, at most
DOWN_FACTOR = 3.0  # node down within this many heartbeats
NOISY = 10.0  # a run during which other programs took more % of a core is done again
X32 = b"x" * 32
KIB = b"x" * 1024
# Raw nats-py subjects (metakit's are mk.bench.*).
RAW_SINK, RAW_BATCH, RAW_WAIT, RAW_ECHO = "raw.sink", "raw.batch", "raw.wait", "raw.echo"


def make_value(payload: str) -> Callable[[int], Any]:
    """The value of message ``i`` (the same on every side)."""
    if payload == "small":
        return lambda i: (i, X32)
    return lambda i: KIB


@dataclass(frozen=True)
class Params:
    messages: dict[str, int]  # per send run, by payload
    calls: int  # per call run
    repeat: int  # rounds
    kills: int  # per heartbeat, per loop
    heartbeats: tuple[float, ...]
    retries: int
    quiet_wait: float
    timeout: float  # seconds before a run that has not finished is an error


FULL = Params(
    messages={"small": 200_000, "1k": 100_000},
    calls=10_000,
    repeat=5,
    kills=3,
    heartbeats=(1.0, 0.2),
    retries=1,
    quiet_wait=20.0,
    timeout=120.0,
)
QUICK = Params(
    messages={"small": 20_000, "1k": 10_000},
    calls=1_000,
    repeat=1,
    kills=1,
    heartbeats=(0.2,),
    retries=0,
    quiet_wait=2.0,
    timeout=30.0,
)


# ============================================================ the child processes


class Sink(metakit.Process):
    """Counts what it is sent; ``("upto", k)`` answers once it has k messages."""

    def init(self) -> None:
        self.count = 0
        self.n = 0
        self.t_last = 0.0
        self.want = -1
        self.waiting: metakit.Caller | None = None

    def handle_message(self, sender: metakit.PID, message: Any) -> None:
        self.count = c = self.count + 1
        if c == self.n:
            self.t_last = time.monotonic()
        if c == self.want:  # never with metakit's ordering, kept for the same work
            assert self.waiting is not None
            self.want = -1
            self.reply(self.waiting, (c, self.t_last))

    def handle_call(self, sender: metakit.Caller, request: Any) -> Any:
        op, arg = request
        if op == "arm":
            self.count, self.n, self.t_last = 0, arg, 0.0
            return None
        if op == "upto":
            if self.count >= arg:
                return (self.count, self.t_last)
            self.want, self.waiting = arg, sender
            return metakit.NO_REPLY
        raise ValueError(f"unknown request {request!r}")


class Echo(metakit.Process):
    def handle_call(self, sender: metakit.Caller, request: Any) -> Any:
        return request


class Blaster(metakit.Process):
    """The sender node's side of the metakit runs."""

    def init(self, sink: metakit.PID, echo: metakit.PID) -> None:
        self.sink = sink
        self.echo = echo

    async def handle_call(self, sender: metakit.Caller, request: Any) -> Any:
        op, *args = request
        if op == "send":
            return await self._send(*args)
        if op == "call":
            return await self._calls(*args)
        raise ValueError(f"unknown request {request!r}")

    async def _send(self, payload: str, n: int, chunk: int, window: int, timeout: float) -> Any:
        make = make_value(payload)
        send = self.send
        call = self.call
        sink = self.sink
        prev: asyncio.Future[Any] | None = None
        t0 = time.monotonic()
        for start in range(0, n, chunk):
            end = min(start + chunk, n)
            for i in range(start, end):
                send(sink, make(i))
            if end % window == 0 or end == n:
                ask = call(sink, ("upto", end), timeout=timeout)
                if prev is not None:
                    await prev  # at most two windows in flight
                prev = ask
            await asyncio.sleep(0)
        assert prev is not None
        count, t_last = await prev
        return t0, t_last, count

    async def _calls(self, m: int, timeout: float) -> list[int]:
        call = self.call
        echo = self.echo
        clock = time.perf_counter_ns
        lat = [0] * m
        reply = None
        for i in range(m):
            t = clock()
            reply = await call(echo, (i, X32), timeout=timeout)
            lat[i] = clock() - t
        if reply != (m - 1, X32):
            raise RuntimeError(f"bad reply {reply!r}")
        return lat


class Watch(metakit.Process):
    """Monitors a process of another node; its Down goes to ``downs`` with the time."""

    def init(self, downs: asyncio.Queue[tuple[float, str]]) -> None:
        self.downs = downs

    async def handle_call(self, sender: metakit.Caller, request: Any) -> Any:
        _, target = request
        self.monitor(target)
        # Monitors and messages from one process to another take effect in
        # order (DESIGN.md §8): once this answers, the monitor is in place.
        await self.call(target, ("upto", 0))
        return True

    def handle_message(self, sender: metakit.PID, message: Any) -> None:
        if isinstance(message, metakit.Down):
            self.downs.put_nowait((time.monotonic(), repr(message.reason)))


class RawSink:
    """The receiver's raw nats-py side: the same counting as :class:`Sink`."""

    def __init__(self) -> None:
        self.count = 0
        self.n = 0
        self.t_last = 0.0
        self.want = -1
        self.waiter: asyncio.Future[None] | None = None

    async def on_msg(self, msg: Any) -> None:
        msgpack.unpackb(msg.data, use_list=False)
        self.count = c = self.count + 1
        if c == self.n:
            self.t_last = time.monotonic()
        if c == self.want and self.waiter is not None:
            self.waiter.set_result(None)

    async def on_batch(self, msg: Any) -> None:
        for _value in msgpack.unpackb(msg.data, use_list=False):
            self.count = c = self.count + 1
            if c == self.n:
                self.t_last = time.monotonic()
            if c == self.want and self.waiter is not None:
                self.waiter.set_result(None)

    async def on_wait(self, msg: Any) -> None:
        want = msgpack.unpackb(msg.data)
        if self.count < want:
            self.want = want
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(self.waiter, 60.0)
            finally:
                self.want, self.waiter = -1, None
        await msg.respond(msgpack.packb((self.count, self.t_last)))

    async def on_echo(self, msg: Any) -> None:
        await msg.respond(msg.data)


async def raw_send(
    nc: Any, variant: str, payload: str, n: int, chunk: int, window: int, timeout: float
) -> Any:
    """The raw sender: the same shape as :meth:`Blaster._send`."""
    make = make_value(payload)
    packb = msgpack.packb
    publish = nc.publish
    per = chunk
    if variant == "raw-batched":  # as many values per publish as max_payload takes
        per = max(1, min(chunk, (nc.max_payload - 64) // (len(packb(make(0))) + 1)))
    prev: asyncio.Future[Any] | None = None
    t0 = time.monotonic()
    for start in range(0, n, chunk):
        end = min(start + chunk, n)
        if variant == "raw":
            for i in range(start, end):
                await publish(RAW_SINK, packb(make(i)))
        else:
            for first in range(start, end, per):
                values = [make(i) for i in range(first, min(first + per, end))]
                await publish(RAW_BATCH, packb(values))
        if end % window == 0 or end == n:
            ask = asyncio.ensure_future(nc.request(RAW_WAIT, packb(end), timeout=timeout))
            if prev is not None:
                await prev
            prev = ask
        await asyncio.sleep(0)
    assert prev is not None
    count, t_last = msgpack.unpackb((await prev).data)
    return t0, t_last, count


async def raw_calls(nc: Any, m: int, timeout: float) -> list[int]:
    request = nc.request
    packb, unpackb = msgpack.packb, msgpack.unpackb
    clock = time.perf_counter_ns
    lat = [0] * m
    reply = None
    for i in range(m):
        t = clock()
        msg = await request(RAW_ECHO, packb((i, X32)), timeout=timeout)
        reply = unpackb(msg.data, use_list=False)
        lat[i] = clock() - t
    if reply != (m - 1, X32):
        raise RuntimeError(f"bad reply {reply!r}")
    return lat


async def node_calls(node: metakit.Node, echo: metakit.PID, m: int, timeout: float) -> list[int]:
    call = node.call
    clock = time.perf_counter_ns
    lat = [0] * m
    reply = None
    for i in range(m):
        t = clock()
        reply = await call(echo, (i, X32), timeout=timeout)
        lat[i] = clock() - t
    if reply != (m - 1, X32):
        raise RuntimeError(f"bad reply {reply!r}")
    return lat


def latency_summary(lat: list[int]) -> dict[str, float]:
    s = sorted(lat)
    m = len(s)
    return {
        "p50": s[m // 2] / 1e3,
        "p99": s[min(m - 1, int(m * 0.99))] / 1e3,
        "mean": sum(s) / m / 1e3,
        "max": s[-1] / 1e3,
    }


async def until_found(node: metakit.Node, name: str, timeout: float) -> metakit.PID:
    """Poll ``whereis`` (a cluster name shows within a heartbeat) until it answers."""
    deadline = time.monotonic() + timeout
    while (pid := node.whereis(name)) is None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {name!r} in the cluster after {timeout} s")
        await asyncio.sleep(0.01)
    return pid


class ChildSide:
    """One child process: a node and a raw connection; commands from stdin."""

    def __init__(self, opts: argparse.Namespace) -> None:
        self.opts = opts
        self.suffix = opts.suffix
        self.profiler = cProfile.Profile() if opts.profile_to else None
        self.downs: asyncio.Queue[tuple[float, str]] = asyncio.Queue()
        self.blaster: metakit.PID | None = None
        self.echo: metakit.PID | None = None

    async def start(self) -> dict[str, Any]:
        import nats

        opts = self.opts
        self.cluster = Cluster(opts.url, namespace=NAMESPACE, heartbeat=opts.heartbeat)
        self.node = await metakit.Node(opts.node, cluster=self.cluster).start()
        self.nc = await nats.connect(opts.url, name=f"{opts.node}-raw")
        if opts.child == "receiver":
            self.raw = RawSink()
            await self.nc.subscribe(RAW_SINK, cb=self.raw.on_msg)
            await self.nc.subscribe(RAW_BATCH, cb=self.raw.on_batch)
            await self.nc.subscribe(RAW_WAIT, cb=self.raw.on_wait)
            await self.nc.subscribe(RAW_ECHO, cb=self.raw.on_echo)
            await self.nc.flush()
            self.sink = await self.node.spawn(Sink)
            await self.node.register_name("sink" + self.suffix, self.sink, cluster=True)
            echo = await self.node.spawn(Echo)
            await self.node.register_name("echo" + self.suffix, echo, cluster=True)
        else:
            self.watch = await self.node.spawn(Watch, self.downs)
        return {"pid": os.getpid()}

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.nc.close()
        await self.node.stop()

    def profiling(self, on: bool) -> None:
        if self.profiler is not None:
            self.profiler.enable() if on else self.profiler.disable()

    def stats(self) -> dict[str, int]:
        s = self.cluster.statistics()
        return {
            "messages_out": s.messages_out,
            "batches_out": s.batches_out,
            "messages_in": s.messages_in,
            "batches_in": s.batches_in,
        }

    async def handle(self, cmd: dict[str, Any]) -> dict[str, Any]:
        op = cmd["cmd"]
        timeout = float(cmd.get("timeout", 60.0))
        if op == "arm":  # receiver: before a run
            self.raw.count, self.raw.n, self.raw.t_last = 0, cmd.get("n", 0), 0.0
            await self.node.call(self.sink, ("arm", cmd.get("n", 0)))
            self.profiling(cmd["variant"] in ("metakit", "node.call"))
            return {}
        if op == "disarm":  # receiver: after a run
            self.profiling(False)
            return {}
        if op == "attach":  # sender: find the receiver's processes
            sink = await until_found(self.node, "sink" + cmd["suffix"], timeout)
            self.echo = await until_found(self.node, "echo" + cmd["suffix"], timeout)
            self.blaster = await self.node.spawn(Blaster, sink, self.echo)
            return {}
        if op == "send":
            before = self.stats()
            args = (cmd["payload"], cmd["n"], cmd["chunk"], cmd["window"], timeout)
            if cmd["variant"] == "metakit":
                assert self.blaster is not None
                self.profiling(True)
                try:
                    t0, t_last, count = await self.node.call(
                        self.blaster, ("send", *args), timeout=timeout
                    )
                finally:
                    self.profiling(False)
            else:
                t0, t_last, count = await raw_send(self.nc, cmd["variant"], *args)
            after = self.stats()
            return {"t0": t0, "t_last": t_last, "count": count, "before": before, "after": after}
        if op == "call":
            m = cmd["m"]
            before = self.stats()
            if cmd["variant"] == "metakit":
                assert self.blaster is not None
                self.profiling(True)
                try:
                    lat = await self.node.call(self.blaster, ("call", m, 5.0), timeout=timeout)
                finally:
                    self.profiling(False)
            elif cmd["variant"] == "node.call":
                assert self.echo is not None
                self.profiling(True)
                try:
                    lat = await node_calls(self.node, self.echo, m, 5.0)
                finally:
                    self.profiling(False)
            else:
                lat = await raw_calls(self.nc, m, 5.0)
            return {**latency_summary(lat), "before": before, "after": self.stats()}
        if op == "watch":  # watcher: monitor the victim's sink
            while not self.downs.empty():
                self.downs.get_nowait()
            target = await until_found(self.node, cmd["name"], timeout)
            await self.node.call(self.watch, ("watch", target), timeout=timeout)
            return {}
        if op == "wait_down":
            t, reason = await asyncio.wait_for(self.downs.get(), timeout)
            return {"t": t, "reason": reason}
        raise ValueError(f"unknown command {op!r}")


def _die_with_parent(parent: int) -> None:
    """Linux: SIGTERM when the driver dies, so no child outlives it."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before the prctl
        sys.exit(1)


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def child_async(opts: argparse.Namespace) -> None:
    side = ChildSide(opts)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: os._exit(1))  # the driver is gone or gives up
    try:
        ready = await side.start()
    except Exception as exc:
        emit({"ok": False, "error": f"start failed: {exc!r}"})
        raise
    emit({"ok": True, "ready": True, **ready})
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    try:
        while line := await reader.readline():
            try:
                emit({"ok": True, **await side.handle(json.loads(line))})
            except Exception as exc:
                emit({"ok": False, "error": repr(exc)})
    finally:
        transport.close()
        await side.stop()
        if side.profiler is not None:
            side.profiler.dump_stats(opts.profile_to)


def child_main(opts: argparse.Namespace) -> int:
    _die_with_parent(opts.parent)
    factory = None
    if opts.loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(child_async(opts))
    return 0


# ============================================================ the driver


def pin_threads(pid: int, cpus: set[int]) -> None:
    """Pin every thread of ``pid`` (affinity is per thread on Linux; new ones inherit it)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(tid), cpus)


def affinity(pid: int) -> str:
    """The CPUs of every thread of ``pid``: "0", "0,1", or "mixed:..." if they differ."""
    seen = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):
            seen.add(",".join(map(str, sorted(os.sched_getaffinity(int(tid))))))
    return seen.pop() if len(seen) == 1 else "mixed:" + "/".join(sorted(seen))


class Child:
    """A ``--child`` process: pinned, JSON lines in and out, stopped by closing its stdin."""

    def __init__(self, proc: asyncio.subprocess.Process, name: str) -> None:
        self.proc = proc
        self.name = name

    @classmethod
    async def start(
        cls,
        opts: argparse.Namespace,
        role: str,
        node: str,
        loop: str,
        cpu: int | None,
        *,
        heartbeat: float = 1.0,
        suffix: str = "",
        profile_to: str | None = None,
    ) -> Child:
        argv = [sys.executable, str(Path(__file__).resolve()), "--child", role, "--loop", loop]
        argv += ["--url", opts.url, "--node", node, "--heartbeat", str(heartbeat)]
        argv += ["--parent", str(os.getpid()), f"--suffix={suffix}"]  # it may start with "-"
        if profile_to:
            argv += ["--profile-to", profile_to]
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            start_new_session=True,  # a Ctrl-C reaches the driver only, which stops it
        )
        child = cls(proc, node)
        if cpu is not None:
            pin_threads(proc.pid, {cpu})  # before its interpreter has started any thread
        try:
            await child.read(30.0)
        except BaseException:
            child.kill()  # not started (or interrupted): no clean stop to wait for
            await child.proc.wait()
            raise
        if cpu is not None:
            pin_threads(proc.pid, {cpu})  # and any thread made meanwhile
        return child

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def read(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            await self.proc.wait()
            raise RuntimeError(f"{self.name} exited with status {self.proc.returncode}")
        answer: dict[str, Any] = json.loads(line)
        if not answer.pop("ok"):
            raise RuntimeError(f"{self.name}: {answer['error']}")
        return answer

    async def ask(self, timeout: float, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps({**cmd, "timeout": timeout}) + "\n").encode())
        await self.proc.stdin.drain()
        return await self.read(timeout + 5.0)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()

    async def close(self, timeout: float = 10.0) -> None:
        """Close its stdin (a clean stop) and wait; SIGKILL if it takes too long."""
        if self.proc.returncode is None and self.proc.stdin is not None:
            with contextlib.suppress(Exception):
                self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except (TimeoutError, asyncio.CancelledError):
            self.kill()
            await self.proc.wait()
            raise


def proc_sys_faults(pid: int) -> tuple[float, int]:
    """stime (seconds) and minor page faults of a process (all threads), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[12]) / os.sysconf("SC_CLK_TCK"), int(fields[7])


@dataclass
class Cpu:
    """CPU seconds taken during a run (and their sys part), page faults, and its wall time."""

    wall: float
    sender: float
    receiver: float
    server: float
    other: float
    sender_sys: float
    receiver_sys: float
    sender_faults: int
    receiver_faults: int

    def pct(self, seconds: float) -> float:
        return 100 * seconds / self.wall if self.wall > 0 else 0.0


class Meter:
    """CPU of the sender, the receiver, the nats-server and everything else, around a run."""

    def __init__(self, sender: int, receiver: int, server: int) -> None:
        self.pids = (sender, receiver, server, os.getpid())

    def snap(self) -> tuple[float, ...]:
        extra = [x for pid in self.pids[:2] for x in proc_sys_faults(pid)]
        return (time.monotonic(), *(proc_cpu(p) for p in self.pids), host_busy(), *extra)

    @staticmethod
    def diff(a: tuple[float, ...], b: tuple[float, ...]) -> Cpu:
        d = [y - x for x, y in zip(a, b, strict=True)]
        wall, snd, rcv, srv, me, busy, snd_sys, snd_flt, rcv_sys, rcv_flt = d
        other = max(0.0, busy - snd - rcv - srv - me)
        return Cpu(wall, snd, rcv, srv, other, snd_sys, rcv_sys, int(snd_flt), int(rcv_flt))


@dataclass
class SendRun:
    variant: str
    payload: str
    n: int
    seconds: float
    cpu: Cpu
    frames_per_pub: float | None  # metakit: frames per NATS message published

    @property
    def rate(self) -> float:
        return self.n / self.seconds

    def us_per_msg(self, seconds: float) -> float:
        return 1e6 * seconds / self.n


@dataclass
class CallRun:
    variant: str
    m: int
    p50: float
    p99: float
    mean: float
    cpu: Cpu

    def us_per_call(self, seconds: float) -> float:
        return 1e6 * seconds / self.m


@dataclass
class LoopResult:
    loop: str
    sends: dict[tuple[str, str], list[SendRun]] = field(default_factory=dict)
    calls: dict[str, list[CallRun]] = field(default_factory=dict)
    downs: dict[float, list[float]] = field(default_factory=dict)
    down_reasons: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)
    redone: int = 0


class Bench:
    def __init__(self, opts: argparse.Namespace, p: Params, server_pid: int) -> None:
        self.opts = opts
        self.p = p
        self.server_pid = server_pid
        self.children: list[Child] = []
        self.profiles: dict[str, str] = {}

    async def spawn(self, role: str, node: str, loop: str, cpu: int | None, **kw: Any) -> Child:
        child = await Child.start(self.opts, role, node, loop, cpu, **kw)
        self.children.append(child)
        return child

    async def retire(self, child: Child) -> None:
        self.children.remove(child)
        await child.close()

    async def close_all(self, clean: bool) -> None:
        """Stop every child: cleanly after a finished run, at once (SIGKILL) after an error
        or a Ctrl-C (its nats-server may be gone already, and a clean stop would wait)."""
        for child in list(self.children):
            if not clean:
                child.kill()
            with contextlib.suppress(Exception):
                await child.close()
        self.children.clear()

    # -- one run --------------------------------------------------------------------

    async def send_run(
        self, snd: Child, rcv: Child, meter: Meter, variant: str, payload: str, n: int
    ) -> SendRun:
        t = self.p.timeout
        await rcv.ask(t, cmd="arm", variant=variant, n=n)
        a = meter.snap()
        chunk, window = self.opts.chunk, self.opts.window
        res = await snd.ask(
            t, cmd="send", variant=variant, payload=payload, n=n, chunk=chunk, window=window
        )
        b = meter.snap()
        await rcv.ask(t, cmd="disarm")
        if res["count"] != n or res["t_last"] <= res["t0"]:
            raise RuntimeError(f"{variant}/{payload}: the receiver counted {res['count']} of {n}")
        fpp = None
        if variant == "metakit":
            msgs = res["after"]["messages_out"] - res["before"]["messages_out"]
            pubs = res["after"]["batches_out"] - res["before"]["batches_out"]
            fpp = msgs / pubs if pubs else None
        return SendRun(variant, payload, n, res["t_last"] - res["t0"], meter.diff(a, b), fpp)

    async def call_run(self, snd: Child, rcv: Child, meter: Meter, variant: str, m: int) -> CallRun:
        t = self.p.timeout
        await rcv.ask(t, cmd="arm", variant=variant, n=0)
        a = meter.snap()
        res = await snd.ask(t, cmd="call", variant=variant, m=m)
        b = meter.snap()
        await rcv.ask(t, cmd="disarm")
        return CallRun(variant, m, res["p50"], res["p99"], res["mean"], meter.diff(a, b))

    async def again(self, result: LoopResult, run: Callable[[], Any]) -> Any:
        """A run, done again (up to --retries) while other programs took > NOISY % of a core."""
        best = None
        for attempt in range(self.p.retries + 1):
            r = await run()
            if best is None or r.cpu.other < best.cpu.other:
                best = r
            if r.cpu.pct(r.cpu.other) <= NOISY:
                break
            if attempt < self.p.retries:
                result.redone += 1
                await asyncio.to_thread(wait_quiet, 3.0)
        return best

    # -- one loop -------------------------------------------------------------------

    async def measure_loop(self, loop: str) -> LoopResult:
        opts, p = self.opts, self.p
        result = LoopResult(loop)
        waited, busy = await asyncio.to_thread(wait_quiet, p.quiet_wait)
        if busy is not None:
            result.notes.append(f"the machine was busy ({100 * busy:.0f}% of a core) at the start")
        elif waited >= 1:
            result.notes.append(f"waited {waited:.0f} s for other programs to go idle")
        if opts.phases & {"send", "call"}:
            await self.pair_phases(loop, result)
        if "down" in opts.phases:
            await self.node_down(loop, result)
        return result

    async def pair_phases(self, loop: str, result: LoopResult) -> None:
        """The send and call rounds, between one sender and one receiver process."""
        opts, p = self.opts, self.p
        sends = "send" in opts.phases
        calls = "call" in opts.phases
        prof = {}
        if opts.profile_dir:
            prof = {r: str(Path(opts.profile_dir) / f"{r}-{loop}.prof") for r in ("snd", "rcv")}
            self.profiles.update({f"sender/{loop}": prof["snd"], f"receiver/{loop}": prof["rcv"]})
        print(f"  {loop}: starting the sender and the receiver...", file=sys.stderr, flush=True)
        rcv = await self.spawn(
            "receiver", f"recv-{loop}@bench", loop, opts.receiver_cpu, profile_to=prof.get("rcv")
        )
        snd = await self.spawn(
            "sender", f"send-{loop}@bench", loop, opts.sender_cpu, profile_to=prof.get("snd")
        )
        await snd.ask(30.0, cmd="attach", suffix="")
        result.notes.append(
            f"pinning: sender CPU {affinity(snd.pid)}, receiver CPU {affinity(rcv.pid)}, "
            f"nats-server CPU {affinity(self.server_pid)}"
        )
        meter = Meter(snd.pid, rcv.pid, self.server_pid)
        print(f"  {loop}: warm-up...", file=sys.stderr, flush=True)
        for payload in opts.payloads if sends else ():
            for v in SEND_VARIANTS:
                await self.send_run(snd, rcv, meter, v, payload, max(1, p.messages[payload] // 10))
        for v in CALL_VARIANTS if calls else ():
            await self.call_run(snd, rcv, meter, v, max(1, p.calls // 10))
        for i in range(p.repeat):
            print(f"  {loop}: round {i + 1} of {p.repeat}...", file=sys.stderr, flush=True)
            for payload in opts.payloads if sends else ():
                n = p.messages[payload]
                for v in SEND_VARIANTS if i % 2 == 0 else SEND_VARIANTS[::-1]:

                    def one_send(v: str = v, payload: str = payload, n: int = n) -> Any:
                        return self.send_run(snd, rcv, meter, v, payload, n)

                    result.sends.setdefault((v, payload), []).append(
                        await self.again(result, one_send)
                    )
            for v in (CALL_VARIANTS if i % 2 == 0 else CALL_VARIANTS[::-1]) if calls else ():

                def one_call(v: str = v) -> Any:
                    return self.call_run(snd, rcv, meter, v, p.calls)

                result.calls.setdefault(v, []).append(await self.again(result, one_call))
        await self.retire(snd)
        await self.retire(rcv)

    async def node_down(self, loop: str, result: LoopResult) -> None:
        """SIGKILL a receiver node; time its Down at a Process of a watching node."""
        opts, p = self.opts, self.p
        rng = random.Random(f"{loop}-down")
        for hb in p.heartbeats:
            tag = f"hb{hb:g}".replace(".", "_")
            print(f"  {loop}: node down, heartbeat {hb:g} s...", file=sys.stderr, flush=True)
            watcher = await self.spawn(
                "sender", f"watch-{loop}-{tag}@bench", loop, opts.sender_cpu, heartbeat=hb
            )
            took: list[float] = []
            for k in range(p.kills):
                suffix = f"-{loop}-{tag}-{k}"
                victim = await self.spawn(
                    "receiver",
                    f"victim{suffix}@bench",
                    loop,
                    opts.receiver_cpu,
                    heartbeat=hb,
                    suffix=suffix,
                )
                await watcher.ask(10.0 + 2 * hb, cmd="watch", name="sink" + suffix)
                await asyncio.sleep(rng.uniform(0, hb))  # the kill's phase against the beats
                t_kill = time.monotonic()
                victim.kill()
                down = await watcher.ask(DOWN_FACTOR * hb + 10.0, cmd="wait_down")
                took.append(down["t"] - t_kill)
                result.down_reasons.add(down["reason"])
                await victim.proc.wait()
                self.children.remove(victim)
            result.downs[hb] = took
            await self.retire(watcher)


# ============================================================ reporting


def spread(values: list[float]) -> str:
    return " ".join(f"{v:.2f}" for v in values)


def ratio_line(name: str, values: list[float], target: float, at_most: bool) -> str:
    value = median(values)
    ok = value <= target if at_most else value >= target
    sign = "<=" if at_most else ">="
    return (
        f"  {name:<30} {value:6.2f}x  (target {sign} {target}x)  {verdict(ok)}"
        f"   rounds: {spread(values)}"
    )


def send_row(r: SendRun, loop: str) -> str:
    c = r.cpu
    fpp = f"{r.frames_per_pub:6.0f}" if r.frames_per_pub else f"{'-':>6}"
    return (
        f"{r.variant:<12} {loop:<8} {r.payload:<6} {r.rate:10,.0f} "
        f"{r.us_per_msg(c.sender):6.2f} {r.us_per_msg(c.sender_sys):5.2f} "
        f"{r.us_per_msg(c.receiver):6.2f} {r.us_per_msg(c.receiver_sys):5.2f} "
        f"{r.us_per_msg(c.server):6.2f} {c.pct(c.sender):5.0f} {c.pct(c.receiver):5.0f} "
        f"{c.pct(c.server):5.0f} {c.pct(c.other):5.0f} "
        f"{1000 * c.sender_faults / r.n:6.0f} {1000 * c.receiver_faults / r.n:6.0f} {fpp}"
    )


def call_row(r: CallRun, loop: str) -> str:
    c = r.cpu
    return (
        f"{r.variant:<12} {loop:<8} {r.p50:7.0f} {r.p99:7.0f} {r.mean:7.0f} "
        f"{r.us_per_call(c.sender):8.1f} {r.us_per_call(c.receiver):8.1f} "
        f"{r.us_per_call(c.server):8.1f} {c.pct(c.sender):5.0f} {c.pct(c.receiver):5.0f} "
        f"{c.pct(c.server):5.0f} {c.pct(c.other):5.0f}"
    )


def paired(ours: list[Any], theirs: list[Any], value: Callable[[Any], float]) -> list[float]:
    return [value(a) / value(b) for a, b in zip(ours, theirs, strict=True)]


def report(results: list[LoopResult], opts: argparse.Namespace, p: Params) -> None:
    if "send" in opts.phases:
        send_table(results, opts, p)
    if "call" in opts.phases:
        call_table(results, p)
    if "down" in opts.phases:
        down_table(results)
    legend(results)
    for res in results:
        ratios(res, opts)
    if opts.verbose:
        every_run(results, opts)


def send_table(results: list[LoopResult], opts: argparse.Namespace, p: Params) -> None:
    print()
    print(
        f"send: {p.messages['small']:,} x (i, 32 B) / {p.messages['1k']:,} x 1 KiB per run, "
        f"chunks of {opts.chunk} with a loop turn between, at most 2 x {opts.window} in flight; "
        f"best of {p.repeat} rounds"
    )
    head = (
        f"{'variant':<12} {'loop':<8} {'load':<6} {'msgs/s':>10} {'snd us':>6} {'(sys)':>5} "
        f"{'rcv us':>6} {'(sys)':>5} {'srv us':>6} {'snd%':>5} {'rcv%':>5} {'srv%':>5} "
        f"{'oth%':>5} {'sflt/k':>6} {'rflt/k':>6} {'fr/pub':>6}"
    )
    print(head)
    print("-" * len(head))
    for res in results:
        for payload in opts.payloads:
            for v in SEND_VARIANTS:
                runs = res.sends.get((v, payload))
                if runs:
                    print(send_row(max(runs, key=lambda r: r.rate), res.loop))


def call_table(results: list[LoopResult], p: Params) -> None:
    print()
    print(f"call: {p.calls:,} sequential calls of (i, 32 B) per run; best p50 of {p.repeat} rounds")
    head = (
        f"{'variant':<12} {'loop':<8} {'p50 us':>7} {'p99 us':>7} {'mean':>7} {'snd us':>8} "
        f"{'rcv us':>8} {'srv us':>8} {'snd%':>5} {'rcv%':>5} {'srv%':>5} {'oth%':>5}"
    )
    print(head)
    print("-" * len(head))
    for res in results:
        for v in CALL_VARIANTS:
            runs = res.calls.get(v)
            if runs:
                print(call_row(min(runs, key=lambda r: r.p50), res.loop))


def down_table(results: list[LoopResult]) -> None:
    print()
    print("node down: SIGKILL of the receiver node -> Down at a monitoring Process elsewhere")
    head = (
        f"{'loop':<8} {'heartbeat':>9} {'kills':>5} {'min s':>7} {'median s':>8} {'max s':>7} "
        f"{'max/hb':>7}   target"
    )
    print(head)
    print("-" * len(head))
    for res in results:
        for hb, took in res.downs.items():
            worst = max(took)
            print(
                f"{res.loop:<8} {hb:9.1f} {len(took):5} {min(took):7.3f} {median(took):8.3f} "
                f"{worst:7.3f} {worst / hb:7.2f}   <= {DOWN_FACTOR:g} x hb "
                f"{verdict(worst <= DOWN_FACTOR * hb)}"
            )


def legend(results: list[LoopResult]) -> None:
    print()
    print(
        "snd/rcv/srv us: CPU (user+sys) per message or call of the sender, the receiver and "
        "the nats-server, (sys) its kernel part; snd%/rcv%/srv%: as % of one core over the run; "
        "oth%: other programs (> 10 means disturbed); sflt/k, rflt/k: minor page faults of the "
        "sender/receiver per 1000 messages; fr/pub: metakit frames per NATS message published. "
        "A process near 100% is the bottleneck of that run."
    )
    for res in results:
        for note in res.notes:
            print(f"note: {res.loop}: {note}")
        if res.redone:
            print(f"note: {res.loop}: {res.redone} run(s) redone, disturbed by other programs")
        if res.down_reasons - {"'noconnection'"}:
            print(f"NOTE: {res.loop}: Down reasons seen: {sorted(res.down_reasons)}")


def ratios(res: LoopResult, opts: argparse.Namespace) -> None:
    """metakit / raw in the same round, median over the rounds, with PASS/MISS."""
    if not (res.sends or res.calls):
        return
    print()
    print(f"metakit vs raw nats-py on {res.loop} (median of per-round ratios):")
    for payload in opts.payloads if res.sends else ():
        mk, raw = res.sends[("metakit", payload)], res.sends[("raw", payload)]
        r = paired(mk, raw, lambda r: r.rate)
        print(ratio_line(f"send {payload} msgs/s / raw", r, SEND_TARGET, False))
    for payload in opts.payloads if res.sends else ():
        mk, ref = res.sends[("metakit", payload)], res.sends[("raw-batched", payload)]
        r = paired(mk, ref, lambda r: r.rate)
        print(
            f"  {'send ' + payload + ' / raw-batched':<30} {median(r):6.2f}x  "
            f"(reference)   rounds: {spread(r)}"
        )
    if res.calls:
        r = paired(res.calls["metakit"], res.calls["raw"], lambda r: r.p50)
        print(ratio_line("call p50 / raw", r, CALL_TARGET, True))
        r = paired(res.calls["metakit"], res.calls["raw"], lambda r: r.p99)
        print(f"  {'call p99 / raw':<30} {median(r):6.2f}x  (no target)  rounds: {spread(r)}")
        r = paired(res.calls["node.call"], res.calls["raw"], lambda r: r.p50)
        print(f"  {'node.call p50 / raw':<30} {median(r):6.2f}x  (reference)   rounds: {spread(r)}")


def every_run(results: list[LoopResult], opts: argparse.Namespace) -> None:
    print()
    print("every run, in order:")
    for res in results:
        for payload in opts.payloads:
            for v in SEND_VARIANTS:
                for r in res.sends.get((v, payload), []):
                    print("  " + send_row(r, res.loop) + f"  {r.seconds:.3f} s")
        for v in CALL_VARIANTS:
            for c in res.calls.get(v, []):
                print("  " + call_row(c, res.loop) + f"  {c.cpu.wall:.3f} s")
        for hb, took in res.downs.items():
            print(f"  down {res.loop} heartbeat {hb:g}: " + " ".join(f"{t:.3f}" for t in took))


def _package(filename: str, func: str) -> str:
    if "select.epoll" in func or func == "<method 'poll' of 'select.epoll' objects>":
        return "epoll wait"
    if filename.endswith("/asyncio/runners.py") and func == "run":
        return "uvloop C code"  # uvloop's loop runs inside Runner.run, unseen by cProfile
    if "/metakit/cluster/" in filename:
        return "metakit.cluster"
    if "/metakit/" in filename:
        return "metakit core"
    if "/nats/" in filename:
        return "nats-py"
    if "/asyncio/" in filename:
        return "asyncio"
    if filename == "~":
        return "builtins (C)"
    if filename.endswith("/bench/cluster.py"):
        return "this bench"
    return "other"


def print_profiles(profiles: dict[str, str], top: int) -> None:
    """The hottest functions of each profiled child, tottime by package, and metakit's own."""
    for who, path in profiles.items():
        if not Path(path).exists():
            continue
        print()
        print(f"cProfile of the {who} during the metakit runs (tottime, top {top}):")
        stats = pstats.Stats(path, stream=sys.stdout)
        by_pkg: dict[str, float] = {}
        mine: list[tuple[float, int, str]] = []
        total = 0.0
        for (filename, line, func), (_, calls, tottime, _, _) in stats.stats.items():  # type: ignore[attr-defined]
            total += tottime
            pkg = _package(filename, func)
            by_pkg[pkg] = by_pkg.get(pkg, 0.0) + tottime
            if pkg.startswith("metakit"):
                short = filename.split("/metakit/", 1)[1]
                mine.append((tottime, calls, f"metakit/{short}:{line}({func})"))
        stats.strip_dirs().sort_stats("tottime").print_stats(top)
        print("tottime by package:")
        for pkg, t in sorted(by_pkg.items(), key=lambda kv: -kv[1]):
            print(f"  {pkg:<16} {t:7.3f} s  {100 * t / total:5.1f}%")
        print("metakit's functions by tottime (s, calls):")
        for tottime, calls, name in sorted(mine, reverse=True)[:15]:
            print(f"  {tottime:7.3f}  {calls:9,}  {name}")


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


def header(opts: argparse.Namespace, server_pid: int) -> None:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    nats_server = "?"
    exe = Path(sys.executable).with_name("nats-server")
    exe_path = str(exe) if exe.exists() else shutil.which("nats-server")
    if exe_path:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([exe_path, "--version"], capture_output=True, text=True, timeout=5)
            nats_server = out.stdout.strip().split()[-1]
    print(
        f"metakit cluster benchmark: Python {platform.python_version()}, metakit "
        f"{metakit.__version__} ({git_state()}), nats-py {version('nats-py')}, msgpack "
        f"{version('msgpack')}, nats-server {nats_server}, uvloop {version('uvloop')}"
    )
    pin = (
        f"sender on CPU {opts.sender_cpu}, receiver on CPU {opts.receiver_cpu}"
        if opts.sender_cpu is not None
        else "sender and receiver not pinned (fewer than 2 CPUs)"
    )
    print(
        f"{cpu}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; {pin}, "
        f"nats-server on CPUs {affinity(server_pid)} (shared), this driver unpinned"
    )


async def drive(opts: argparse.Namespace, p: Params) -> int:
    t_start = time.monotonic()
    main_task = asyncio.current_task()
    assert main_task is not None
    # SIGTERM as Ctrl-C: cancel, so that every child and the server are stopped.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    async with local_server() as server:
        assert server.pid is not None
        if opts.server_cpus is not None:
            pin_threads(server.pid, opts.server_cpus)
        opts.url = server.url
        bench = Bench(opts, p, server.pid)
        header(opts, server.pid)
        results = []
        finished = False
        try:
            for loop in opts.loops:
                results.append(await bench.measure_loop(loop))
            finished = True
        finally:
            await bench.close_all(clean=finished)
    report(results, opts, p)
    if opts.profile_dir:
        print("\n(profiled: the metakit figures above include cProfile's overhead)")
        print_profiles(bench.profiles, 30)
    print(f"\n(total {time.monotonic() - t_start:.1f} s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: small runs, one round")
    parser.add_argument("--verbose", action="store_true", help="every run")
    parser.add_argument("--loop", choices=(*LOOPS, "both"), default="both")
    parser.add_argument("--repeat", type=int, help="rounds (5; --quick: 1)")
    parser.add_argument("--messages", type=int, help="messages per small-payload send run")
    parser.add_argument("--calls", type=int, help="calls per call run (10000)")
    parser.add_argument("--kills", type=int, help="node kills per heartbeat and loop (3)")
    parser.add_argument(
        "--heartbeat", type=float, action="append", help="repeatable; default 1.0 and 0.2"
    )
    parser.add_argument("--chunk", type=int, default=1000, help="messages between loop turns")
    parser.add_argument("--window", type=int, default=5000, help="messages per receiver ack")
    parser.add_argument("--retries", type=int, help="times a disturbed run is done again")
    parser.add_argument("--quiet-wait", type=float, help="seconds to wait for an idle machine")
    parser.add_argument("--sender-cpu", type=int, default=0)
    parser.add_argument("--receiver-cpu", type=int, default=1)
    parser.add_argument("--server-cpus", help="pin the nats-server, e.g. 0,1 (default: as is)")
    parser.add_argument("--profile", action="store_true", help="cProfile the metakit runs")
    parser.add_argument(
        "--phase", action="append", choices=("send", "call", "down"), help="repeatable; default all"
    )
    parser.add_argument("--payload", action="append", choices=PAYLOADS, help="repeatable")
    # internal: the child processes
    parser.add_argument("--child", choices=("sender", "receiver"), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--node", help=argparse.SUPPRESS)
    parser.add_argument("--parent", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--suffix", default="", help=argparse.SUPPRESS)
    parser.add_argument("--profile-to", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)

    if opts.child:
        opts.heartbeat = opts.heartbeat[-1] if opts.heartbeat else 1.0
        return child_main(opts)

    p = QUICK if opts.quick else FULL
    changes: dict[str, Any] = {}
    if opts.repeat:
        changes["repeat"] = max(1, opts.repeat)
    if opts.messages:
        changes["messages"] = {"small": opts.messages, "1k": max(1, opts.messages // 2)}
    if opts.calls:
        changes["calls"] = max(1, opts.calls)
    if opts.kills:
        changes["kills"] = max(1, opts.kills)
    if opts.heartbeat:
        changes["heartbeats"] = tuple(opts.heartbeat)
    if opts.retries is not None:
        changes["retries"] = max(0, opts.retries)
    if opts.quiet_wait is not None:
        changes["quiet_wait"] = opts.quiet_wait
    p = Params(**{**p.__dict__, **changes})
    if opts.chunk < 1 or opts.window < opts.chunk or opts.window % opts.chunk:
        parser.error("--window must be a multiple of --chunk")

    cpus = os.sched_getaffinity(0)
    if len(cpus) < 2:
        opts.sender_cpu = opts.receiver_cpu = None
    elif opts.sender_cpu not in cpus or opts.receiver_cpu not in cpus:
        parser.error(f"--sender-cpu/--receiver-cpu must be among {sorted(cpus)}")
    if opts.server_cpus is not None:
        opts.server_cpus = {int(c) for c in opts.server_cpus.split(",")}
    opts.loops = LOOPS if opts.loop == "both" else (opts.loop,)
    opts.phases = set(opts.phase or ("send", "call", "down"))
    opts.payloads = tuple(x for x in PAYLOADS if x in (opts.payload or PAYLOADS))
    with contextlib.ExitStack() as stack:
        opts.profile_dir = None
        if opts.profile:
            opts.profile_dir = stack.enter_context(
                tempfile.TemporaryDirectory(prefix="metakit-cluster-prof-")
            )
        try:
            return asyncio.run(drive(opts, p))
        except (KeyboardInterrupt, asyncio.CancelledError):
            print("\ninterrupted; every child process and the server are stopped", file=sys.stderr)
            return 130


if __name__ == "__main__":
    sys.exit(main())
