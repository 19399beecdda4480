"""Test helpers, also a pytest plugin (entry point ``metakit``).

Fixtures:

* ``node`` — a started :class:`~metakit.Node`, stopped after the test, which
  then fails the test if any process, meta, task, thread or socket created
  during it is still alive.
* ``probe`` — a factory of :class:`Probe` processes on that node.

Helpers: :data:`TIMEOUT` (seconds, scaled by ``METAKIT_TEST_TIMEOUT_FACTOR``),
:func:`wait_until` (poll a condition with a deadline), :class:`Probe` (a
process whose mailbox a test reads with ``await probe.receive()``),
:class:`LeakCheck`, and :func:`check_meta_lifecycle`, the conformance check
every ready meta passes and a meta of yours can run in its tests.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from .errors import NoProcess
from .ids import PID, Alias, Ref
from .messages import Down, Exit
from .meta import Meta
from .node import Node
from .process import Process

__all__ = [
    "ENDINGS",
    "TIMEOUT",
    "LeakCheck",
    "Probe",
    "check_meta_lifecycle",
    "open_sockets",
    "wait_until",
]

TIMEOUT = 5.0 * float(os.environ.get("METAKIT_TEST_TIMEOUT_FACTOR", "1"))
"""The unit of patience in tests, in seconds; CI machines may scale it up."""


async def wait_until(
    condition: Callable[[], Any], timeout: float = TIMEOUT, message: str = ""
) -> Any:
    """Poll ``condition()`` on every loop turn until it is truthy; return its value.

    It yields to the loop between polls (no fixed sleeps), backing off to
    1 ms once the loop is idle.

    Raises:
        TimeoutError: still falsy after ``timeout`` seconds.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    spins = 0
    while True:
        value = condition()
        if value:
            return value
        if loop.time() > deadline:
            raise TimeoutError(message or f"condition not met within {timeout:g} s")
        spins += 1
        await asyncio.sleep(0 if spins < 100 else 0.001)


class Probe(Process):
    """A process that hands what it receives to the test.

    Every message arrives in :attr:`inbox` as ``(sender, message)``.
    ``handle_call`` answers with :attr:`reply_with` (default None).

    ``holder``, when given, is a list the probe appends itself to in ``init``:
    how whoever spawns it gets hold of the object behind the PID.
    """

    async def init(self, holder: list[Probe] | None = None) -> None:
        self.inbox: asyncio.Queue[tuple[PID, Any]] = asyncio.Queue()
        self.trap_exit = True
        self.reply_with: Any = None
        if holder is not None:
            holder.append(self)

    def handle_message(self, sender: PID, message: Any) -> None:
        self.inbox.put_nowait((sender, message))

    def handle_call(self, sender: Any, request: Any) -> Any:
        self.inbox.put_nowait((sender.pid, request))
        return self.reply_with

    async def receive(self, timeout: float = TIMEOUT) -> Any:
        """The next message (without its sender); TimeoutError if none comes."""
        return (await self.receive_from(timeout))[1]

    async def receive_from(self, timeout: float = TIMEOUT) -> tuple[PID, Any]:
        """The next ``(sender, message)``; TimeoutError if none comes."""
        return await asyncio.wait_for(self.inbox.get(), timeout)

    def pending(self) -> list[Any]:
        """The messages received and not yet taken, without waiting."""
        items = []
        while not self.inbox.empty():
            items.append(self.inbox.get_nowait()[1])
        return items


def _inet_inodes() -> set[str]:
    inodes: set[str] = set()
    for table in ("tcp", "tcp6", "udp", "udp6"):
        try:
            with open(f"/proc/net/{table}") as f:
                next(f)
                inodes.update(line.split()[9] for line in f)
        except OSError:
            continue
    try:
        with open("/proc/net/unix") as f:
            next(f)
            # Unix sockets with a path: a listener and what it accepted. The
            # loops' own wake-up pairs have none (uvloop makes a new pair on
            # every run_until_complete), so they are not counted.
            inodes.update(fields[6] for fields in map(str.split, f) if len(fields) > 7)
    except OSError:
        pass
    return inodes


def open_sockets() -> set[str]:
    """The network sockets this process holds open, as ``"socket:[inode]"`` (Linux).

    Listening or connected TCP sockets, bound UDP ones, and Unix sockets
    with a path (a listener and the connections it accepted): those the
    kernel lists in ``/proc/net``. Unnamed Unix sockets are left out on
    purpose: event loops own some (uvloop makes a new signal-wakeup pair on
    every ``run_until_complete``). Empty on systems without ``/proc``.
    """
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return set()
    inet = _inet_inodes()
    found = set()
    for fd in fds:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inet:
            found.add(target)
    return found


def _threads() -> set[threading.Thread]:
    # The loop's default executor (getaddrinfo) lives until the loop closes;
    # uvloop names its threads uvloop_N.
    return {t for t in threading.enumerate() if not t.name.startswith(("asyncio_", "uvloop_"))}


class LeakCheck:
    """Remembers what existed before; :meth:`check` waits for the rest to go.

    Tasks, threads and sockets created after construction must be gone by
    the deadline of :meth:`check`, which raises AssertionError naming them.
    """

    def __init__(self) -> None:
        self.tasks = asyncio.all_tasks()
        self.threads = _threads()
        self.sockets = open_sockets()

    def leftovers(self) -> dict[str, list[str]]:
        """What was created since construction and is still there."""
        current = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() - self.tasks if t is not current and not t.done()]
        threads = [t for t in _threads() - self.threads if t.is_alive()]
        sockets = open_sockets() - self.sockets
        found = {
            "tasks": sorted(repr(t) for t in tasks),
            "threads": sorted(t.name for t in threads),
            "sockets": sorted(sockets),
        }
        return {k: v for k, v in found.items() if v}

    async def check(self, timeout: float = TIMEOUT) -> None:
        """Wait up to ``timeout`` for the leftovers to go; fail naming what stayed."""
        try:
            await wait_until(lambda: not self.leftovers(), timeout)
        except TimeoutError:
            raise AssertionError(f"left behind after the test: {self.leftovers()}") from None


ENDINGS = ("normal", "kill", "parent", "stop")
"""The ways :func:`check_meta_lifecycle` ends a meta: ``send_exit(meta, "normal")``
from its parent, ``"kill"``, its parent ending (``"shutdown"``), and ``node.stop()``."""


class _Owner(Probe):
    """The parent in a lifecycle check: a Probe that spawns and links on request."""

    async def handle_call(self, sender: Any, request: Any) -> Any:
        match request:
            case ("spawn", meta):
                alias = await self.spawn_meta(meta)
                self.link(alias)  # trap_exit: its end arrives as one Exit
                return alias
            case ("exit", alias, reason):
                self.send_exit(alias, reason)
                return None
        return super().handle_call(sender, request)  # as a Probe: a worker's calls


class _Watcher(Probe):
    """Monitors the meta in a lifecycle check."""

    def handle_call(self, sender: Any, request: Any) -> Any:
        return self.monitor(request)


def _count_terminate(cls: type[Meta]) -> tuple[dict[int, int], Callable[[], None]]:
    # Counting on the class: a slotted meta takes no attribute on the instance.
    counts: dict[int, int] = {}
    had = "terminate" in cls.__dict__
    original = cls.__dict__.get("terminate")
    inherited = cls.terminate

    def terminate(self: Meta, reason: Any) -> None:
        counts[id(self)] = counts.get(id(self), 0) + 1
        inherited(self, reason)

    terminate.__doc__ = inherited.__doc__
    cls.terminate = terminate  # type: ignore[method-assign]

    def restore() -> None:
        if had:
            cls.terminate = original  # type: ignore[method-assign,assignment]
        else:
            del cls.terminate

    return counts, restore


async def check_meta_lifecycle(
    make_meta: Callable[[Probe], Meta | Awaitable[Meta]],
    *,
    exercise: Callable[[Probe, Meta], Awaitable[Any]] | None = None,
    timeout: float = TIMEOUT,
    endings: Sequence[str] = ENDINGS,
) -> None:
    """Check that a meta keeps the lifecycle every meta promises (DESIGN.md §4, §7).

    For each way of ending it (:data:`ENDINGS`), on a node of its own: a
    parent :class:`Probe` (trapping exits) spawns ``make_meta(parent)`` and
    links to it, another process monitors it, ``exercise(parent, meta)``
    (when given) puts it to work — the parent's inbox holds what the meta
    sent it — and then the meta is ended. It must then hold that:

    * ``terminate`` ran exactly once;
    * the meta is gone: out of ``node.metas()``, ``send`` raises ``NoProcess``;
    * the parent was told once (an ``Exit`` over the link, unless the parent
      is what ended) and its ``process_info`` no longer lists the meta;
    * the monitor got exactly one ``Down`` for it, with the exit reason;
    * nothing is left: no socket, task or thread made since the start
      outlives the meta (or, for ``"stop"``, the node).

    (On ``"stop"`` the parent and the monitor stop too, so those two are
    not checked there.)

    ::

        async def test_my_meta_lifecycle() -> None:
            await check_meta_lifecycle(lambda parent: LineTail(path))

    Args:
        make_meta: makes a fresh, unspawned meta for each run (plain or async);
            it gets the parent Probe (a worker for a handler, say).
        exercise: awaited once the meta runs, to drive it (connect a client...).
        timeout: seconds each property gets to come true.
        endings: which of :data:`ENDINGS` to run.

    Raises:
        AssertionError: naming the ending and the property that failed.
    """
    for ending in endings:
        if ending not in ENDINGS:
            raise ValueError(f"unknown ending {ending!r}; choose from {ENDINGS}")
        await _check_ending(make_meta, exercise, timeout, ending)


async def _check_ending(
    make_meta: Callable[[Probe], Meta | Awaitable[Meta]],
    exercise: Callable[[Probe, Meta], Awaitable[Any]] | None,
    timeout: float,
    ending: str,
) -> None:
    def fail(what: str) -> AssertionError:
        return AssertionError(f"check_meta_lifecycle[{ending}]: {what}")

    leaks = LeakCheck()
    node = Node(f"lifecycle-{ending}@localhost")
    await node.start()
    restore: Callable[[], None] | None = None
    try:
        holder: list[Probe] = []
        parent_pid = await node.spawn(_Owner, holder)
        parent = holder[0]
        holder.clear()
        watcher_pid = await node.spawn(_Watcher, holder)
        watcher = holder[0]
        made = make_meta(parent)
        meta = await made if inspect.isawaitable(made) else made
        counts, restore = _count_terminate(type(meta))
        alias: Alias = await node.call(parent_pid, ("spawn", meta), timeout)
        ref: Ref = await node.call(watcher_pid, alias, timeout)
        if exercise is not None:
            await asyncio.wait_for(exercise(parent, meta), timeout)
        if alias not in node.metas():
            raise fail("the meta ended while being exercised, before the check ended it")
        gone = node.wait_exit(alias, timeout)
        if ending == "normal":
            await node.call(parent_pid, ("exit", alias, "normal"), timeout)
        elif ending == "kill":
            node.kill(alias)
        elif ending == "parent":
            node.send_exit(parent_pid, "shutdown")
        else:
            await node.stop(timeout=timeout)
        try:
            reason = await gone
        except TimeoutError:
            raise fail(f"still alive {timeout:g} s after it was ended") from None
        runs = counts.get(id(meta), 0)
        if runs != 1:
            raise fail(f"terminate ran {runs} times, not once")
        if alias in node.metas():
            raise fail("still listed by node.metas() after it ended")
        if node.running:
            try:
                node.send(alias, "anyone there?")
            except NoProcess:
                pass
            else:
                raise fail("send to it did not raise NoProcess after it ended")
            if ending != "parent" and alias in node.process_info(parent_pid).metas:
                raise fail("its parent's process_info still lists it")
        if ending == "stop":
            return  # the parent and the monitor are stopped too: nobody is left to tell
        downs = await _collect(watcher, lambda m: isinstance(m, Down) and m.ref == ref, timeout)
        if len(downs) != 1:
            raise fail(f"the monitor got {len(downs)} Down messages, not one: {downs}")
        if downs[0].reason != reason:
            raise fail(f"Down says {downs[0].reason!r}, the exit was {reason!r}")
        if ending != "parent":  # the parent is what ended
            exits = await _collect(
                parent, lambda m: isinstance(m, Exit) and m.source == alias, timeout
            )
            if len(exits) != 1:
                raise fail(f"the parent got {len(exits)} Exit messages over its link, not one")
        try:
            await leaks.check(timeout)
        except AssertionError as exc:
            raise fail(f"its object outlived it: {exc}") from None
    finally:
        if restore is not None:
            restore()
        await node.stop(timeout=timeout)
    try:
        await leaks.check(timeout)
    except AssertionError as exc:
        raise fail(str(exc)) from None


async def _collect(probe: Probe, match: Callable[[Any], bool], timeout: float) -> list[Any]:
    """Wait for one message ``match`` accepts in ``probe``'s inbox, then a few loop
    turns for a duplicate; every match, in order (the others are left)."""
    found: list[Any] = []
    seen: list[tuple[PID, Any]] = []

    def scan() -> bool:
        while not probe.inbox.empty():
            item = probe.inbox.get_nowait()
            if match(item[1]):
                found.append(item[1])
            else:
                seen.append(item)
        return bool(found)

    try:
        await wait_until(scan, timeout)
    except TimeoutError:
        pass
    for _ in range(10):  # a duplicate would be queued by now: deliveries are synchronous
        await asyncio.sleep(0)
        scan()
    for item in seen:
        probe.inbox.put_nowait(item)
    return found


async def _node_fixture() -> AsyncIterator[Node]:
    leaks = LeakCheck()
    node = Node("test@localhost", log_level="debug")
    await node.start()
    try:
        yield node
    finally:
        await node.stop(timeout=TIMEOUT)
    alive = [repr(a) for a in [*node.processes(), *node.metas()]]
    assert not alive, f"still alive after node.stop(): {alive}"
    await leaks.check()


async def _probe_fixture(node: Node) -> AsyncIterator[Callable[..., Awaitable[Probe]]]:
    async def make(name: str | None = None) -> Probe:
        holder: list[Probe] = []
        await node.spawn(Probe, holder, name=name)
        return holder[0]

    yield make


# The plugin part: only when pytest and pytest-asyncio are there, so importing
# metakit.testing elsewhere costs nothing and never fails.
if "pytest" in sys.modules:
    try:
        import pytest_asyncio
    except ImportError:  # pragma: no cover - the fixtures need pytest-asyncio
        pass
    else:
        node = pytest_asyncio.fixture(_node_fixture, name="node")
        probe = pytest_asyncio.fixture(_probe_fixture, name="probe")
