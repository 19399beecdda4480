"""SSH echo benchmark: metakit's SSHServer (a session channel as a meta) vs raw asyncssh.

What is measured (each server on the stdlib asyncio loop and on uvloop, in
one run; both sides are asyncssh, so the difference is metakit's own work):

* ``raw``: ``asyncssh.listen(...)`` with a callback-level
  ``asyncssh.SSHServerSession`` whose ``data_received(data, datatype)`` does
  ``self._chan.write(data)`` (``encoding=None``; ``pause_writing`` /
  ``resume_writing`` pause and resume reading the channel, so that a
  stream's memory stays bounded, as metakit's does). Its process gets
  metakit's malloc tuning (``metakit._malloc.warm_allocator``, what
  ``Node.start`` does), so the control differs from metakit only by metakit.
* ``metakit``: a node with one worker Process owning ``SSHServer("127.0.0.1",
  0, host_keys=..., authorized_keys=..., framing=Raw())``; each read goes
  session meta → worker (``SSHMessage``) → the worker's ``self.send(conn,
  SSHMessage(conn, data))`` → session meta → ``chan.write``.
* ``metakit-line``: the same worker on a second ``SSHServer``, with
  ``Line(max_length=4096)`` framing (the newline is stripped on reading and
  added back on writing: the same bytes on the wire). Ping-pong only.

The same host key (Ed25519), client key, key exchange (curve25519-sha256)
and cipher (``--cipher``, default aes128-gcm@openssh.com; no compression)
for all: the client asks for exactly those and checks the host key. The
keys are generated at the start in a private temporary directory (files
0600) and removed at the end; the servers listen on 127.0.0.1 only.

Load: Debian's OpenSSH client, driven by this script. An asyncssh client
costs about as much CPU per round trip as the asyncssh server it measures
(the same Python SSH stack: ~75-95 µs against ~75-100 µs where this was
written), so it cannot load one server core from the other core; ``ssh``,
in C, costs about half that. Per variant, ``--connections`` (4) ``ssh -o
ControlMaster=yes -N`` masters each carry ``--sessions`` / ``--connections``
session channels (``ssh -o ControlPath=... -T bench@127.0.0.1 echo``): a
mux client hands its pipes to its master, so the masters' poll loops do all
the relaying, and this script reads and writes the pipes (epoll):

* ping-pong: ``--sessions`` (32) sessions, each writing a 64-byte line
  (63 bytes and ``\\n``, ``--size``) and waiting for its echo before the
  next. Round trips/s, p50/p99 latency (line written to the pipe → echo read
  back from the pipe, through ssh both ways), CPU per round trip.
* stream: one more session per variant pushes ``--stream-mib`` (512) MiB
  through the echo while reading it back (``splice`` from a payload file to
  ssh's stdin and from its stdout to /dev/null: the bytes never pass through
  this process); MB/s = 10^6 bytes echoed per second, first byte written to
  last byte back. Raw framing only: a line-framed stream has no raw
  counterpart.

Even so the load generator is not much cheaper than the server: OpenSSH
pays a poll, two pipe and two socket syscalls and its crypto per round trip
(asyncssh sends an SSH_MSG_IGNORE before every packet, so it decrypts two),
this driver ~8 µs more; in a stream ssh copies every byte four times and
ciphers it twice, as the server does. So a fast server (raw on uvloop) and the load
generator both run near 100 %, and then throughput does not compare the
servers; CPU per message does.

The servers are this script's ``--serve`` subprocesses pinned to CPU 0
(``taskset``); this script and every ssh process (they inherit its
affinity) run on CPU 1. CPU is utime + stime from ``/proc/PID/stat`` (10 ms
ticks) over the measured interval: the server's (and its user part), the
load generator's (``gen``: every ssh process of the variant, plus this
driver from ``getrusage``) and ``oth``, what the rest of the machine used
(``/proc/stat``). A run during which others took more than 10 % of a core
is done again (``--retries``, 1; none after the first 100 s per loop, so a
full run stays within ~5 minutes) after waiting for quiet (``--quiet-wait``,
10 s at most, also before each server starts).

Rounds: per loop both servers start fresh, every variant opens its
sessions and does one unmeasured run, then ``--repeat`` (5) rounds of
ping-pong runs (3 s, each after a 1 s warm-up) and then of streams go round
the variants, the order reversed every round. Tables show each variant's
best run; ratios are medians over the rounds of metakit's run / raw's run in
the same round (every round's ratio printed beside), so a shared machine's
drift cancels in each pair.

Target: metakit >= 0.85x raw asyncssh on the same loop, for ping-pong
(``metakit`` and ``metakit-line``) and for the stream: the throughput ratio
when both servers are the limit (>= 90 % of their core in the median run,
the load generator below 90 %), else raw's server CPU per message /
metakit's; the report says which and why, and prints both, with the CPU
ratio metakit / raw and the p99 ratio. A miss prints ``MISS``; only errors
make the exit status non-zero.

Run from the repository root (Linux, two CPUs, ``taskset``, OpenSSH's
``ssh``; ``pip install 'metakit[ssh]' uvloop``)::

    python bench/ssh.py [--quick] [--verbose] [--loop asyncio|uvloop|both] [--repeat N]

A full run takes about 3-4 minutes; ``--quick`` is a smoke test (one round
of 1 s runs, a 64 MiB stream, no retries; under a minute). ``--verbose``
adds every run. ``--profile`` runs both servers under cProfile, switched on
(SIGUSR1/SIGUSR2) for the ping-pong rounds only (the figures are then not
comparable), and prints each one's top functions, its tottime by package
per round trip and metakit's own functions; ``--profile-dir`` keeps the
``.prof`` files. Every wait is bounded; the children die with this script
(``PR_SET_PDEATHSIG``). Internally a server is this script run as ``--serve
raw|metakit --loop LOOP``: it prints ``PORTS <raw> <line>`` and serves
until its stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import fcntl
import os
import platform
import pstats
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any

from _harness import ServeProcess, host_busy, verdict, wait_quiet

HERE = Path(__file__).resolve().parent
LOOPS = ("asyncio", "uvloop")
VARIANTS = ("raw", "metakit", "metakit-line")
STREAM_VARIANTS = ("raw", "metakit")  # a line-framed stream has no raw counterpart
SERVER_OF = {"raw": "raw", "metakit": "metakit", "metakit-line": "metakit"}
USER = "bench"
MAX_LINE = 4096
TARGET = 0.85  # metakit / raw, at least
SATURATED = 90.0  # % of a core: a server this busy is the limit
NOISY = 10.0  # a run during which others took more % of a core is done again
CLK_TCK = os.sysconf("SC_CLK_TCK")
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


# --------------------------------------------------------------------- servers


def _server_classes() -> tuple[type, type]:
    import asyncssh

    class RawEcho(asyncssh.SSHServerSession):  # type: ignore[type-arg]
        """raw: write back every chunk as ``data_received`` gets it."""

        def connection_made(self, chan: Any) -> None:
            self._chan = chan

        def shell_requested(self) -> bool:
            return True

        def exec_requested(self, command: str) -> bool:
            return True

        def data_received(self, data: bytes, datatype: Any) -> None:
            self._chan.write(data)

        # Stop reading while the send buffer is full, as metakit does: bounded memory.
        def pause_writing(self) -> None:
            self._chan.pause_reading()

        def resume_writing(self) -> None:
            self._chan.resume_reading()

        def eof_received(self) -> bool:
            self._chan.exit(0)  # closes after the queued writes
            return True

    class RawGate(asyncssh.SSHServer):
        def session_requested(self) -> Any:
            return RawEcho()

    return RawEcho, RawGate


async def _listen_raw(host_key: str, authorized: str) -> tuple[int, int, Any]:
    import asyncssh

    from metakit._malloc import warm_allocator

    warm_allocator()  # the node's malloc tuning, so that only metakit differs
    _, gate = _server_classes()
    # SSHServer's listen options; asyncssh checks the keys itself here.
    acceptor = await asyncssh.listen(
        "127.0.0.1",
        0,
        server_factory=gate,
        server_host_keys=[host_key],
        authorized_client_keys=authorized,
        login_timeout=30.0,
        encoding=None,
        line_editor=False,
        allow_pty=True,
        config=None,
    )
    port = acceptor.sockets[0].getsockname()[1]
    return port, port, acceptor


async def _listen_metakit(host_key: str, authorized: str) -> tuple[int, int, Any]:
    import metakit
    from metakit.framing import Line, Raw
    from metakit.ssh import SSHMessage, SSHServer

    class EchoWorker(metakit.Process):
        async def init(self) -> None:
            keys = {"host_keys": [host_key], "authorized_keys": authorized}
            self.raw = SSHServer("127.0.0.1", 0, framing=Raw(), **keys)
            await self.spawn_meta(self.raw)
            self.lines = SSHServer("127.0.0.1", 0, framing=Line(max_length=MAX_LINE), **keys)
            await self.spawn_meta(self.lines)

        def handle_call(self, sender: Any, request: Any) -> tuple[int, int]:
            return self.raw.address[1], self.lines.address[1]

        def handle_message(self, sender: Any, message: Any) -> None:
            match message:
                case SSHMessage(conn, data):
                    self.send(conn, SSHMessage(conn, data))

    node = metakit.Node("ssh-echo@localhost")
    await node.start()
    pid = await node.spawn(EchoWorker)
    raw_port, line_port = await node.call(pid, "ports")
    return raw_port, line_port, node


async def _serve(kind: str, host_key: str, authorized: str, profiler: Any) -> None:
    loop = asyncio.get_running_loop()
    if kind == "raw":
        raw_port, line_port, owner = await _listen_raw(host_key, authorized)
    else:
        raw_port, line_port, owner = await _listen_metakit(host_key, authorized)
    done = asyncio.Event()

    def stdin_ready() -> None:
        if not os.read(0, 4096):
            done.set()

    loop.add_reader(0, stdin_ready)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    if profiler is not None:  # the driver profiles the ping-pong rounds only
        loop.add_signal_handler(signal.SIGUSR1, profiler.enable)
        loop.add_signal_handler(signal.SIGUSR2, profiler.disable)
    print(f"PORTS {raw_port} {line_port}", flush=True)
    await done.wait()
    loop.remove_reader(0)
    if kind == "raw":
        owner.close()
        await asyncio.wait_for(owner.wait_closed(), 5.0)
    else:
        await owner.stop()


def serve_main(
    kind: str, loop_name: str, host_key: str, authorized: str, profile: str | None
) -> None:
    """The ``--serve`` mode: one echo server until stdin closes."""
    _die_with_parent()
    import asyncssh  # noqa: F401  (imported before the profile starts)

    factory = None
    if loop_name == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    # CPU time, not wall time: idle waits and time descheduled do not count.
    profiler = cProfile.Profile(time.process_time) if profile else None
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(_serve(kind, host_key, authorized, profiler))
    finally:
        if profiler is not None and profile:
            profiler.disable()
            profiler.dump_stats(profile)


def _die_with_parent() -> None:
    """Linux: SIGTERM when the driver dies, so that no child outlives it."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


# ------------------------------------------------------------------ measuring


def cpu_split(pid: int) -> tuple[float, float]:
    """(utime, stime) of a process, all threads, in seconds; (0, 0) once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


@dataclass
class Snap:
    t: float
    srv_user: float
    srv_sys: float
    gen: float  # the ssh processes and this driver, user + sys
    drv: float  # this driver alone
    host: float

    @classmethod
    def take(cls, server_pid: int, ssh_pids: list[int]) -> Snap:
        user, sys_ = cpu_split(server_pid)
        gen = sum(sum(cpu_split(p)) for p in ssh_pids)
        me = resource.getrusage(resource.RUSAGE_SELF)
        drv = me.ru_utime + me.ru_stime
        return cls(time.monotonic(), user, sys_, gen + drv, drv, host_busy())


@dataclass
class Cpu:
    """CPU over one measured interval, in seconds."""

    seconds: float
    srv: float
    srv_user: float
    gen: float
    drv: float
    other: float

    @classmethod
    def between(cls, a: Snap, b: Snap) -> Cpu:
        srv_user = b.srv_user - a.srv_user
        srv = srv_user + b.srv_sys - a.srv_sys
        gen = b.gen - a.gen
        other = max(0.0, b.host - a.host - srv - gen)
        return cls(b.t - a.t, srv, srv_user, gen, b.drv - a.drv, other)

    @property
    def srv_pct(self) -> float:
        return 100 * self.srv / self.seconds

    @property
    def gen_pct(self) -> float:
        return 100 * self.gen / self.seconds

    @property
    def oth_pct(self) -> float:
        return 100 * self.other / self.seconds


@dataclass
class PingPong:
    roundtrips: int
    p50: float  # µs
    p99: float
    cpu: Cpu

    @property
    def rps(self) -> float:
        return self.roundtrips / self.cpu.seconds

    def per_rt(self, seconds: float) -> float:
        return 1e6 * seconds / self.roundtrips if self.roundtrips else float("inf")

    @property
    def srv_us(self) -> float:
        return self.per_rt(self.cpu.srv)

    @property
    def user_us(self) -> float:
        return self.per_rt(self.cpu.srv_user)

    @property
    def gen_us(self) -> float:
        return self.per_rt(self.cpu.gen)

    @property
    def drv_us(self) -> float:
        return self.per_rt(self.cpu.drv)


@dataclass
class Stream:
    nbytes: int
    cpu: Cpu

    @property
    def mbps(self) -> float:
        return self.nbytes / self.cpu.seconds / 1e6

    @property
    def srv_us(self) -> float:
        """Server CPU µs per MB (10^6 bytes) echoed."""
        return 1e12 * self.cpu.srv / self.nbytes

    @property
    def gen_us(self) -> float:
        return 1e12 * self.cpu.gen / self.nbytes


def percentile(sorted_ns: list[int], p: float) -> float:
    """In µs: the value at rank round(p * (n - 1)) of sorted nanoseconds."""
    if not sorted_ns:
        return float("nan")
    return sorted_ns[int(p * (len(sorted_ns) - 1) + 0.5)] / 1000


# ------------------------------------------------------- the load: OpenSSH


class Sessions:
    """One variant's ssh sessions: ``--connections`` masters connected to
    ``port`` carry ``--sessions`` ping-pong sessions between them, plus one
    stream session. Every ssh process is a child of this one (on its CPU)
    and dies with it.
    """

    def __init__(self, name: str, port: int, opts: argparse.Namespace, keys: Keys) -> None:
        self.name = name
        self.opts = opts
        self.line = b"x" * (opts.size - 1) + b"\n"
        self.log_path = keys.dir / f"ssh-{name}.log"
        self.log = open(self.log_path, "ab")  # noqa: SIM115  (closed in close())
        self.base = [
            opts.ssh,
            "-F", "/dev/null",  # no ~/.ssh/config, no system config
            "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={keys.known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "HostKeyAlgorithms=ssh-ed25519",
            "-o", "KexAlgorithms=curve25519-sha256",
            "-o", f"Ciphers={opts.cipher}",
            "-o", "Compression=no",
            "-o", f"IdentityFile={keys.client}",
            "-o", "IdentitiesOnly=yes",
            "-o", "IdentityAgent=none",
            "-o", "PasswordAuthentication=no",
            "-o", "KbdInteractiveAuthentication=no",
            "-o", "ServerAliveInterval=0",
            "-o", "UpdateHostKeys=no",
            "-o", "ControlPersist=no",
            "-o", "ConnectTimeout=10",
            "-o", "LogLevel=ERROR",
            "-p", str(port),
        ]  # fmt: skip
        self.target = f"{USER}@127.0.0.1"
        self.payload = keys.payload
        self.payload_size = keys.payload.stat().st_size
        self.masters: list[subprocess.Popen[bytes]] = []
        self.clients: list[subprocess.Popen[bytes]] = []
        self.paths = [keys.dir / f"cm-{name}-{i}" for i in range(opts.connections)]
        self.outs: list[int] = []  # ping-pong sessions: the read end of each stdout
        self.into: dict[int, int] = {}  # stdout fd -> the write end of its stdin
        self.stream_in = self.stream_out = -1
        self.epoll = select.epoll()
        self.exchanges = 0  # ping-pong round trips done, warm-ups included

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.masters + self.clients]

    def _spawn(self, args: list[str], pipes: bool) -> subprocess.Popen[bytes]:
        kind = subprocess.PIPE if pipes else subprocess.DEVNULL
        return subprocess.Popen(
            [*self.base, *args],
            stdin=kind,
            stdout=kind,
            stderr=self.log,
            bufsize=0,
            preexec_fn=_die_with_parent,  # the driver has no threads: safe
        )

    def failure(self, what: str) -> RuntimeError:
        self.log.flush()
        text = self.log_path.read_text(errors="replace").strip().splitlines()[-5:]
        return RuntimeError(f"{self.name}: {what}; ssh said: {' | '.join(text) or '(nothing)'}")

    def open(self) -> None:
        """Connect the masters, open every session, check one echo on each."""
        for path in self.paths:
            args = ["-o", "ControlMaster=yes", "-o", f"ControlPath={path}", "-N", self.target]
            self.masters.append(self._spawn(args, pipes=False))
        deadline = time.monotonic() + 30
        for master, path in zip(self.masters, self.paths, strict=True):
            while not path.exists():
                if master.poll() is not None:
                    raise self.failure(f"ssh master exited with status {master.returncode}")
                if time.monotonic() > deadline:
                    raise self.failure("ssh master did not connect within 30 s")
                time.sleep(0.02)
        for i in range(self.opts.sessions + 1):  # the last one streams
            path = self.paths[i % len(self.paths)]
            args = ["-o", "ControlMaster=no", "-o", f"ControlPath={path}", "-T", self.target]
            proc = self._spawn([*args, "echo"], pipes=True)
            self.clients.append(proc)
            assert proc.stdin is not None
            assert proc.stdout is not None
            win, rout = proc.stdin.fileno(), proc.stdout.fileno()
            os.set_blocking(rout, False)
            if i < self.opts.sessions:
                self.outs.append(rout)
                self.into[rout] = win
                self.epoll.register(rout, select.EPOLLIN)
            else:
                self.stream_in, self.stream_out = win, rout
                os.set_blocking(win, False)
                for fd in (win, rout):  # fewer, larger pipe reads and writes
                    with contextlib.suppress(OSError):
                        fcntl.fcntl(fd, F_SETPIPE_SZ, 1 << 20)
        self._hello()

    def _hello(self) -> None:
        # One line through every session: each is up and echoes what it gets.
        fds = [*self.outs, self.stream_out]
        for fd in self.outs:
            os.write(self.into[fd], self.line)
        os.write(self.stream_in, self.line)
        got = {fd: b"" for fd in fds}
        deadline = time.monotonic() + 30
        poller = select.poll()  # not select(): the descriptors may be past 1024
        for fd in fds:
            poller.register(fd, select.POLLIN)
        while any(len(v) < len(self.line) for v in got.values()):
            if time.monotonic() > deadline:
                waiting = sum(len(v) < len(self.line) for v in got.values())
                raise self.failure(f"{waiting} sessions did not echo within 30 s")
            for fd, _ in poller.poll(500):
                data = os.read(fd, 65536)
                if not data:
                    raise self.failure("a session ended before its first echo")
                got[fd] += data
        if any(v != self.line for v in got.values()):
            raise self.failure("a session echoed something else than its line")

    def pingpong(self, server_pid: int, warmup: float, seconds: float) -> PingPong:
        """Every session ping-pongs for ``warmup`` + ``seconds``; the last part is measured."""
        size, line, into, epoll = len(self.line), self.line, self.into, self.epoll
        now = time.perf_counter_ns
        expect = dict.fromkeys(self.outs, size)
        sent = {}
        for fd in self.outs:
            sent[fd] = now()
            os.write(into[fd], line)
        lat: list[int] = []
        count = done = 0
        measuring = sending = True
        start = time.monotonic()
        t_measure, t_stop = start + warmup, start + warmup + seconds
        if warmup <= 0:
            snap0 = Snap.take(server_pid, self.pids)
        else:
            measuring = False
        in_flight = len(self.outs)
        idle_since = time.monotonic()
        while in_flight:
            events = epoll.poll(0.2)
            t = now()
            for fd, _ in events:
                data = os.read(fd, 65536)
                if not data:
                    raise self.failure("a session ended during the ping-pong")
                left = expect[fd] - len(data)
                if left > 0:
                    expect[fd] = left
                    continue
                if left < 0:
                    raise self.failure("more bytes came back than were sent")
                done += 1
                if measuring:
                    count += 1
                    lat.append(t - sent[fd])
                if sending:
                    sent[fd] = now()
                    os.write(into[fd], line)
                    expect[fd] = size
                else:
                    in_flight -= 1
            mono = time.monotonic()
            if events:
                idle_since = mono
            elif mono - idle_since > 10:
                raise self.failure(f"no echo for 10 s ({in_flight} lines in flight)")
            if sending and not measuring and mono >= t_measure:
                snap0 = Snap.take(server_pid, self.pids)
                measuring = True
            elif measuring and mono >= t_stop:
                snap1 = Snap.take(server_pid, self.pids)
                measuring = sending = False  # then wait for the lines in flight
        self.exchanges += done
        lat.sort()
        return PingPong(
            count, percentile(lat, 0.5), percentile(lat, 0.99), Cpu.between(snap0, snap1)
        )

    def stream(self, server_pid: int, nbytes: int) -> Stream:
        """Push ``nbytes`` through the stream session while reading the echo back.

        ``splice`` moves the bytes from the payload file into ssh's stdin and
        from its stdout to /dev/null without copying them through this
        process, and the driver lets the 1 MiB pipes fill and drain a little
        between turns: its cost stays small beside ssh's, which reads,
        encrypts, decrypts and writes every byte.
        """
        win, rout = self.stream_in, self.stream_out
        size = self.payload_size
        flags = os.SPLICE_F_NONBLOCK | os.SPLICE_F_MOVE
        epoll = select.epoll()
        src = os.open(self.payload, os.O_RDONLY)
        sink = os.open(os.devnull, os.O_WRONLY)
        try:
            epoll.register(rout, select.EPOLLIN)
            epoll.register(win, select.EPOLLOUT)
            sent = got = 0
            snap0 = Snap.take(server_pid, self.pids)
            deadline = snap0.t + 60 + nbytes / 4e6
            while got < nbytes:
                moved = False
                while sent < nbytes:
                    off = sent % size
                    count = min(size - off, nbytes - sent)
                    try:
                        sent += os.splice(src, win, count, offset_src=off, flags=flags)
                    except BlockingIOError:
                        break
                    moved = True
                    if sent >= nbytes:
                        epoll.unregister(win)
                while True:
                    try:
                        n = os.splice(rout, sink, 1 << 20, flags=flags)
                    except BlockingIOError:
                        break
                    if n == 0:
                        raise self.failure("the stream session ended")
                    got += n
                    moved = True
                if time.monotonic() > deadline:
                    raise self.failure(f"stream: {got} of {nbytes} bytes back at the deadline")
                if moved:  # 1 MiB lasts ssh a few ms: not a wake-up per 16-32 KiB it moves
                    time.sleep(0.0005)
                else:
                    epoll.poll(0.5)
            snap1 = Snap.take(server_pid, self.pids)
        finally:
            epoll.close()
            os.close(src)
            os.close(sink)
        if got != nbytes:
            raise self.failure(f"stream: {got} bytes came back for {nbytes} sent")
        return Stream(nbytes, Cpu.between(snap0, snap1))

    def close(self) -> str:
        """EOF on every session (the servers then close them), then stop the masters.

        Returns what ssh wrote on stderr (LogLevel=ERROR: nothing, normally).
        """
        for proc in self.clients:
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()
        deadline = time.monotonic() + 10
        for proc in self.clients:
            _reap(proc, deadline)
        for proc in self.masters:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 5
        for proc in self.masters:
            _reap(proc, deadline)
        self.epoll.close()
        self.log.close()
        lines = self.log_path.read_text(errors="replace").strip().splitlines()
        return " | ".join(lines[-3:]) + (f" ({len(lines)} lines)" if len(lines) > 3 else "")


def _reap(proc: subprocess.Popen[bytes], deadline: float) -> None:
    try:
        proc.wait(max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class Keys:
    """The run's keys, in a private temporary directory (removed at the end)."""

    dir: Path
    host: Path  # the servers' private host key
    client: Path  # the client's private key (ssh -i)
    authorized: Path  # the client's public key, as an authorized_keys file
    known_hosts: Path  # the host key, for any host: ssh checks it
    payload: Path  # 1 MiB of lines, what the streams send (over and over)

    @classmethod
    def make(cls, directory: Path, size: int) -> Keys:
        import asyncssh

        def write(name: str, data: bytes) -> Path:
            path = directory / name
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return path

        host = asyncssh.generate_private_key("ssh-ed25519")
        client = asyncssh.generate_private_key("ssh-ed25519")
        return cls(
            dir=directory,
            host=write("host_ed25519", host.export_private_key()),
            client=write("id_ed25519", client.export_private_key()),
            authorized=write("authorized_keys", client.export_public_key()),
            known_hosts=write("known_hosts", b"* " + host.export_public_key()),
            payload=write("payload", (b"x" * (size - 1) + b"\n") * ((1 << 20) // size)),
        )


# ------------------------------------------------------------------- the driver


@dataclass
class Result:
    variant: str
    loop: str
    runs: list[PingPong] = field(default_factory=list)
    streams: list[Stream] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def best(self) -> PingPong:
        return max(self.runs, key=lambda r: r.rps)

    @property
    def stream(self) -> Stream | None:
        return max(self.streams, key=lambda r: r.mbps) if self.streams else None


class Server(ServeProcess):
    def __init__(self, kind: str, loop: str, opts: argparse.Namespace, keys: Keys) -> None:
        args = [kind, "--loop", loop, "--host-key", str(keys.host)]
        args += ["--authorized", str(keys.authorized)]
        self.profile: str | None = None
        if opts.profile:
            self.profile = str(keys.dir / f"{kind}-{loop}.prof")
            args += ["--profile-to", self.profile]
        super().__init__(__file__, f"{kind}/{loop}", args, opts.server_cpu, "PORTS ")
        self.kind = kind
        self.ports = {"raw": int(self.fields[0]), "line": int(self.fields[1])}
        self.profiled_rts = 0  # round trips served while profiled

    def profiling(self, on: bool) -> None:
        """Switch the profiler of a ``--profile-to`` server on or off."""
        if self.profile:
            os.kill(self.pid, signal.SIGUSR1 if on else signal.SIGUSR2)
            time.sleep(0.05)  # let its loop handle the signal


@dataclass
class Profile:
    path: str
    name: str
    roundtrips: int


def measure_loop(
    opts: argparse.Namespace, keys: Keys, loop: str
) -> tuple[list[Result], list[Profile]]:
    variants = [v for v in VARIANTS if v in opts.variants]
    streamers = [v for v in variants if v in STREAM_VARIANTS]
    results = {v: Result(v, loop) for v in variants}
    servers: dict[str, Server] = {}
    sessions: dict[str, Sessions] = {}
    profiles: list[Profile] = []
    redone: dict[str, int] = {}

    def again(variant: str, what: str, fn: Callable[[], Any]) -> Any:
        # A run disturbed by other programs is done again, after waiting for quiet.
        best = None
        for attempt in range(opts.retries + 1):
            run = fn()
            if best is None or run.cpu.oth_pct < best.cpu.oth_pct:
                best = run
            if run.cpu.oth_pct <= NOISY or attempt == opts.retries:
                break
            if time.monotonic() > opts.retry_until:  # keep a full run within ~5 minutes
                break
            redone[f"{variant} {what}"] = redone.get(f"{variant} {what}", 0) + 1
            wait_quiet(opts.quiet_wait / 3)
        return best

    try:
        for kind in dict.fromkeys(SERVER_OF[v] for v in variants):
            wait_quiet(opts.quiet_wait)
            print(f"  {kind} server on {loop}...", file=sys.stderr, flush=True)
            servers[kind] = Server(kind, loop, opts, keys)
        for v in variants:
            server = servers[SERVER_OF[v]]
            port = server.ports["line" if v == "metakit-line" else "raw"]
            sessions[v] = Sessions(f"{v}-{loop}", port, opts, keys)
            sessions[v].open()
            # Unmeasured: the first exchanges of fresh sessions.
            sessions[v].pingpong(server.pid, 0, opts.warmup)
        print(f"  {loop}: {opts.repeat} rounds of ping-pong...", file=sys.stderr, flush=True)
        before = {v: s.exchanges for v, s in sessions.items()}
        for server in servers.values():
            server.profiling(True)
        for i in range(opts.repeat):
            for v in variants if i % 2 == 0 else variants[::-1]:
                pid, s = servers[SERVER_OF[v]].pid, sessions[v]

                def pp(s: Sessions = s, pid: int = pid) -> PingPong:
                    return s.pingpong(pid, opts.warmup, opts.seconds)

                results[v].runs.append(again(v, "ping-pong", pp))
        for server in servers.values():
            server.profiling(False)
        for v, s in sessions.items():
            servers[SERVER_OF[v]].profiled_rts += s.exchanges - before[v]
        print(f"  {loop}: {opts.repeat} rounds of streams...", file=sys.stderr, flush=True)
        for i in range(opts.repeat):
            for v in streamers if i % 2 == 0 else streamers[::-1]:
                pid, s = servers[SERVER_OF[v]].pid, sessions[v]

                def st(s: Sessions = s, pid: int = pid) -> Stream:
                    return s.stream(pid, opts.stream_bytes)

                results[v].streams.append(again(v, "stream", st))
    finally:
        for v, s in sessions.items():
            said = s.close()
            if said:
                results[v].notes.append(f"ssh said: {said}")
        for server in servers.values():
            server.stop()
            if server.profile:
                name = f"{server.kind} server on {loop}"
                profiles.append(Profile(server.profile, name, server.profiled_rts))
    for what, n in redone.items():
        v = what.split()[0]
        results[v].notes.append(f"redone, disturbed by other programs: {n} x {what.split()[1]}")
    return [results[v] for v in variants], profiles


# -------------------------------------------------------------------- reporting


def paired(ours: list[Any], theirs: list[Any], value: Callable[[Any], float]) -> list[float]:
    """Round i's ratio value(ours[i]) / value(theirs[i])."""
    return [value(a) / value(b) for a, b in zip(ours, theirs, strict=False)]


def spread(values: list[float]) -> str:
    return " ".join(f"{v:.2f}" for v in values)


def server_bound(*series: list[Any]) -> tuple[bool, str]:
    """Whether throughput compares the servers: every server saturated and no
    load generator (median runs); else why not."""
    for runs in series:
        if median(r.cpu.srv_pct for r in runs) < SATURATED:
            return False, "a server below 90% of its core"
    for runs in series:
        if median(r.cpu.gen_pct for r in runs) >= SATURATED:
            return False, "the load generator at >= 90% of its core"
    return True, "both servers saturated, the load generator not"


def verdict_line(
    name: str, tput: list[float], cpu: list[float], bound: tuple[bool, str], unit: str
) -> list[str]:
    """The target on throughput when the servers are the limit, else on CPU per message."""
    inv = [1 / c for c in cpu]  # raw's CPU per message / metakit's
    ok, why = bound
    value, what = (median(tput), unit) if ok else (median(inv), "raw CPU/msg / metakit's")
    return [
        f"  {name:<22} {value:5.2f}x  (target >= {TARGET}x on {what}: {why})  "
        f"{verdict(value >= TARGET)}",
        f"  {'':<22} {unit} {median(tput):.2f}x (rounds {spread(tput)}); "
        f"server CPU/msg {median(cpu):.2f}x (rounds {spread(cpu)})",
    ]


def report(results: list[Result], opts: argparse.Namespace) -> None:
    print()
    head = (
        f"{'variant':<13} {'loop':<8} {'rt/s':>7} {'p50 us':>7} {'p99 us':>7} "
        f"{'srv us/rt':>9} {'(user)':>6} {'gen us/rt':>9} {'srv%':>5} {'gen%':>5} {'oth%':>5} | "
        f"{'MB/s':>6} {'srv us/MB':>9} {'srv%':>5} {'gen%':>5} {'oth%':>5}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        b = r.best
        line = (
            f"{r.variant:<13} {r.loop:<8} {b.rps:7,.0f} {b.p50:7.0f} {b.p99:7.0f} "
            f"{b.srv_us:9.1f} {b.user_us:6.1f} {b.gen_us:9.1f} {b.cpu.srv_pct:5.0f} "
            f"{b.cpu.gen_pct:5.0f} {b.cpu.oth_pct:5.0f} |"
        )
        st = r.stream
        if st is not None:
            line += (
                f" {st.mbps:6,.0f} {st.srv_us:9,.0f} {st.cpu.srv_pct:5.0f} "
                f"{st.cpu.gen_pct:5.0f} {st.cpu.oth_pct:5.0f}"
            )
        print(line)
    print()
    print(
        f"ping-pong: {opts.sessions} sessions over {opts.connections} SSH connections x "
        f"{opts.size}-byte lines, one in flight per session; best of {opts.repeat} rounds x "
        f"{opts.seconds:g} s (each after a {opts.warmup:g} s warm-up). Stream: "
        f"{opts.stream_bytes >> 20} MiB through one more session, best of {opts.repeat}."
    )
    print(
        "srv us/rt: server CPU (user+sys) per round trip, (user) its user part; gen us/rt: "
        "the load generator's (ssh processes + this driver); srv%/gen%: as % of one core; "
        "oth%: other programs (> 10: disturbed); srv us/MB: server CPU per 10^6 bytes echoed."
    )
    for r in results:
        for note in r.notes:
            print(f"note: {r.variant} on {r.loop}: {note}")
    noisy = [
        f"{r.variant}/{r.loop}"
        for r in results
        if r.best.cpu.oth_pct > NOISY or (r.stream is not None and r.stream.cpu.oth_pct > NOISY)
    ]
    if noisy:
        print(f"NOTE: other programs used > {NOISY:g}% of a core during " + ", ".join(noisy) + ".")
    busy = [
        f"{r.variant}/{r.loop}"
        for r in results
        if r.best.cpu.gen_pct >= SATURATED
        or (r.stream is not None and r.stream.cpu.gen_pct >= SATURATED)
    ]
    if busy:
        print(
            "NOTE: the load generator used >= 90% of its core for "
            + ", ".join(busy)
            + ": it may be the limit there; compare server CPU per message."
        )
    by = {(r.variant, r.loop): r for r in results}
    for loop in opts.loops:
        raw = by.get(("raw", loop))
        if raw is None:
            continue
        lines: list[str] = []
        for name in ("metakit", "metakit-line"):
            mk = by.get((name, loop))
            if mk is None:
                continue
            tput = paired(mk.runs, raw.runs, lambda r: r.rps)
            cpu = paired(mk.runs, raw.runs, lambda r: r.srv_us)
            bound = server_bound(mk.runs, raw.runs)
            lines += verdict_line(f"{name} ping-pong", tput, cpu, bound, "rt/s")
            p99 = paired(mk.runs, raw.runs, lambda r: r.p99)
            lines.append(f"  {'':<22} p99 {median(p99):.2f}x (rounds {spread(p99)})")
            if name == "metakit" and mk.streams and raw.streams:
                tput = paired(mk.streams, raw.streams, lambda r: r.mbps)
                cpu = paired(mk.streams, raw.streams, lambda r: r.srv_us)
                bound = server_bound(mk.streams, raw.streams)
                lines += verdict_line("metakit stream", tput, cpu, bound, "MB/s")
        if lines:
            print()
            print(f"metakit vs raw asyncssh on {loop} (median of per-round ratios):")
            print("\n".join(lines))
    if opts.verbose:
        print()
        print(
            "every run (rt/s; srv us/rt; gen us/rt (its driver part); p50/p99 us; srv% gen% oth%),"
            " then streams:"
        )
        for r in results:
            for i, pp in enumerate(r.runs):
                print(
                    f"  {r.variant:<13} {r.loop:<8} #{i} {pp.rps:8,.0f} {pp.srv_us:6.1f} "
                    f"{pp.gen_us:6.1f} ({pp.drv_us:4.1f}) {pp.p50:6.0f}/{pp.p99:<6.0f} "
                    f"{pp.cpu.srv_pct:4.0f}% "
                    f"{pp.cpu.gen_pct:4.0f}% {pp.cpu.oth_pct:4.0f}%"
                )
            for i, st in enumerate(r.streams):
                print(
                    f"  {r.variant:<13} {r.loop:<8} #{i} {st.mbps:8,.0f} MB/s in "
                    f"{st.cpu.seconds:.2f} s, srv {st.srv_us:,.0f} us/MB {st.cpu.srv_pct:.0f}%, "
                    f"gen {st.gen_us:,.0f} us/MB {st.cpu.gen_pct:.0f}% (driver "
                    f"{1e12 * st.cpu.drv / st.nbytes:,.0f}), oth {st.cpu.oth_pct:.0f}%"
                )


def git_state() -> str:
    """The checkout measured: commit, and how many files under metakit/ differ from it."""
    try:
        git = ["git", "-C", str(HERE.parent)]
        run = {"capture_output": True, "text": True, "check": True}
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], **run).stdout.strip()
        changed = subprocess.run([*git, "status", "--porcelain", "--", "metakit"], **run)
    except (OSError, subprocess.CalledProcessError):
        return "not a git checkout"
    n = len(changed.stdout.splitlines())
    return f"commit {head}" + (f" + {n} changed files in metakit/" if n else "")


def header(opts: argparse.Namespace) -> None:
    from importlib.metadata import version

    ssh_version = subprocess.run(
        [opts.ssh, "-V"], capture_output=True, text=True, check=False
    ).stderr.strip()
    pin = (
        f"servers on CPU {opts.server_cpu}, ssh + driver on CPU {opts.client_cpu}"
        if opts.server_cpu is not None
        else "not pinned (fewer than 2 CPUs or no taskset)"
    )
    print(
        f"Python {platform.python_version()}, asyncssh {version('asyncssh')}, uvloop "
        f"{version('uvloop')}, {ssh_version}; {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.2f}; {git_state()}"
    )
    print(f"cipher {opts.cipher}, kex curve25519-sha256, Ed25519 keys; {pin}")


def print_profile(prof: Profile, top: int, keep: str | None) -> None:
    """Top functions, tottime by package and metakit's own functions, per round trip."""
    print()
    print(f"cProfile of the {prof.name}, ping-pong rounds only (CPU time, top {top}):")
    stats = pstats.Stats(prof.path, stream=sys.stdout)
    rts = prof.roundtrips
    by_pkg: dict[str, float] = {}
    total = 0.0
    for (filename, _, func), (_, _, tottime, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        total += tottime
        if "epoll" in func or "select" in func:
            pkg = "poll wait"
        elif filename.endswith("/asyncio/runners.py") and func == "run":
            pkg = "uvloop C code"  # uvloop's loop runs inside Runner.run, unseen by cProfile
        elif filename == "~":
            pkg = "builtins (C)"
        elif "/metakit/" in filename:
            pkg = "metakit"
        elif "/asyncio/" in filename:
            pkg = "asyncio"
        elif "/site-packages/" in filename:
            pkg = filename.split("/site-packages/", 1)[1].split("/", 1)[0]
        elif filename.endswith("ssh.py"):
            pkg = "this script"
        else:
            pkg = "stdlib/other"
        by_pkg[pkg] = by_pkg.get(pkg, 0.0) + tottime
    mine = [
        (tottime, calls, f"{Path(filename).name}:{line}({func})")
        for (filename, line, func), (_, calls, tottime, _, _) in stats.stats.items()  # type: ignore[attr-defined]
        if "/metakit/" in filename
    ]
    stats.strip_dirs().sort_stats("tottime").print_stats(top)
    print(f"tottime by package ({rts:,} round trips while profiled):")
    for pkg, t in sorted(by_pkg.items(), key=lambda kv: -kv[1]):
        per = f"{1e6 * t / rts:7.2f} us/rt" if rts else ""
        print(f"  {pkg:<16} {t:7.3f} s  {100 * t / total:5.1f}%  {per}")
    if rts:
        calls = sum(v[1] for v in stats.stats.values())  # type: ignore[attr-defined]
        print(f"function calls per round trip: {calls / rts:.1f}")
    if mine and rts:
        print("metakit's functions (tottime us/rt, calls/rt):")
        for tottime, n, name in sorted(mine, reverse=True)[:12]:
            print(f"  {1e6 * tottime / rts:6.2f}  {n / rts:5.2f}  {name}")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(prof.path, Path(keep) / Path(prof.path).name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="smoke test, < 1 min")
    parser.add_argument("--verbose", action="store_true", help="every run")
    parser.add_argument("--loop", choices=(*LOOPS, "both"), default="both")
    parser.add_argument("--variant", action="append", choices=VARIANTS, help="repeatable")
    parser.add_argument("--repeat", type=int, help="rounds (5; --quick: 1)")
    parser.add_argument("--seconds", type=float, help="measured seconds per run (3; --quick: 1)")
    parser.add_argument("--sessions", type=int, default=32, help="ping-pong sessions")
    parser.add_argument("--connections", type=int, default=4, help="SSH connections per variant")
    parser.add_argument("--size", type=int, default=64, help="line size, newline included")
    parser.add_argument("--stream-mib", type=int, help="MiB per stream (512; --quick: 64)")
    parser.add_argument("--cipher", default="aes128-gcm@openssh.com")
    parser.add_argument("--retries", type=int, help="redo a disturbed run (1; --quick: 0)")
    parser.add_argument(
        "--quiet-wait", type=float, help="s to wait for quiet before each server (10; --quick: 3)"
    )
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument("--profile", action="store_true", help="cProfile both servers")
    parser.add_argument("--profile-dir", help="with --profile: keep the .prof files here")
    # internal: the server subprocess
    parser.add_argument("--serve", choices=("raw", "metakit"), help=argparse.SUPPRESS)
    parser.add_argument("--host-key", help=argparse.SUPPRESS)
    parser.add_argument("--authorized", help=argparse.SUPPRESS)
    parser.add_argument("--profile-to", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)

    if opts.serve:
        serve_main(opts.serve, opts.loop, opts.host_key, opts.authorized, opts.profile_to)
        return 0

    quick = opts.quick
    opts.repeat = opts.repeat or (1 if quick else 5)
    opts.seconds = opts.seconds or (1.0 if quick else 3.0)
    opts.warmup = 0.3 if quick else 1.0
    opts.stream_bytes = (opts.stream_mib or (64 if quick else 512)) << 20
    if opts.retries is None:
        opts.retries = 0 if quick else 1
    if opts.quiet_wait is None:
        opts.quiet_wait = 3.0 if quick else 10.0
    if not 2 <= opts.size <= MAX_LINE:
        parser.error(f"--size must be between 2 and {MAX_LINE}")
    if opts.sessions < 1 or not 1 <= opts.connections <= opts.sessions:
        parser.error("need 1 <= --connections <= --sessions")
    opts.loops = LOOPS if opts.loop == "both" else (opts.loop,)
    opts.retry_until = time.monotonic() + 100 * len(opts.loops)  # no redoing after that
    # Profiled, the metakit server serves one variant, so that per round trip means one thing.
    opts.variants = opts.variant or (["raw", "metakit"] if opts.profile else list(VARIANTS))
    if "raw" not in opts.variants:
        opts.variants.append("raw")  # the reference for every ratio
    opts.ssh = shutil.which("ssh")
    if opts.ssh is None:
        raise SystemExit("needs OpenSSH's ssh (apt-get install openssh-client)")

    cpus = os.sched_getaffinity(0)
    if len(cpus) < 2 or shutil.which("taskset") is None:
        opts.server_cpu = opts.client_cpu = None
    elif opts.server_cpu not in cpus or opts.client_cpu not in cpus:
        parser.error(f"--server-cpu/--client-cpu must be among {sorted(cpus)}")
    else:
        # This driver and every ssh process (they inherit it) off the servers' CPU.
        os.sched_setaffinity(0, {opts.client_cpu})
    # SIGTERM as Ctrl-C: the finally blocks stop every child.
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    header(opts)
    results: list[Result] = []
    profiles: list[Profile] = []
    with tempfile.TemporaryDirectory(prefix="metakit-ssh-bench-") as tmp:
        keys = Keys.make(Path(tmp), opts.size)  # the directory is 0700, the files 0600
        for loop in opts.loops:
            res, prof = measure_loop(opts, keys, loop)
            results += res
            profiles += prof
        report(results, opts)
        if profiles:
            print("\n(profiled: the ping-pong figures above include cProfile's overhead)")
            for prof in profiles:
                print_profile(prof, 25, opts.profile_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
