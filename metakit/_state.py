"""An actor's lifecycle states, ints compared with ``<`` (shared by mailbox and flow)."""

from __future__ import annotations

__all__ = ["DEAD", "EXITING", "INIT", "RUNNING", "STATE_NAMES"]

INIT, RUNNING, EXITING, DEAD = 0, 1, 2, 3
STATE_NAMES = ("init", "running", "exiting", "terminated")
