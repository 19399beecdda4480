"""Cluster: the nodes of one namespace, talking over NATS (DESIGN.md §8).

Theory of operation
-------------------

Every node of namespace ``ns`` has one NATS connection and one subject,
``mk.<ns>.n.<node>`` (the node name escaped by :func:`._remote.token`):
whatever any node sends to any actor here arrives on it, so ordering per
sender and receiver is NATS's per-connection order. Frames for a node
queue in its :class:`~._remote.Peer` as they are made (encoding at the
``send``, so an unencodable message raises ``TypeError`` there and nothing
is queued); one flusher task publishes each peer's frames as one NATS
message (or a few, under the server's ``max_payload``) per loop turn, so a
burst of sends costs one publish. A batch starts with a header,
``[version, node, creation]``.

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

Cluster names are keys ``name.<name>`` of the same bucket, claimed with an
atomic create, watched by every node into a local view (``whereis`` never
waits), released by the owner when its process ends and by the survivors
when its node goes down.

While this node's connection is down, frames stay queued (``max_pending``
bytes per peer, then ``MailboxFull``) and no peer is judged; past the
down time every peer is down. On reconnect the node says hello, renews its
key and its names (creating them again on a server that lost its state) and
restarts the names watch, and the queued frames go out in order.

Bad input on the node's subject (garbage, a truncated batch, a frame of
the wrong shape) is counted in :meth:`Cluster.statistics` and logged at
most once a second; the frames before it in the batch still count.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import os
import re
import secrets
import time
import weakref
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import nats
import nats.errors
import nats.js.errors

from .._envelope import Signal
from .._state import EXITING
from ..errors import MailboxFull, NameTaken, NoProcess, ProcessExited
from ..ids import PID, Alias, Ref
from ..mailbox import Mailbox
from ..messages import Down, NodeDown
from ._remote import (
    CALL,
    CANCEL,
    DEMONITOR,
    DOWN,
    EXIT,
    LINK,
    LINK_EXIT,
    MONITOR,
    REPLY,
    SEND,
    SEND_SYS,
    UNLINK,
    Peer,
    token,
)
from ._wire import Codec, WireError

if TYPE_CHECKING:
    from ..node import Node

__all__ = ["Cluster", "ClusterStatistics"]

_VERSION = 1
_HELLO, _BEAT, _BYE = range(3)
_DOWN_AFTER = 2.75  # heartbeats of silence
_CHECKS = 8  # liveness checks per heartbeat
_NAMESPACE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_EXPECTED_LAST = "Nats-Expected-Last-Subject-Sequence"


@dataclass(frozen=True, slots=True)
class ClusterStatistics:
    """A snapshot of one node's cluster traffic (``Cluster.statistics()``).

    Attributes:
        nodes: live nodes in the view, this one included.
        connected: whether the NATS connection is up.
        messages_out: frames queued for other nodes (sends, calls, replies, signals).
        messages_in: frames received and handled.
        batches_out: NATS messages published with frames.
        batches_in: NATS messages received on this node's subject.
        bytes_out: payload bytes published.
        bytes_in: payload bytes received.
        pending_bytes: frames waiting to be published, in bytes, all peers.
        refused: sends refused with ``MailboxFull`` (``max_pending`` reached).
        dropped_noproc: frames for an actor that is not alive here.
        dropped_full: messages a full local mailbox refused.
        bad_input: batches or frames that did not decode or had the wrong shape.
        nodes_down: peers seen going down.
        reconnects: times the NATS connection came back.
    """

    nodes: int
    connected: bool
    messages_out: int
    messages_in: int
    batches_out: int
    batches_in: int
    bytes_out: int
    bytes_in: int
    pending_bytes: int
    refused: int
    dropped_noproc: int
    dropped_full: int
    bad_input: int
    nodes_down: int
    reconnects: int


class _Counters:
    """The running counts behind ClusterStatistics."""

    __slots__ = (
        "_logged",
        "bad_input",
        "batches_in",
        "batches_out",
        "bytes_in",
        "bytes_out",
        "dropped_full",
        "dropped_noproc",
        "messages_in",
        "messages_out",
        "nodes_down",
        "reconnects",
        "refused",
    )

    def __init__(self) -> None:
        self.messages_out = self.messages_in = self.batches_out = self.batches_in = 0
        self.bytes_out = self.bytes_in = self.refused = self.dropped_noproc = 0
        self.dropped_full = self.bad_input = self.nodes_down = self.reconnects = 0
        self._logged: dict[str, float] = {}


class Cluster:
    """Join a node to a namespace of nodes on a NATS server: ``Node(name, cluster=Cluster(url))``.

    ::

        async with local_server() as url:
            async with metakit.Node("a@host", cluster=Cluster(url, namespace="demo")) as a:
                pid = await a.spawn(Pong)
                ...

    Args:
        url: the NATS server(s), ``"nats://127.0.0.1:4222"`` or a list (or
            a started :class:`~metakit.cluster.LocalServer`).
        namespace: nodes see only the nodes, names and traffic of their namespace
            (``[A-Za-z0-9_-]``, at most 64 characters).
        heartbeat: seconds between heartbeats; a node that crashes or is cut
            off is down within ``3 x heartbeat``.
        max_pending: bytes of frames queued per peer while they cannot be
            published (an outage, a slow server); past it ``send`` raises
            ``MailboxFull``.
        **nats_options: passed to ``nats.connect`` (credentials, TLS, ...).

    One Cluster object serves one node.
    """

    def __init__(
        self,
        url: str | list[str] | Any,
        *,
        namespace: str = "metakit",
        heartbeat: float = 1.0,
        max_pending: int = 8 * 1024 * 1024,
        **nats_options: Any,
    ) -> None:
        if not _NAMESPACE.fullmatch(namespace):
            raise ValueError(f"namespace must be 1-64 of [A-Za-z0-9_-], not {namespace!r}")
        if not heartbeat > 0:
            raise ValueError(f"heartbeat must be > 0, not {heartbeat!r}")
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, not {max_pending!r}")
        url = getattr(url, "url", url)  # a LocalServer will do
        self.servers = [url] if isinstance(url, str) else list(url)
        self.namespace = namespace
        self.heartbeat = float(heartbeat)
        self.max_pending = max_pending
        self._nats_options = nats_options
        self._prefix = f"mk.{namespace}"
        self._bucket = f"mk-{namespace}"
        self._codec = Codec()
        self._stats = _Counters()
        self._peers: dict[str, Peer] = {}
        self._dirty: list[Peer] = []
        self._held: list[Peer] = []  # dirty, waiting for the peer to be back (_confirm)
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()  # nothing queued that the flusher has not published
        self._drained.set()
        self._tasks: list[asyncio.Task[Any]] = []
        self._background: set[asyncio.Task[Any]] = set()
        self._node_watchers: dict[str, weakref.WeakSet[Mailbox]] = {}
        # Cluster names: the view of the bucket, and those held here.
        self._names: dict[str, tuple[PID, int]] = {}
        self._owned: dict[str, tuple[Mailbox, int]] = {}
        self._connected = False
        self._disconnected_at = 0.0
        self._severed_all = False
        self._leaving = False
        self._follower: asyncio.Task[None] | None = None
        self._gone: dict[tuple[str, int], None] = {}  # runs that said bye
        self._node: Node | None = None
        self._nc: Any = None
        self._js: Any = None
        self._kv: Any = None
        self._key_rev = 0

    # -- joining and leaving -------------------------------------------------------

    async def attach(self, node: Node) -> None:
        """Join as ``node`` (``Node.start`` calls this).

        Raises:
            NameTaken: a node of this name is up in the namespace.
            OSError, nats.errors.Error: the server cannot be reached.
        """
        if self._node is not None:
            raise RuntimeError("a Cluster serves one node; make one per node")
        self._node = node
        self._loop = asyncio.get_running_loop()
        self.name = node.name
        self.node_pid = node.pid
        self.creation = secrets.randbits(62)
        self._table = node._registry.table
        self._log = node._logger.getChild("cluster")
        self._subject = f"{self._prefix}.n.{token(node.name)}"
        self._header = self._codec.pack([_VERSION, node.name, self.creation])
        self._node_key = f"n.{token(node.name)}"
        self._key_subject = f"$KV.{self._bucket}.{self._node_key}"
        self._ttl = max(1, math.ceil(3 * self.heartbeat))
        self._down_after = _DOWN_AFTER * self.heartbeat
        options = {"max_reconnect_attempts": -1, "reconnect_time_wait": 0.25, **self._nats_options}
        try:
            self._nc = await nats.connect(
                servers=self.servers,
                name=node.name,
                disconnected_cb=self._disconnected,
                reconnected_cb=self._reconnected,
                error_cb=self._error,
                **options,
            )
            self._connected = True
            self._max_frame = self._nc.max_payload - len(self._header) - 64
            self._js = self._nc.jetstream()
            self._kv = await self._bucket_up()
            await self._claim_node_key()
            await self._nc.subscribe(self._subject, cb=self._on_batch)
            await self._nc.subscribe(f"{self._prefix}.hb", cb=self._on_heartbeat)
            await self._load_peers()
            await self._beat(_HELLO)
            await self._watch_names()
        except BaseException:
            await self._close_connection()
            self._node = None
            raise
        node._registry.remote = self
        self._tasks = [
            self._loop.create_task(self._flusher(), name=f"metakit cluster flush {node.name}"),
            self._loop.create_task(self._beats(), name=f"metakit cluster beat {node.name}"),
            self._loop.create_task(self._judge(), name=f"metakit cluster judge {node.name}"),
        ]

    async def leave(self) -> None:
        """Go down for the other nodes (``Node.stop`` calls this before its
        processes end): what was sent goes out, then a bye; every remote link
        and monitor here fires with ``"noconnection"``."""
        if self._node is None or self._leaving:
            return
        self._leaving = True
        for task in self._tasks[1:]:
            task.cancel()
        await self._flushed(2.0)
        if self._connected:
            with contextlib.suppress(Exception):
                await self._beat(_BYE)
        for peer in list(self._peers.values()):
            self._down(peer, "noconnection")

    async def detach(self) -> None:
        """Close the connection (``Node.stop`` calls this once every process has ended)."""
        if self._node is None or self._nc is None:
            return
        await self.leave()
        if self._background:
            await asyncio.wait(list(self._background), timeout=2.0)
        if self._connected:
            with contextlib.suppress(Exception):
                await self._kv.delete(self._node_key)
        self._tasks[0].cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._node._registry.remote = None
        await self._close_connection()
        self._nc = None

    async def _close_connection(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(BaseException):
                await self._follower
            self._follower = None
        watcher = getattr(self, "_names_watcher", None)
        if watcher is not None:
            with contextlib.suppress(Exception):
                await watcher.stop()
        for task in list(self._background):
            task.cancel()
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.drain()
            with contextlib.suppress(Exception):
                await self._nc.close()

    async def _bucket_up(self) -> Any:
        try:
            return await self._js.key_value(self._bucket)
        except nats.js.errors.BucketNotFoundError:
            pass
        with contextlib.suppress(nats.js.errors.BadRequestError):
            # A node racing us to create it: both ask for the same config.
            return await self._js.create_key_value(
                bucket=self._bucket, history=1, limit_marker_ttl=self._ttl
            )
        return await self._js.key_value(self._bucket)

    async def _claim_node_key(self) -> None:
        """Create ``n.<node>`` with a TTL; take over a key whose holder stopped renewing it."""
        value = self._codec.pack([self.name, self.creation, os.getpid()])
        deadline = self._loop.time() + self._ttl + self.heartbeat
        seen = None
        while True:
            latest = await self._latest(self._key_subject)
            if latest is None or latest[1] or latest[2] == self.creation:
                last = latest[0] if latest is not None else 0
                try:
                    self._key_rev = await self._put(self._key_subject, value, last)
                    return
                except nats.js.errors.KeyWrongLastSequenceError:
                    continue  # someone else just wrote it: look again
            rev = latest[0]
            if seen is not None and rev != seen:
                raise NameTaken(self.name, None, f"node {self.name!r} is up in {self.namespace!r}")
            seen = rev
            if self._loop.time() > deadline:
                raise NameTaken(self.name, None, f"node {self.name!r} is up in {self.namespace!r}")
            await asyncio.sleep(self.heartbeat / 2)  # a holder renews each heartbeat

    async def _latest(self, subject: str) -> tuple[int, bool, int | None] | None:
        """(revision, gone, creation) of the last message on a key, or None."""
        try:
            msg = await self._js.get_msg(f"KV_{self._bucket}", subject=subject, direct=False)
        except nats.js.errors.NotFoundError:
            return None
        headers = msg.headers or {}
        gone = headers.get("KV-Operation") in ("DEL", "PURGE") or "Nats-Marker-Reason" in headers
        creation = None
        if not gone:
            with contextlib.suppress(Exception):
                creation = self._unpack(msg.data)[1]
        return msg.seq, gone, creation

    async def _put(self, subject: str, value: bytes, last: int) -> int:
        try:
            ack = await self._js.publish(
                subject, value, headers={_EXPECTED_LAST: str(last)}, msg_ttl=self._ttl
            )
        except nats.js.errors.APIError as err:
            if err.err_code in (10071, 10164):
                raise nats.js.errors.KeyWrongLastSequenceError(description=err.description) from err
            raise
        return int(ack.seq)

    async def _load_peers(self) -> None:
        try:
            keys = [k for k in await self._kv.keys() if k.startswith("n.")]
        except nats.js.errors.NoKeysError:
            return
        for key in keys:
            if key == self._node_key:
                continue
            with contextlib.suppress(Exception):
                entry = await self._kv.get(key)
                name, creation, _ = self._unpack(entry.value)
                self._seen(name, creation)

    # -- heartbeats and the view ------------------------------------------------------

    async def _beat(self, kind: int) -> None:
        await self._nc.publish(
            f"{self._prefix}.hb", self._codec.pack([_VERSION, self.name, self.creation, kind])
        )

    async def _beats(self) -> None:
        value = self._codec.pack([self.name, self.creation, os.getpid()])
        while True:
            await asyncio.sleep(self.heartbeat)
            if not self._connected:
                continue
            try:
                await self._beat(_BEAT)
                self._key_rev = await self._put(self._key_subject, value, self._key_rev)
            except nats.js.errors.KeyWrongLastSequenceError:
                self._log.warning("node key %s changed under us; claiming it again", self._node_key)
                with contextlib.suppress(Exception):
                    await self._claim_node_key()
            except Exception as exc:
                self._log_limited("beat", "heartbeat failed: %r", exc)

    async def _judge(self) -> None:
        """Down the peers silent past the limit, while our own connection is up."""
        while True:
            await asyncio.sleep(self.heartbeat / _CHECKS)
            now = self._loop.time()
            if not self._connected:
                if not self._severed_all and now - self._disconnected_at > self._down_after:
                    self._severed_all = True
                    for peer in list(self._peers.values()):
                        self._down(peer, "noconnection")
                continue
            for peer in list(self._peers.values()):
                if now - peer.last_seen > self._down_after:
                    self._down(peer, "noconnection")

    async def _on_heartbeat(self, msg: Any) -> None:
        try:
            version, name, creation, kind = self._unpack(msg.data)
            if version != _VERSION or not isinstance(name, str) or not isinstance(creation, int):
                raise WireError("not a heartbeat")
        except Exception as exc:
            self._bad("heartbeat", exc)
            return
        if name == self.name:
            return
        if kind == _BYE:
            peer = self._peers.get(name)
            if len(self._gone) >= 1024:
                self._gone.clear()
            self._gone[name, creation] = None
            if peer is not None and peer.creation == creation:
                self._down(peer, "stopped")
            return
        fresh = self._seen(name, creation)
        if kind == _HELLO or fresh:
            self._spawn(self._beat(_BEAT))  # let it see us now, not in a heartbeat

    def _seen(self, name: str, creation: int) -> bool:
        """Note a sign of life; True if the peer is new (or a new run)."""
        if self._leaving or (name, creation) in self._gone:
            return False
        peer = self._peers.get(name)
        now = self._loop.time()
        if peer is not None:
            if peer.creation == creation:
                peer.last_seen = now
                if not peer.confirmed:
                    self._confirm(peer)
                return False
            self._down(peer, "noconnection")  # it restarted: the old run is gone
        subject = f"{self._prefix}.n.{token(name)}"
        self._peers[name] = Peer(name, creation, subject, now)
        return True

    def _down(self, peer: Peer, reason: str) -> None:
        if self._peers.get(peer.name) is not peer:
            return
        del self._peers[peer.name]
        if peer in self._held:
            self._held.remove(peer)
        self._stats.nodes_down += 1
        peer.sever("noconnection", ProcessExited, self.node_pid)
        for name, (pid, rev) in list(self._names.items()):
            if pid.node == peer.name:
                del self._names[name]
                self._spawn(self._release_key(name, rev))
        watchers = self._node_watchers.pop(peer.name, None)
        for watcher in list(watchers or ()):
            watcher._mk_deliver_system(self.node_pid, NodeDown(peer.name, reason))
        self._log.info("node %s is down (%s)", peer.name, reason)

    def nodes(self) -> list[str]:
        """The live nodes of the namespace, this one included, sorted."""
        return sorted([self.name, *self._peers])

    def monitor_node(self, watcher: Mailbox, name: str) -> None:
        """Deliver ``NodeDown(name, reason)`` to ``watcher`` once ``name`` is down."""
        if name == self.name:
            return
        if name not in self._peers:
            watcher._mk_deliver_system(self.node_pid, NodeDown(name, "noconnection"))
            return
        self._node_watchers.setdefault(name, weakref.WeakSet()).add(watcher)

    def demonitor_node(self, watcher: Mailbox, name: str) -> None:
        """Withdraw :meth:`monitor_node`."""
        watchers = self._node_watchers.get(name)
        if watchers is not None:
            watchers.discard(watcher)

    # -- the connection's moods -----------------------------------------------------------

    async def _disconnected(self) -> None:
        if self._connected:
            self._connected = False
            self._disconnected_at = self._loop.time()
            if self._nc is not None and not self._nc.is_closed and not self._nc.is_draining:
                self._log.warning("lost the NATS connection; holding traffic for other nodes")

    async def _reconnected(self) -> None:
        self._connected = True
        self._stats.reconnects += 1
        now = self._loop.time()
        for peer in self._peers.values():
            peer.last_seen = now  # no judging them for our own outage
            # Hold its frames until it shows it is back too: published while
            # it is still reconnecting, they would reach no subscriber.
            peer.confirmed = False
        self._severed_all = False
        self._log.info("NATS connection back; re-asserting this node")
        self._spawn(self._reassert())
        self._wake.set()

    async def _error(self, exc: Exception) -> None:
        self._log_limited("nats", "NATS: %r", exc)

    async def _reassert(self) -> None:
        """After a reconnect: hello, the node key, our names, the names watch."""
        try:
            await self._beat(_HELLO)
            self._kv = await self._bucket_up()
            await self._claim_node_key()
            for name, (proc, _rev) in list(self._owned.items()):
                await self._reclaim(name, proc)
            await self._watch_names()
        except Exception as exc:
            self._log.warning("re-asserting after a reconnect failed: %r", exc)

    # -- sending --------------------------------------------------------------------------

    def queue(self, peer: Peer, frame: tuple[Any, ...], target: Any, system: bool = False) -> None:
        """Encode ``frame`` for ``peer``'s next batch.

        Raises:
            TypeError: something in it does not cross a node boundary; nothing queued.
            MailboxFull: ``max_pending`` bytes wait for that peer already.
        """
        data = self._codec.pack(frame)
        if len(data) > self._max_frame:
            raise ValueError(
                f"{len(data)} bytes encoded; the NATS server takes {self._max_frame} at most"
            )
        if not system and peer.pending + len(data) > self.max_pending:
            self._stats.refused += 1
            raise MailboxFull(target, self.max_pending, "bytes")
        self._add(peer, data)

    def queue_system(self, peer: Peer, frame: tuple[Any, ...]) -> None:
        """Queue a signal, link or monitor frame: never refused; an unencodable
        reason travels as its repr."""
        try:
            data = self._codec.pack(frame)
        except TypeError:
            frame = (*frame[:-1], repr(frame[-1]))
            data = self._codec.pack(frame)
        if len(data) > self._max_frame:  # a huge exit reason: its repr, cut
            frame = (*frame[:-1], repr(frame[-1])[:1024])
            data = self._codec.pack(frame)
        self._add(peer, data)

    def _add(self, peer: Peer, data: bytes) -> None:
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

    def call(self, peer: Peer, target: PID | Alias, pid: PID, request: Any) -> asyncio.Future[Any]:
        """Queue a call; the future its reply (or its node's death) settles."""
        peer.next_cid += 1
        cid = peer.next_cid
        self.queue(peer, (CALL, target.id, pid.id, cid, request), target)
        future: asyncio.Future[Any] = self._loop.create_future()
        peer.calls[cid] = (future, target)
        future.add_done_callback(functools.partial(self._call_done, peer, cid))
        return future

    def _call_done(self, peer: Peer, cid: int, future: asyncio.Future[Any]) -> None:
        entry = peer.calls.pop(cid, None)
        if entry is not None:  # ended with no reply: timed out or cancelled
            self.queue_system(peer, (CANCEL, entry[1].id, cid))

    def _confirm(self, peer: Peer) -> None:
        """A peer held since our reconnect has shown it is back: send what waits."""
        peer.confirmed = True
        if peer in self._held:
            self._held.remove(peer)
            self._dirty.append(peer)
            self._wake.set()

    async def _flusher(self) -> None:
        header = self._header
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._connected:
                continue
            limit = self._nc.max_payload - len(header)
            failed = False
            while self._dirty and self._connected and not failed:
                peers, self._dirty = self._dirty, []
                for peer in peers:
                    if not peer.up:
                        continue
                    if not peer.confirmed:
                        self._held.append(peer)  # stays dirty: _confirm moves it back
                        continue
                    chunks, peer.chunks = peer.chunks, []
                    peer.pending = 0
                    peer.dirty = False
                    for count, payload in _batches(header, chunks, limit):
                        try:
                            await self._nc.publish(peer.subject, payload)
                        except Exception as exc:
                            # Not taken (the connection went, its buffer is full):
                            # these frames go first once it is back.
                            self._log_limited("publish", "publish failed: %r", exc)
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

    async def _flushed(self, timeout: float) -> None:
        """Wait until the frames queued so far are handed to the connection."""
        deadline = self._loop.time() + timeout
        if self._connected:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), timeout)
        with contextlib.suppress(Exception):
            await self._nc.flush(timeout=max(0.1, deadline - self._loop.time()))

    # -- receiving ------------------------------------------------------------------------

    async def _on_batch(self, msg: Any) -> None:
        data = msg.data
        stats = self._stats
        stats.batches_in += 1
        stats.bytes_in += len(data)
        frames: Iterator[Any] = self._codec.frames(data)
        try:
            version, name, creation = next(frames)
            if version != _VERSION or not isinstance(name, str) or not isinstance(creation, int):
                raise WireError("not a batch header")
        except Exception as exc:
            self._bad("batch", exc)
            return
        peer = self._peers.get(name)
        if peer is None or peer.creation != creation:
            self._seen(name, creation)
            peer = self._peers.get(name)
            if peer is None or peer.creation != creation:
                return  # a run that said bye, or this node is leaving
        else:
            peer.last_seen = self._loop.time()
            if not peer.confirmed:
                self._confirm(peer)
        handlers = self._handlers
        try:
            for frame in frames:
                try:
                    handlers[frame[0]](self, peer, frame)
                except (IndexError, KeyError, TypeError, ValueError, AttributeError) as exc:
                    self._bad("frame", exc)
                    continue
                stats.messages_in += 1
        except WireError as exc:
            self._bad("batch", exc)

    def _target(self, tid: int) -> Mailbox | None:
        target = self._table.get(tid)
        if target is None:
            self._stats.dropped_noproc += 1
            self._log_limited("noproc", "dropped frames for actors not alive here (%d)", tid)
        return target

    def _on_send(self, peer: Peer, frame: tuple[Any, ...]) -> None:
        _, tid, sid, message = frame
        target = self._target(tid)
        if target is None:
            return
        try:
            target._mk_post(peer.sender(sid), message)
        except (MailboxFull, NoProcess):
            self._stats.dropped_full += 1
            self._log_limited("full", "dropped messages a full mailbox refused (%r)", target)

    def _on_send_system(self, peer: Peer, frame: tuple[Any, ...]) -> None:
        _, tid, sid, message = frame
        target = self._target(tid)
        if target is not None:
            target._mk_deliver_system(peer.sender(sid), message)

    def _on_call(self, peer: Peer, frame: tuple[Any, ...]) -> None:
        _, tid, sid, cid, request = frame
        target = self._table.get(tid)
        if target is None:
            self.queue_system(peer, (REPLY, cid, 2, None))
            return
        try:
            future = target._mk_call(peer.sender(sid), request)
        except Exception as exc:
            self.queue_system(peer, (REPLY, cid, 0, exc))
            return
        peer.incoming[cid] = future
        future.add_done_callback(functools.partial(self._answer, peer, cid))

    def _answer(self, peer: Peer, cid: int, future: asyncio.Future[Any]) -> None:
        if peer.incoming.pop(cid, None) is None or future.cancelled():
            return  # its node is down, or its caller gave up
        exc = future.exception()
        if exc is None:
            try:
                self.queue(peer, (REPLY, cid, 1, future.result()), None, system=True)
                return
            except TypeError as err:
                exc = TypeError(f"the reply does not cross a node boundary: {err}")
        self.queue_system(peer, (REPLY, cid, 0, exc))

    def _on_reply(self, peer: Peer, frame: tuple[Any, ...]) -> None:
        _, cid, status, value = frame
        entry = peer.calls.pop(cid, None)
        if entry is None:
            return  # late: the caller gave up
        future, target = entry
        if future.done():
            return
        if status == 1:
            future.set_result(value)
        elif status == 2:
            future.set_exception(NoProcess(target))
        elif isinstance(value, Exception):
            future.set_exception(value)
        else:
            future.set_exception(ProcessExited(target, value))

    def _on_cancel(self, peer: Peer, frame: tuple[Any, ...]) -> None:
        _, _tid, cid = frame
        future = peer.incoming.pop(cid, None)
        if future is not None and not future.done():
            future.cancel()

    def _on_exit(self, peer: Peer, frame: tuple[Any, ...]) -> None:
        _, tid, sid, reason = frame
        target = self._target(tid)
        if target is not None:
            sender = peer.sender(sid)
            target._mk_signal(Signal(sender, sender, reason))

    def _on_link(self, peer: Peer, frame: tuple[Any, ...]) -> None:
        _, ident, source = frame
        _ident(ident, self.name)
        _ident(source, peer.name)
        remote = peer.ref(self, source)
        local = self._table.get(ident.id)
        if local is None:
            self.queue_system(peer, (LINK_EXIT, source.id, ident, "noproc"))
            return
        if local._mk_links is None:
            local._mk_links = set()
        if remote._mk_links is None:
            remote._mk_links = set()
        local._mk_links.add(remote)
        remote._mk_links.add(local)

    def _on_unlink(self, peer: Peer, frame: tuple[Any, ...]) -> None:
        _, tid, sid = frame
        remote = peer.refs.get(peer.sender(sid))
        local = self._table.get(tid)
        if remote is not None and local is not None:
            if local._mk_links:
                local._mk_links.discard(remote)
            if remote._mk_links:
                remote._mk_links.discard(local)

    def _on_link_exit(self, peer: Peer, frame: tuple[Any, ...]) -> None:
        _, tid, source, reason = frame
        _ident(source, peer.name)
        remote = peer.refs.get(source)
        local = self._table.get(tid)
        if remote is None or local is None or not remote._mk_links or local not in remote._mk_links:
            return  # unlinked meanwhile, or the link was never made
        remote._mk_links.discard(local)
        if local._mk_links:
            local._mk_links.discard(remote)
        sender = source if source.__class__ is PID else self.node_pid
        local._mk_signal(Signal(source, sender, reason, link=True))

    def _on_monitor(self, peer: Peer, frame: tuple[Any, ...]) -> None:
        _, ident, watcher_ident, ref_id = frame
        _ident(ident, self.name)
        _ident(watcher_ident, peer.name)
        local = self._table.get(ident.id)
        if local is None:
            self.queue_system(peer, (DOWN, watcher_ident.id, ident, ref_id, "noproc"))
            return
        ref = Ref(peer.name, int(ref_id))
        watcher = peer.ref(self, watcher_ident)
        if local._mk_monitors is None:
            local._mk_monitors = {}
        local._mk_monitors[ref] = watcher
        if watcher._mk_watching is None:
            watcher._mk_watching = {}
        watcher._mk_watching[ref] = local

    def _on_demonitor(self, peer: Peer, frame: tuple[Any, ...]) -> None:
        _, tid, ref_id = frame
        ref = Ref(peer.name, int(ref_id))
        local = self._table.get(tid)
        if local is not None and local._mk_monitors:
            watcher = local._mk_monitors.pop(ref, None)
            if watcher is not None and watcher._mk_watching:
                watcher._mk_watching.pop(ref, None)

    def _on_down(self, peer: Peer, frame: tuple[Any, ...]) -> None:
        _, wid, target, ref_id, reason = frame
        _ident(target, peer.name)
        ref = Ref(self.name, int(ref_id))
        watcher = self._table.get(wid)
        remote = peer.refs.get(target)
        if remote is not None and remote._mk_monitors:
            remote._mk_monitors.pop(ref, None)
        if watcher is None or not watcher._mk_watching or ref not in watcher._mk_watching:
            return  # demonitored meanwhile
        del watcher._mk_watching[ref]
        sender = target if target.__class__ is PID else self.node_pid
        watcher._mk_deliver_system(sender, Down(target, ref, reason))

    _handlers: ClassVar[dict[int, Any]] = {
        SEND: _on_send,
        SEND_SYS: _on_send_system,
        CALL: _on_call,
        REPLY: _on_reply,
        CANCEL: _on_cancel,
        EXIT: _on_exit,
        LINK: _on_link,
        UNLINK: _on_unlink,
        LINK_EXIT: _on_link_exit,
        MONITOR: _on_monitor,
        DEMONITOR: _on_demonitor,
        DOWN: _on_down,
    }

    # -- routing (the registry's Router) -----------------------------------------------------

    def route(self, to: PID | Alias) -> Mailbox | None:
        """The stand-in for ``to`` if its node is up, else None."""
        peer = self._peers.get(to.node)
        if peer is None:
            return None
        return peer.ref(self, to)

    def route_name(self, name: str) -> Mailbox | None:
        """The stand-in for the holder of cluster name ``name``, or None."""
        held = self._names.get(name)
        return self.route(held[0]) if held is not None else None

    def whereis(self, name: str) -> PID | None:
        """The holder of cluster name ``name`` on a live node, or None."""
        held = self._names.get(name)
        if held is None or (held[0].node != self.name and held[0].node not in self._peers):
            return None
        return held[0]

    # -- cluster names ---------------------------------------------------------------------

    def register_name(self, name: str, pid: PID) -> Awaitable[None]:
        """Claim ``name`` for local process ``pid`` across the namespace.

        What ``Node.register_name(name, pid, cluster=True)`` does.
        """
        registry = self._node._registry  # type: ignore[union-attr]
        registry.register(name, pid)  # the local checks raise here; a local name shadows
        proc = registry.table[pid.id]
        return self._loop.create_task(self._claim(name, proc))

    async def _claim(self, name: str, proc: Mailbox) -> None:
        key = f"name.{token(name)}"
        value = self._codec.pack([name, self.name, self.creation, proc._mk_ident.id])
        try:
            rev = await self._take_stale(key, name, value)
        except BaseException:
            self._unclaim(name, proc)
            raise
        if rev is None:
            held = self._names.get(name)
            self._unclaim(name, proc)
            raise NameTaken(name, held[0] if held else None)
        if getattr(proc, "_mk_name", None) != name or proc._mk_state >= EXITING:
            await self._release_key(name, rev)  # it ended, or dropped the name, meanwhile
            return
        self._owned[name] = (proc, rev)
        self._names[name] = (proc._mk_ident, rev)  # type: ignore[assignment]

    async def _take_stale(self, key: str, name: str, value: bytes) -> int | None:
        """Create ``key``, or take it over from a holder whose node is not up;
        None if its holder is up. Retries the races with a concurrent release."""
        for _ in range(5):
            try:
                return int(await self._kv.create(key, value))
            except nats.js.errors.KeyWrongLastSequenceError:
                pass
            try:
                entry = await self._kv.get(key)
            except nats.js.errors.KeyNotFoundError:
                continue  # released meanwhile: create it
            holder, creation = self._unpack(entry.value)[1:3]
            peer = self._peers.get(holder)
            if (peer is not None and peer.creation == creation) or (
                holder == self.name and creation == self.creation
            ):
                return None
            try:
                return int(await self._kv.update(key, value, last=entry.revision))
            except nats.js.errors.KeyWrongLastSequenceError:
                continue
        return None

    def _unclaim(self, name: str, proc: Mailbox) -> None:
        registry = self._node._registry  # type: ignore[union-attr]
        if registry.names.get(name) is proc:
            del registry.names[name]
            proc._mk_name = None

    async def _reclaim(self, name: str, proc: Mailbox) -> None:
        key = f"name.{token(name)}"
        value = self._codec.pack([name, self.name, self.creation, proc._mk_ident.id])
        try:
            entry = await self._kv.get(key)
            holder, creation = self._unpack(entry.value)[1:3]
            if holder == self.name and creation == self.creation:
                self._owned[name] = (proc, entry.revision)
                return
            rev = await self._take_stale(key, name, value)
        except nats.js.errors.KeyNotFoundError:
            rev = await self._kv.create(key, value)
        if rev is None:
            self._log.warning("cluster name %r is held elsewhere now; dropping it here", name)
            self._owned.pop(name, None)
            self._unclaim(name, proc)
        else:
            self._owned[name] = (proc, rev)

    def released(self, name: str, proc: Mailbox) -> None:
        """A local process dropped (or died with) ``name``: free the key."""
        owned = self._owned.get(name)
        if owned is not None and owned[0] is proc:
            del self._owned[name]
            self._names.pop(name, None)
            self._spawn(self._release_key(name, owned[1]))

    async def _release_key(self, name: str, rev: int) -> None:
        with contextlib.suppress(Exception):
            await self._kv.delete(f"name.{token(name)}", last=rev)

    async def _watch_names(self) -> None:
        old = getattr(self, "_names_watcher", None)
        if old is not None:
            with contextlib.suppress(Exception):
                await old.stop()
        watcher = self._names_watcher = await self._kv.watch("name.>")
        view: dict[str, tuple[PID, int]] = {}
        while True:  # the current keys, up to the marker
            entry = await watcher.updates(timeout=10.0)
            if entry is None:
                break
            self._apply_name(view, entry)
        self._names = view
        for name, (proc, rev) in self._owned.items():
            view.setdefault(name, (proc._mk_ident, rev))  # type: ignore[arg-type]
        if self._follower is not None:
            self._follower.cancel()
        self._follower = self._loop.create_task(self._follow_names(watcher))

    async def _follow_names(self, watcher: Any) -> None:
        with contextlib.suppress(Exception):
            async for entry in watcher:
                if entry is not None:
                    self._apply_name(self._names, entry)

    def _apply_name(self, view: dict[str, tuple[PID, int]], entry: Any) -> None:
        if entry.operation in ("DEL", "PURGE"):
            for name in list(view):
                if entry.key == f"name.{token(name)}":
                    del view[name]
            return
        try:
            name, node, _creation, ident = self._unpack(entry.value)
            view[name] = (PID(node, ident), entry.revision)
        except Exception as exc:
            self._bad("name", exc)

    # -- small things ----------------------------------------------------------------------

    def _unpack(self, data: bytes) -> Any:
        return self._codec.unpack(data)

    def _spawn(self, coro: Any) -> None:
        task = self._loop.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _bad(self, what: str, exc: BaseException) -> None:
        self._stats.bad_input += 1
        self._log_limited("bad", f"bad input ({what}) on the cluster subject: %r", exc)

    def _log_limited(self, kind: str, text: str, *args: Any) -> None:
        now = time.monotonic()
        logged = self._stats._logged
        if now - logged.get(kind, -2.0) >= 1.0:
            logged[kind] = now
            self._log.warning(text, *args)

    def statistics(self) -> ClusterStatistics:
        """A snapshot of this node's cluster traffic."""
        s = self._stats
        return ClusterStatistics(
            nodes=1 + len(self._peers),
            connected=self._connected,
            messages_out=s.messages_out,
            messages_in=s.messages_in,
            batches_out=s.batches_out,
            batches_in=s.batches_in,
            bytes_out=s.bytes_out,
            bytes_in=s.bytes_in,
            pending_bytes=sum(p.pending for p in self._peers.values()),
            refused=s.refused,
            dropped_noproc=s.dropped_noproc,
            dropped_full=s.dropped_full,
            bad_input=s.bad_input,
            nodes_down=s.nodes_down,
            reconnects=s.reconnects,
        )

    def __repr__(self) -> str:
        return f"<Cluster {self.namespace!r} on {self.servers[0]!r}, {len(self._peers) + 1} nodes>"


def _ident(value: Any, node: str) -> None:
    """Check that a decoded ident is a PID or Alias of ``node`` (else the frame is bad)."""
    if (value.__class__ is not PID and value.__class__ is not Alias) or value.node != node:
        raise ValueError(f"not an ident of {node!r}: {value!r}")


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
