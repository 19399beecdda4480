"""The batches that arrive on this node's subject.

A batch is a header ``[VERSION, node, creation]`` and frames (drawn in
:mod:`metakit._remote`). The header names the sending run: a batch of a run
not in the view adds it (a sign of life, see :mod:`._liveness`) unless that
run said bye; a batch of a known run renews its ``last_seen`` and confirms
it after our reconnect. Each frame then goes, in order, to the core
(:meth:`Remote.handle <metakit._remote.Remote.handle>`), so messages, links
and monitors from one process to another take effect in the order they were
made.

Bad input (garbage, a truncated batch, a frame of the wrong shape) is
counted in :meth:`Cluster.statistics <metakit.cluster.cluster.Cluster.statistics>`
and logged at most once a second; the frames before it in the batch still
count.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ._peer import VERSION
from ._wire import WireError

if TYPE_CHECKING:
    from .cluster import Cluster

__all__ = ["Inbound"]

# What a frame of the wrong shape raises in the core's handlers.
_BAD_FRAME = (IndexError, KeyError, TypeError, ValueError, AttributeError)


class Inbound:
    """Handles what arrives on one cluster's node subject.

    Args:
        cluster: the attached cluster it serves (its core, peers, counters).
    """

    def __init__(self, cluster: Cluster) -> None:
        self._cluster = cluster
        self._handle = cluster._remote.handle
        self._peers = cluster._peers
        self._codec = cluster._codec
        self._stats = cluster._stats

    async def on_batch(self, msg: Any) -> None:
        """A message on this node's subject (the subscription's callback)."""
        c = self._cluster
        data = msg.data
        stats = self._stats
        stats.batches_in += 1
        stats.bytes_in += len(data)
        frames: Iterator[Any] = self._codec.frames(data)
        try:
            version, name, creation = next(frames)
            if version != VERSION or not isinstance(name, str) or not isinstance(creation, int):
                raise WireError("not a batch header")
        except Exception as exc:
            c._bad("batch", exc)
            return
        c._liveness.seen(name, creation)  # a sign of life: renews, confirms or adds it
        peer: Any = self._peers.get(name)
        if peer is None or peer.creation != creation:
            return  # a run that said bye, or this node is leaving
        handle = self._handle
        try:
            for frame in frames:
                try:
                    handle(peer, frame)
                except _BAD_FRAME as exc:
                    c._bad("frame", exc)
                    continue
                stats.messages_in += 1
        except WireError as exc:
            c._bad("batch", exc)
