"""Test helpers, also a pytest plugin (entry point ``metakit``).

Fixtures:

* ``node`` — a started :class:`~metakit.Node`, stopped after the test, which
  then fails the test if any process, meta, task, thread or socket created
  during it is still alive.
* ``probe`` — a factory of :class:`Probe` processes on that node.

Helpers: :data:`TIMEOUT` (seconds, scaled by ``METAKIT_TEST_TIMEOUT_FACTOR``),
:func:`wait_until` (poll a condition with a deadline), :class:`Probe` (a
process whose mailbox a test reads with ``await probe.receive()``) and
:class:`LeakCheck`.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from .ids import PID
from .node import Node
from .process import Process

__all__ = ["TIMEOUT", "LeakCheck", "Probe", "open_sockets", "wait_until"]

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
    return inodes


def open_sockets() -> set[str]:
    """The TCP and UDP sockets this process holds open, as ``"tcp socket:[inode]"`` (Linux).

    Listening or connected TCP sockets and bound UDP ones: those the kernel
    lists in ``/proc/net``.
    Unix sockets are left out on purpose: event loops own some (uvloop makes
    a new signal-wakeup pair on every ``run_until_complete``). Empty on
    systems without ``/proc``.
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
    # The loop's default executor (getaddrinfo) lives until the loop closes.
    return {t for t in threading.enumerate() if not t.name.startswith("asyncio_")}


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
