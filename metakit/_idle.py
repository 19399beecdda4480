"""Idle checks: one timer per node and idle timeout, not one per connection.

Every connection with an ``idle_timeout`` must end after that long without
traffic (DESIGN.md §12: every read has a deadline). A timer of its own per
connection costs a ``TimerHandle``, its context and a bound method: about
250 bytes on the stdlib loop and 600 on uvloop, for each of ten thousand
idle connections. Connections of one server share their timeout, so a node
keeps one :class:`IdleSweep` per timeout value: a table of the connections and
one timer, which checks them all every ``timeout / STEPS`` seconds. The
check itself is the connection's (``Connection._mk_check_idle``): traffic
since the last one restarts its clock, so reads and writes never read a
clock. A connection thus ends between ``timeout`` and ``(1 + 1/STEPS) x
timeout`` after its last traffic, as with a timer of its own.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["STEPS", "IdleSweep", "sweep_for"]

STEPS = 4  # checks per timeout: how late past it an idle connection may end


class IdleSweep:
    """The connections of one node with one idle timeout, and the timer that checks them."""

    __slots__ = ("_conns", "_loop", "_sweeps", "_timer", "timeout")

    def __init__(
        self, sweeps: dict[float, IdleSweep], loop: asyncio.AbstractEventLoop, timeout: float
    ) -> None:
        self._sweeps = sweeps
        self._loop = loop
        self.timeout = timeout
        # A dict, not a set: about 30 bytes an entry against 55.
        self._conns: dict[Connection, None] = {}
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._conns)

    def add(self, conn: Connection) -> None:
        """Check ``conn`` from the next sweep on."""
        self._conns[conn] = None
        if self._timer is None:
            self._timer = self._loop.call_later(self.timeout / STEPS, self._sweep)

    def discard(self, conn: Connection) -> None:
        """Stop checking ``conn``; the last one out stops the timer."""
        self._conns.pop(conn, None)
        if not self._conns:
            self._stop()

    def _stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._sweeps.get(self.timeout) is self:
            del self._sweeps[self.timeout]

    def _sweep(self) -> None:
        self._timer = None
        now = self._loop.time()
        for conn in list(self._conns):  # a check may end its connection
            conn._mk_check_idle(now)
        if self._conns and self._timer is None:  # (an add() meanwhile has armed it)
            self._timer = self._loop.call_later(self.timeout / STEPS, self._sweep)
        else:
            self._stop()


def sweep_for(
    sweeps: dict[float, IdleSweep], loop: asyncio.AbstractEventLoop, timeout: float
) -> IdleSweep:
    """The node's sweep for ``timeout`` (``sweeps`` is its table), made on first use."""
    sweep = sweeps.get(timeout)
    if sweep is None:
        sweep = sweeps[timeout] = IdleSweep(sweeps, loop, timeout)
    return sweep
