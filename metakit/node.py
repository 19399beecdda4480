"""Node: lifecycle, spawning, routing entry points and shutdown.

A node runs on the event loop that starts it (``async with Node(...)``, or
:func:`metakit.run`, which creates a uvloop loop where available). All of its
bookkeeping is touched from that loop's thread only; the one door in from
other threads is :meth:`Meta.send` in a threaded main loop, which hops over
with ``call_soon_threadsafe``. The parts live beside it, each with its own
interface: :mod:`._scheduler` (the ready list), :mod:`._registry` (the
routing table and names), :mod:`._links` (links and monitors),
:mod:`._events` (pub/sub), :mod:`._introspect` (snapshots).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Mapping
from typing import Any, Protocol, TypeVar

from . import _introspect
from ._actors import Actors
from ._deadlines import Deadlines
from ._done import DONE as _DONE
from ._envelope import Signal
from ._events import Events
from ._groups import Groups, check_name
from ._links import Links
from ._malloc import warm_allocator
from ._registry import Registry
from ._scheduler import Scheduler
from ._shutdown import Shutdown
from .errors import MetakitError, NodeNotRunning, NoProcess
from .ids import PID, Alias, Target, _next_id
from .info import EventInfo, MetaInfo, ProcessCounters, ProcessInfo
from .mailbox import Mailbox, current_actor, node_send
from .meta import Meta
from .process import Process

__all__ = ["Node"]

P = TypeVar("P", bound=Process)


class ClusterLink(Protocol):
    """What a node needs of its ``cluster=`` (``metakit.cluster.Cluster`` is one)."""

    async def attach(self, node: Node) -> None:
        """Join the namespace as ``node``; raise (NameTaken, a connection error) to refuse."""

    async def leave(self) -> None:
        """The node is stopping: tell the others it is down (before its processes end)."""

    async def detach(self) -> None:
        """Close the connection: the node's processes have ended."""

    def nodes(self) -> list[str]:
        """The live nodes, this one included, sorted."""

    def monitor_node(self, watcher: Mailbox, name: str) -> None:
        """Deliver ``NodeDown`` to ``watcher`` once ``name`` is down (at once if not up)."""

    def demonitor_node(self, watcher: Mailbox, name: str) -> None:
        """Withdraw :meth:`monitor_node`."""

    def register_name(self, name: str, pid: PID) -> Awaitable[None]:
        """Claim ``name`` for the local process ``pid`` across the namespace."""

    def register_event(self, name: str, pid: PID) -> Awaitable[None]:
        """Make the local process ``pid`` the producer of event ``name`` across the namespace."""

    async def spawn_singleton(
        self, cls: type[Process], args: tuple[Any, ...], kwargs: dict[str, Any], name: str
    ) -> PID | None:
        """Compete for singleton ``name``; the PID if this node runs it now."""


class Node:
    """A node: hosts processes and meta-processes and routes messages between them.

    ::

        async with metakit.Node("demo@localhost") as node:
            pid = await node.spawn(Counter, 5)
            node.send(pid, 1)
            print(await node.call(pid, "get"))

    Args:
        name: the node's name, ``"name@host"``; it appears in every id.
        env: environment every process can read with ``self.env(key)``.
        log_level: level of the node's logger (``"metakit.<name>"``).
        cluster: join a namespace of nodes (``metakit.cluster.Cluster``):
            PIDs, Aliases and names of its other nodes then work here like
            local ones (DESIGN.md §8). ``start`` raises ``NameTaken`` if a
            node of this name is up in the namespace.

    Resource handling:
        Leaving the ``async with`` block awaits :meth:`stop`: every process
        ends with reason ``"shutdown"``, and with it every meta-process, whose
        sockets and threads are closed.
    """

    def __init__(
        self,
        name: str = "demo@localhost",
        *,
        env: Mapping[str, Any] | None = None,
        log_level: str | int = "info",
        cluster: ClusterLink | None = None,
    ) -> None:
        self.name = name
        self.cluster = cluster
        self.env: dict[str, Any] = dict(env or {})
        self._logger = logging.getLogger("metakit").getChild(name)
        self._logger.setLevel(log_level.upper() if isinstance(log_level, str) else log_level)
        self._pid = PID(name, _next_id())
        self._registry = Registry(name)
        self._events = Events(name, self._pid)
        self._groups = Groups()
        self._links = Links(name, self._pid, self._registry, self._events)
        self._shutdown = Shutdown(self)
        self._actors = Actors(self)
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._scheduler: Scheduler = None  # type: ignore[assignment]
        self._thread_id = 0
        self._started_at = 0.0
        self._running = False

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> Node:
        """Bind the node to the running loop; ``async with`` calls it for you."""
        if self._running:
            raise MetakitError(f"node {self.name!r} is already running")
        if self._shutdown.task is not None:
            raise NodeNotRunning(f"node {self.name!r} was stopped; create a new Node")
        self._loop = asyncio.get_running_loop()
        self._scheduler = Scheduler(self._loop)
        self._deadlines = Deadlines(self._loop)
        warm_allocator()
        self._thread_id = threading.get_ident()
        self._started_at = time.monotonic()
        self._running = True
        if self.cluster is not None:
            try:
                await self.cluster.attach(self)
            except BaseException:
                self._running = False  # nothing was spawned: start may be tried again
                raise
        return self

    async def __aenter__(self) -> Node:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def pid(self) -> PID:
        """The node's own PID: the sender of ``node.send`` and parent of top-level processes."""
        return self._pid

    @property
    def running(self) -> bool:
        """True between :meth:`start` and the beginning of :meth:`stop`."""
        return self._running

    @property
    def uptime(self) -> float:
        """Seconds since the node started."""
        return time.monotonic() - self._started_at if self._started_at else 0.0

    def stop(self, timeout: float = 5.0) -> asyncio.Future[None]:
        """Stop every process with reason ``"shutdown"``; await the result.

        First every meta's :meth:`Meta.quiesce` runs while every process
        still runs to answer (and may still spawn): a ``WebServer`` stops
        accepting and lets its requests complete, a ``WebSocketHandler``
        closes its connections with 1001 and waits until their workers have
        had ``WSDisconnect``, a ``TCPServer`` stops listening; for up to half
        of ``timeout``. Then processes get the exit signal (their
        ``terminate`` runs, and their metas close); those still alive
        ``timeout`` seconds after the call are killed. Then it waits for meta
        threads and cleanups to end. Calling it again returns the same
        shutdown.

        Awaited from inside a handler (which it would otherwise wait for), it
        returns at once and the shutdown carries on in the background; from a
        plain handler, call it without ``await``.
        """
        loop = self._loop or asyncio.get_running_loop()
        shutdown = self._shutdown
        if self._loop is not None and shutdown.task is None:
            shutdown.task = loop.create_task(shutdown.run(timeout), name="metakit stop")
        if shutdown.task is None or current_actor.get() is not None:
            done: asyncio.Future[None] = loop.create_future()
            done.set_result(None)
            return done
        return asyncio.shield(shutdown.task)

    def stop_force(self) -> None:
        """Kill every process and meta at once (no process ``terminate``; metas still close)."""
        self._running = False
        # Metas too: one stuck in a coroutine handler would never get to the
        # exit signal its parent's death queued for it.
        for actor in reversed(list(self._registry.table.values())):
            actor._mk_kill()

    # -- spawning ----------------------------------------------------------------

    async def spawn(
        self,
        cls: type[P],
        *args: Any,
        name: str | None = None,
        mailbox_size: int = 0,
        env: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> PID:
        """Start a process and return its PID once its ``init`` has finished.

        Args:
            cls: the Process subclass.
            *args: passed to ``init``, with any extra ``**kwargs``.
            name: register it under this name.
            mailbox_size: bound of its mailbox (0: unbounded).
            env: its own environment entries.

        Raises:
            NameTaken: ``name`` is taken (nothing is started).
            NodeNotRunning: the node is stopped or stopping.
            Exception: whatever ``init`` raised; nothing of the process is left.
        """
        return await self._actors.spawn(cls, args, kwargs, None, name, False, mailbox_size, env)

    async def spawn_singleton(
        self, cls: type[Process], *args: Any, name: str = "leader", **kwargs: Any
    ) -> PID | None:
        """Run one instance of ``cls`` in the namespace (call it on every node).

        Returns at once: the PID if this node runs the instance now, else
        None. The instance is registered under the cluster name ``name``;
        when its node goes down another node starts it within ``3 x
        heartbeat + 1 s``, and one that can no longer renew its lease stops
        itself with reason ``"lease_lost"`` before another can start
        (DESIGN.md §8). Without a cluster: spawned here under ``name``.

        Raises:
            ValueError: ``name`` is not one NATS subject token.
        """
        check_name("singleton", name)
        if self.cluster is None:
            return await self.spawn(cls, *args, name=name, **kwargs)
        return await self.cluster.spawn_singleton(cls, args, kwargs, name)

    def _check_running(self) -> None:
        if not self._running:
            raise NodeNotRunning(f"node {self.name!r} is not running")

    # -- messaging from outside any process ----------------------------------------

    # The hop from outside any process, inlined beside the envelope it fills
    # (mailbox.py), as Process.send is; it always queues.
    send = node_send

    def call(self, to: Target, request: Any, timeout: float | None = 5.0) -> asyncio.Future[Any]:
        """Call ``to``'s ``handle_call`` from outside any process; await it for the reply.

        Raises:
            NoProcess, MailboxFull, CallTimeout, ProcessExited: as :meth:`Process.call`.
        """
        return self._call(self._pid, to, request, timeout)

    def _call(
        self,
        pid: PID,
        to: Any,
        request: Any,
        timeout: float | None,
        caller: Any = None,
        now: bool = False,
    ) -> asyncio.Future[Any]:
        # A name raises AttributeError here, so resolve names first (WebHandler's
        # usual target): the exception would cost more than the lookup.
        if to.__class__ is str:
            target = self._registry.route(to)
        else:
            try:
                target = self._registry.table[to.id]
            except (KeyError, AttributeError):
                target = self._registry.route(to)
        if target is caller:
            raise MetakitError(f"{pid!r} cannot call itself: it would wait for its own reply")
        if now:
            future = target._mk_call_now(pid, request)
            if future is not None:
                if timeout is not None and not future.done():
                    self._deadlines.add(future, timeout, to)
                return future
        future = target._mk_call(pid, request)
        if timeout is not None:
            self._deadlines.add(future, timeout, to)
        return future

    def send_exit(self, to: Target, reason: Any) -> None:
        """Send an exit signal from the node: a top-level process or a meta ends with ``reason``.

        A process spawned by another process and trapping exits gets an
        ``Exit`` message instead. ``"kill"`` ends anything at once.
        """
        self._registry.route(to)._mk_signal(Signal(self._pid, self._pid, reason))

    def kill(self, to: Target) -> None:
        """End a process or meta at once with reason ``"kill"``."""
        self._registry.route(to)._mk_kill()

    def _cancel_drain(self, actor: Mailbox) -> None:
        task = actor._mk_task
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    def _env_lookup(self, proc: Process, key: str, default: Any) -> Any:
        if proc._mk_env and key in proc._mk_env:
            return proc._mk_env[key]
        return self.env.get(key, default)

    # -- death -----------------------------------------------------------------------

    def wait_exit(self, to: Target, timeout: float | None = None) -> Awaitable[Any]:
        """Await this to wait until a process or meta has ended; it gives the exit reason.

        The wait starts when ``wait_exit`` is called, not when it is awaited,
        so an exit in between is not missed. It gives ``"noproc"`` if the
        target is not alive at the call.

        Raises:
            TimeoutError: (when awaited) still alive after ``timeout`` seconds.
        """
        waiter: asyncio.Future[Any] = self._loop.create_future()
        actor = self._registry.lookup(to)
        if actor is None:
            waiter.set_result("noproc")
        else:
            if actor._mk_waiters is None:
                actor._mk_waiters = []
            actor._mk_waiters.append(waiter)
        return asyncio.wait_for(waiter, timeout)

    # -- the directory ---------------------------------------------------------------

    def register_name(self, name: str, pid: PID, *, cluster: bool = False) -> Awaitable[None]:
        """Register ``pid`` under ``name``; await the result for ``cluster=True``.

        With ``cluster=True`` the name is claimed across the namespace,
        atomically (DESIGN.md §8), and released when the process ends or its
        node goes down; the local checks raise here, a name held on another
        node raises ``NameTaken`` when awaited. Without it the registration
        is done when this returns (awaiting the result is optional).

        Raises:
            NameTaken: the name is taken, or the process already has a name.
            NoProcess: ``pid`` is not a live process.
            NodeNotRunning: ``cluster=True`` on a node without a cluster.
        """
        if cluster:
            if self.cluster is None:
                raise NodeNotRunning(f"node {self.name!r} has no cluster for {name!r}")
            return self.cluster.register_name(name, pid)
        self._registry.register(name, pid)
        return _DONE

    def unregister_name(self, name: str) -> PID | None:
        """Drop a name; returns the PID it pointed to, or None."""
        return self._registry.unregister(name)

    def whereis(self, name: str) -> PID | None:
        """The PID registered under ``name``, or None."""
        return self._registry.whereis(name)

    def processes(self) -> list[PID]:
        """PIDs of the live processes, oldest first."""
        return self._registry.processes()

    def group_members(self, group: str) -> list[PID]:
        """The members of process group ``group``: this node's, then (on a
        cluster) every other node's.

        Raises:
            ValueError: ``group`` is not one NATS subject token (``[A-Za-z0-9_-]``).
        """
        return self._groups.members(group)

    def nodes(self) -> list[str]:
        """Names of the live nodes of this node's namespace, this one included, sorted.

        Without a cluster, just this node. The view is local: a node that
        joins or goes down shows here within one heartbeat.
        """
        return self.cluster.nodes() if self.cluster is not None else [self.name]

    def metas(self) -> list[Alias]:
        """Aliases of the live meta-processes, oldest first."""
        return self._registry.metas()

    def names(self) -> dict[str, PID]:
        """The names registered on this node, sorted, and who holds each."""
        names = self._registry.names
        return {name: names[name]._mk_pid for name in sorted(names)}

    def events(self) -> list[EventInfo]:
        """The events produced on this node, by name."""
        return [
            EventInfo(
                name=e.name,
                producer=e.producer._mk_pid,
                subscribers=len(e.subs),
                nodes=tuple(sorted(e.nodes)),
                cluster=e.cluster,
                dropped=e.dropped,
            )
            for _, e in sorted(self._events.by_name.items())
        ]

    def process_info(self, pid: PID | str) -> ProcessInfo:
        """An immutable snapshot of a live process.

        Raises:
            NoProcess: it is not alive.
        """
        proc = self._registry.resolve(pid)
        if not isinstance(proc, Process):
            raise NoProcess(pid)
        return _introspect.process_info(proc)

    def process_counters(self) -> list[ProcessCounters]:
        """The counters of every live process, oldest first (DESIGN.md §11).

        What a page that redraws every process once a second needs, and no
        more: no ``handle_inspect``, nothing copied. :meth:`process_info`
        gives one process in full.
        """
        return _introspect.process_counters(self._registry.table.values())

    def meta_info(self, alias: Alias) -> MetaInfo:
        """An immutable snapshot of a live meta-process (its ``statistics()`` included).

        Raises:
            NoProcess: it is not alive.
        """
        meta = self._registry.resolve(alias)
        if not isinstance(meta, Meta):
            raise NoProcess(alias)
        return _introspect.meta_info(meta)

    def __repr__(self) -> str:
        state = "running" if self._running else "stopped"
        return f"<Node {self.name!r} {state}, {len(self._registry.table)} actors>"
