"""Identifiers: :class:`PID` (a process), :class:`Alias` (a meta-process), :class:`Ref`.

All three are frozen, slotted and hashable values with a readable repr. Their
integer ``id`` comes from one counter shared by every node in the Python
process, which starts at a random multiple of 2**32: the high half of an id
says which run of a Python process made it (the creation stamp of
DESIGN.md §8), the low half counts. So an id is never reused, a PID from
another node or an earlier run is simply not found in this node's table,
and a cluster routes a PID by its ``node`` once the local lookup misses.
The repr shows the low half only.
"""

from __future__ import annotations

import itertools
import secrets
from dataclasses import dataclass

__all__ = ["PID", "Alias", "Ref", "Target"]

# One counter for PIDs, Aliases and Refs: the node's routing table is keyed by
# this int (a C-level hash), which keeps the send hot path cheap (DESIGN.md §6).
# 31 random bits above 32 counting ones: ids of two Python processes (or two
# runs of one) differ, so a remote PID never hits a local actor, and every id
# still fits msgpack's int64.
RUN_STAMP = secrets.randbits(31) or 1
_next_id = itertools.count(RUN_STAMP << 32 | 1).__next__
_LOW = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class PID:
    """Identifies a process on a node.

    Attributes:
        node: the node's name, e.g. ``"demo@localhost"``.
        id: a number unique across runs and Python processes (with high probability).
    """

    node: str
    id: int

    def __repr__(self) -> str:
        return f"<PID {self.node}.{self.id & _LOW}>"


@dataclass(frozen=True, slots=True)
class Alias:
    """Identifies a meta-process (and is the connection id of the network metas).

    Attributes:
        node: the node's name.
        id: a number unique across runs and Python processes (with high probability).
    """

    node: str
    id: int

    def __repr__(self) -> str:
        return f"<Alias {self.node}.{self.id & _LOW}>"


@dataclass(frozen=True, slots=True)
class Ref:
    """A unique reference, returned by ``monitor`` and carried by ``Down``.

    Attributes:
        node: the node's name.
        id: a number unique across runs and Python processes (with high probability).
    """

    node: str
    id: int

    def __repr__(self) -> str:
        return f"<Ref {self.node}.{self.id & _LOW}>"


Target = PID | Alias | str
"""What ``send``, ``call``, ``link``, ``monitor`` and ``send_exit`` accept: a PID,
an Alias, or a registered name."""
