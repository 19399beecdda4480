"""Identifiers: :class:`PID` (a process), :class:`Alias` (a meta-process), :class:`Ref`.

All three are frozen, slotted and hashable values with a readable repr. Their
integer ``id`` comes from one counter shared by every node in the Python
process, so an id is never reused and a PID from another node is simply not
found here.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

__all__ = ["PID", "Alias", "Ref", "Target"]

# One counter for PIDs, Aliases and Refs: the node's routing table is keyed by
# this int (a C-level hash), which keeps the send hot path cheap (DESIGN.md §6).
_next_id = itertools.count(1).__next__


@dataclass(frozen=True, slots=True)
class PID:
    """Identifies a process on a node.

    Attributes:
        node: the node's name, e.g. ``"demo@localhost"``.
        id: a number unique within this Python process.
    """

    node: str
    id: int

    def __repr__(self) -> str:
        return f"<PID {self.node}.{self.id}>"


@dataclass(frozen=True, slots=True)
class Alias:
    """Identifies a meta-process (and is the connection id of the network metas).

    Attributes:
        node: the node's name.
        id: a number unique within this Python process.
    """

    node: str
    id: int

    def __repr__(self) -> str:
        return f"<Alias {self.node}.{self.id}>"


@dataclass(frozen=True, slots=True)
class Ref:
    """A unique reference, returned by ``monitor`` and carried by ``Down``.

    Attributes:
        node: the node's name.
        id: a number unique within this Python process.
    """

    node: str
    id: int

    def __repr__(self) -> str:
        return f"<Ref {self.node}.{self.id}>"


Target = PID | Alias | str
"""What ``send``, ``call``, ``link``, ``monitor`` and ``send_exit`` accept: a PID,
an Alias, or a registered name."""
