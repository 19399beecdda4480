"""System messages the runtime delivers to processes, and the call handle.

Every message is a frozen, slotted dataclass, so it works with ``match``::

    match message:
        case Down(target, ref, reason): ...
        case Exit(source, reason): ...
        case EventMessage(event, payload): ...
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from typing import Any, Final, TypeVar, final

from .ids import PID, Alias, Ref

__all__ = ["NO_REPLY", "Caller", "Down", "EventMessage", "Exit", "NodeDown"]

M = TypeVar("M")


def fast_init(cls: type[M]) -> type[M]:
    """Give a frozen, slotted dataclass an ``__init__`` that sets its slots directly.

    The generated ``__init__`` of a frozen dataclass goes through
    ``object.__setattr__`` for every field, which more than doubles the cost
    of building a message; the slot descriptors give the same result. Same
    signature (positional or keyword), still frozen afterwards.
    """
    names = [field.name for field in dataclasses.fields(cls)]  # type: ignore[arg-type]
    scope = {f"_set_{name}": vars(cls)[name].__set__ for name in names}
    body = "\n".join(f"    _set_{name}(self, {name})" for name in names)
    exec(f"def __init__(self, {', '.join(names)}):\n{body}\n", scope)
    init = scope["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    setattr(cls, "__init__", init)  # noqa: B010 - replacing a method mypy types
    return cls


@fast_init
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


@fast_init
@dataclass(frozen=True, slots=True)
class Exit:
    """An exit signal turned into a message because the receiver traps exits.

    Attributes:
        source: the PID or Alias (or event name, for ``link_event``) it came from.
        reason: the exit reason.
    """

    source: PID | Alias | str
    reason: Any


@fast_init
@dataclass(frozen=True, slots=True)
class EventMessage:
    """One event published with ``send_event``, as a subscriber receives it.

    Attributes:
        event: the event's name.
        message: what the producer published.
    """

    event: str
    message: Any


@fast_init
@dataclass(frozen=True, slots=True)
class NodeDown:
    """A node watched with ``monitor_node`` is down (delivered once per watch).

    Attributes:
        node: the node's name.
        reason: ``"noconnection"`` (crashed, cut off, or never up) or
            ``"stopped"`` (it left the cluster cleanly).
    """

    node: str
    reason: Any


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
