"""``metakit.run``: the one-line entry point for scripts, and the loop choice.

metakit runs on uvloop where it is installed (DESIGN.md §6) unless
``METAKIT_LOOP=asyncio`` is set. A node started inside a loop the user
already runs keeps that loop: only :func:`run` creates one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from .node import ClusterLink, Node
from .process import Process

__all__ = ["loop_factory", "run"]

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop constructor metakit uses: uvloop's, or None for asyncio's.

    ``METAKIT_LOOP=asyncio`` forces the standard loop; ``METAKIT_LOOP=uvloop``
    makes a missing uvloop an error instead of a silent fallback.
    """
    choice = os.environ.get("METAKIT_LOOP", "").lower()
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise
        return None
    return uvloop.new_event_loop


def run(
    main: type[Process] | Callable[..., Awaitable[T]],
    *args: Any,
    node_name: str = "main@localhost",
    env: Mapping[str, Any] | None = None,
    log_level: str | int = "info",
    cluster: ClusterLink | None = None,
    workers: int | None = None,
    _running: Callable[[], None] | None = None,
    _signals: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM),
    **kwargs: Any,
) -> T | Any:
    """Create a loop, start a node, run ``main``, stop the node cleanly.

    ``main`` is either a Process subclass — it is spawned with ``*args`` and
    ``**kwargs`` and ``run`` returns its exit reason once it ends — or an
    ``async def main(node, *args, **kwargs)`` whose result is returned.
    SIGINT and SIGTERM stop the node cleanly (reason ``"shutdown"``); a
    second one during that stop kills what is left at once.

    Args:
        main: a Process subclass, or a coroutine function taking the node.
        node_name: the node's name.
        env: the node's environment.
        log_level: the node's log level; also sets up basic logging to
            stderr if the program has none.
        cluster: the node's ``metakit.cluster.Cluster``, made in the caller
            and joined on the loop ``run`` creates. With ``workers``, every
            worker joins it (or, with ``True``, a ``local_server`` the
            parent starts).
        workers: run ``main`` in this many spawned worker processes instead,
            each on its own node (``"web@host"`` gives ``"web-1@host"`` …),
            servers sharing their port with ``reuse_port=True``; the parent
            restarts a crashed worker with a growing backoff, exits with
            status 1 if one fails at start-up, forwards SIGINT and SIGTERM,
            and returns 0 once they have all ended (DESIGN.md §9). ``main``
            must be importable: guard the script with ``if __name__ ==
            "__main__"``.
    """
    if workers is not None:
        from ._workers import run_workers

        status = run_workers(
            main,
            args,
            kwargs,
            workers=workers,
            node_name=node_name,
            env=env,
            log_level=log_level,
            cluster=cluster,
            loop=loop_factory(),
        )
        if status:
            raise SystemExit(status)
        return status
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(
            _main(main, args, kwargs, node_name, env, log_level, cluster, _running, _signals)
        )


async def _main(
    main: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    node_name: str,
    env: Mapping[str, Any] | None,
    log_level: str | int,
    cluster: ClusterLink | None,
    running: Callable[[], None] | None = None,
    signals: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM),
) -> Any:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    node = Node(node_name, env=env, log_level=log_level, cluster=cluster)

    def on_signal() -> None:
        if stopping.is_set():
            node.stop_force()  # a second signal: do not wait for terminate callbacks
        stopping.set()

    # The handlers stay until the loop closes (which removes them), so a
    # signal during the shutdown cannot kill the process half-way.
    for sig in signals:
        try:
            loop.add_signal_handler(sig, on_signal)
        except (NotImplementedError, RuntimeError):  # not the main thread, or Windows
            pass
    async with node:
        if isinstance(main, type) and issubclass(main, Process):
            pid = await node.spawn(main, *args, **kwargs)
            work: asyncio.Future[Any] = asyncio.ensure_future(node.wait_exit(pid))
        else:
            work = asyncio.ensure_future(main(node, *args, **kwargs))
        if running is not None:
            running()  # a worker tells its parent that it has started
        stop = asyncio.ensure_future(stopping.wait())
        await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if not work.done():
            work.cancel()
            try:
                await work
            except asyncio.CancelledError:
                return "shutdown"
        return work.result()
