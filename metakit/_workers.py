"""``metakit.run(main, workers=N)``: N worker processes, each a node (DESIGN.md §9).

Theory of operation
-------------------

The parent runs no node. It starts N worker processes with the ``spawn``
start method (never ``fork``: a forked child would inherit the parent's
loop, threads and sockets half-way), each running ``metakit.run(main, ...)``
on its own node, ``"web@localhost"`` giving ``"web-1@localhost"`` …
``"web-N@localhost"``. ``main`` must therefore be importable (a script
guards its ``run`` with ``if __name__ == "__main__"``). Servers started with
``reuse_port=True`` then share their port (SO_REUSEPORT): the kernel spreads
the connections over the workers.

A worker says it is *running* (over a pipe) once its node has started and
``main`` is under way. The parent watches each worker's sentinel on its own
asyncio loop:

* a worker that ends before it is running failed at start-up: the parent
  stops the others and exits with status 1 (a program that cannot start
  does not restart forever);
* a running worker that crashes (a signal, a non-zero status) is started
  again after a backoff that doubles from 0.1 s up to 10 s, and starts over
  once a worker has run for 10 s; every restart is logged;
* a worker whose ``main`` returned (status 0) stays ended; once none is
  left the parent returns.

SIGINT and SIGTERM to the parent are forwarded as SIGTERM to every worker
(each stops its node cleanly; a worker ignores SIGINT, which a terminal's
Ctrl-C sends the whole process group, so it stops once, gracefully); the
parent waits for them, up to 10 s, then kills what is left. Each worker
gets SIGTERM if the parent dies first (Linux), so no worker outlives its
parent, even one SIGTERMed during start-up. With ``cluster=True`` the
parent starts a ``local_server`` and every worker joins it; a ``Cluster``
given is sent to every worker as its settings (each worker's node connects
on its own).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["run_workers"]

_log = logging.getLogger("metakit.workers")

_BACKOFF_FIRST = 0.1
_BACKOFF_MAX = 10.0
_HEALTHY = 10.0  # a worker that ran this long resets the backoff
_STOP_GRACE = 10.0


def worker_name(node_name: str, index: int) -> str:
    """``"web@localhost"``, 1 → ``"web-1@localhost"``."""
    name, at, host = node_name.partition("@")
    return f"{name}-{index}{at}{host}"


def _die_with_parent() -> None:
    if sys.platform != "linux":
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _worker(
    index: int,
    parent: int,
    ready: Any,
    main: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    options: dict[str, Any],
) -> None:
    """A worker process: a node named for its index, running ``main``."""
    _die_with_parent()
    if os.getppid() != parent:  # the parent died before the line above
        sys.exit(1)
    from ._run import run

    def running() -> None:
        ready.send(True)
        ready.close()

    # A terminal's Ctrl-C reaches the whole process group, workers too, and the
    # parent forwards it as SIGTERM: a worker that took both would count two
    # signals and stop by force. It takes the parent's SIGTERM only.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    options = dict(options)
    options["node_name"] = worker_name(options["node_name"], index)
    run(main, *args, _running=running, _signals=(signal.SIGTERM,), **options, **kwargs)


class _Supervisor:
    def __init__(
        self,
        count: int,
        main: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: dict[str, Any],
    ) -> None:
        self.count = count
        self.main = main
        self.args = args
        self.kwargs = kwargs
        self.options = options
        self.ctx = multiprocessing.get_context("spawn")
        self.procs: dict[int, Any] = {}
        self.restarting: set[int] = set()
        self.backoff: dict[int, float] = {}
        self.started_at: dict[int, float] = {}
        self.stopping = False
        self.failed = False
        self.changed = asyncio.Event()

    def start(self, index: int) -> None:
        self.restarting.discard(index)
        if self.stopping:
            self.changed.set()
            return
        loop = asyncio.get_running_loop()
        receive, send = self.ctx.Pipe(duplex=False)
        proc = self.ctx.Process(
            target=_worker,
            args=(index, os.getpid(), send, self.main, self.args, self.kwargs, self.options),
            name=worker_name(self.options["node_name"], index),
        )
        proc.start()
        send.close()
        self.procs[index] = proc
        self.started_at[index] = loop.time()
        state = {"ready": False}

        def read_ready() -> None:
            if receive.closed:
                return
            loop.remove_reader(receive.fileno())
            try:
                if receive.poll():
                    state["ready"] = bool(receive.recv())
            except (EOFError, OSError):
                pass
            receive.close()

        def on_exit() -> None:
            loop.remove_reader(proc.sentinel)
            read_ready()  # a "running" still in the pipe counts
            proc.join()
            self.ended(index, proc, state["ready"])

        loop.add_reader(receive.fileno(), read_ready)
        loop.add_reader(proc.sentinel, on_exit)

    def ended(self, index: int, proc: Any, ready: bool) -> None:
        loop = asyncio.get_running_loop()
        if self.procs.get(index) is proc:
            del self.procs[index]
        self.changed.set()
        code = proc.exitcode
        if self.stopping:
            return
        if not ready:
            _log.error("worker %s failed at start-up (exit status %s); stopping", proc.name, code)
            self.failed = True
            self.stop()
            return
        if code == 0:
            return  # its main is done
        ran = loop.time() - self.started_at[index]
        delay = self.backoff.get(index, 0.0)
        delay = _BACKOFF_FIRST if ran >= _HEALTHY or not delay else min(2 * delay, _BACKOFF_MAX)
        self.backoff[index] = delay
        _log.warning(
            "worker %s ended (exit status %s); restarting in %.1f s", proc.name, code, delay
        )
        self.restarting.add(index)
        loop.call_later(delay, self.start, index)

    def stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.restarting.clear()
        for proc in list(self.procs.values()):
            if proc.is_alive():
                proc.terminate()  # SIGTERM: the worker stops its node cleanly
        self.changed.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self.stop)
            except (NotImplementedError, RuntimeError):  # not the main thread
                pass
        try:
            for index in range(1, self.count + 1):
                self.start(index)
            deadline = None
            while self.procs or self.restarting:
                self.changed.clear()
                if self.stopping and deadline is None:
                    deadline = loop.time() + _STOP_GRACE
                timeout = None if deadline is None else max(0.0, deadline - loop.time())
                try:
                    await asyncio.wait_for(self.changed.wait(), timeout)
                except TimeoutError:
                    for proc in list(self.procs.values()):
                        _log.warning("worker %s did not stop; killing it", proc.name)
                        proc.kill()
                    deadline = loop.time() + _STOP_GRACE
        finally:
            for proc in list(self.procs.values()):  # cancelled: leave none behind
                proc.kill()
                proc.join()
        return 1 if self.failed else 0


def run_workers(
    main: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    workers: int,
    node_name: str,
    env: Mapping[str, Any] | None,
    log_level: str | int,
    cluster: Any,
    loop: Callable[[], asyncio.AbstractEventLoop] | None,
) -> int:
    """Run ``main`` in ``workers`` processes until they end; the exit status (see the module)."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, not {workers!r}")

    async def supervise() -> int:
        options: dict[str, Any] = {"node_name": node_name, "env": env, "log_level": log_level}
        if cluster is True:
            from .cluster import Cluster, local_server

            async with local_server() as server:
                options["cluster"] = Cluster(server.url)
                return await _Supervisor(workers, main, args, kwargs, options).run()
        options["cluster"] = cluster
        return await _Supervisor(workers, main, args, kwargs, options).run()

    with asyncio.Runner(loop_factory=loop) as runner:
        return runner.run(supervise())
