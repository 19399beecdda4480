"""What the benchmark scripts share: the machine (CPU time, waiting for a quiet
machine, pinning to a CPU) and the C load generators (build, run, parse).

Imported by the scripts in this directory as ``_harness``: run as scripts,
they have ``bench/`` on ``sys.path`` (``http.py`` and ``ws.py`` put it last,
behind the stdlib's ``http``), and so do their server subprocesses.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QUIET_LOAD = 0.15  # the machine counts as idle below this many busy cores


def pinned(cpus: int | str | None, cmd: list[str]) -> list[str]:
    """``cmd`` run on the given CPU(s) with taskset, or as it is for None."""
    return cmd if cpus is None else ["taskset", "-c", str(cpus), *cmd]


def parse_kv(line: str) -> dict[str, str]:
    """A load generator's result line, ``key=value`` pairs."""
    return dict(item.split("=", 1) for item in line.split())


def host_busy() -> float:
    """Busy CPU seconds of the whole machine so far (/proc/stat: all but idle and iowait)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    """utime + stime of a process (all threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_quiet(max_wait: float, step: float = 0.5) -> tuple[float, float | None]:
    """Wait up to ``max_wait`` s for the other programs to leave the CPUs idle.

    Returns the seconds waited, and the load (busy cores) if it gave up.
    """
    start = time.monotonic()
    told = False
    while True:
        before = host_busy()
        time.sleep(step)
        load = (host_busy() - before) / step
        waited = time.monotonic() - start
        if load < QUIET_LOAD:
            return waited, None
        if waited >= max_wait:
            return waited, load
        if not told:
            print(
                f"    (waiting for other programs: {100 * load:.0f}% of a core busy)",
                file=sys.stderr,
            )
            told = True


def quiet_note(max_wait: float, step: float = 0.5) -> str | None:
    """:func:`wait_quiet`, as a note for the report: None if the machine was quiet."""
    waited, busy = wait_quiet(max_wait, step)
    if busy is not None:
        return f"the machine was busy ({100 * busy:.0f}% of a core) at the start"
    return "waited for other programs to go idle" if waited > step * 1.5 else None


def build_loadgen(src: Path) -> Path:
    """Compile a load generator unless an up-to-date binary is cached; return its path.

    Built with ``gcc -O2`` into ``$TMPDIR/metakit-bench-$UID/`` (nothing in the checkout).
    """
    out_dir = Path(tempfile.gettempdir()) / f"metakit-bench-{os.getuid()}"
    out_dir.mkdir(mode=0o700, exist_ok=True)
    binary = out_dir / src.stem
    # The program and the header every load generator includes.
    newest = max(src.stat().st_mtime, (src.parent / "loadgen.h").stat().st_mtime)
    if binary.exists() and binary.stat().st_mtime >= newest:
        return binary
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise SystemExit(f"needs gcc (or cc) to build bench/{src.name}")
    tmp = out_dir / f"{src.stem}.{os.getpid()}"
    subprocess.run([gcc, "-O2", "-Wall", "-o", str(tmp), str(src)], check=True)
    tmp.replace(binary)
    return binary


def run_loadgen(binary: Path, cpu: int | None, args: list[str], timeout: float) -> dict[str, str]:
    """Run a load generator to its end; its last output line, parsed."""
    out = subprocess.run(
        pinned(cpu, [str(binary), *args]),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if out.returncode != 0 or not out.stdout.strip():
        raise RuntimeError(f"{binary.name} {' '.join(args)} failed: {out.stderr.strip()}")
    return parse_kv(out.stdout.strip().splitlines()[-1])


def verdict(ok: bool) -> str:
    """PASS or MISS."""
    return "PASS" if ok else "MISS"


class ServeProcess:
    """A script's own ``--serve`` subprocess, pinned: it prints one line starting
    with ``ready`` once it listens, answers requests on stdin line by line, and
    stops when its stdin is closed.

    Args:
        script: the benchmark script (its ``__file__``).
        name: for messages, e.g. ``"metakit/uvloop"``.
        args: after ``--serve``.
        cpu: the CPU(s) to pin it to, or None.
        ready: the prefix of its ready line; the words after it are ``fields``.
    """

    def __init__(
        self,
        script: str,
        name: str,
        args: list[str],
        cpu: int | str | None,
        ready: str,
        *,
        stop_timeout: float = 10.0,
    ) -> None:
        self.name = name
        self.stop_timeout = stop_timeout
        cmd = [sys.executable, str(Path(script).resolve()), "--serve", *args]
        self.proc = subprocess.Popen(
            pinned(cpu, cmd), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        line = self.readline(30)
        if not line.startswith(ready):
            self.stop()
            raise RuntimeError(f"the {name} server did not start: {line!r}")
        self.fields = line.split()[1:]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def readline(self, timeout: float) -> str:
        """Its next output line, or "" after ``timeout`` seconds."""
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        return self.proc.stdout.readline() if ready else ""

    def ask(self, request: str, answer: str, timeout: float = 10.0) -> str:
        """Send a request line; return its answer line (which starts with ``answer``)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(request + "\n")
        self.proc.stdin.flush()
        line = self.readline(timeout)
        if not line.startswith(answer):
            raise RuntimeError(f"the {self.name} server did not answer {request!r}: {line!r}")
        return line

    def stop(self) -> None:
        """Close its stdin and wait; terminate, then kill, if it takes too long."""
        proc = self.proc
        if proc.stdin is not None and not proc.stdin.closed:
            proc.stdin.close()
        try:
            proc.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        if proc.returncode not in (0, -signal.SIGTERM):
            raise RuntimeError(f"the {self.name} server exited with status {proc.returncode}")
