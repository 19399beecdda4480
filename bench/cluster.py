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

4. Fan-out, ``group`` and ``event``: fan-outs/s of ``(i, b"x" * 32)`` to
   ``--members`` (50) member processes on each of the two nodes, a fan-out
   counting as delivered once all 100 have it (the end is the last member's
   last receipt), and CPU per fan-out.

   * ``metakit``: a Process on the sender node does ``self.send_group("fan",
     value)`` (``group``), or, as the producer of the cluster event "tick"
     (``register_event(..., cluster=True)``), ``self.send_event("tick",
     value)`` (``event``). The same 100 processes are the group's members
     (``join_group``) and the event's subscribers (``monitor_event``).
     metakit delivers to the local 50 at once and sends the receiver node one
     frame per fan-out, which that node fans out to its 50.
   * ``raw``: one ``await nc.publish(subject, packb(value))`` per fan-out, and
     the sender's 50 members handed the value directly; the receiver
     subscribes once, unpacks and hands the value to its 50 members. The
     members are the same counting objects (:class:`Tally`) on both sides:
     a metakit member's ``handle_message`` does exactly what a raw member
     does, so the difference is what delivery through the actors costs.

   The program shape is the send's, in fan-outs: chunks of ``--fan-chunk``
   (100, i.e. 5000 local deliveries) with a loop turn between, and every
   ``--fan-window`` (500) an ask of both nodes, answered once all their
   members have that many (metakit: a ``call`` to a Process on the
   receiver node, ordered behind the fan-outs; raw: ``nc.request``), at most
   two windows in flight. ``rfr/fan`` is the frames the receiver node got
   per fan-out (``Cluster.statistics().messages_in``, less the asks): one
   per node, not one per member, is DESIGN.md's promise for ``send_event``
   (and is checked for ``send_group`` too).

5. Singleton failover: ``--contenders`` (3) nodes call
   ``node.spawn_singleton(Leader, name=...)`` (heartbeat 1.0 s, and 0.2 s);
   the instance's ``init`` tells a watcher node its PID and start time;
   after a heartbeat and a random part of one, the node running it is
   SIGKILLed, and the time is from the kill to the new instance's ``init``
   on another node (``name s``: to its cluster name showing at the watcher);
   a new contender then joins, and again (``--failovers``, 3). The
   contenders run on the receiver's CPU, the watcher on the sender's; the
   k-th kill has the same pause for both variants, and the ratio is the
   median over k of metakit's time / raw's. ``raw`` is a
   hand-written lease doing the same job on its own nats-py connection in
   the same kind of processes: a KV key created with a per-message TTL of
   ``ceil(3 x heartbeat)`` s (metakit's; the bucket has a
   ``limit_marker_ttl``), renewed every heartbeat on its revision, the
   others retrying the create every half heartbeat (metakit's cadence); a
   win is announced to the watcher the same way. nats-py's ``kv.create``
   does not take the marker the server leaves where a TTL expired for a
   deleted key, which would add the marker's own TTL, so the raw side
   reads the last message and updates on its revision, as metakit does.
   Target: <= 3 x heartbeat + 1 s (DESIGN.md §8). ``extra`` counts metakit
   instances started on the way that did not get the cluster name.

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
<= 1.3x raw p50, node down <= 3 x heartbeat, one frame per node per
``send_event`` and ``send_group`` fan-out, singleton failover <= 3 x
heartbeat + 1 s. The fan-outs/s and failover ratios to raw are printed
without a target (``FAN_TARGET`` sets one for the fan-outs). A miss prints
``MISS``; only errors make the exit status non-zero.

Run from the repository root (Linux; ``pip install 'metakit[cluster]'``)::

    python bench/cluster.py [--quick] [--verbose] [--loop asyncio|uvloop|both]
                            [--repeat N] [--phase send,call,down,group,event,singleton]
                            [--payload small|1k ...] [--profile]

A full run takes 7-10 minutes on a quiet machine. ``--quick`` is a smoke
test (small runs, one round, heartbeat 0.2 only, one failover; ~40 s).
``--verbose`` adds every run. ``--phase`` (repeatable or comma-separated)
and ``--payload`` (repeatable) run a part: ``--phase group,event,singleton``
only the fan-outs and the failover.
``--profile`` runs the sender and receiver under cProfile during the
metakit runs only (the figures are then not comparable) and prints their
hottest functions, tottime by package and metakit's own functions.
Internally the two sides are this script run as ``--child
sender|receiver`` (and ``contender`` for the failover): it prints one JSON
line when ready, answers JSON command lines on stdin, and stops when stdin
closes; it dies with this script (``PR_SET_PDEATHSIG``). Ctrl-C stops every
child and the server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import math
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
FAN_TARGET: float | None = None  # metakit fan-outs/s / raw, at least (DESIGN.md sets none)
DOWN_FACTOR = 3.0  # node down within this many heartbeats
NOISY = 10.0  # a run during which other programs took more % of a core is done again
X32 = b"x" * 32
KIB = b"x" * 1024
# Raw nats-py subjects (metakit's are mk.bench.*).
RAW_SINK, RAW_BATCH, RAW_WAIT, RAW_ECHO = "raw.sink", "raw.batch", "raw.wait", "raw.echo"
RAW_FAN, RAW_FAN_WAIT, RAW_LEADER = "raw.fan", "raw.fanwait", "raw.leader"
GROUP, EVENT = "fan", "tick"  # the fan-out runs' process group and cluster event
FAN_KINDS = ("group", "event")
FAN_VARIANTS = ("metakit", "raw")
LEASE_VARIANTS = ("metakit", "raw")
FAILOVER_SLACK = 1.0  # a singleton runs elsewhere within 3 x heartbeat + this (s)
PHASES = ("send", "call", "down", "group", "event", "singleton")


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
    fanouts: int  # per group or event run
    failovers: int  # singleton kills per heartbeat, variant and loop
    retries: int
    quiet_wait: float
    timeout: float  # seconds before a run that has not finished is an error


FULL = Params(
    messages={"small": 200_000, "1k": 100_000},
    calls=10_000,
    repeat=5,
    kills=3,
    heartbeats=(1.0, 0.2),
    fanouts=50_000,
    failovers=3,
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
    fanouts=5_000,
    failovers=1,
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


# -- the fan-out runs (send_group, send_event) -----------------------------------------


class Board:
    """One node's members in a fan-out run: when the last of them got each window mark.

    The marks are the multiples of ``window`` and ``n``, the counts the sender
    asks for; a mark is done when every member of this node has reached it.
    """

    def __init__(self) -> None:
        self.arm(0, 0, 1)

    def arm(self, members: int, n: int, window: int) -> None:
        self.members, self.n, self.window = members, n, window
        self.reached: dict[int, int] = {}
        self.done: dict[int, float] = {}
        self.waiters: dict[int, asyncio.Future[None]] = {}

    def mark(self, k: int) -> None:
        self.reached[k] = c = self.reached.get(k, 0) + 1
        if c == self.members:
            self.done[k] = time.monotonic()
            waiter = self.waiters.pop(k, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    async def upto(self, k: int, timeout: float) -> float:
        """The time the last member here got message ``k`` (once it has)."""
        if k not in self.done:
            waiter = self.waiters[k] = asyncio.get_running_loop().create_future()
            await asyncio.wait_for(waiter, timeout)
        return self.done[k]


class Tally:
    """One member's count: a metakit member and a raw member do exactly this per message."""

    __slots__ = ("board", "count", "next")

    def __init__(self, board: Board) -> None:
        self.board = board
        self.arm()

    def arm(self) -> None:
        self.count = 0
        self.next = min(self.board.window, self.board.n)

    def add(self, value: Any) -> None:
        self.count = c = self.count + 1
        if c == self.next:
            board = self.board
            board.mark(c)
            self.next = min(c + board.window, board.n)


class Member(metakit.Process):
    """A member of the fan-out group and a subscriber of its event: a :class:`Tally`."""

    async def init(self, tally: Tally) -> None:
        self.add = tally.add
        await self.join_group(GROUP)

    def handle_message(self, sender: metakit.PID, message: Any) -> None:
        self.add(message)

    def handle_call(self, sender: metakit.Caller, request: Any) -> Any:
        if request == "subscribe":
            self.monitor_event(EVENT)
            return True
        raise ValueError(f"unknown request {request!r}")


class Fanner(metakit.Process):
    """The sender node's side of the metakit fan-out runs, and the event's producer."""

    async def init(self, board: Board) -> None:
        self.board = board
        self.marks: metakit.PID | None = None
        await self.register_event(EVENT, cluster=True)

    async def handle_call(self, sender: metakit.Caller, request: Any) -> Any:
        op, *args = request
        if op == "ping":  # ordered behind what the caller's node sent before
            return True
        if op == "marks":
            self.marks = args[0]
            return None
        if op == "fan":
            return await self._fan(*args)
        raise ValueError(f"unknown request {request!r}")

    async def _fan(self, kind: str, n: int, chunk: int, window: int, timeout: float) -> Any:
        make = make_value("small")
        fan = self.send_group if kind == "group" else self.send_event
        to = GROUP if kind == "group" else EVENT
        call = self.call
        marks = self.marks
        assert marks is not None
        board = self.board
        prev: asyncio.Future[Any] | None = None
        t0 = time.monotonic()
        for start in range(0, n, chunk):
            end = min(start + chunk, n)
            for i in range(start, end):
                fan(to, make(i))
            if end % window == 0 or end == n:
                # Both nodes' members: the other's (a call ordered behind the
                # fan-outs, answered once they all have them) and this one's.
                ask = asyncio.gather(
                    call(marks, ("upto", end, timeout), timeout=timeout),
                    board.upto(end, timeout),
                )
                if prev is not None:
                    await prev  # at most two windows in flight
                prev = ask
            await asyncio.sleep(0)
        assert prev is not None
        there, here = await prev
        return t0, max(there, here)


class Marks(metakit.Process):
    """The receiver node's answer to "have all members here got message k?"."""

    def init(self, board: Board) -> None:
        self.board = board

    async def handle_call(self, sender: metakit.Caller, request: Any) -> Any:
        _, k, timeout = request
        return await self.board.upto(k, timeout)


class RawFan:
    """The receiver's raw side of the fan-out runs: one subscription, its members fanned out."""

    def __init__(self, board: Board, tallies: list[Tally]) -> None:
        self.board = board
        self.tallies = tallies

    async def on_fan(self, msg: Any) -> None:
        value = msgpack.unpackb(msg.data, use_list=False)
        for tally in self.tallies:
            tally.add(value)

    async def on_wait(self, msg: Any) -> None:
        t = await self.board.upto(msgpack.unpackb(msg.data), 60.0)
        await msg.respond(msgpack.packb(t))


async def raw_fan(
    nc: Any, board: Board, tallies: list[Tally], n: int, chunk: int, window: int, timeout: float
) -> Any:
    """The raw fan-out sender: the same shape as :meth:`Fanner._fan`."""
    make = make_value("small")
    packb = msgpack.packb
    publish = nc.publish
    prev: asyncio.Future[Any] | None = None
    t0 = time.monotonic()
    for start in range(0, n, chunk):
        end = min(start + chunk, n)
        for i in range(start, end):
            value = make(i)
            await publish(RAW_FAN, packb(value))
            for tally in tallies:  # the members on this node, delivered directly
                tally.add(value)
        if end % window == 0 or end == n:
            ask = asyncio.gather(
                nc.request(RAW_FAN_WAIT, packb(end), timeout=timeout), board.upto(end, timeout)
            )
            if prev is not None:
                await prev
            prev = ask
        await asyncio.sleep(0)
    assert prev is not None
    reply, here = await prev
    return t0, max(msgpack.unpackb(reply.data), here)


# -- the singleton failover ---------------------------------------------------------------


class Leader(metakit.Process):
    """The singleton: tells the watcher where and when it started."""

    def init(self, watch: metakit.PID, name: str) -> None:
        self.send(watch, ("metakit", name, self.pid, time.monotonic()))


class LeaderWatch(metakit.Process):
    """The watcher's mailbox for the singletons' announcements."""

    def init(self, leaders: asyncio.Queue[tuple[Any, ...]]) -> None:
        self.leaders = leaders

    def handle_message(self, sender: metakit.PID, message: Any) -> None:
        variant, name, pid, t = message
        self.leaders.put_nowait((variant, name, pid.node, t, pid))


class RawLease:
    """The raw side of the singleton: a lease on a nats-py KV key, by hand.

    The key is created with a per-message TTL of ``ttl`` s (the bucket has a
    ``limit_marker_ttl``, as metakit's), renewed every heartbeat on its
    revision; the others try ``create`` every half heartbeat, which wins once
    the server has expired the key. The same cadence and TTL as metakit's.
    """

    def __init__(self, nc: Any, kv: Any, bucket: str, key: str, ttl: int, hb: float) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.kv = kv
        self.key = key
        self.stream, self.subject = f"KV_{bucket}", f"$KV.{bucket}.{key}"
        self.ttl = ttl
        self.hb = hb
        self.node = ""
        self.rev = 0
        self.task: asyncio.Task[None] | None = None

    async def start(self, node: str) -> bool:
        self.node = node
        await self._try()
        self.task = asyncio.get_running_loop().create_task(self._run())
        return self.rev > 0

    async def _try(self) -> None:
        import nats.js.errors

        try:
            self.rev = await self.kv.create(self.key, self.node.encode(), msg_ttl=self.ttl)
        except nats.js.errors.KeyWrongLastSequenceError:
            # nats-py's create takes a delete or purge for "gone", not the marker
            # the server leaves where a TTL expired (it would wait for the
            # marker's own TTL): look at the last message, as metakit does.
            try:
                msg = await self.js.get_msg(self.stream, subject=self.subject)
            except nats.js.errors.NotFoundError:
                return  # gone meanwhile: the next try creates it
            headers = msg.headers or {}
            expired = "Nats-Marker-Reason" in headers or headers.get("KV-Operation") is not None
            if not expired or not await self._put(msg.seq):
                return  # held, or another contender was first
        t = time.monotonic()
        await self.nc.publish(RAW_LEADER, msgpack.packb(("raw", self.key, self.node, t)))

    async def _put(self, last: int) -> bool:
        """``kv.update(key, value, last=last)`` with the TTL (nats-py's update takes none)."""
        import nats.js.errors

        headers = {"Nats-Expected-Last-Subject-Sequence": str(last)}
        try:
            ack = await self.js.publish(
                self.subject, self.node.encode(), headers=headers, msg_ttl=self.ttl
            )
        except nats.js.errors.APIError as err:
            if err.err_code in (10071, 10164):  # someone else's now
                self.rev = 0
                return False
            raise
        self.rev = ack.seq
        return True

    async def _run(self) -> None:
        while True:  # until the child stops (cancelled) or is killed
            try:
                if self.rev == 0:
                    await asyncio.sleep(self.hb / 2)
                    await self._try()
                else:
                    await asyncio.sleep(self.hb)
                    await asyncio.wait_for(self._put(self.rev), self.hb / 4)
            except asyncio.CancelledError:
                raise
            except Exception:  # a slow or failed renewal: the next one may land
                pass


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
        self.board = Board()  # the fan-out runs: this node's members
        self.mk_tallies: list[Tally] = []
        self.raw_tallies: list[Tally] = []
        self.fanner: metakit.PID | None = None
        self.leaders: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        self.lease: RawLease | None = None

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
        elif opts.child == "sender":
            self.watch = await self.node.spawn(Watch, self.downs)
        return {"pid": os.getpid()}

    async def stop(self) -> None:
        if self.lease is not None and self.lease.task is not None:
            self.lease.task.cancel()
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
        if op.startswith("fan"):
            return await self.fan_command(op, cmd, timeout)
        if op in ("leader_watch", "wait_leader", "contend"):
            return await self.singleton_command(op, cmd, timeout)
        raise ValueError(f"unknown command {op!r}")

    async def fan_command(self, op: str, cmd: dict[str, Any], timeout: float) -> dict[str, Any]:
        """The fan-out runs: set up, arm, run (sender), disarm (receiver)."""
        node = self.node
        if op == "fan_setup":  # both: this node's members (and the sender's producer)
            m = cmd["members"]
            self.mk_tallies = [Tally(self.board) for _ in range(m)]
            self.raw_tallies = [Tally(self.board) for _ in range(m)]
            producer = None
            if self.opts.child == "sender":
                self.fanner = await node.spawn(Fanner, self.board)
            else:
                raw = RawFan(self.board, self.raw_tallies)
                await self.nc.subscribe(RAW_FAN, cb=raw.on_fan)
                await self.nc.subscribe(RAW_FAN_WAIT, cb=raw.on_wait)
                await self.nc.flush()
                # monitor_event finds a cluster event once this node's view has it.
                deadline = time.monotonic() + timeout
                while (producer := self.cluster.event_producer(EVENT)) is None:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"no event {EVENT!r} in the cluster")
                    await asyncio.sleep(0.01)
            members = [await node.spawn(Member, t) for t in self.mk_tallies]
            for pid in members:
                await node.call(pid, "subscribe")
            if producer is not None:
                # Behind the subscriptions: once answered, the producer's node
                # sends this node every event (one frame each).
                await node.call(producer, ("ping",), timeout=timeout)
                marks = await node.spawn(Marks, self.board)
                await node.register_name("marks" + self.suffix, marks, cluster=True)
            return {}
        if op == "fan_attach":  # sender: every member in the view, the receiver's Marks
            want = 2 * cmd["members"]
            deadline = time.monotonic() + timeout
            while len(node.group_members(GROUP)) < want:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"group {GROUP!r}: {len(node.group_members(GROUP))}/{want}")
                await asyncio.sleep(0.01)
            marks = await until_found(node, "marks" + cmd["suffix"], timeout)
            assert self.fanner is not None
            await node.call(self.fanner, ("marks", marks))
            return {}
        if op == "fan_arm":  # both, before a run
            self.board.arm(len(self.mk_tallies), cmd["n"], cmd["window"])
            for tally in self.mk_tallies + self.raw_tallies:
                tally.arm()
            if self.opts.child == "receiver":
                self.profiling(cmd["variant"] == "metakit")
            return {"stats": self.stats()}
        if op == "fan_disarm":  # receiver, after a run
            self.profiling(False)
            got = self.board.reached.get(self.board.n, 0)
            return {"stats": self.stats(), "members_done": got}
        if op == "fan":  # sender: one run
            before = self.stats()
            args = (cmd["n"], cmd["chunk"], cmd["window"], timeout)
            if cmd["variant"] == "metakit":
                assert self.fanner is not None
                self.profiling(True)
                try:
                    request = ("fan", cmd["kind"], *args)
                    t0, t_last = await node.call(self.fanner, request, timeout=timeout + 5.0)
                finally:
                    self.profiling(False)
            else:
                t0, t_last = await raw_fan(self.nc, self.board, self.raw_tallies, *args)
            got = self.board.reached.get(self.board.n, 0)
            return {
                "t0": t0,
                "t_last": t_last,
                "members_done": got,
                "before": before,
                "after": self.stats(),
            }
        raise ValueError(f"unknown command {op!r}")

    async def singleton_command(
        self, op: str, cmd: dict[str, Any], timeout: float
    ) -> dict[str, Any]:
        """The failover runs: the watcher's side and the contenders'."""
        if op == "leader_watch":  # watcher: where the announcements arrive
            import nats.js.errors

            leader_watch = await self.node.spawn(LeaderWatch, self.leaders)
            await self.node.register_name(cmd["name"], leader_watch, cluster=True)

            async def on_leader(msg: Any) -> None:
                variant, name, node, t = msgpack.unpackb(msg.data)
                self.leaders.put_nowait((variant, name, node, t, None))

            await self.nc.subscribe(RAW_LEADER, cb=on_leader)
            js = self.nc.jetstream()
            with contextlib.suppress(nats.js.errors.BadRequestError):  # the bucket is there
                await js.create_key_value(
                    bucket=cmd["bucket"], history=1, limit_marker_ttl=cmd["ttl"]
                )
            await self.nc.flush()
            return {}
        if op == "wait_leader":  # watcher: the next instance not on node "exclude"
            # metakit: the announced instance that gets the cluster name (one
            # that started but could not register it counts as an extra start).
            deadline = time.monotonic() + timeout
            want, name = (cmd["variant"], cmd["name"]), cmd["name"]
            starts: dict[metakit.PID, float] = {}
            while time.monotonic() < deadline:
                wait = 0.002 if starts else max(0.0, deadline - time.monotonic())
                with contextlib.suppress(TimeoutError):
                    variant, name_, node, t, pid = await asyncio.wait_for(self.leaders.get(), wait)
                    if (variant, name_) == want and node != cmd["exclude"]:
                        if pid is None:  # raw: the lease won is the instance
                            return {"node": node, "t": t, "t_name": None, "extra": 0}
                        starts[pid] = t
                holder = self.node.whereis(name) if starts else None
                if holder is not None and holder in starts:
                    extra = len(starts) - 1
                    t_name = time.monotonic()
                    t = starts[holder]
                    return {"node": holder.node, "t": t, "t_name": t_name, "extra": extra}
            raise RuntimeError(f"{name!r}: started {sorted(map(repr, starts))}, no name showed")
        if op == "contend":  # contender: compete for the singleton
            if cmd["variant"] == "metakit":
                # The watcher's PID, not its name: a node judged down (a stalled
                # loop) loses its cluster names for good, even once it is back.
                watch = await until_found(self.node, cmd["watch"], timeout)
                pid = await self.node.spawn_singleton(Leader, watch, cmd["name"], name=cmd["name"])
                return {"holder": pid is not None}
            js = self.nc.jetstream()
            kv = await js.key_value(cmd["bucket"])
            self.lease = RawLease(
                self.nc, kv, cmd["bucket"], cmd["name"], cmd["ttl"], self.opts.heartbeat
            )
            return {"holder": await self.lease.start(self.opts.node)}
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
class FanRun:
    variant: str
    kind: str  # "group" or "event"
    n: int  # fan-outs
    members: int  # on both nodes
    seconds: float
    cpu: Cpu
    frames_in: float | None  # metakit: frames the receiver node got per fan-out
    frames_per_pub: float | None  # metakit: frames per NATS message the sender published

    @property
    def rate(self) -> float:
        return self.n / self.seconds

    def us_per_fan(self, seconds: float) -> float:
        return 1e6 * seconds / self.n


@dataclass
class Failover:
    seconds: float  # from the SIGKILL to the instance starting on another node
    name: float | None  # metakit: to its cluster name showing at the watcher
    extra: int  # metakit: other instances started meanwhile that never got the name


@dataclass
class LoopResult:
    loop: str
    sends: dict[tuple[str, str], list[SendRun]] = field(default_factory=dict)
    calls: dict[str, list[CallRun]] = field(default_factory=dict)
    fans: dict[tuple[str, str], list[FanRun]] = field(default_factory=dict)
    downs: dict[float, list[float]] = field(default_factory=dict)
    failovers: dict[tuple[str, float], list[Failover]] = field(default_factory=dict)
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

    async def fan_run(
        self, snd: Child, rcv: Child, meter: Meter, variant: str, kind: str, n: int
    ) -> FanRun:
        t = self.p.timeout
        m, chunk, window = self.opts.members, self.opts.fan_chunk, self.opts.fan_window
        armed = await rcv.ask(t, cmd="fan_arm", variant=variant, n=n, window=window)
        await snd.ask(t, cmd="fan_arm", variant=variant, n=n, window=window)
        a = meter.snap()
        res = await snd.ask(
            t, cmd="fan", variant=variant, kind=kind, n=n, chunk=chunk, window=window
        )
        b = meter.snap()
        done = await rcv.ask(t, cmd="fan_disarm")
        if res["members_done"] != m or done["members_done"] != m or res["t_last"] <= res["t0"]:
            raise RuntimeError(
                f"{variant}/{kind}: {res['members_done']} + {done['members_done']} "
                f"of 2 x {m} members got all {n}"
            )
        frames_in = fpp = None
        if variant == "metakit":
            asks = -(-n // window)  # the window calls reach the receiver node too
            got = done["stats"]["messages_in"] - armed["stats"]["messages_in"]
            frames_in = (got - asks) / n
            msgs = res["after"]["messages_out"] - res["before"]["messages_out"]
            pubs = res["after"]["batches_out"] - res["before"]["batches_out"]
            fpp = msgs / pubs if pubs else None
        seconds = res["t_last"] - res["t0"]
        return FanRun(variant, kind, n, 2 * m, seconds, meter.diff(a, b), frames_in, fpp)

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
        if opts.phases & {"send", "call", *FAN_KINDS}:
            await self.pair_phases(loop, result)
        if "down" in opts.phases:
            await self.node_down(loop, result)
        if "singleton" in opts.phases:
            await self.singleton(loop, result)
        return result

    async def pair_phases(self, loop: str, result: LoopResult) -> None:
        """The send, call and fan-out rounds, between one sender and one receiver process."""
        opts, p = self.opts, self.p
        sends = "send" in opts.phases
        calls = "call" in opts.phases
        fans = [k for k in FAN_KINDS if k in opts.phases]
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
        if fans:  # the members (and the producer first: the receiver subscribes to it)
            m = opts.members
            await snd.ask(p.timeout, cmd="fan_setup", members=m)
            await rcv.ask(p.timeout, cmd="fan_setup", members=m)
            await snd.ask(p.timeout, cmd="fan_attach", members=m, suffix="")
        meter = Meter(snd.pid, rcv.pid, self.server_pid)
        print(f"  {loop}: warm-up...", file=sys.stderr, flush=True)
        for payload in opts.payloads if sends else ():
            for v in SEND_VARIANTS:
                await self.send_run(snd, rcv, meter, v, payload, max(1, p.messages[payload] // 10))
        for v in CALL_VARIANTS if calls else ():
            await self.call_run(snd, rcv, meter, v, max(1, p.calls // 10))
        for kind in fans:
            for v in FAN_VARIANTS:
                await self.fan_run(snd, rcv, meter, v, kind, max(1, p.fanouts // 10))
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
            for kind in fans:
                for v in FAN_VARIANTS if i % 2 == 0 else FAN_VARIANTS[::-1]:

                    def one_fan(v: str = v, kind: str = kind) -> Any:
                        return self.fan_run(snd, rcv, meter, v, kind, p.fanouts)

                    result.fans.setdefault((kind, v), []).append(await self.again(result, one_fan))
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

    async def singleton(self, loop: str, result: LoopResult) -> None:
        """Singleton failover, metakit's and the raw lease's, for each heartbeat."""
        opts, p = self.opts, self.p
        for j, hb in enumerate(p.heartbeats):
            tag = f"hb{hb:g}".replace(".", "_")
            ttl = max(1, math.ceil(3 * hb))  # metakit's lease TTL (Cluster._ttl), for both
            watch, bucket = f"lwatch-{loop}-{tag}", f"raw-lease-{tag}"
            watcher = await self.spawn(
                "sender", f"{watch}@bench", loop, opts.sender_cpu, heartbeat=hb
            )
            await watcher.ask(10.0, cmd="leader_watch", name=watch, bucket=bucket, ttl=ttl)
            for v in LEASE_VARIANTS if j % 2 == 0 else LEASE_VARIANTS[::-1]:
                print(
                    f"  {loop}: singleton failover ({v}), heartbeat {hb:g} s...",
                    file=sys.stderr,
                    flush=True,
                )
                result.failovers[(v, hb)] = await self.failover_runs(
                    watcher, loop, tag, hb, ttl, v, watch, bucket, result
                )
            await self.retire(watcher)

    async def failover_runs(
        self,
        watcher: Child,
        loop: str,
        tag: str,
        hb: float,
        ttl: int,
        variant: str,
        watch: str,
        bucket: str,
        result: LoopResult,
    ) -> list[Failover]:
        """``--contenders`` nodes compete; SIGKILL the holder's, time the next instance
        (announced to the watcher with its start time), start a new contender; again."""
        opts, p = self.opts, self.p
        rng = random.Random(f"{loop}-{tag}-singleton")  # the same pauses for both variants
        name = f"leader-{loop}-{tag}"
        wait = 3 * hb + FAILOVER_SLACK + 10.0
        contenders: dict[str, Child] = {}
        started = 0

        async def contender() -> None:
            nonlocal started
            node = f"c{started}-{variant}-{loop}-{tag}@bench"
            started += 1
            child = await self.spawn("contender", node, loop, opts.receiver_cpu, heartbeat=hb)
            contenders[node] = child
            await child.ask(
                10.0 + 2 * hb,
                cmd="contend",
                variant=variant,
                name=name,
                watch=watch,
                bucket=bucket,
                ttl=ttl,
            )

        for _ in range(opts.contenders):
            await contender()
        first = await watcher.ask(wait, cmd="wait_leader", variant=variant, name=name, exclude="")
        holder = first["node"]
        took: list[Failover] = []
        for _ in range(p.failovers):
            # Past a renewal, then the kill's phase against them.
            await asyncio.sleep(hb + rng.uniform(0, hb))
            victim = contenders.pop(holder)
            t_kill = time.monotonic()
            victim.kill()
            got = await watcher.ask(
                wait, cmd="wait_leader", variant=variant, name=name, exclude=holder
            )
            t_name = got["t_name"]
            name_s = None if t_name is None else t_name - t_kill
            took.append(Failover(got["t"] - t_kill, name_s, got["extra"]))
            await victim.proc.wait()
            self.children.remove(victim)
            holder = got["node"]
            await contender()  # as many contenders for the next kill
        for child in contenders.values():
            try:
                await self.retire(child)
            except TimeoutError:  # killed instead; the result stands
                result.notes.append(f"{child.name} did not stop within 10 s of its stdin closing")
        return took


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


def fan_row(r: FanRun, loop: str) -> str:
    c = r.cpu
    fin = f"{r.frames_in:7.3f}" if r.frames_in is not None else f"{'-':>7}"
    fpp = f"{r.frames_per_pub:6.0f}" if r.frames_per_pub else f"{'-':>6}"
    return (
        f"{r.variant:<8} {r.kind:<6} {loop:<8} {r.rate:9,.0f} {r.rate * r.members:10,.0f} "
        f"{r.us_per_fan(c.sender):7.1f} {r.us_per_fan(c.sender_sys):5.1f} "
        f"{r.us_per_fan(c.receiver):7.1f} {r.us_per_fan(c.receiver_sys):5.1f} "
        f"{r.us_per_fan(c.server):6.1f} {c.pct(c.sender):5.0f} {c.pct(c.receiver):5.0f} "
        f"{c.pct(c.server):5.0f} {c.pct(c.other):5.0f} {fin} {fpp}"
    )


def paired(ours: list[Any], theirs: list[Any], value: Callable[[Any], float]) -> list[float]:
    return [value(a) / value(b) for a, b in zip(ours, theirs, strict=True)]


def report(results: list[LoopResult], opts: argparse.Namespace, p: Params) -> None:
    if "send" in opts.phases:
        send_table(results, opts, p)
    if "call" in opts.phases:
        call_table(results, p)
    if set(FAN_KINDS) & opts.phases:
        fan_table(results, opts, p)
    if "down" in opts.phases:
        down_table(results)
    if "singleton" in opts.phases:
        failover_table(results, opts)
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


def fan_table(results: list[LoopResult], opts: argparse.Namespace, p: Params) -> None:
    print()
    print(
        f"fan-out: {p.fanouts:,} x (i, 32 B) per run, each to 2 x {opts.members} members "
        f"(group: send_group; event: send_event to subscribers), chunks of {opts.fan_chunk} "
        f"with a loop turn between, at most 2 x {opts.fan_window} in flight; "
        f"best of {p.repeat} rounds; CPU per fan-out"
    )
    head = (
        f"{'variant':<8} {'kind':<6} {'loop':<8} {'fan/s':>9} {'deliv/s':>10} {'snd us':>7} "
        f"{'(sys)':>5} {'rcv us':>7} {'(sys)':>5} {'srv us':>6} {'snd%':>5} {'rcv%':>5} "
        f"{'srv%':>5} {'oth%':>5} {'rfr/fan':>7} {'fr/pub':>6}"
    )
    print(head)
    print("-" * len(head))
    for res in results:
        for kind in FAN_KINDS:
            for v in FAN_VARIANTS:
                runs = res.fans.get((kind, v))
                if runs:
                    print(fan_row(max(runs, key=lambda r: r.rate), res.loop))


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


def failover_table(results: list[LoopResult], opts: argparse.Namespace) -> None:
    print()
    print(
        f"singleton failover: {opts.contenders} contender nodes; SIGKILL of the one running "
        "the instance -> the instance starting on another node"
    )
    head = (
        f"{'variant':<8} {'loop':<8} {'heartbeat':>9} {'ttl':>4} {'kills':>5} {'min s':>7} "
        f"{'median s':>8} {'max s':>7} {'name s':>7} {'extra':>5}   target"
    )
    print(head)
    print("-" * len(head))
    for res in results:
        for (v, hb), runs in res.failovers.items():
            took = [f.seconds for f in runs]
            names = [f.name for f in runs if f.name is not None]
            name = f"{median(names):7.3f}" if names else f"{'-':>7}"
            worst, limit = max(took), 3 * hb + FAILOVER_SLACK
            print(
                f"{v:<8} {res.loop:<8} {hb:9.1f} {max(1, math.ceil(3 * hb)):4} {len(took):5} "
                f"{min(took):7.3f} {median(took):8.3f} {worst:7.3f} {name} "
                f"{sum(f.extra for f in runs):5}   "
                f"<= 3 x hb + {FAILOVER_SLACK:g} = {limit:g} s {verdict(worst <= limit)}"
            )


def legend(results: list[LoopResult]) -> None:
    print()
    print(
        "snd/rcv/srv us: CPU (user+sys) per message or call of the sender, the receiver and "
        "the nats-server, (sys) its kernel part; snd%/rcv%/srv%: as % of one core over the run; "
        "oth%: other programs (> 10 means disturbed); sflt/k, rflt/k: minor page faults of the "
        "sender/receiver per 1000 messages; fr/pub: metakit frames per NATS message published. "
        "A process near 100% is the bottleneck of that run. Fan-out: fan/s: fan-outs per second, "
        "each delivered when every member has it; deliv/s: deliveries (fan/s x members); CPU per "
        "fan-out; rfr/fan: frames the receiver node got per fan-out (one per node, not per "
        "member). Failover: the time from the SIGKILL to the new instance's start (metakit: "
        "Leader.init; raw: the lease won), name s: to its cluster name showing at the watcher; "
        "extra: instances that started meanwhile but never got the name (should be 0)."
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
    if not (res.sends or res.calls or res.fans or res.failovers):
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
    for kind in FAN_KINDS:
        if (kind, "metakit") not in res.fans:
            continue
        fan_mk, fan_raw = res.fans[(kind, "metakit")], res.fans[(kind, "raw")]
        r = paired(fan_mk, fan_raw, lambda r: r.rate)
        if FAN_TARGET is not None:
            print(ratio_line(f"{kind} fan-outs/s / raw", r, FAN_TARGET, False))
        else:
            print(
                f"  {kind + ' fan-outs/s / raw':<30} {median(r):6.2f}x  (no target)  "
                f"rounds: {spread(r)}"
            )
        frames = [f.frames_in or 0.0 for f in fan_mk]
        fin = median(frames)
        print(
            f"  {kind + ' frames in/fan-out':<30} {fin:6.3f}   (target 1, one per node: "
            f"{verdict(abs(fin - 1) < 0.005)})  rounds: {spread(frames)}"
        )
    for (v, hb), runs in res.failovers.items():
        raw_runs = res.failovers.get(("raw", hb))
        if v != "metakit" or not raw_runs:
            continue
        r = paired(runs, raw_runs, lambda f: f.seconds)
        print(
            f"  {f'failover hb {hb:g} / raw':<30} {median(r):6.2f}x  (no target)  "
            f"kills: {spread(r)}"
        )


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
        for kind in FAN_KINDS:
            for v in FAN_VARIANTS:
                for f in res.fans.get((kind, v), []):
                    print("  " + fan_row(f, res.loop) + f"  {f.seconds:.3f} s")
        for hb, took in res.downs.items():
            print(f"  down {res.loop} heartbeat {hb:g}: " + " ".join(f"{t:.3f}" for t in took))
        for (v, hb), runs in res.failovers.items():
            print(
                f"  failover {v} {res.loop} heartbeat {hb:g}: "
                + " ".join(f"{f.seconds:.3f}" for f in runs)
            )


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
    parser.add_argument("--fanouts", type=int, help="fan-outs per group/event run (50000)")
    parser.add_argument("--members", type=int, default=50, help="fan-out members per node (50)")
    parser.add_argument("--fan-chunk", type=int, default=100, help="fan-outs between loop turns")
    parser.add_argument("--fan-window", type=int, default=500, help="fan-outs per members' ack")
    parser.add_argument(
        "--failovers", type=int, help="singleton kills per heartbeat, variant and loop (3)"
    )
    parser.add_argument("--contenders", type=int, default=3, help="singleton contender nodes (3)")
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
        "--phase",
        action="append",
        metavar="PHASE[,PHASE...]",
        help=f"repeatable or comma-separated, of {', '.join(PHASES)}; default all",
    )
    parser.add_argument("--payload", action="append", choices=PAYLOADS, help="repeatable")
    # internal: the child processes
    parser.add_argument(
        "--child", choices=("sender", "receiver", "contender"), help=argparse.SUPPRESS
    )
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
    if opts.fanouts:
        changes["fanouts"] = max(1, opts.fanouts)
    if opts.failovers:
        changes["failovers"] = max(1, opts.failovers)
    if opts.heartbeat:
        changes["heartbeats"] = tuple(opts.heartbeat)
    if opts.retries is not None:
        changes["retries"] = max(0, opts.retries)
    if opts.quiet_wait is not None:
        changes["quiet_wait"] = opts.quiet_wait
    p = Params(**{**p.__dict__, **changes})
    if opts.chunk < 1 or opts.window < opts.chunk or opts.window % opts.chunk:
        parser.error("--window must be a multiple of --chunk")
    if opts.fan_chunk < 1 or opts.fan_window < opts.fan_chunk or opts.fan_window % opts.fan_chunk:
        parser.error("--fan-window must be a multiple of --fan-chunk")
    if opts.members < 1 or opts.contenders < 2:
        parser.error("--members must be >= 1 and --contenders >= 2")

    cpus = os.sched_getaffinity(0)
    if len(cpus) < 2:
        opts.sender_cpu = opts.receiver_cpu = None
    elif opts.sender_cpu not in cpus or opts.receiver_cpu not in cpus:
        parser.error(f"--sender-cpu/--receiver-cpu must be among {sorted(cpus)}")
    if opts.server_cpus is not None:
        opts.server_cpus = {int(c) for c in opts.server_cpus.split(",")}
    opts.loops = LOOPS if opts.loop == "both" else (opts.loop,)
    opts.phases = {x.strip() for arg in opts.phase or PHASES for x in arg.split(",") if x.strip()}
    if opts.phases - set(PHASES):
        parser.error(f"unknown --phase {sorted(opts.phases - set(PHASES))}; of {', '.join(PHASES)}")
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
