"""The outgoing batches: frames queued per peer, published once per loop turn.

Theory of operation
-------------------

Frames for a node queue in its :class:`~._peer.NodePeer` as they are made
(:meth:`Cluster.queue <metakit.cluster.cluster.Cluster.queue>` encodes them
at the ``send`` and hands them to :meth:`Outbound.add`). The first frame
since a peer's last flush marks it dirty and wakes the flusher task, which
publishes each dirty peer's frames as one NATS message (or a few, under the
server's ``max_payload``), so a burst of sends costs one publish. Each
payload starts with the header ``[VERSION, node, creation]``.

While the connection is down the flusher publishes nothing and the frames
stay queued. After a reconnect a peer is *held*, dirty, until it shows it is
back (:meth:`Outbound.confirm`): published while it is still reconnecting,
its frames would reach no subscriber. A publish that fails (the connection
went, its buffer is full) puts the frames it did not take back first in
their peer's queue, and the flusher tries again shortly, so frames go out
in the order they were queued. A peer that goes down takes its frames with
it.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from ._peer import NodePeer as Peer

if TYPE_CHECKING:
    from .cluster import Cluster

__all__ = ["Outbound"]


class Outbound:
    """The dirty peers of one cluster and the flusher that publishes them.

    Args:
        cluster: the attached cluster it serves (its connection, header, counters).
    """

    def __init__(self, cluster: Cluster) -> None:
        self._cluster = cluster
        self._stats = cluster._stats
        self._dirty: list[Peer] = []
        self._held: list[Peer] = []  # dirty, waiting for the peer to be back (confirm)
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()  # nothing queued that the flusher has not published
        self._drained.set()

    def add(self, peer: Peer, data: bytes) -> None:
        """Queue one encoded frame for ``peer`` (dropped if it is down)."""
        if not peer.up:
            return
        peer.chunks.append(data)
        peer.pending += len(data)
        self._stats.messages_out += 1
        if not peer.dirty:
            peer.dirty = True
            self._dirty.append(peer)
            self._drained.clear()
            self._wake.set()

    def confirm(self, peer: Peer) -> None:
        """A peer held since our reconnect has shown it is back: send what waits."""
        peer.confirmed = True
        if peer in self._held:
            self._held.remove(peer)
            self._dirty.append(peer)
            self._wake.set()

    def forget(self, peer: Peer) -> None:
        """``peer`` is down: hold nothing for it."""
        if peer in self._held:
            self._held.remove(peer)

    def wake(self) -> None:
        """Have the flusher look again (the connection is back)."""
        self._wake.set()

    async def flusher(self) -> None:
        """The flusher task: publish the dirty peers' frames, each loop turn."""
        c = self._cluster
        header = c._header
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not c._connected:
                continue
            limit = c._nc.max_payload - len(header)
            failed = False
            while self._dirty and c._connected and not failed:
                peers, self._dirty = self._dirty, []
                for peer in peers:
                    if not peer.up:
                        continue
                    if not peer.confirmed:
                        self._held.append(peer)  # stays dirty: confirm moves it back
                        continue
                    chunks, peer.chunks = peer.chunks, []
                    peer.pending = 0
                    peer.dirty = False
                    for count, payload in _batches(header, chunks, limit):
                        try:
                            await c._nc.publish(peer.subject, payload)
                        except Exception as exc:
                            # Not taken (the connection went, its buffer is full):
                            # these frames go first once it is back.
                            c._log_limited("publish", "publish failed: %r", exc)
                            failed = True
                            break
                        del chunks[:count]
                        self._stats.batches_out += 1
                        self._stats.bytes_out += len(payload)
                    if chunks:
                        self._requeue(peer, chunks)
            if failed:  # try again shortly, not in a tight loop
                await asyncio.sleep(0.05)
                self._wake.set()
            elif not self._dirty and not self._held:
                self._drained.set()

    def _requeue(self, peer: Peer, chunks: list[bytes]) -> None:
        if not chunks or not peer.up:
            return
        peer.chunks[:0] = chunks
        peer.pending += sum(len(c) for c in chunks)
        if not peer.dirty:
            peer.dirty = True
            self._dirty.append(peer)

    async def flushed(self, timeout: float) -> None:
        """Wait until the frames queued so far are handed to the connection."""
        c = self._cluster
        deadline = c._loop.time() + timeout
        if c._connected:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), timeout)
        with contextlib.suppress(Exception):
            await c._nc.flush(timeout=max(0.1, deadline - c._loop.time()))


def _batches(header: bytes, chunks: list[bytes], limit: int) -> list[tuple[int, bytes]]:
    """Join frames into payloads of at most ``limit`` bytes after the header:
    ``(frames in it, payload)`` each."""
    if len(chunks) == 1:
        return [(1, header + chunks[0])]
    out: list[tuple[int, bytes]] = []
    start = 0
    size = 0
    for i, chunk in enumerate(chunks):
        if size and size + len(chunk) > limit:
            out.append((i - start, header + b"".join(chunks[start:i])))
            start, size = i, 0
        size += len(chunk)
    if start < len(chunks):
        out.append((len(chunks) - start, header + b"".join(chunks[start:])))
    return out
