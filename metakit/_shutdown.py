"""The node's shutdown: what ``node.stop()`` waits for, and the order it stops things in.

1. Every running meta's ``quiesce()`` (servers stop accepting, web servers
   answer what is in flight, WebSockets close with 1001) while every process
   still runs to answer and may still spawn; at most half the timeout.
2. No more spawning; a cluster node leaves its namespace (the other nodes
   see it down); every process gets a forced ``"shutdown"`` exit signal,
   newest first (children tend to go before their supervisors), and with
   its parent every meta; what is alive at the timeout is killed.
3. The meta threads (their objects were closed) and the tracked tasks
   (cleanups that outlive a plain ``terminate``) get to end.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from ._envelope import Signal
from ._state import RUNNING
from .meta import Meta
from .process import Process

if TYPE_CHECKING:
    from .node import Node

__all__ = ["Shutdown"]


class Shutdown:
    """The threads and tasks a node waits for, and its stop sequence.

    Args:
        node: the node it stops.
    """

    __slots__ = ("empty", "node", "task", "tasks", "threads", "threads_done")

    def __init__(self, node: Node) -> None:
        self.node = node
        self.tasks: set[asyncio.Task[Any]] = set()
        self.threads: set[threading.Thread] = set()
        self.task: asyncio.Task[None] | None = None  # the stop sequence, once begun
        self.empty: asyncio.Future[None] | None = None  # the table is empty
        self.threads_done: asyncio.Future[None] | None = None

    def track(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run ``coro`` as a Task the stop sequence waits for."""
        task = self.node._loop.create_task(coro, name=name)
        self.track_task(task)
        return task

    def track_task(self, task: asyncio.Task[Any]) -> None:
        """Wait for ``task`` at the end of the stop sequence."""
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def thread_ended(self, thread: threading.Thread | None) -> None:
        """A meta's main-loop thread has ended."""
        self.threads.discard(thread)
        done = self.threads_done
        if not self.threads and done is not None and not done.done():
            done.set_result(None)

    def table_empty(self) -> None:
        """The last actor is gone."""
        if self.empty is not None and not self.empty.done():
            self.empty.set_result(None)

    async def run(self, timeout: float) -> None:
        """The stop sequence (see the module docstring)."""
        node = self.node
        loop = node._loop
        deadline = loop.time() + timeout
        finishing = self._quiesce_metas()
        if finishing:
            await asyncio.wait(finishing, timeout=timeout / 2)
        # Until here a worker could still spawn (a supervisor restart, a client
        # for a request in flight); from here on nothing new starts.
        node._running = False
        if node.cluster is not None:
            # Down for the other nodes now: their links and monitors on our
            # processes fire with "noconnection", as for a crash (DESIGN.md §8).
            try:
                await node.cluster.leave()
            except Exception:
                node._logger.exception("leaving the cluster failed")
        table = node._registry.table
        pid = node._pid
        for actor in reversed([a for a in table.values() if isinstance(a, Process)]):
            actor._mk_signal(Signal(pid, pid, "shutdown", forced=True))
        if table:
            self.empty = loop.create_future()
            try:
                await asyncio.wait_for(asyncio.shield(self.empty), max(0.0, deadline - loop.time()))
            except TimeoutError:
                alive = node._registry.processes()
                node._logger.warning("still alive %g s after stop(); killing %s", timeout, alive)
                node.stop_force()
        if self.threads:  # told to stop: terminate closed their objects
            self.threads_done = loop.create_future()
            try:
                await asyncio.wait_for(
                    asyncio.shield(self.threads_done), max(1.0, deadline - loop.time())
                )
            except TimeoutError:
                names = sorted(t.name for t in self.threads)
                node._logger.warning("meta threads did not end after stop(): %s", names)
        tasks = [t for t in self.tasks if not t.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=max(1.0, deadline - loop.time()))
        if node.cluster is not None:  # last: the names above are released over it
            try:
                await node.cluster.detach()
            except Exception:
                node._logger.exception("closing the cluster connection failed")
        node._deadlines.close()

    def _quiesce_metas(self) -> list[asyncio.Future[Any]]:
        finishing: list[asyncio.Future[Any]] = []
        for actor in list(self.node._registry.table.values()):
            if not isinstance(actor, Meta) or actor._mk_state != RUNNING:
                continue
            try:
                work = actor.quiesce()
            except Exception:
                actor.log.exception("exception in quiesce")
                continue
            if asyncio.iscoroutine(work):  # tracked, so the end of stop() waits for it
                finishing.append(self.track(work, f"metakit quiesce {actor._mk_ident!r}"))
            elif work is not None:
                finishing.append(asyncio.ensure_future(work))
        return finishing
