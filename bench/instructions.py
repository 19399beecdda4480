"""Instructions per operation, counted by callgrind: the ratios this machine's noise cannot move.

The other scripts time things, and this VM's speed drifts by 20-30 % over
minutes, so a 10 % change in a throughput row cannot be told from one run.
Here valgrind's callgrind counts the user-space instructions one operation
costs, metakit beside the raw library doing the same job. The count is the
same to about 0.1 % from run to run, whatever else the machine is doing.

What it counts:

* In one process (``--child``): ``send`` from a Process to a plain handler
  against ``messaging.py``'s floor A (a deque and ``call_soon``);
  ``node.send`` against ``Process.send``; ``Process.call`` against a future
  and a deque; the HTTP bridge, a ``WebHandler`` against a plain aiohttp
  handler (``web_handler.py``'s pair, no sockets).
* A server alone (the ``--serve`` mode of ``tcp_echo.py``, ``udp_echo.py``,
  ``ws.py`` and ``http.py``, under callgrind), driven by a blocking client
  in this process over loopback, one request at a time: a 64-byte line
  echoed over TCP, a 64-byte datagram over UDP, a 64-byte text message over
  WebSocket, a keep-alive ``GET /`` (text and JSON). The client's
  instructions are not counted, nor the kernel's: a figure is the server's
  user-space work per round trip, at a concurrency of one, so no batching.

How: callgrind runs with instrumentation off until the measured part,
started and stopped through its client requests (a small C library built
here from ``<valgrind/callgrind.h>``; the server's is called from a thread
that waits on a pipe). Every figure is ``(I(2N) - I(N)) / N`` from two
windows of N and 2N operations in the same process after a warm-up, so
what a window costs once (a ``gc.collect``, a spawn, the pipe) cancels.

Needs valgrind with its headers (Debian: ``valgrind``) and a C compiler.
Under callgrind Python runs about 50 times slower: the default sizes take
about five minutes for both loops. ``--profile`` also prints the C
functions with the most instructions in each measured window
(``callgrind_annotate``): a profile that, unlike a sampling one, is exact.

Usage::

    python bench/instructions.py                     # every row, both loops
    python bench/instructions.py --row send --row tcp --loop uvloop
    python bench/instructions.py --quick             # small sizes, a smoke test
    python bench/instructions.py --json PATH         # also write the rows as JSON
    python bench/instructions.py --profile 12 --calls 12   # with both profiles
"""

from __future__ import annotations

import os
import sys

# As in http.py: bench/http.py must not shadow the stdlib's http package.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.append(sys.path.pop(0))

import argparse
import asyncio
import ctypes
import dataclasses
import http.client
import json
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
LOOPS = ("asyncio", "uvloop")
LIB_SOURCE = """
#include <valgrind/callgrind.h>
void mk_cg_start(void) { CALLGRIND_START_INSTRUMENTATION; CALLGRIND_ZERO_STATS; }
void mk_cg_stop(void) { CALLGRIND_DUMP_STATS_AT("window"); CALLGRIND_STOP_INSTRUMENTATION; }
"""
LINE = b"x" * 63 + b"\n"  # tcp_echo.py's default line size
PAYLOAD = "x" * 64


@dataclasses.dataclass(frozen=True)
class Row:
    """One ratio: metakit's variant over the raw one, per operation."""

    name: str
    what: str
    goal: str
    ours: str  # variant names: in-process keys, or "script:variant" servers
    theirs: str


ROWS = {
    r.name: r
    for r in (
        Row("send", "send, Process to plain handler", "floor / metakit >= 0.60",
            "send_plain", "floor_a"),
        Row("node_send", "node.send / Process.send", "<= 1.05", "send_node", "send_plain"),
        Row("call", "call round trip / future + deque", "<= 1.15", "call_process", "call_floor"),
        Row("web", "WebHandler request / plain aiohttp handler", "", "web_metakit", "web_plain"),
        Row("tcp", "TCP echo, server per rt / raw BufferedProtocol", "<= 1.10",
            "tcp_echo:metakit", "tcp_echo:raw-buffered"),
        Row("udp", "UDP echo, server per packet / raw DatagramProtocol", "raw / metakit >= 0.90",
            "udp_echo:metakit", "udp_echo:raw"),
        Row("ws", "WebSocket echo, server per message / aiohttp", "aiohttp / metakit >= 0.95",
            "ws:metakit", "ws:aiohttp"),
        Row("http_text", "HTTP hello, server per request / aiohttp", "aiohttp / metakit >= 0.95",
            "http:metakit-text", "http:aiohttp-text"),
        Row("http_json", "HTTP json, server per request / aiohttp", "aiohttp / metakit >= 0.95",
            "http:metakit-json", "http:aiohttp-json"),
    )
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Sizes:
    messages: int  # per send window (N; the second window is 2N)
    calls: int
    requests: int  # WebHandler requests in-process
    roundtrips: int  # per network window
    warmup: int  # network round trips before the first window


FULL = Sizes(messages=100_000, calls=20_000, requests=10_000, roundtrips=1_000, warmup=300)
QUICK = Sizes(messages=10_000, calls=2_000, requests=1_000, roundtrips=100, warmup=50)


def build_lib(workdir: Path) -> Path:
    """The client-request library, compiled into ``workdir``."""
    src = workdir / "mk_cg.c"
    src.write_text(LIB_SOURCE)
    lib = workdir / "libmk_cg.so"
    subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    return lib


def valgrind(outdir: Path, tag: str) -> list[str]:
    """The valgrind prefix: callgrind, instrumentation off until a window starts."""
    return [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={outdir}/{tag}.%p",
        sys.executable,
    ]


def windows(outdir: Path, tag: str) -> list[Path]:
    """The dumps of a run's windows, in order (``tag.PID.1``, ``.2``, ...)."""
    found = [p for p in outdir.glob(f"{tag}.*.*") if p.suffix[1:].isdigit()]
    return sorted(found, key=lambda p: int(p.suffix[1:]))


def total(dump: Path) -> int:
    m = re.search(r"^totals: (\d+)", dump.read_text(), re.M)
    if m is None:
        raise RuntimeError(f"no totals in {dump}")
    return int(m.group(1))


def per_op(dumps: list[Path], n: int) -> float:
    """Instructions per operation from the N and 2N windows."""
    if len(dumps) != 2:
        raise RuntimeError(f"expected 2 windows, found {len(dumps)}: {dumps}")
    return (total(dumps[1]) - total(dumps[0])) / n


# ------------------------------------------------------------ in-process rows


def child_main(
    loop_name: str, lib: str | None, variants: list[str], sizes: Sizes, pstats_to: str | None
) -> None:
    """Under callgrind: each variant's two windows, in the order given (``--child``).

    With ``pstats_to`` instead (no callgrind): the 2N window under cProfile.
    """
    import cProfile

    import messaging
    import web_handler

    import metakit

    profiler = cProfile.Profile()

    class _Profiled:
        def mk_cg_start(self) -> None:
            profiler.enable()

        def mk_cg_stop(self) -> None:
            profiler.disable()

    cg: Any = ctypes.CDLL(lib) if lib else _Profiled()

    async def run() -> None:
        notes = messaging.Notes(backlog={})
        p = dataclasses.replace(
            messaging.FULL, messages=sizes.messages, calls=sizes.calls, timeout=600
        )
        async with metakit.Node("instructions@localhost") as node:
            server = await node.spawn(messaging.EchoServer)
            client = await node.spawn(messaging.CallClient, server)
            async with web_handler.handlers() as (plain, handler, request):
                jobs: dict[str, Callable[[messaging.Params], Any]] = {
                    "send_plain": lambda q: messaging.send_metakit(
                        node, messaging.PlainSink, q, notes
                    ),
                    "send_node": lambda q: messaging.send_metakit(
                        node, messaging.PlainSink, q, notes, via_node=True
                    ),
                    "floor_a": messaging.send_floor_a,
                    "call_process": lambda q: messaging.call_process(node, client, q),
                    "call_floor": messaging.call_floor,
                    "web_metakit": lambda q: web_handler.serve_many(handler, request, q.calls),
                    "web_plain": lambda q: web_handler.serve_many(plain, request, q.calls),
                }
                for name in variants:
                    job = jobs[name]
                    base = p
                    if name.startswith("web"):
                        base = dataclasses.replace(p, calls=sizes.requests)
                    await job(dataclasses.replace(base, messages=base.messages // 10))  # warm
                    for k in (2,) if pstats_to else (1, 2):
                        q = dataclasses.replace(
                            base, messages=base.messages * k, calls=base.calls * k
                        )
                        cg.mk_cg_start()
                        await job(q)
                        cg.mk_cg_stop()
                    print(f"DONE {name}", flush=True)

    factory = None
    if loop_name == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(run())
    if pstats_to:
        profiler.dump_stats(pstats_to)


def count_in_process(
    loop: str, lib: Path, outdir: Path, variants: list[str], sizes: Sizes
) -> dict[str, float]:
    """One callgrind child per variant (so that each has its own dumps); per-op counts."""
    out: dict[str, float] = {}
    for name in variants:
        tag = f"{loop}-{name}"
        cmd = [*valgrind(outdir, tag), __file__, "--child", name, "--loop", loop]
        cmd += ["--lib", str(lib), "--sizes", json.dumps(dataclasses.asdict(sizes))]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        out[name] = per_op(windows(outdir, tag), ops(name, sizes))
    return out


# ------------------------------------------------------------- network rows


def serve_child_main(lib: str, ctl_in: int, ctl_out: int, script: str, argv: list[str]) -> None:
    """Under callgrind: a bench script's ``--serve`` mode, windows opened from a pipe."""
    import runpy

    cg = ctypes.CDLL(lib)

    def control() -> None:
        with os.fdopen(ctl_in, "rb", buffering=0) as rd, os.fdopen(ctl_out, "wb", 0) as wr:
            for line in iter(rd.readline, b""):
                (cg.mk_cg_start if line.strip() == b"start" else cg.mk_cg_stop)()
                wr.write(b"ok\n")

    threading.Thread(target=control, daemon=True).start()
    sys.argv = [script, *argv]
    runpy.run_path(script, run_name="__main__")


class Served:
    """A ``--serve`` server under callgrind, with its window control pipe."""

    def __init__(self, lib: Path, outdir: Path, tag: str, script: str, variant: str, loop: str):
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        path = str(BENCH / f"{script}.py")
        cmd = [*valgrind(outdir, tag), __file__, "--serve-child", str(lib)]
        cmd += [str(to_child_r), str(from_child_w), path, "--serve", variant, "--loop", loop]
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(outdir / f"{tag}.stderr", "w"),  # noqa: SIM115 (the child holds it)
            pass_fds=(to_child_r, from_child_w),
            text=True,
        )
        os.close(to_child_r)
        os.close(from_child_w)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 120
        self.port = 0
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{script} --serve {variant} ended before it was ready")
            m = re.match(r"(PORTS?|READY) (\d+)", line)
            if m:
                self.port = int(m.group(2))
                break
        if not self.port:
            raise RuntimeError(f"{script} --serve {variant}: not ready in 120 s")

    def window(self, what: str) -> None:
        os.write(self._to_child, what.encode() + b"\n")
        if os.read(self._from_child, 16) != b"ok\n":
            raise RuntimeError("the server's window control failed")

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()  # every --serve mode ends on stdin's end
        try:
            self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_child)
        os.close(self._from_child)


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise RuntimeError("the server closed the connection")
        data += chunk
    return data


def tcp_client(port: int) -> tuple[Callable[[], None], Callable[[], None]]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def one() -> None:
        sock.sendall(LINE)
        if _recv_exactly(sock, len(LINE)) != LINE:
            raise RuntimeError("bad echo")

    return one, sock.close


def udp_client(port: int) -> tuple[Callable[[], None], Callable[[], None]]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(60)
    sock.connect(("127.0.0.1", port))
    data = PAYLOAD.encode()

    def one() -> None:
        sock.send(data)
        if sock.recv(2048) != data:
            raise RuntimeError("bad echo")

    return one, sock.close


def ws_client(port: int) -> tuple[Callable[[], None], Callable[[], None]]:
    from websockets.sync.client import connect

    ws = connect(f"ws://127.0.0.1:{port}/echo", open_timeout=60, compression=None)

    def one() -> None:
        ws.send(PAYLOAD)
        if ws.recv(timeout=60) != PAYLOAD:
            raise RuntimeError("bad echo")

    return one, ws.close


def http_client(port: int) -> tuple[Callable[[], None], Callable[[], None]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def one() -> None:
        conn.request("GET", "/")
        response = conn.getresponse()
        if response.status != 200 or not response.read():
            raise RuntimeError(f"bad response {response.status}")

    return one, conn.close


CLIENTS = {"tcp_echo": tcp_client, "udp_echo": udp_client, "ws": ws_client, "http": http_client}


def count_served(loop: str, lib: Path, outdir: Path, variant: str, sizes: Sizes) -> float:
    script, name = variant.split(":")
    tag = f"{loop}-{script}-{name}"
    server = Served(lib, outdir, tag, script, name, loop)
    try:
        one, close = CLIENTS[script](server.port)
        try:
            for _ in range(sizes.warmup):
                one()
            for k in (1, 2):
                server.window("start")
                for _ in range(sizes.roundtrips * k):
                    one()
                server.window("stop")
        finally:
            close()
    finally:
        server.close()
    return per_op(windows(outdir, tag), sizes.roundtrips)


# --------------------------------------------------- Python-level profiles


def pstats_of(loop: str, outdir: Path, variant: str, sizes: Sizes) -> Path:
    """A cProfile of ``variant`` doing 2N operations (no callgrind): a pstats file.

    In-process variants profile the window alone. A server profiles its whole
    run (its ``--profile-to``; ``http.py``'s only between SIGUSR1 and SIGUSR2,
    sent around the window): :func:`py_profile` keeps only the functions
    called at least once per operation, which the start-up cannot reach.
    """
    out = outdir / f"{loop}-{variant.replace(':', '-')}.pstats"
    if ":" not in variant:
        cmd = [sys.executable, __file__, "--child", variant, "--loop", loop]
        cmd += ["--pstats-to", str(out), "--sizes", json.dumps(dataclasses.asdict(sizes))]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        return out
    script, name = variant.split(":")
    cmd = [sys.executable, str(BENCH / f"{script}.py"), "--serve", name, "--loop", loop]
    proc = subprocess.Popen(
        [*cmd, "--profile-to", str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdin is not None
    try:
        port = 0
        while not port:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{script} --serve {name} ended before it was ready")
            m = re.match(r"(PORTS?|READY) (\d+)", line)
            port = int(m.group(2)) if m else 0
        one, close = CLIENTS[script](port)
        try:
            for _ in range(sizes.warmup):
                one()
            if script == "http":
                proc.send_signal(signal.SIGUSR1)
                one()  # the signal is handled by the time this answers
            for _ in range(2 * sizes.roundtrips):
                one()
            if script == "http":
                proc.send_signal(signal.SIGUSR2)
                one()
        finally:
            close()
    finally:
        proc.stdin.close()
        proc.wait(60)
    return out


def py_profile(pstats_file: Path, n: int, top: int) -> str:
    """The functions called at least 0.9 times per operation, by own time.

    A share is of these functions' own time (cProfile's overhead included,
    which weighs on the many small calls): what a server does once, such as
    starting, is left out, and so is the stdlib loop's ``epoll.poll``, which
    is mostly the wait for the client.
    """
    import pstats

    stats: Any = pstats.Stats(str(pstats_file)).stats
    rows = []
    for (path, line, func), (_, ncalls, tottime, _, _) in stats.items():
        if "'poll' of 'select.epoll'" in func:
            continue  # mostly waiting for the client: not work
        if ncalls >= 0.9 * n:
            short = path.split("site-packages/")[-1].split(f"{BENCH.parent}/")[-1]
            short = re.sub(r".*/lib/python3\.\d+/", "", short)
            rows.append((tottime, ncalls / n, f"{short}:{line}:{func}" if line else func))
    rows.sort(reverse=True)
    calls = sum(r[1] for r in rows)
    total_time = sum(r[0] for r in rows) or 1.0
    out = [f"    {calls:.1f} calls per operation"]
    for tottime, per, name in rows[:top]:
        out.append(f"    {per:5.1f}/op {100 * tottime / total_time:5.1f}%  {name}")
    return "\n".join(out)


# ------------------------------------------------------------------- report


def annotate(outdir: Path, loop: str, variant: str, n: int, top: int) -> str:
    """The C functions with the most instructions per operation in a variant's first window.

    (In a window opened from the control thread, callgrind's ``summary`` line,
    which callgrind_annotate takes for the total, can miss part of a second
    window; the first window's is whole, as is every ``totals`` line, which
    :func:`total` reads.)
    """
    tag = f"{loop}-{variant.replace(':', '-')}"
    dumps = windows(outdir, tag)
    out = subprocess.run(
        ["callgrind_annotate", "--inclusive=no", "--threshold=99", str(dumps[0])],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lines = []
    for ln in out.splitlines():
        m = re.match(r"\s*([\d,]+) \(\s*([\d.]+)%\)\s+(\S+)", ln)
        if m is None or m.group(3) == "PROGRAM":
            continue
        where = m.group(3)
        if ":" in where:  # /path/to/file.c:function -> file.c:function
            path, func = where.rsplit(":", 1)
            where = f"{path.rsplit('/', 1)[-1]}:{func}"
        per = int(m.group(1).replace(",", "")) / n
        lines.append(f"    {per:9.0f} {float(m.group(2)):5.1f}%  {where}")
        if len(lines) == top:
            break
    return "\n".join(lines)


def ops(variant: str, sizes: Sizes) -> int:
    """Operations in a variant's first window."""
    if ":" in variant:
        return sizes.roundtrips
    if variant.startswith(("send", "floor")):
        return sizes.messages
    return sizes.requests if variant.startswith("web") else sizes.calls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--row", action="append", choices=list(ROWS), help="(all)")
    parser.add_argument("--loop", choices=(*LOOPS, "both"), default="both")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    parser.add_argument(
        "--profile",
        type=int,
        metavar="TOP",
        default=0,
        help="also print each variant's TOP C functions by instructions",
    )
    parser.add_argument(
        "--calls",
        type=int,
        metavar="TOP",
        default=0,
        help="also cProfile each variant (no callgrind): its TOP Python "
        "functions called once or more per operation",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the rows to PATH as JSON")
    parser.add_argument("--keep", metavar="DIR", help="keep the callgrind dumps in DIR")
    # internal: the callgrind children
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--serve-child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    parser.add_argument("--lib", help=argparse.SUPPRESS)
    parser.add_argument("--sizes", help=argparse.SUPPRESS)
    parser.add_argument("--pstats-to", help=argparse.SUPPRESS)
    opts = parser.parse_args()  # fmt: skip
    if opts.serve_child:
        lib, ctl_in, ctl_out, script, *argv = opts.serve_child
        serve_child_main(lib, int(ctl_in), int(ctl_out), script, argv)
        return 0
    if opts.child:
        sizes = Sizes(**json.loads(opts.sizes))
        child_main(opts.loop, opts.lib, [opts.child], sizes, opts.pstats_to)
        return 0
    if shutil.which("valgrind") is None or not Path("/usr/include/valgrind/callgrind.h").exists():
        print("needs valgrind and its headers (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2
    sizes = QUICK if opts.quick else FULL
    rows = [ROWS[r] for r in (opts.row or list(ROWS))]
    loops = LOOPS if opts.loop == "both" else (opts.loop,)
    work = Path(opts.keep or tempfile.mkdtemp(prefix="mk-instructions-"))
    work.mkdir(parents=True, exist_ok=True)
    lib = build_lib(work)
    print(f"Python {sys.version.split()[0]}; {dataclasses.asdict(sizes)}")
    print("instructions per operation (user space, callgrind); ratio = metakit / raw\n")
    print(f"{'row':44} {'loop':8} {'metakit':>9} {'raw':>9} {'ratio':>7}  goal")
    result: dict[str, dict[str, Any]] = {}
    try:
        for loop in loops:
            counts: dict[str, float] = {}
            for row in rows:
                for variant in (row.ours, row.theirs):
                    if variant in counts:
                        continue
                    if ":" in variant:
                        counts[variant] = count_served(loop, lib, work, variant, sizes)
                    else:
                        counts.update(count_in_process(loop, lib, work, [variant], sizes))
                ours, theirs = counts[row.ours], counts[row.theirs]
                ratio = ours / theirs
                print(f"{row.what:44} {loop:8} {ours:9.0f} {theirs:9.0f} {ratio:6.2f}x  {row.goal}")
                # table.py's shape: row -> loop -> figure (the counts beside the ratio).
                result.setdefault(row.name, {})[loop] = ratio
                result.setdefault(f"{row.name}_metakit", {})[loop] = ours
                result.setdefault(f"{row.name}_raw", {})[loop] = theirs
                for variant in (row.ours, row.theirs):
                    if opts.profile:
                        print(f"  {variant}: instructions per operation, percent, C function")
                        print(annotate(work, loop, variant, ops(variant, sizes), opts.profile))
                    if opts.calls:
                        print(
                            f"  {variant}: Python calls per operation, share of own time (cProfile)"
                        )
                        prof = pstats_of(loop, work, variant, sizes)
                        print(py_profile(prof, 2 * ops(variant, sizes), opts.calls))
    finally:
        if not opts.keep:
            shutil.rmtree(work, ignore_errors=True)
    if opts.json:
        command = " ".join(["python", "bench/instructions.py", *map(shlex.quote, sys.argv[1:])])
        with open(opts.json, "w") as f:
            json.dump({"bench": "instructions", "command": command, "rows": result}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
