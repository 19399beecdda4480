"""Cluster: the nodes of one namespace, talking over NATS (DESIGN.md §8).

Theory of operation
-------------------

Every node of namespace ``ns`` has one NATS connection and one subject,
``mk.<ns>.n.<node>`` (the node name escaped by :func:`._peer.token`):
whatever any node sends to any actor here arrives on it, so ordering per
sender and receiver is NATS's per-connection order. The core's half of a
cluster is :mod:`metakit._remote` (stand-ins for remote actors, what frames
do here, node watches); this package is its transport
(:class:`~metakit._remote.Transport`). What the core does to an actor of
another node becomes a frame for its node's :class:`~._peer.NodePeer`
through :meth:`Cluster.queue` (sends and calls: encoded at the ``send``, so
an unencodable message raises ``TypeError`` there and nothing is queued) or
:meth:`Cluster.queue_system` (signals, links, monitors: never refused).

:class:`Cluster` owns the connection and drives the parts, one module each:

* :mod:`._outbound`: the queued frames, published as one batch per peer
  per loop turn (and the first frame of a turn at once);
* :mod:`._inbound`: the batches that arrive here, decoded and handed to the core;
* :mod:`._liveness`: heartbeats, the node key (unique node names), the
  view of live peers (``Cluster._peers``) and who is judged down when;
* :mod:`._names`: cluster names (of processes, and of events), keys of
  the namespace's KV bucket ``mk-<ns>``, and the watch that keeps a local
  view of them;
* :mod:`._groups`: process groups, one key per group and node;
* :mod:`._singleton`: singletons under a KV lease;
* :mod:`._peer`: what is kept per peer, and node names as subject tokens.

The connection's moods live here. While this node's connection is down,
frames stay queued (``max_pending`` bytes per peer, then ``MailboxFull``)
and no peer is judged; past the down time every peer is down. On reconnect
the node says hello, renews its key and its names (creating them again on a
server that lost its state) and restarts the names watch, and the queued
frames go out in order.

Leaving is in two steps, around the node's processes ending: :meth:`leave`
publishes what was sent and a bye, and downs every peer here (every remote
link and monitor fires with ``"noconnection"``; their names stay theirs);
:meth:`detach`, once the processes have ended, waits for their names' keys
to be freed, deletes the node key and closes the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import secrets
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import nats
import nats.errors
import nats.js.errors

from .._remote import Remote
from ..errors import MailboxFull
from ..ids import PID
from ..mailbox import Mailbox
from ._groups import ClusterGroups
from ._inbound import Inbound
from ._liveness import BYE, HELLO, Liveness
from ._names import Names
from ._outbound import Outbound
from ._peer import VERSION, token
from ._singleton import Singleton
from ._wire import Codec

if TYPE_CHECKING:
    from ..node import Node

__all__ = ["Cluster", "ClusterStatistics"]

_NAMESPACE = re.compile(r"[A-Za-z0-9_-]{1,64}")


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
        self._peers: dict[str, Any] = {}  # the live NodePeers: the core's, kept by _liveness
        self._tasks: list[asyncio.Task[Any]] = []
        self._background: set[asyncio.Task[Any]] = set()
        self._connected = False
        self._disconnected_at = 0.0
        self._leaving = False
        self._singletons: list[Singleton] = []
        self._node: Node | None = None
        self._nc: Any = None
        self._js: Any = None
        self._kv: Any = None

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled as its settings (what a worker process of metakit.run needs);
        # a Cluster that has joined belongs to its node.
        if self._node is not None:
            raise TypeError("a Cluster that has joined a node cannot be pickled")
        options = {
            "namespace": self.namespace,
            "heartbeat": self.heartbeat,
            "max_pending": self.max_pending,
            **self._nats_options,
        }
        return (_rebuild, (self.servers, options))

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
        self._header = self._codec.pack([VERSION, node.name, self.creation])
        self._ttl = max(1, math.ceil(3 * self.heartbeat))
        # How long a restarted watch keeps a live peer's names and members for
        # it to re-assert: it shows life within 2.75 heartbeats of our
        # reconnect or is down, then writes its keys in a few round trips.
        self._carry_for = self._ttl + self.heartbeat
        self._remote = Remote(node, self)
        self._peers = self._remote.peers
        self._liveness = Liveness(self, self._peers)
        self._names = Names(self, self._remote)
        self._event_names = Names(self, self._remote.event_claims, "e", "cluster event")
        self._groups = ClusterGroups(self)
        self._out = Outbound(self)
        self._inbound = Inbound(self)
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
            await self._liveness.claim_key()
            await self._nc.subscribe(self._subject, cb=self._inbound.on_batch)
            await self._nc.subscribe(f"{self._prefix}.hb", cb=self._liveness.on_heartbeat)
            await self._liveness.load_peers()
            await self._liveness.beat(HELLO)
            await self._names.watch()
            await self._event_names.watch()
            await self._groups.watch()
        except BaseException:
            await self._close_connection()
            self._node = None
            raise
        self._remote.install(self._groups)
        work = {
            "beat": self._liveness.beats(),
            "judge": self._liveness.judge(),
        }
        self._tasks = [
            self._loop.create_task(coro, name=f"metakit cluster {what} {node.name}")
            for what, coro in work.items()
        ]

    async def leave(self) -> None:
        """Go down for the other nodes (``Node.stop`` calls this before its
        processes end): what was sent goes out, then a bye; every remote link
        and monitor here fires with ``"noconnection"``."""
        if self._node is None or self._leaving:
            return
        self._leaving = True
        for singleton in self._singletons:
            await singleton.close()  # another node may start it now
        for task in self._tasks:
            task.cancel()
        # Bounded: a cancel that the NATS client swallows must not hang the stop
        # (the loops also end on _leaving).
        await asyncio.wait(self._tasks, timeout=2.0)
        await self._out.flushed(2.0)
        if self._connected:
            with contextlib.suppress(Exception):
                await self._liveness.beat(BYE)
        for peer in list(self._peers.values()):
            self._liveness.down(peer, "noconnection")

    async def detach(self) -> None:
        """Close the connection (``Node.stop`` calls this once every process has ended)."""
        if self._node is None or self._nc is None:
            return
        await self.leave()
        if self._background:
            await asyncio.wait(list(self._background), timeout=2.0)
        if self._connected:
            with contextlib.suppress(Exception):
                await self._groups.delete_own()
                await self._kv.delete(self._liveness.key)
        self._out.close()
        self._remote.uninstall()
        await self._close_connection()
        self._nc = None

    async def _close_connection(self) -> None:
        await self._names.close()
        await self._event_names.close()
        await self._groups.close()
        for task in list(self._background):
            task.cancel()
        if self._nc is not None:
            if self._connected:  # draining a connection that is down waits for nothing
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._nc.drain(), 2.0)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._nc.close(), 2.0)

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
        self._liveness.reconnected()
        self._log.info("NATS connection back; re-asserting this node")
        self._spawn(self._reassert())
        self._out.wake()

    async def _error(self, exc: Exception) -> None:
        self._log_limited("nats", "NATS: %r", exc)

    async def _reassert(self) -> None:
        """After a reconnect: hello, the node key, our names, the names watch."""
        try:
            await self._liveness.beat(HELLO)
            self._kv = await self._bucket_up()
            await self._liveness.claim_key()
            await self._names.reclaim()
            await self._names.watch()
            await self._event_names.reclaim()
            await self._event_names.watch()
            await self._groups.reassert()
            await self._groups.watch()
        except Exception as exc:
            self._log.warning("re-asserting after a reconnect failed: %r", exc)

    # -- sending --------------------------------------------------------------------------

    def queue(self, peer: Any, frame: tuple[Any, ...], target: Any, system: bool = False) -> None:
        """Encode ``frame`` for ``peer``'s next batch.

        Raises:
            TypeError: something in it does not cross a node boundary; nothing queued.
            ValueError: it is bigger than the server's ``max_payload``; nothing queued.
            MailboxFull: ``max_pending`` bytes wait for that peer already.
        """
        data = self._encode(frame)
        if not system and peer.pending + len(data) > self.max_pending:
            self._stats.refused += 1
            raise MailboxFull(target, self.max_pending, "bytes")
        self._out.add(peer, data)

    def _encode(self, frame: tuple[Any, ...]) -> bytes:
        data = self._codec.pack(frame)
        if len(data) > self._max_frame:
            raise ValueError(
                f"{len(data)} bytes encoded; the NATS server takes {self._max_frame} at most"
            )
        return data

    def queue_many(self, peers: list[Any], frame: tuple[Any, ...], target: Any) -> None:
        """Encode ``frame`` once and queue it for each of ``peers`` (a
        ``send_group``); a peer with ``max_pending`` waiting misses it (counted).

        Raises:
            TypeError, ValueError: as :meth:`queue`; nothing queued.
        """
        data = self._encode(frame)
        for peer in peers:
            if peer.pending + len(data) > self.max_pending:
                self._stats.refused += 1
                continue
            self._out.add(peer, data)

    def queue_system(self, peer: Any, frame: tuple[Any, ...]) -> None:
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
        self._out.add(peer, data)

    def holder(self, name: str) -> PID | None:
        """The holder of cluster name ``name`` in this node's view, or None."""
        return self._names.holder(name)

    def event_producer(self, name: str) -> PID | None:
        """The producer of cluster event ``name`` in this node's view, or None."""
        return self._event_names.holder(name)

    # -- names and nodes ------------------------------------------------------------------

    def register_name(self, name: str, pid: PID) -> Awaitable[None]:
        """Claim ``name`` for local process ``pid`` across the namespace.

        What ``Node.register_name(name, pid, cluster=True)`` does.
        """
        return self._names.register(name, pid)

    def released(self, name: str) -> None:
        """The local holder of ``name`` dropped it or ended: free the key."""
        self._names.released(name)

    def register_event(self, name: str, pid: PID) -> Awaitable[None]:
        """Make local process ``pid`` the producer of event ``name`` across the
        namespace (``Process.register_event(name, cluster=True)``).

        Raises:
            NameTaken: this node has the event (here), or another (when awaited).
            ValueError: ``name`` is not one NATS subject token.
        """
        return self._event_names.register(name, pid)

    def event_released(self, name: str) -> None:
        """The local cluster event ``name`` ended: free its key."""
        self._event_names.released(name)

    async def spawn_singleton(
        self, cls: Any, args: tuple[Any, ...], kwargs: dict[str, Any], name: str
    ) -> PID | None:
        """Compete for singleton ``name`` (``Node.spawn_singleton``)."""
        singleton = Singleton(self, cls, args, kwargs, name)
        self._singletons.append(singleton)
        return await singleton.start()

    def nodes(self) -> list[str]:
        """The live nodes of the namespace, this one included, sorted."""
        return sorted([self.name, *self._peers])

    def monitor_node(self, watcher: Mailbox, name: str) -> None:
        """Deliver ``NodeDown(name, reason)`` to ``watcher`` once ``name`` is down."""
        self._remote.monitor_node(watcher, name)

    def demonitor_node(self, watcher: Mailbox, name: str) -> None:
        """Withdraw :meth:`monitor_node`."""
        self._remote.demonitor_node(watcher, name)

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
            dropped_noproc=self._remote.dropped_noproc if self._node else 0,
            dropped_full=self._remote.dropped_full if self._node else 0,
            bad_input=s.bad_input,
            nodes_down=s.nodes_down,
            reconnects=s.reconnects,
        )

    def __repr__(self) -> str:
        return f"<Cluster {self.namespace!r} on {self.servers[0]!r}, {len(self._peers) + 1} nodes>"


def _rebuild(servers: list[str], options: dict[str, Any]) -> Cluster:
    return Cluster(servers, **options)
