"""The performance table in one run: every hot-path row, from the other scripts.

Runs ``messaging.py``, ``tcp_echo.py``, ``http.py``, ``ws.py``,
``udp_echo.py`` and ``instructions.py`` (which needs valgrind) one after the
other (each in full, both loops, its own paired rounds; ``--quick`` passes
``--quick`` on), each with ``--json`` into ``--out DIR``, then prints one
table: a row per figure, its goal, the ratio on the stdlib loop and on
uvloop, and PASS or MISS. Each ratio is what its
script prints and documents (metakit / the raw library in the same round,
medians of paired rounds; ``udp_echo.py`` reports best runs). The rows from
``instructions.py`` are user-space instructions per operation at a
concurrency of one, counted by callgrind: the same from run to run, where
the timed rows move by 20-30 % on this VM; they are shown, not judged, since
the goals are about time.

``--compare OLD`` puts the figures of an earlier run (its ``table.json``)
beside them: run it once on the old code and once on the new, for a
before/after. To measure another checkout's library with these scripts, put
it first on ``PYTHONPATH`` (the server subprocesses inherit it)::

    PYTHONPATH=/path/to/old/checkout python bench/table.py --out /tmp/before
    python bench/table.py --out /tmp/after --compare /tmp/before/table.json

Run it on a quiet machine; it takes about 20 minutes (``--quick``: about 3).
A missed goal prints ``MISS``; only a script that fails makes the exit
status non-zero.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SCRIPTS = ("messaging", "tcp_echo", "http", "ws", "udp_echo", "instructions")


@dataclass(frozen=True)
class Row:
    label: str
    script: str
    key: str
    goal: float | None  # None: shown, not judged
    higher: bool = True  # True: the figure must be >= goal; False: <= goal
    unit: str = "x"


ROWS = (
    Row("send, Process to plain handler / deque + call_soon", "messaging", "send", 0.6),
    Row("node.send / Process.send (msgs/s)", "messaging", "node_send", 0.95),
    Row("call round trip / future + deque", "messaging", "call", 1.15, higher=False),
    Row("TCP echo, server CPU per rt / raw BufferedProtocol", "tcp_echo", "cpu_per_rt", 1.1, False),
    Row("  the same / raw under the node's malloc tuning", "tcp_echo", "cpu_per_rt_tuned", None),
    Row("HTTP hello req/s / plain aiohttp", "http", "hello_rps", 0.95),
    Row("  the same / aiohttp under the malloc tuning", "http", "hello_rps_tuned", None),
    Row("HTTP json req/s / plain aiohttp", "http", "json_rps", 0.95),
    Row("  the same / aiohttp under the malloc tuning", "http", "json_rps_tuned", None),
    Row("WebSocket echo / aiohttp under the malloc tuning", "ws", "echo_tuned", 0.95),
    Row("  the same / plain aiohttp", "ws", "echo", None),
    Row("broadcast to 1000, p50 / plain aiohttp", "ws", "broadcast_p50", 1.05, False),
    Row("  the same / aiohttp under the malloc tuning", "ws", "broadcast_p50_tuned", None),
    Row("UDP echo pkts/s / raw under the malloc tuning", "udp_echo", "pkts_tuned", 0.9),
    Row("  the same / raw DatagramProtocol", "udp_echo", "pkts", None),
    Row("idle TCP connection, memory / raw Protocol", "tcp_echo", "idle_conn_ratio", 1.3, False),
    Row(
        "  bytes per idle connection, metakit",
        "tcp_echo",
        "idle_conn_bytes_metakit",
        None,
        unit="B",
    ),
    Row("  bytes per idle connection, raw", "tcp_echo", "idle_conn_bytes_raw", None, unit="B"),
    Row("idle process, bytes (tracemalloc)", "messaging", "idle_process_bytes", 1024, False, "B"),
    Row("instructions per op (callgrind) / raw, send", "instructions", "send", None),
    Row("  call round trip", "instructions", "call", None),
    Row("  WebHandler, in-process / plain handler", "instructions", "web", None),
    Row("  TCP echo, server per round trip", "instructions", "tcp", None),
    Row("  UDP echo, server per packet", "instructions", "udp", None),
    Row("  WebSocket echo, server per message", "instructions", "ws", None),
    Row("  HTTP hello, server per request", "instructions", "http_text", None),
    Row("  HTTP json, server per request", "instructions", "http_json", None),
)


def run(script: str, quick: bool, out: Path, timeout: float) -> dict[str, Any] | None:
    """One script with --json; its figures, or None if it failed (its output is kept)."""
    target = out / f"{script}.json"
    log = out / f"{script}.log"
    cmd = [sys.executable, str(HERE / f"{script}.py"), "--json", str(target)]
    if quick:
        cmd.append("--quick")
    print(f"running {' '.join(cmd[1:])} (output: {log})", flush=True)
    t0 = time.monotonic()
    with log.open("w") as f:
        try:
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = -1
    print(f"  {script}: exit {rc} after {time.monotonic() - t0:.0f} s", flush=True)
    if rc != 0 or not target.exists():
        return None
    result: dict[str, Any] = json.loads(target.read_text())
    return result


def cell(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    return f"{value:.0f} B" if unit == "B" else f"{value:.2f}x"


def judge(row: Row, values: list[float | None]) -> str:
    if row.goal is None:
        return ""
    got = [v for v in values if v is not None]
    if not got:
        return "n/a"
    ok = all((v >= row.goal) if row.higher else (v <= row.goal) for v in got)
    return "PASS" if ok else "MISS"


def table(results: dict[str, Any], old: dict[str, Any] | None) -> str:
    lines = []
    head = f"{'what':<54}{'goal':>9}{'asyncio':>10}{'uvloop':>10}"
    if old is not None:
        head += f"{'was asyncio':>13}{'was uvloop':>12}"
    lines += [head + "  verdict", "-" * (len(head) + 9)]
    for row in ROWS:
        figures = results.get(row.script, {}).get(row.key, {})
        values = [figures.get("asyncio"), figures.get("uvloop")]
        goal = ""
        if row.goal is not None:
            goal = ("≥ " if row.higher else "≤ ") + cell(row.goal, row.unit)
        line = f"{row.label:<54}{goal:>9}" + "".join(f"{cell(v, row.unit):>10}" for v in values)
        if old is not None:
            was = old.get(row.script, {}).get(row.key, {})
            line += (
                f"{cell(was.get('asyncio'), row.unit):>13}{cell(was.get('uvloop'), row.unit):>12}"
            )
        lines.append(f"{line}  {judge(row, values)}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="pass --quick to every script")
    parser.add_argument("--out", type=Path, help="directory for each script's JSON and output")
    parser.add_argument("--only", action="append", choices=SCRIPTS, help="run just these")
    parser.add_argument("--compare", type=Path, help="an earlier run's table.json, shown beside")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per script (1800)")
    args = parser.parse_args()
    out: Path = args.out or Path(tempfile.mkdtemp(prefix="metakit-table-"))
    out.mkdir(parents=True, exist_ok=True)
    old = json.loads(args.compare.read_text())["rows"] if args.compare else None

    results: dict[str, Any] = {}
    commands: dict[str, str] = {}
    failed = []
    for script in args.only or SCRIPTS:
        got = run(script, args.quick, out, args.timeout)
        if got is None:
            failed.append(script)
            continue
        results[script] = got["rows"]
        commands[script] = got.get("command", "")
    text = table(results, old)
    print()
    print(text)
    print()
    for script, command in commands.items():
        print(f"{script}: {command}")
    if failed:
        print(f"FAILED: {', '.join(failed)} (see their .log in {out})")
    combined = {"command": " ".join(["python bench/table.py", *sys.argv[1:]]), "rows": results}
    (out / "table.json").write_text(json.dumps(combined, indent=1) + "\n")
    (out / "table.txt").write_text(text + "\n")
    print(f"figures in {out}/table.json")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
