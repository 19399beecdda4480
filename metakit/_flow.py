"""Flow control for the network metas: Notify markers and holding a mailbox.

These never touch the message hot path: a marker or a hold is placed only
when a reader must pause or a writer must wait.

* :class:`Notify` is an envelope that runs a callback when the drain
  reaches it. Placed in a worker's mailbox ``behind`` messages from its end,
  it tells a connection that the worker has caught up (resume reading), or
  that the worker has handled a disconnect (the connection may go).
* Holding (``_mk_hold`` / ``_mk_unhold``) stops an actor's drain after the
  current message while the object it writes to cannot take more; its
  mailbox then fills up to its bound, which pushes back on senders.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._state import DEAD, RUNNING

if TYPE_CHECKING:
    from collections import deque

__all__ = ["HOLD", "FlowControl", "Notify"]


class Notify:
    """An envelope that runs ``callback()`` when the drain reaches it (internal).

    It marks a point in another actor's mailbox: the network metas use it to
    resume reading once a worker has consumed what was queued before it, and
    to learn that a worker has handled a disconnect. Never seen by handlers.
    """

    __slots__ = ("callback",)

    def __init__(self, callback: Any) -> None:
        self.callback = callback


class _Hold:
    """The envelope that stops a drain while the actor is held (internal)."""

    __slots__ = ()


HOLD = _Hold()


class FlowControl:
    """Mixed into Mailbox: markers and holds (its attributes are Mailbox's)."""

    if not TYPE_CHECKING:  # slots keep Mailbox dict-free; mypy would see them as empty
        __slots__ = ()
    else:
        _mk_q: deque[Any]
        _mk_state: int
        _mk_nurgent: int
        _mk_scheduled: bool
        _mk_held: bool
        _mk_cap: int
        _mk_limit: int

        def _mk_kick(self) -> None: ...

    def _mk_notify(self, callback: Any, behind: int = 0) -> bool:
        """Run ``callback()`` when the drain gets to ``behind`` messages from the end.

        Returns False (and never calls it) if the actor is dead; the marker is
        dropped with the mailbox if the actor dies first.
        """
        if self._mk_state == DEAD:
            return False
        q = self._mk_q
        at = max(len(q) - 2 * behind, 2 * self._mk_nurgent)
        q.insert(at, None)
        q.insert(at, Notify(callback))
        if not self._mk_scheduled:
            self._mk_scheduled = True
            self._mk_kick()
        return True

    def _mk_hold(self) -> None:
        """Stop draining after the current message, until :meth:`_mk_unhold`.

        Deliveries still queue (up to the bound). Used when the object the
        actor writes to cannot take more, so the mailbox bound pushes back.
        """
        if self._mk_held or self._mk_state == DEAD:
            return
        self._mk_held = True
        self._mk_scheduled = True
        self._mk_q.appendleft(None)
        self._mk_q.appendleft(HOLD)
        if self._mk_cap:  # the marker must not take a bounded mailbox's place
            self._mk_cap += 2
            self._mk_limit += 2

    def _mk_unhold(self) -> None:
        if not self._mk_held:
            return
        self._mk_held = False
        if self._mk_cap:
            self._mk_cap -= 2
            if self._mk_limit > 0:
                self._mk_limit -= 2
        q = self._mk_q
        if q and q[0] is HOLD:
            q.popleft()
            q.popleft()
        self._mk_scheduled = bool(q) and self._mk_state == RUNNING
        if self._mk_scheduled:
            self._mk_kick()
