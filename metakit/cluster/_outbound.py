"""The outgoing batches: frames queued per peer, published once per loop turn.

Theory of operation
-------------------

Frames for a node queue in its :class:`~._peer.NodePeer` as they are made
(:meth:`Cluster.queue <metakit.cluster.cluster.Cluster.queue>` encodes them
at the ``send`` and hands them to :meth:`Outbound.add`). The first frame of
a loop turn is published at once (a lone call or reply waits for no turn);
it also schedules one flush at the end of the turn, which publishes every
peer's frames queued meanwhile as one NATS message (or a few, under the
server's ``max_payload``), so a burst of sends costs two publishes. Each
payload starts with the header ``[VERSION, node, creation]``.

``nats.publish`` is a coroutine that almost never suspends: it is run by
hand (:class:`metakit._eager.Pump`), with no Task per publish. When it does
suspend (nats-py is flushing a full buffer), the flushes stop until it has
finished; frames queue meanwhile, up to ``max_pending`` per peer.

While the connection is down nothing is published and the frames stay
queued. After a reconnect a peer is *held*, dirty, until it shows it is
back (:meth:`Outbound.confirm`): published while it is still reconnecting,
its frames would reach no subscriber. A publish that fails (the connection
went, its buffer is full) puts the frames it did not take back first in
their peer's queue and is tried again shortly, so frames go out in the
order they were queued. A peer that goes down takes its frames with it.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from .._eager import Pump
from ._peer import NodePeer as Peer

if TYPE_CHECKING:
    from .cluster import Cluster

__all__ = ["Outbound"]

_RETRY = 0.05  # seconds before a failed publish is tried again
# A batch's payload at most: under glibc's mmap threshold as the node tunes it
# (512 KiB, metakit/_malloc.py), so building one reuses heap memory instead of
# faulting in fresh zeroed pages for every batch.
_MAX_BATCH = 256 * 1024


class Outbound:
    """The dirty peers of one cluster, and publishing them.

    Args:
        cluster: the attached cluster it serves (its connection, header, counters).
    """

    def __init__(self, cluster: Cluster) -> None:
        self._cluster = cluster
        self._loop = cluster._loop
        self._stats = cluster._stats
        self._dirty: list[Peer] = []
        self._held: list[Peer] = []  # dirty, waiting for the peer to be back (confirm)
        self._pump = Pump()
        self._busy: asyncio.Task[None] | None = None  # a publish that suspended
        self._turn_scheduled = False
        self._retry: asyncio.TimerHandle | None = None
        self._closed = False
        self._drained = asyncio.Event()  # nothing queued that is not published
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
            if not self._turn_scheduled:
                self._turn_scheduled = True
                self._loop.call_soon(self._end_of_turn)
                self.flush()

    def _end_of_turn(self) -> None:
        self._turn_scheduled = False
        self.flush()

    def confirm(self, peer: Peer) -> None:
        """A peer held since our reconnect has shown it is back: send what waits."""
        peer.confirmed = True
        if peer in self._held:
            self._held.remove(peer)
            self._dirty.append(peer)
            self.flush()

    def forget(self, peer: Peer) -> None:
        """``peer`` is down: hold nothing for it."""
        if peer in self._held:
            self._held.remove(peer)
        self._settle()

    def wake(self) -> None:
        """Look again (the connection is back)."""
        self.flush()

    def close(self) -> None:
        """Publish nothing more (the connection is closing)."""
        self._closed = True
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._busy is not None:
            self._busy.cancel()

    def flush(self) -> None:
        """Publish every dirty, confirmed peer's frames now, unless the
        connection is down or a publish is still finishing."""
        c = self._cluster
        if self._busy is not None or not c._connected or self._closed:
            return
        header = c._header
        limit = min(c._nc.max_payload, _MAX_BATCH) - len(header)
        stats = self._stats
        while self._dirty:
            peers, self._dirty = self._dirty, []
            for at, peer in enumerate(peers):
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
                        task = self._pump.run(c._nc.publish(peer.subject, payload))
                    except Exception as exc:
                        # Not taken (the connection went, its buffer is full):
                        # these frames go first when it is tried again.
                        c._log_limited("publish", "publish failed: %r", exc)
                        self._stop(peer, chunks, peers[at + 1 :])
                        if self._retry is None:
                            self._retry = self._loop.call_later(_RETRY, self._retried)
                        return
                    del chunks[:count]
                    stats.batches_out += 1
                    stats.bytes_out += len(payload)
                    if task is not None:  # nats-py waits for its buffer to drain
                        self._busy = task
                        task.add_done_callback(self._unbusy)
                        self._stop(peer, chunks, peers[at + 1 :])
                        return
        self._settle()

    def _stop(self, peer: Peer, chunks: list[bytes], rest: list[Peer]) -> None:
        """Keep what a stopped flush did not publish, in order."""
        if chunks and peer.up:
            peer.chunks[:0] = chunks
            peer.pending += sum(len(c) for c in chunks)
            if not peer.dirty:
                peer.dirty = True
                self._dirty.insert(0, peer)
        self._dirty[len(self._dirty) :] = [p for p in rest if p.dirty]

    def _unbusy(self, task: asyncio.Task[None]) -> None:
        self._busy = None
        if not task.cancelled() and task.exception() is not None:
            self._cluster._log_limited("publish", "publish failed: %r", task.exception())
        self.flush()

    def _retried(self) -> None:
        self._retry = None
        self.flush()

    def _settle(self) -> None:
        if not self._dirty and not self._held and self._busy is None:
            self._drained.set()

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
    """Join frames into payloads of at most ``limit`` bytes after the header
    (a bigger frame goes alone): ``(frames in it, payload)`` each, each built
    with one join."""
    if len(chunks) == 1:
        return [(1, header + chunks[0])]
    out: list[tuple[int, bytes]] = []
    start = 0
    size = 0
    for i, chunk in enumerate(chunks):
        if size and size + len(chunk) > limit:
            out.append((i - start, b"".join((header, *chunks[start:i]))))
            start, size = i, 0
        size += len(chunk)
    if start < len(chunks):
        out.append((len(chunks) - start, b"".join((header, *chunks[start:]))))
    return out
