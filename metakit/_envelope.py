"""The envelopes a mailbox holds besides ordinary messages (never seen by handlers).

A queued envelope is two deque entries, *sender* then *message*
(:mod:`metakit.mailbox` is the one module that lays them out); the sender's
class tells the drain what it is: a ``PID`` (a message), a ``Caller`` (a
call), or one of these. Each is slotted: one small object, placed only off
the hot path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .ids import PID, Alias

__all__ = ["HOLD", "IGNORE", "Notify", "Signal"]


class Signal:
    """An exit signal in flight (internal envelope, never seen by handlers).

    Attributes:
        source: who sent it: a PID, an Alias, or an event name.
        sender: the PID a trapped ``Exit`` appears to come from.
        reason: the exit reason.
        link: ``True`` when it comes from a link (``"normal"`` is then ignored).
        forced: ``True`` when trapping cannot turn it into a message (node stop, parent).
    """

    __slots__ = ("forced", "link", "reason", "sender", "source")

    def __init__(
        self,
        source: PID | Alias | str,
        sender: PID,
        reason: Any,
        *,
        link: bool = False,
        forced: bool = False,
    ) -> None:
        self.source = source
        self.sender = sender
        self.reason = reason
        self.link = link
        self.forced = forced

    def __repr__(self) -> str:
        return f"<Signal {self.reason!r} from {self.source!r}>"


class Notify:
    """An envelope that runs ``callback()`` when the drain reaches it (never seen by handlers)."""

    __slots__ = ("callback",)

    def __init__(self, callback: Callable[[], Any]) -> None:
        self.callback = callback


class _Hold:
    """The envelope that stops a drain while the actor is held."""

    __slots__ = ()


HOLD = _Hold()

# What Mailbox._mk_trap returns for a signal that changes nothing (a link's "normal").
IGNORE: Any = object()
