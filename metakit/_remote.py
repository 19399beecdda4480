"""The core's half of a cluster: routing to other nodes, their frames applied
here, node watches (DESIGN.md §8).

Theory of operation
-------------------

A transport (``metakit.cluster``) encodes the frames the core makes,
carries them, decodes what arrives and hands it to :meth:`Remote.handle`,
and tells it which nodes are up (:meth:`Remote.add_peer`,
:meth:`Remote.sever`); this module knows nothing of the network.

:attr:`Registry.remote <metakit._registry.Registry.remote>` is a
:class:`Remote` while the node is in a cluster: what the routing table and
the names miss goes to :meth:`Remote.route`, which answers with the
stand-in for an actor of a live node (:mod:`._remote_actors`, which also draws the
frames).

A link or monitor another node tells of is recorded with
:meth:`Links.tie <metakit._links.Links.tie>` and
:meth:`Links.watch <metakit._links.Links.watch>`, which tell no node: the
sender has its side already. A ``SEND`` or ``EXIT`` for an actor not alive
here is dropped and counted; a ``CALL``, ``LINK`` or ``MONITOR`` for one is
answered (no process, ``"noproc"``), as the local core would. A call from
another node runs with a :class:`_ReplyFuture`, which queues the reply the
moment it is settled (no callback hop); a ``CANCEL`` cancels it, which the
mailbox treats as a caller that gave up.
"""

from __future__ import annotations

import asyncio
import functools
import time
import weakref
from typing import TYPE_CHECKING, Any, ClassVar

from ._envelope import Signal
from ._events import Away, Event
from ._groups import GroupRouter
from ._links import Links
from ._remote_actors import (
    CALL,
    CANCEL,
    DEMONITOR,
    DOWN,
    EVENT,
    EVENT_END,
    EVENT_SUB,
    EXIT,
    LINK,
    LINK_EXIT,
    MONITOR,
    REPLY,
    SEND,
    SEND_GROUP,
    SEND_SYS,
    UNLINK,
    Peer,
    Transport,
)
from ._state import EXITING
from .errors import MailboxFull, NoProcess, ProcessExited, UnknownEvent
from .ids import PID, Alias, Ref
from .mailbox import Mailbox
from .messages import Down, NodeDown

if TYPE_CHECKING:
    from .node import Node

__all__ = ["EventClaims", "Remote"]


class _ReplyFuture(asyncio.Future[Any]):
    """The future of a call from another node: settling it queues the reply at once."""

    def __init__(self, home: Remote, peer: Peer, cid: int, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop=loop)
        self._home = home
        self._peer = peer
        self._cid = cid

    def set_result(self, result: Any) -> None:
        super().set_result(result)
        self._home._answer(self._peer, self._cid, self)

    def set_exception(self, exception: Any) -> None:
        super().set_exception(exception)
        self._home._answer(self._peer, self._cid, self)


class Remote:
    """The core's side of a cluster for one node: routing to other nodes,
    their frames applied here, node watches.

    Args:
        node: the node.
        transport: what carries the frames (``metakit.cluster.Cluster``).

    Attributes:
        peers: the live other nodes, by name (the transport keeps it).
        dropped_noproc: frames for an actor that is not alive here.
        dropped_full: messages a full local mailbox refused.
    """

    def __init__(self, node: Node, transport: Transport) -> None:
        self.node = node
        self.name = node.name
        self.node_pid = node.pid
        self.transport = transport
        self.peers: dict[str, Peer] = {}
        self.dropped_noproc = 0
        self.dropped_full = 0
        self._table = node._registry.table
        self._loop = asyncio.get_running_loop()
        self._log = node._logger.getChild("cluster")
        self._logged: dict[str, float] = {}
        self._node_watchers: dict[str, weakref.WeakSet[Mailbox]] = {}
        self.event_claims = EventClaims(node)

    def install(self, groups: GroupRouter | None = None) -> None:
        """Route what the table misses here, the groups' other members through
        ``groups``, and the events of other nodes (the node has joined)."""
        self.node._registry.remote = self
        self.node._groups.remote = groups
        self.node._events.remote = self

    def uninstall(self) -> None:
        """Stop routing to other nodes."""
        if self.node._registry.remote is self:
            self.node._registry.remote = None
            self.node._groups.remote = None
            self.node._events.remote = None

    # -- the registry's Router -----------------------------------------------------------

    def route(self, to: PID | Alias) -> Mailbox | None:
        """The stand-in for ``to`` if its node is up, else None."""
        peer = self.peers.get(to.node)
        return peer.ref(self, to) if peer is not None else None

    def route_name(self, name: str) -> Mailbox | None:
        """The stand-in for the holder of cluster name ``name``, or None."""
        pid = self.transport.holder(name)
        return self.route(pid) if pid is not None else None

    def whereis(self, name: str) -> PID | None:
        """The holder of cluster name ``name`` on a live node, or None."""
        pid = self.transport.holder(name)
        if pid is None or (pid.node != self.name and pid.node not in self.peers):
            return None
        return pid

    def released(self, name: str, proc: Mailbox) -> None:
        """A local process dropped (or died with) its name ``name``."""
        self.transport.released(name)

    # -- peers ---------------------------------------------------------------------------

    def add_peer(self, peer: Peer) -> None:
        """``peer`` is up (a new node, or a new run of one that was severed)."""
        self.peers[peer.name] = peer

    def sever(self, peer: Peer, reason: str) -> None:
        """``peer`` is down: its links, monitors and calls fire once; its node
        watchers get ``NodeDown(name, reason)``."""
        if self.peers.get(peer.name) is not peer:
            return
        del self.peers[peer.name]
        peer.sever(self.node_pid)
        self.node._events.node_down(peer.name)
        watchers = self._node_watchers.pop(peer.name, None)
        for watcher in list(watchers or ()):
            watcher._mk_deliver_system(self.node_pid, NodeDown(peer.name, reason))

    def monitor_node(self, watcher: Mailbox, name: str) -> None:
        """Deliver ``NodeDown(name, reason)`` to ``watcher`` once ``name`` is down."""
        if name == self.name:
            return
        if name not in self.peers:
            watcher._mk_deliver_system(self.node_pid, NodeDown(name, "noconnection"))
            return
        self._node_watchers.setdefault(name, weakref.WeakSet()).add(watcher)

    def demonitor_node(self, watcher: Mailbox, name: str) -> None:
        """Withdraw :meth:`monitor_node`."""
        watchers = self._node_watchers.get(name)
        if watchers is not None:
            watchers.discard(watcher)

    def stop(self, pid: PID, reason: Any) -> None:
        """End local process ``pid`` with ``reason``, trapping or not (a singleton
        that lost its lease)."""
        actor = self._table.get(pid.id)
        if actor is not None:
            actor._mk_signal(Signal(self.node_pid, self.node_pid, reason, forced=True))

    # -- cluster names: the local half ------------------------------------------------------

    def claim_local(self, name: str, pid: PID) -> Mailbox:
        """Register ``pid`` under ``name`` here (the local checks raise); the
        process, a handle for :meth:`holds` and :meth:`unclaim`."""
        registry = self.node._registry
        registry.register(name, pid)
        return registry.table[pid.id]

    @staticmethod
    def holds(proc: Mailbox, name: str) -> bool:
        """Whether ``proc`` is alive and still registered as ``name``."""
        return getattr(proc, "_mk_name", None) == name and proc._mk_state < EXITING

    @staticmethod
    def ident(proc: Mailbox) -> PID:
        """The PID of a process handle."""
        return proc._mk_ident  # type: ignore[return-value]

    def alive(self, ident: int) -> bool:
        """Whether the local actor of id ``ident`` is alive."""
        actor = self._table.get(ident)
        return actor is not None and actor._mk_state < EXITING

    def unclaim(self, name: str, proc: Mailbox) -> None:
        """Undo :meth:`claim_local` (the cluster refused the name), telling no one."""
        registry = self.node._registry
        if registry.names.get(name) is proc:
            del registry.names[name]
            proc._mk_name = None

    # -- cluster events: the events' EventRouter --------------------------------------------

    def event_producer(self, name: str) -> PID | None:
        """The producer of cluster event ``name`` on another live node, or None."""
        pid = self.transport.event_producer(name)
        if pid is None or pid.node not in self.peers:
            return None
        return pid

    def event_subscribe(self, away: Away, subscribe: bool) -> None:
        """Tell the producer's node that this node has subscribers, or none left."""
        peer = self.peers.get(away.producer.node)
        if peer is not None:
            frame = (EVENT_SUB, away.name, away.producer.id, 1 if subscribe else 0)
            self.transport.queue_system(peer, frame)

    def event_publish(self, event: Event, message: Any) -> int:
        """One frame per node with subscribers; how many nodes.

        Raises:
            TypeError, ValueError: ``message`` does not cross a node boundary.
        """
        peers = [self.peers[n] for n in event.nodes if n in self.peers]
        if peers:
            frame = (EVENT, event.name, event.producer._mk_pid.id, message)
            self.transport.queue_many(peers, frame, event.name)
        return len(peers)

    def event_ended(self, event: Event, reason: Any) -> None:
        """Tell the nodes with subscribers, and free the name."""
        pid = event.producer._mk_pid
        for node in event.nodes:
            peer = self.peers.get(node)
            if peer is not None:
                self.transport.queue_system(peer, (EVENT_END, event.name, pid.id, reason))
        self.transport.event_released(event.name)

    # -- calls to other nodes ----------------------------------------------------------------

    def call(self, peer: Peer, target: PID | Alias, pid: PID, request: Any) -> asyncio.Future[Any]:
        """Queue a call; the future its reply (or its node's death) settles."""
        peer.next_cid += 1
        cid = peer.next_cid
        self.transport.queue(peer, (CALL, target.id, pid.id, cid, request), target, False)
        future: asyncio.Future[Any] = self._loop.create_future()
        peer.calls[cid] = (future, target)
        future.add_done_callback(functools.partial(self._call_done, peer, cid))
        return future

    def _call_done(self, peer: Peer, cid: int, future: asyncio.Future[Any]) -> None:
        entry = peer.calls.pop(cid, None)
        if entry is not None and peer.up:  # ended with no reply: timed out or cancelled
            self.transport.queue_system(peer, (CANCEL, entry[1].id, cid))

    def _answer(self, peer: Peer, cid: int, future: asyncio.Future[Any]) -> None:
        if peer.incoming.pop(cid, None) is None or not peer.up:
            return  # its node is down
        exc = future.exception()
        if exc is None:
            try:
                self.transport.queue(peer, (REPLY, cid, 1, future.result()), None, True)
                return
            except TypeError as err:  # unencodable
                exc = TypeError(f"the reply does not cross a node boundary: {err}")
            except ValueError as err:  # past the server's max_payload
                exc = ValueError(f"the reply does not cross a node boundary: {err}")
        self.transport.queue_system(peer, (REPLY, cid, 0, exc))

    # -- frames from other nodes ------------------------------------------------------------

    def handle(self, peer: Peer, frame: tuple[Any, ...]) -> None:
        """Apply one frame from ``peer``.

        Raises:
            IndexError, KeyError, TypeError, ValueError, AttributeError: the
                frame has the wrong shape (the transport counts it as bad input).
        """
        self._handlers[frame[0]](self, peer, frame)

    def _target(self, tid: int) -> Mailbox | None:
        target = self._table.get(tid)
        if target is None:
            self.dropped_noproc += 1
            self.log_limited("noproc", "dropped frames for actors not alive here (%d)", tid)
        return target

    def _on_send(self, peer: Peer, frame: tuple[Any, ...]) -> None:
        _, tid, sid, message = frame
        target = self._target(tid)
        if target is None:
            return
        try:
            target._mk_post(peer.sender(sid), message)
        except (MailboxFull, NoProcess):
            self.dropped_full += 1
            self.log_limited("full", "dropped messages a full mailbox refused (%r)", target)

    def _on_send_system(self, peer: Peer, frame: tuple[Any, ...]) -> None:
        _, tid, sid, message = frame
        target = self._target(tid)
        if target is not None:
            target._mk_deliver_system(peer.sender(sid), message)

    def _on_call(self, peer: Peer, frame: tuple[Any, ...]) -> None:
        _, tid, sid, cid, request = frame
        if not isinstance(cid, int):
            raise TypeError(f"bad call number {cid!r}")
        target = self._table.get(tid)
        if target is None:
            self.transport.queue_system(peer, (REPLY, cid, 2, None))
            return
        future = _ReplyFuture(self, peer, cid, self._loop)
        peer.incoming[cid] = future
        try:
            target._mk_call(peer.sender(sid), request, future)
        except Exception as exc:
            if not future.done():
                future.set_exception(exc)

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
            self.transport.queue_system(peer, (LINK_EXIT, source.id, ident, "noproc"))
            return
        Links.tie(local, remote)

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
            self.transport.queue_system(peer, (DOWN, watcher_ident.id, ident, ref_id, "noproc"))
            return
        Links.watch(peer.ref(self, watcher_ident), local, Ref(peer.name, int(ref_id)))

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

    def _on_send_group(self, peer: Peer, frame: tuple[Any, ...]) -> None:
        _, group, sid, message = frame
        self.node._groups.deliver(peer.sender(sid), group, message)

    def _on_event_sub(self, peer: Peer, frame: tuple[Any, ...]) -> None:
        _, name, pid_id, subscribe = frame
        if not isinstance(name, str) or not isinstance(pid_id, int):
            raise TypeError(f"bad event subscription {frame!r}")
        if not self.node._events.subscribed(peer.name, name, pid_id, bool(subscribe)):
            self.transport.queue_system(peer, (EVENT_END, name, pid_id, "noproc"))

    def _on_event(self, peer: Peer, frame: tuple[Any, ...]) -> None:
        _, name, pid_id, message = frame
        if self.node._events.arrived(PID(peer.name, pid_id), name, message):
            self.dropped_full += 1
            self.log_limited("event", "subscribers with a full mailbox missed event %r", name)

    def _on_event_end(self, peer: Peer, frame: tuple[Any, ...]) -> None:
        _, name, pid_id, reason = frame
        self.node._events.ended(PID(peer.name, pid_id), name, reason)

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
        SEND_GROUP: _on_send_group,
        EVENT_SUB: _on_event_sub,
        EVENT: _on_event,
        EVENT_END: _on_event_end,
    }

    def log_limited(self, kind: str, text: str, *args: Any) -> None:
        """Log a warning of this ``kind`` at most once a second."""
        now = time.monotonic()
        if now - self._logged.get(kind, -2.0) >= 1.0:
            self._logged[kind] = now
            self._log.warning(text, *args)


class EventClaims:
    """The local half of cluster event names (what the transport's claims
    take for an event, as :class:`Remote` is for process names)."""

    def __init__(self, node: Node) -> None:
        self._node = node

    def claim_local(self, name: str, pid: PID) -> Mailbox:
        """Register the event here for process ``pid`` (NameTaken, ValueError
        raise); the process."""
        proc = self._node._registry.table.get(pid.id)
        if proc is None or proc._mk_state >= EXITING or not hasattr(proc, "_mk_events"):
            raise NoProcess(pid)
        self._node._events.register(proc, name, cluster=True)  # type: ignore[arg-type]
        return proc

    def holds(self, proc: Mailbox, name: str) -> bool:
        """Whether ``proc`` is alive and still the producer of ``name`` here."""
        event = self._node._events.by_name.get(name)
        return event is not None and event.producer is proc and proc._mk_state < EXITING

    @staticmethod
    def ident(proc: Mailbox) -> PID:
        """The PID of a process handle."""
        return proc._mk_ident  # type: ignore[return-value]

    def alive(self, ident: int) -> bool:
        """Whether the local actor of id ``ident`` is alive."""
        actor = self._node._registry.table.get(ident)
        return actor is not None and actor._mk_state < EXITING

    def unclaim(self, name: str, proc: Mailbox) -> None:
        """The namespace refused the name: the event ends here with ``"noproc"``."""
        try:
            self._node._events.unregister(proc, name, "noproc")  # type: ignore[arg-type]
        except UnknownEvent:
            pass  # withdrawn meanwhile


def _ident(value: Any, node: str) -> None:
    """Check that a decoded ident is a PID or Alias of ``node`` (else the frame is bad)."""
    if (value.__class__ is not PID and value.__class__ is not Alias) or value.node != node:
        raise ValueError(f"not an ident of {node!r}: {value!r}")
