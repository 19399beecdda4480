"""Pool: who gets the next connection, datagram or request — one worker, or a pool.

Every network meta hands its traffic to a worker process: its parent by
default, a given process, or pool members round-robin. Pool members are
looked up by name or PID each time, so a supervised worker restarted under
the same name is found again, and dead members are skipped. A connection
meta serving a pool member monitors it and closes when it ends
(:class:`~metakit.connection.Connection`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ._state import EXITING
from .ids import PID

if TYPE_CHECKING:
    from .meta import Meta

__all__ = ["Pool"]


class Pool:
    """A round-robin over names or PIDs; empty means "the meta's parent".

    ::

        self.workers = Pool(pool=["w1", "w2"])      # in a meta's __init__
        worker = self.workers.pick(self)            # a PID, or None: nobody alive

    Args:
        worker: one process (a name or PID).
        pool: instead of ``worker``, several, taken in turn.
        required: raise ``ValueError`` unless one of them is given (a meta
            whose parent is not meant to answer, like a ``WebHandler``).

    Raises:
        ValueError: both given, none when ``required``, or an empty pool.
    """

    __slots__ = ("_next", "targets")

    def __init__(
        self,
        worker: PID | str | None = None,
        pool: Sequence[PID | str] | None = None,
        *,
        required: bool = False,
    ) -> None:
        if worker is not None and pool is not None:
            raise ValueError("give a worker or a pool, not both")
        if required and worker is None and pool is None:
            raise ValueError("give a worker or a pool")
        self.targets: list[PID | str] = [worker] if worker is not None else list(pool or ())
        """The names or PIDs, in turn order (empty: the meta's parent)."""
        if pool is not None and not self.targets:
            raise ValueError("the pool is empty")
        self._next = 0

    def pick(self, meta: Meta) -> PID | None:
        """The next live worker for ``meta`` (its parent when none was given), or None."""
        # Not exiting is enough: an actor still in init queues what it gets
        # (a server binds in its parent's init, and may accept before it ends).
        targets = self.targets
        parent = meta._mk_parent_proc
        if not targets:
            return parent._mk_pid if parent._mk_state < EXITING else None
        lookup = meta._mk_node._registry.lookup
        if len(targets) == 1:  # one worker, the usual case: no turn to keep
            actor = lookup(targets[0])
            if actor is not None and actor._mk_state < EXITING:
                return actor._mk_ident  # type: ignore[return-value]
            return None
        for _ in range(len(targets)):
            target = targets[self._next % len(targets)]
            self._next += 1
            actor = lookup(target)
            if actor is not None and actor._mk_state < EXITING:
                return actor._mk_ident  # type: ignore[return-value]
        return None

    def __repr__(self) -> str:
        return ", ".join(map(str, self.targets)) if self.targets else "the parent"
