"""An actor's lifecycle: one ``IntEnum``, compared with ``<`` (INIT < RUNNING < EXITING < DEAD)."""

from __future__ import annotations

from enum import IntEnum

__all__ = ["DEAD", "EXITING", "INIT", "RUNNING", "State"]


class State(IntEnum):
    """Where an actor is in its life; only ever moves forward."""

    INIT = 0
    """``init`` is running: deliveries queue until it has finished."""
    RUNNING = 1
    """Handling messages."""
    EXITING = 2
    """Ending: ``terminate`` is running."""
    DEAD = 3
    """Gone from the routing table."""

    @property
    def label(self) -> str:
        """The name snapshots show: ``"init"``, ``"running"``, ``"exiting"``, ``"terminated"``."""
        return "terminated" if self is State.DEAD else self.name.lower()


# Module-level names: a global load is cheaper than an attribute on the enum.
INIT, RUNNING, EXITING, DEAD = State.INIT, State.RUNNING, State.EXITING, State.DEAD
