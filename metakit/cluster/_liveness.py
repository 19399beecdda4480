"""Which nodes of the namespace are up, as this node sees them (DESIGN.md §8, Failure).

Theory of operation
-------------------

Liveness has two parts. Each node publishes a heartbeat on
``mk.<ns>.hb`` every ``heartbeat`` seconds (a hello when it joins, which
every other node answers at once; a bye when it leaves); a peer silent for
``2.75 x heartbeat`` while this node's own connection is up is down, so a
node that crashes or is cut off is down within ``3 x heartbeat``. And the
JetStream KV bucket ``mk-<ns>`` holds a key per node, ``n.<node>``, written
with a TTL of ``3 x heartbeat`` and renewed with each heartbeat: it makes
node names unique (a second node of a taken name fails to start with
``NameTaken``, after waiting out the TTL of a holder that stopped renewing)
and tells a joining node who is there.

The view is ``Cluster._peers``, a :class:`~._peer.NodePeer` per live node,
which only :class:`Liveness` changes: any sign of life (a heartbeat, a
batch) from an unknown node or a new run adds one (a new run downs the old
one first); silence, a bye or a new run takes one out (:meth:`Liveness.down`:
its links and monitors fire, its names go, ``monitor_node`` watchers hear).
A run that said bye stays gone: a late batch of it adds nothing.

While this node's own connection is down no peer is judged (the silence is
ours); past the down time every peer is down. On reconnect every peer's
silence starts over, and its frames are held until it shows it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import TYPE_CHECKING, Any

import nats.js.errors

from ..errors import NameTaken
from ._peer import VERSION, NodePeer, token
from ._wire import WireError

if TYPE_CHECKING:
    from .cluster import Cluster

__all__ = ["BEAT", "BYE", "HELLO", "Liveness"]

HELLO, BEAT, BYE = range(3)
_DOWN_AFTER = 2.75  # heartbeats of silence
_CHECKS = 8  # liveness checks per heartbeat
_EXPECTED_LAST = "Nats-Expected-Last-Subject-Sequence"


class Liveness:
    """The node key, the heartbeats, and the view of live peers of one cluster.

    Args:
        cluster: the attached cluster it serves (its connection, codec, log).
        peers: the view it keeps, ``{node name: NodePeer}`` (the core routes by it).
    """

    def __init__(self, cluster: Cluster, peers: dict[str, Any]) -> None:
        self._cluster = cluster
        self._peers = peers
        self._loop = cluster._loop
        self._log = cluster._log
        self._codec = cluster._codec
        self._stats = cluster._stats
        self.key = f"n.{token(cluster.name)}"
        self._key_subject = f"$KV.{cluster._bucket}.{self.key}"
        self._key_rev = 0
        self._down_after = _DOWN_AFTER * cluster.heartbeat
        self._severed_all = False
        self._gone: dict[tuple[str, int], None] = {}  # runs that said bye

    # -- the node key ---------------------------------------------------------------------

    async def claim_key(self) -> None:
        """Create ``n.<node>`` with a TTL; take over a key whose holder stopped renewing it."""
        c = self._cluster
        value = self._codec.pack([c.name, c.creation, os.getpid()])
        deadline = self._loop.time() + c._ttl + c.heartbeat
        seen = None
        while True:
            latest = await self._latest(self._key_subject)
            if latest is None or latest[1] or latest[2] == c.creation:
                last = latest[0] if latest is not None else 0
                try:
                    self._key_rev = await self._put(self._key_subject, value, last)
                    return
                except nats.js.errors.KeyWrongLastSequenceError:
                    continue  # someone else just wrote it: look again
            rev = latest[0]
            if seen is not None and rev != seen:
                raise NameTaken(c.name, None, f"node {c.name!r} is up in {c.namespace!r}")
            seen = rev
            if self._loop.time() > deadline:
                raise NameTaken(c.name, None, f"node {c.name!r} is up in {c.namespace!r}")
            await asyncio.sleep(c.heartbeat / 2)  # a holder renews each heartbeat

    async def _latest(self, subject: str) -> tuple[int, bool, int | None] | None:
        """(revision, gone, creation) of the last message on a key, or None."""
        c = self._cluster
        try:
            msg = await c._js.get_msg(f"KV_{c._bucket}", subject=subject, direct=False)
        except nats.js.errors.NotFoundError:
            return None
        headers = msg.headers or {}
        gone = headers.get("KV-Operation") in ("DEL", "PURGE") or "Nats-Marker-Reason" in headers
        creation = None
        if not gone:
            with contextlib.suppress(Exception):
                creation = self._cluster._unpack(msg.data)[1]
        return msg.seq, gone, creation

    async def _put(self, subject: str, value: bytes, last: int) -> int:
        try:
            ack = await self._cluster._js.publish(
                subject, value, headers={_EXPECTED_LAST: str(last)}, msg_ttl=self._cluster._ttl
            )
        except nats.js.errors.APIError as err:
            if err.err_code in (10071, 10164):
                raise nats.js.errors.KeyWrongLastSequenceError(description=err.description) from err
            raise
        return int(ack.seq)

    async def load_peers(self) -> None:
        """Add a peer for every node key in the bucket (a joining node's first view)."""
        try:
            keys = [k for k in await self._cluster._kv.keys() if k.startswith("n.")]
        except nats.js.errors.NoKeysError:
            return
        for key in keys:
            if key == self.key:
                continue
            with contextlib.suppress(Exception):
                entry = await self._cluster._kv.get(key)
                name, creation, _ = self._cluster._unpack(entry.value)
                self.seen(name, creation)

    # -- heartbeats -----------------------------------------------------------------------

    async def beat(self, kind: int) -> None:
        """Publish one heartbeat: ``HELLO``, ``BEAT`` or ``BYE``."""
        c = self._cluster
        await c._nc.publish(
            f"{c._prefix}.hb", self._codec.pack([VERSION, c.name, c.creation, kind])
        )

    async def beats(self) -> None:
        """The heartbeat task: a beat and a renewal of the node key each heartbeat."""
        c = self._cluster
        value = self._codec.pack([c.name, c.creation, os.getpid()])
        while not c._leaving:  # (a cancel lost in the NATS client must not keep us beating)
            await asyncio.sleep(c.heartbeat)
            if not c._connected:
                continue
            try:
                await self.beat(BEAT)
                self._key_rev = await self._put(self._key_subject, value, self._key_rev)
            except nats.js.errors.KeyWrongLastSequenceError:
                # The others judged us down (a stall past the limit) and freed our
                # keys: claim the node key again, and our names, groups and events.
                self._log.warning("node key %s changed under us; re-asserting this node", self.key)
                await c._reassert()
            except Exception as exc:
                c._log_limited("beat", "heartbeat failed: %r", exc)

    async def judge(self) -> None:
        """The judging task: down the peers silent past the limit, while our own
        connection is up; every peer once it has been down past the limit."""
        c = self._cluster
        while not c._leaving:
            await asyncio.sleep(c.heartbeat / _CHECKS)
            now = self._loop.time()
            if not c._connected:
                if not self._severed_all and now - c._disconnected_at > self._down_after:
                    self._severed_all = True
                    for peer in list(self._peers.values()):
                        self.down(peer, "noconnection")
                continue
            for peer in list(self._peers.values()):
                if now - peer.last_seen > self._down_after:
                    self.down(peer, "noconnection")

    async def on_heartbeat(self, msg: Any) -> None:
        """A message on ``mk.<ns>.hb`` (the subscription's callback)."""
        c = self._cluster
        try:
            version, name, creation, kind = self._cluster._unpack(msg.data)
            if version != VERSION or not isinstance(name, str) or not isinstance(creation, int):
                raise WireError("not a heartbeat")
        except Exception as exc:
            c._bad("heartbeat", exc)
            return
        if name == c.name:
            return
        if kind == BYE:
            peer = self._peers.get(name)
            if len(self._gone) >= 1024:
                self._gone.clear()
            self._gone[name, creation] = None
            if peer is not None and peer.creation == creation:
                self.down(peer, "stopped")
            return
        fresh = self.seen(name, creation)
        if kind == HELLO or fresh:
            c._spawn(self.beat(BEAT))  # let it see us now, not in a heartbeat

    def reconnected(self) -> None:
        """Our connection is back: no judging the peers for our own outage."""
        now = self._loop.time()
        for peer in self._peers.values():
            peer.last_seen = now
            # Hold its frames until it shows it is back too: published while
            # it is still reconnecting, they would reach no subscriber.
            peer.confirmed = False
        self._severed_all = False

    # -- the view -------------------------------------------------------------------------

    def seen(self, name: str, creation: int) -> bool:
        """Note a sign of life; True if the peer is new (or a new run)."""
        c = self._cluster
        if c._leaving or (name, creation) in self._gone:
            return False
        peer = self._peers.get(name)
        now = self._loop.time()
        if peer is not None:
            if peer.creation == creation:
                peer.last_seen = now
                if not peer.confirmed:
                    c._out.confirm(peer)
                return False
            self.down(peer, "noconnection")  # it restarted: the old run is gone
        subject = f"{c._prefix}.n.{token(name)}"
        c._remote.add_peer(NodePeer(name, creation, subject, now))
        return True

    def down(self, peer: NodePeer, reason: str) -> None:
        """``peer`` is down: out of the view, its links, monitors, calls and
        names undone, ``NodeDown(name, reason)`` to its watchers."""
        if self._peers.get(peer.name) is not peer:
            return
        c = self._cluster
        c._out.forget(peer)
        peer.drop()
        self._stats.nodes_down += 1
        c._remote.sever(peer, reason)
        c._names.node_down(peer.name)
        c._event_names.node_down(peer.name)
        c._groups.node_down(peer.name)
        self._log.info("node %s is down (%s)", peer.name, reason)
