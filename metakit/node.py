"""Node: the process table, names, routing, spawning and shutdown.

A node runs on the event loop that starts it (``async with Node(...)``, or
:func:`metakit.run`, which creates a uvloop loop where available). All of its
bookkeeping is touched from that loop's thread only; the one door in from
other threads is :meth:`Meta.send` in a threaded main loop, which hops over
with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import sys
import threading
import time
from collections.abc import Awaitable, Coroutine, Mapping
from typing import Any, TypeVar

from ._deadlines import Deadlines
from ._introspect import Introspection
from ._pubsub import PubSub, _Event
from ._state import DEAD, EXITING, RUNNING
from .errors import (
    MetakitError,
    NodeNotRunning,
    NoProcess,
    ProcessExited,
    Stop,
)
from .ids import PID, Alias, _next_id
from .mailbox import Mailbox, Signal, current_actor
from .messages import Caller
from .meta import Meta
from .process import Process

__all__ = ["Node"]

P = TypeVar("P", bound=Process)
Target = PID | Alias | str


_allocator_warmed = False


def _warm_allocator() -> None:
    """Tune glibc's malloc once per process for socket-heavy work.

    1. Free one 512 KiB block. On the stdlib loop each read allocates a
       256 KiB buffer (``recv``/``recvfrom`` with asyncio's ``max_size``) and
       shrinks it with realloc: a full-size block is never freed, so glibc
       never raises its dynamic mmap threshold, and every read costs an
       mmap/mremap/munmap (DESIGN.md §6: a fresh server runs ~4x slower until
       something frees one). One free raises it for the whole process.
    2. Raise the heap trim threshold to 64 MiB. Streaming keeps many 64 KiB
       frames in flight; at glibc's default the heap grows and is trimmed
       back over and over (a page fault storm: 213k faults per GiB echoed
       against 23k for a raw echo, half the throughput on uvloop). Freed heap
       up to 64 MiB stays in the process instead. Done after step 1: setting
       it freezes glibc's dynamic thresholds where step 1 left them.

    ``METAKIT_MALLOC_TUNING=0`` skips step 2. Elsewhere than glibc, step 2
    does nothing and step 1 is one short-lived allocation.
    """
    global _allocator_warmed
    if _allocator_warmed:
        return
    _allocator_warmed = True
    block = bytearray(512 * 1024)
    del block
    if os.environ.get("METAKIT_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return
    mallopt(-1, 64 << 20)  # M_TRIM_THRESHOLD


class Node(PubSub, Introspection):
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
    ) -> None:
        self.name = name
        self.env: dict[str, Any] = dict(env or {})
        self._logger = logging.getLogger("metakit").getChild(name)
        self._logger.setLevel(log_level.upper() if isinstance(log_level, str) else log_level)
        self._mk_pid = PID(name, _next_id())
        self._mk_table: dict[int, Mailbox] = {}
        self._ready_list: list[Mailbox] = []  # plain-handler actors with a drain due
        self._names: dict[str, Process] = {}
        self._mk_events: dict[str, _Event] = {}
        self._threads: set[threading.Thread] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._mk_loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._thread_id = 0
        self._started_at = 0.0
        self._running = False
        self._stop_task: asyncio.Task[None] | None = None
        self._empty: asyncio.Future[None] | None = None
        self._threads_done: asyncio.Future[None] | None = None

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> Node:
        """Bind the node to the running loop; ``async with`` calls it for you."""
        if self._running:
            raise MetakitError(f"node {self.name!r} is already running")
        if self._stop_task is not None:
            raise NodeNotRunning(f"node {self.name!r} was stopped; create a new Node")
        self._mk_loop = asyncio.get_running_loop()
        self._deadlines = Deadlines(self._mk_loop)
        _warm_allocator()
        self._thread_id = threading.get_ident()
        self._started_at = time.monotonic()
        self._running = True
        return self

    async def __aenter__(self) -> Node:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def pid(self) -> PID:
        """The node's own PID: the sender of ``node.send`` and parent of top-level processes."""
        return self._mk_pid

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

        First the network metas finish what is in flight while every process
        still runs to answer (and may still spawn): a ``WebServer`` stops
        accepting and lets its requests complete, a ``WebSocketHandler`` closes
        its connections with 1001 and waits until their workers have had
        ``WSDisconnect``, a ``TCPServer`` stops listening; for up to half of
        ``timeout``.
        Then processes get the exit signal (their ``terminate`` runs, and their
        metas close); those still alive ``timeout`` seconds after the call are
        killed. Then it waits for meta threads and cleanups to end. Calling
        it again returns the same shutdown.

        Awaited from inside a handler (which it would otherwise wait for), it
        returns at once and the shutdown carries on in the background; from a
        plain handler, call it without ``await``.
        """
        loop = self._mk_loop or asyncio.get_running_loop()
        if self._mk_loop is None:
            done: asyncio.Future[None] = loop.create_future()
            done.set_result(None)
            return done
        if self._stop_task is None:
            self._stop_task = loop.create_task(self._shutdown(timeout), name="metakit node stop")
        if current_actor.get() is not None:
            done = loop.create_future()
            done.set_result(None)
            return done
        return asyncio.shield(self._stop_task)

    def stop_force(self) -> None:
        """Kill every process and meta at once (no process ``terminate``; metas still close)."""
        self._running = False
        # Metas too: one stuck in a coroutine handler would never get to the
        # exit signal its parent's death queued for it.
        for actor in reversed(list(self._mk_table.values())):
            actor._mk_kill()

    async def _shutdown(self, timeout: float) -> None:
        loop = self._mk_loop
        deadline = loop.time() + timeout
        # First the metas take no new work and finish what is in flight (a web
        # server lets its requests complete) while every process still runs to
        # answer; only then do the processes stop.
        finishing: list[asyncio.Future[Any]] = []
        for actor in list(self._mk_table.values()):
            if isinstance(actor, Meta) and actor._mk_state == RUNNING:
                try:
                    work = actor._mk_quiesce()
                except Exception:
                    actor.log.exception("exception in _mk_quiesce")
                    continue
                if asyncio.iscoroutine(work):  # tracked, so the end of stop() waits for it
                    finishing.append(self._linger(work, f"metakit quiesce {actor._mk_alias!r}"))
                elif work is not None:
                    finishing.append(asyncio.ensure_future(work))
        if finishing:
            # At most half the time: the processes' terminate gets the rest.
            await asyncio.wait(finishing, timeout=timeout / 2)
        # Until here a worker could still spawn (a supervisor restart, a client
        # for a request in flight); from here on nothing new starts.
        self._running = False
        processes = [a for a in self._mk_table.values() if isinstance(a, Process)]
        # Newest first, so children tend to go before the supervisors that own them.
        for proc in reversed(processes):
            proc._mk_signal(Signal(self._mk_pid, self._mk_pid, "shutdown", forced=True))
        if self._mk_table:
            self._empty = loop.create_future()
            try:
                await asyncio.wait_for(
                    asyncio.shield(self._empty), max(0.0, deadline - loop.time())
                )
            except TimeoutError:
                alive = [a._mk_ident for a in self._mk_table.values() if isinstance(a, Process)]
                self._logger.warning("still alive %g s after stop(); killing %s", timeout, alive)
                self.stop_force()
        # Meta threads were told to stop (terminate closed their objects).
        if self._threads:
            self._threads_done = loop.create_future()
            try:
                await asyncio.wait_for(
                    asyncio.shield(self._threads_done), max(1.0, deadline - loop.time())
                )
            except TimeoutError:
                names = sorted(t.name for t in self._threads)
                self._logger.warning("meta threads did not end after stop(): %s", names)
        tasks = [t for t in self._tasks if not t.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=max(1.0, deadline - loop.time()))
        self._deadlines.close()

    def _thread_ended(self, thread: threading.Thread | None) -> None:
        self._threads.discard(thread)
        if not self._threads and self._threads_done is not None and not self._threads_done.done():
            self._threads_done.set_result(None)

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
        return await self._spawn(
            cls,
            args,
            kwargs,
            parent=None,
            name=name,
            link=False,
            mailbox_size=mailbox_size,
            env=env,
        )

    async def _spawn(
        self,
        cls: type[P],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        parent: Process | None,
        name: str | None,
        link: bool,
        mailbox_size: int,
        env: Mapping[str, Any] | None,
    ) -> PID:
        self._check_running()
        if not (isinstance(cls, type) and issubclass(cls, Process)):
            raise TypeError(f"spawn() needs a Process subclass, not {cls!r}")
        proc = cls()
        pid = PID(self.name, _next_id())
        merged = dict(parent._mk_env) if parent is not None and parent._mk_env else None
        if env:
            merged = {**(merged or {}), **env}
        proc._mk_setup(
            self, pid, parent._mk_pid if parent is not None else self._mk_pid, mailbox_size, merged
        )
        self._mk_table[pid.id] = proc
        try:
            if name is not None:
                self.register_name(name, pid)
            if link and parent is not None:
                self._link(parent, proc)
            token = current_actor.set(proc)  # stop() awaited in init must not wait for itself
            try:
                result = proc.init(*args, **kwargs)
                if result is not None:
                    await result
            finally:
                current_actor.reset(token)
        except BaseException as exc:
            self._abort(proc, exc, parent)
            if isinstance(exc, Stop):
                raise ProcessExited(pid, exc.reason) from exc
            raise
        if proc._mk_state == DEAD:
            raise ProcessExited(pid, "kill")
        proc._mk_release()
        return pid

    async def _spawn_meta(self, meta: Meta, parent: Process, mailbox_size: int) -> Alias:
        alias = self._add_meta(meta, parent, mailbox_size)
        try:
            await meta.init()
        except BaseException as exc:
            self._abort(meta, exc)
            raise
        self._run_meta(meta)
        return alias

    def _spawn_meta_now(self, meta: Meta, parent: Process, mailbox_size: int = 0) -> Alias:
        """Spawn a meta whose ``init`` does nothing, without awaiting (the network metas
        spawn one per accepted connection from a protocol callback)."""
        alias = self._add_meta(meta, parent, mailbox_size)
        self._run_meta(meta)
        return alias

    def _add_meta(self, meta: Meta, parent: Process, mailbox_size: int) -> Alias:
        self._check_running()
        if not isinstance(meta, Meta):
            raise TypeError(f"spawn_meta() needs a Meta instance, not {meta!r}")
        if parent._mk_state >= EXITING:  # init is fine: servers bind in init
            raise NoProcess(parent._mk_pid)
        alias = Alias(self.name, _next_id())
        meta._mk_setup(self, alias, parent, mailbox_size or meta.mailbox_size)
        self._mk_table[alias.id] = meta
        if parent._mk_metas is None:
            parent._mk_metas = set()
        parent._mk_metas.add(meta)
        return alias

    def _run_meta(self, meta: Meta) -> None:
        if meta._mk_state == DEAD:
            raise ProcessExited(meta._mk_alias, "kill")
        meta._mk_release()
        meta._mk_start_main()
        if meta._mk_main is not None:
            self._tasks.add(meta._mk_main)
            meta._mk_main.add_done_callback(self._tasks.discard)

    def _ready(self, actor: Mailbox) -> None:
        """Queue a plain-handler actor's drain; one call_soon runs the whole batch."""
        ready = self._ready_list
        ready.append(actor)
        if len(ready) == 1:
            self._mk_loop.call_soon(self._run_ready)

    def _run_ready(self) -> None:
        # Drains queued meanwhile (by these handlers) run on the next loop turn,
        # as they would with a call_soon each.
        ready = self._ready_list
        if len(ready) == 1:  # the common case: one actor woke up; no new list
            ready.pop()._mk_drain()
            return
        self._ready_list = []
        for i, actor in enumerate(ready):
            try:
                actor._mk_drain()
            except BaseException:
                # Only a BaseException escapes a drain: keep the rest scheduled.
                rest = ready[i + 1 :]
                if rest:
                    if not self._ready_list:
                        self._mk_loop.call_soon(self._run_ready)
                    self._ready_list[:0] = rest
                raise

    def _linger(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run cleanup that outlives a meta's (plain) terminate; stop() waits for it."""
        task = self._mk_loop.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _abort(self, actor: Mailbox, reason: Any, spawner: Mailbox | None = None) -> None:
        """Undo a spawn whose init failed: the spawner hears it as an exception,
        not an exit signal; anything else linked (children spawned in init) is
        told as usual; metas are closed now."""
        if actor._mk_state == DEAD:
            return
        if spawner is not None:
            self._unlink(actor, spawner)
        metas = getattr(actor, "_mk_metas", None)
        if metas:
            for meta in list(metas):
                meta._mk_end(reason)
        self._reap(actor, reason)

    def _check_running(self) -> None:
        if not self._running:
            raise NodeNotRunning(f"node {self.name!r} is not running")

    # -- routing -----------------------------------------------------------------

    def _lookup(self, to: Any) -> Mailbox | None:
        cls = to.__class__
        if cls is PID or cls is Alias:
            return self._mk_table.get(to.id)
        if cls is str:
            return self._names.get(to)
        raise TypeError(f"expected a PID, an Alias or a registered name, not {to!r}")

    def _resolve(self, to: Any) -> Mailbox:
        actor = self._lookup(to)
        if actor is None:
            raise NoProcess(to)
        return actor

    def _sender_of(self, actor: Mailbox) -> PID:
        if isinstance(actor, Process):
            return actor._mk_pid
        return actor._mk_parent_proc._mk_pid  # type: ignore[attr-defined,no-any-return]

    def send(self, to: Target, message: Any) -> None:
        """Send from outside any process (the sender is :attr:`pid`).

        Raises:
            NoProcess: nothing answers to ``to``.
            MailboxFull: the target's bounded mailbox is full.
        """
        self._resolve(to)._mk_deliver(self._mk_pid, message)

    def call(self, to: Target, request: Any, timeout: float | None = 5.0) -> asyncio.Future[Any]:
        """Call ``to``'s ``handle_call`` from outside any process; await it for the reply.

        Raises:
            NoProcess, MailboxFull, CallTimeout, ProcessExited: as :meth:`Process.call`.
        """
        return self._call(self._mk_pid, to, request, timeout)

    def _call(
        self,
        pid: PID,
        to: Target,
        request: Any,
        timeout: float | None,
        caller: Mailbox | None = None,
    ) -> asyncio.Future[Any]:
        # A name raises AttributeError here, so resolve names first (WebHandler's
        # usual target): the exception would cost more than the lookup.
        if to.__class__ is str:
            target = self._resolve(to)
        else:
            try:
                target = self._mk_table[to.id]  # type: ignore[union-attr]
            except (KeyError, AttributeError):
                target = self._resolve(to)
        if target is caller:
            raise MetakitError(f"{pid!r} cannot call itself: it would wait for its own reply")
        return self._call_actor(pid, target, to, request, timeout)

    def _call_actor(
        self, pid: PID, target: Mailbox, to: Any, request: Any, timeout: float | None
    ) -> asyncio.Future[Any]:
        """Deliver a call to an actor already looked up; ``to`` is what timeouts name."""
        future = self._mk_loop.create_future()
        # Process.send's delivery, inlined: this is the call hot path.
        q = target._mk_q
        if target._mk_cap and len(q) >= target._mk_cap:
            target._mk_refuse()
        q.append(Caller(pid, future))
        q.append(request)
        if not target._mk_scheduled:
            target._mk_scheduled = True
            target._mk_kick()
        if timeout is not None:
            self._deadlines.add(future, timeout, to)
        return future

    def send_exit(self, to: Target, reason: Any) -> None:
        """Send an exit signal from the node: a top-level process or a meta ends with ``reason``.

        A process spawned by another process and trapping exits gets an
        ``Exit`` message instead. ``"kill"`` ends anything at once.
        """
        self._resolve(to)._mk_signal(Signal(self._mk_pid, self._mk_pid, reason))

    def kill(self, to: Target) -> None:
        """End a process or meta at once with reason ``"kill"``."""
        self._resolve(to)._mk_kill()

    def _cancel_drain(self, actor: Mailbox) -> None:
        task = actor._mk_task
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    def _env_lookup(self, proc: Process, key: str, default: Any) -> Any:
        if proc._mk_env and key in proc._mk_env:
            return proc._mk_env[key]
        return self.env.get(key, default)

    # -- death -----------------------------------------------------------------------

    def _reap(self, actor: Mailbox, reason: Any) -> None:
        """Remove a dead actor and tell everyone who asked to know."""
        if actor._mk_state == DEAD:
            return
        actor._mk_state = DEAD
        actor._mk_limit = -1
        self._mk_table.pop(actor._mk_ident.id, None)
        actor._mk_fail_calls(reason)
        if isinstance(actor, Process):
            if actor._mk_name is not None and self._names.get(actor._mk_name) is actor:
                del self._names[actor._mk_name]
            metas = actor._mk_metas
            if metas:
                actor._mk_metas = None
                parent_exit = Signal(actor._mk_pid, actor._mk_pid, reason, forced=True)
                for meta in list(metas):
                    meta._mk_signal(parent_exit)
        elif isinstance(actor, Meta):
            owner = actor._mk_parent_proc._mk_metas
            if owner:
                owner.discard(actor)
        self._notify_death(actor, reason)
        waiters = actor._mk_waiters
        if waiters:
            actor._mk_waiters = None
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(reason)
        if not self._mk_table and self._empty is not None and not self._empty.done():
            self._empty.set_result(None)

    def wait_exit(self, to: Target, timeout: float | None = None) -> Awaitable[Any]:
        """Await this to wait until a process or meta has ended; it gives the exit reason.

        The wait starts when ``wait_exit`` is called, not when it is awaited,
        so an exit in between is not missed. It gives ``"noproc"`` if the
        target is not alive at the call.

        Raises:
            TimeoutError: (when awaited) still alive after ``timeout`` seconds.
        """
        waiter: asyncio.Future[Any] = self._mk_loop.create_future()
        actor = self._lookup(to)
        if actor is None:
            waiter.set_result("noproc")
        else:
            if actor._mk_waiters is None:
                actor._mk_waiters = []
            actor._mk_waiters.append(waiter)
        return asyncio.wait_for(waiter, timeout)

    def __repr__(self) -> str:
        state = "running" if self._running else "stopped"
        return f"<Node {self.name!r} {state}, {len(self._mk_table)} actors>"
