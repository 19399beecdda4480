"""System messages the runtime delivers to processes, and the call handle.

Every message is a frozen, slotted dataclass, so it works with ``match``::

    match message:
        case Down(target, ref, reason): ...
        case Exit(source, reason): ...
        case EventMessage(event, payload): ...
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Final, final

from .ids import PID, Alias, Ref

__all__ = ["NO_REPLY", "Caller", "Down", "EventMessage", "Exit"]


@dataclass(frozen=True, slots=True)
class Down:
    """A monitored process, meta or event producer has ended.

    Delivered exactly once per ``monitor``/``monitor_event``, in order with the
    other messages.

    Attributes:
        target: the PID or Alias that was monitored, or the event name.
        ref: the Ref that ``monitor`` returned.
        reason: why it ended: ``"normal"``, ``"shutdown"``, ``"kill"``, an
            exception, ``"noproc"`` if it was already gone when the monitor
            was set, or ``"unregistered"`` if an event was unregistered.
    """

    target: PID | Alias | str
    ref: Ref
    reason: Any


@dataclass(frozen=True, slots=True)
class Exit:
    """An exit signal turned into a message because the receiver traps exits.

    Attributes:
        source: the PID or Alias (or event name, for ``link_event``) it came from.
        reason: the exit reason.
    """

    source: PID | Alias | str
    reason: Any


@dataclass(frozen=True, slots=True)
class EventMessage:
    """One event published with ``send_event``, as a subscriber receives it.

    Attributes:
        event: the event's name.
        message: what the producer published.
    """

    event: str
    message: Any


@final
class _NoReply:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NO_REPLY"


NO_REPLY: Final[Any] = _NoReply()
"""Return this from ``handle_call`` to answer later with ``reply(caller, value)``."""


@final
class Caller:
    """The handle of one pending call: ``handle_call`` receives it as ``sender``.

    Pass it to ``reply(caller, value)`` to answer a call for which
    ``handle_call`` returned :data:`NO_REPLY`. A reply to a call that already
    timed out, or whose caller has gone, is discarded.

    Attributes:
        pid: the calling process (the node's own PID for ``node.call``).
    """

    __slots__ = ("_future", "pid")

    def __init__(self, pid: PID, future: asyncio.Future[Any]) -> None:
        self.pid = pid
        self._future = future

    @property
    def done(self) -> bool:
        """Whether the call has been answered, failed, or given up by the caller."""
        return self._future.done()

    def _resolve(self, value: Any) -> None:
        if not self._future.done():
            self._future.set_result(value)

    def _fail(self, exc: BaseException) -> None:
        if not self._future.done():
            self._future.set_exception(exc)

    def __repr__(self) -> str:
        return f"<Caller {self.pid!r}>"
