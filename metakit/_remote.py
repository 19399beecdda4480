"""Actors of other nodes, as the core sees them (DESIGN.md §8).

Theory of operation
-------------------

This module is the core's half of a cluster: what a remote PID, Alias or
cluster name means to the send, call, exit, link and monitor paths, and
what the frames of another node do to the actors here. It knows nothing of
the network: a transport (``metakit.cluster``) encodes the frames it makes,
carries them, decodes what arrives and hands it to :meth:`Remote.handle`,
and tells it which nodes are up (:meth:`Remote.add_peer`,
:meth:`Remote.sever`).

:attr:`Registry.remote <metakit._registry.Registry.remote>` is a
:class:`Remote` while the node is in a cluster: what the routing table and
the names miss goes to :meth:`Remote.route`, which answers with the
stand-in for an actor of a live node (a :class:`RemoteActor`, one per ident
while it takes part in a link or monitor). A stand-in is a
:class:`~metakit.mailbox.Mailbox` in shape only, with no queue: what the
core does to an actor it turns into one frame for its node. It keeps the
link and monitor attributes of :mod:`._links` for its side of each relation,
so a local death walks them unchanged, and a node going down walks them
once (:meth:`Peer.sever`): every link fires with ``"noconnection"``, every
monitor delivers ``Down(..., "noconnection")``, every call waiting on that
node fails with ``ProcessExited(..., "noconnection")``.

A frame is a tuple, its kind first; ``tid`` is the id of an actor on the
receiving node, ``sid`` the id of a PID of the sending node, ``cid`` a call
number per peer, an *ident* a whole PID or Alias:

===========  ============================================  ===================================
kind         fields                                         meaning
===========  ============================================  ===================================
SEND         tid, sid, message                              ``send``
SEND_SYS     tid, sid, message                              ``send_system`` (past the bound)
CALL         tid, sid, cid, request                         ``call``
REPLY        cid, status, value                             1 value, 0 exception, 2 no process
CANCEL       tid, cid                                       the caller stopped waiting
EXIT         tid, sid, reason                               ``send_exit``
LINK         target ident, source PID                       ``link``
UNLINK       tid, sid                                       ``unlink``
LINK_EXIT    tid, source ident, reason                      a linked actor ended
MONITOR      target ident, watcher ident, ref id            ``monitor``
DEMONITOR    tid, ref id                                    ``demonitor``
DOWN         watcher id, target ident, ref id, reason       a monitored actor ended
===========  ============================================  ===================================

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
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from ._envelope import Signal
from ._links import Links
from ._state import EXITING, RUNNING
from .errors import MailboxFull, NoProcess, ProcessExited
from .ids import PID, Alias, Ref
from .mailbox import Mailbox
from .messages import Down, NodeDown

if TYPE_CHECKING:
    from .node import Node

__all__ = ["Peer", "Remote", "RemoteActor", "Transport"]

(
    SEND,
    SEND_SYS,
    CALL,
    REPLY,
    CANCEL,
    EXIT,
    LINK,
    UNLINK,
    LINK_EXIT,
    MONITOR,
    DEMONITOR,
    DOWN,
) = range(12)

# Stand-ins (and sender PIDs) kept per peer before the idle ones are dropped.
_MAX_REFS = 4096


class Transport(Protocol):
    """What :class:`Remote` needs of the cluster that carries its frames."""

    def queue(self, peer: Peer, frame: tuple[Any, ...], target: Any, system: bool) -> None:
        """Encode ``frame`` for ``peer``: TypeError if it does not encode, MailboxFull
        (unless ``system``) if too much waits for that node; nothing queued then."""

    def queue_system(self, peer: Peer, frame: tuple[Any, ...]) -> None:
        """Encode and queue, never refused (an unencodable last field goes as its repr)."""

    def released(self, name: str) -> None:
        """The local holder of cluster name ``name`` dropped it or ended."""

    def holder(self, name: str) -> PID | None:
        """The holder of cluster name ``name`` in the namespace's view, or None."""


class RemoteActor(Mailbox):
    """Stands in, on this node, for a process or meta of another node."""

    __slots__ = ("_mk_home", "_mk_peer")

    _mk_remote = True

    def __init__(self, home: Remote, peer: Peer, ident: PID | Alias) -> None:
        self._mk_home = home
        self._mk_peer = peer
        self._mk_ident = ident
        self._mk_links = None
        self._mk_monitors = None
        self._mk_watching = None
        self._mk_state = RUNNING
        self._mk_scheduled = True  # never run in the sender: a send goes through _mk_deliver

    @property
    def idle(self) -> bool:
        """Part of no link or monitor: safe to forget."""
        return not (self._mk_links or self._mk_monitors or self._mk_watching)

    # -- what the core does to an actor, as frames --------------------------------

    def _mk_deliver(self, sender: Any, message: Any) -> None:
        ident = self._mk_ident
        self._mk_home.transport.queue(
            self._mk_peer, (SEND, ident.id, sender.id, message), ident, False
        )

    _mk_post = _mk_deliver

    def _mk_deliver_system(self, sender: Any, message: Any) -> None:
        ident = self._mk_ident
        transport = self._mk_home.transport
        if message.__class__ is Down and message.ref.node == ident.node:
            # A Down for a monitor this remote actor holds on one of ours.
            down = (DOWN, ident.id, message.target, message.ref.id, message.reason)
            transport.queue_system(self._mk_peer, down)
        else:
            transport.queue(self._mk_peer, (SEND_SYS, ident.id, sender.id, message), ident, True)

    def _mk_call(self, pid: PID, request: Any, future: Any = None) -> asyncio.Future[Any]:
        return self._mk_home.call(self._mk_peer, self._mk_ident, pid, request)

    def _mk_signal(self, sig: Signal) -> None:
        ident = self._mk_ident
        transport = self._mk_home.transport
        if sig.link:  # a local actor linked to it has ended
            transport.queue_system(self._mk_peer, (LINK_EXIT, ident.id, sig.source, sig.reason))
        else:
            frame = (EXIT, ident.id, sig.sender.id, sig.reason)
            transport.queue(self._mk_peer, frame, ident, False)

    def _mk_kill(self) -> None:
        ident = self._mk_ident
        frame = (EXIT, ident.id, self._mk_home.node_pid.id, "kill")
        self._mk_home.transport.queue(self._mk_peer, frame, ident, False)

    def _mk_remote_link(self, other: Mailbox) -> None:
        frame = (LINK, self._mk_ident, other._mk_ident)
        self._mk_home.transport.queue_system(self._mk_peer, frame)

    def _mk_remote_unlink(self, other: Mailbox) -> None:
        frame = (UNLINK, self._mk_ident.id, other._mk_ident.id)
        self._mk_home.transport.queue_system(self._mk_peer, frame)

    def _mk_remote_monitor(self, watcher: Mailbox, ref: Ref) -> None:
        frame = (MONITOR, self._mk_ident, watcher._mk_ident, ref.id)
        self._mk_home.transport.queue_system(self._mk_peer, frame)

    def _mk_remote_demonitor(self, ref: Ref) -> None:
        frame = (DEMONITOR, self._mk_ident.id, ref.id)
        self._mk_home.transport.queue_system(self._mk_peer, frame)

    def __repr__(self) -> str:
        return f"<RemoteActor {self._mk_ident!r}>"


class Peer:
    """Another node of the namespace, while it is up (a transport subclasses it
    with what it keeps per node).

    Attributes:
        name: its node name.
        creation: its run's stamp (a new one means it restarted).
        up: False once it is severed.
        refs: stand-ins for its actors, by ident.
        calls: ``{cid: (future, target)}``, our calls it has not answered.
        incoming: ``{cid: future}``, its calls we have not answered.
    """

    __slots__ = ("calls", "creation", "incoming", "name", "next_cid", "refs", "senders", "up")

    def __init__(self, name: str, creation: int) -> None:
        self.name = name
        self.creation = creation
        self.up = True
        self.refs: dict[PID | Alias, RemoteActor] = {}
        self.calls: dict[int, tuple[asyncio.Future[Any], PID | Alias]] = {}
        self.incoming: dict[int, asyncio.Future[Any]] = {}
        self.senders: dict[int, PID] = {}
        self.next_cid = 0

    def ref(self, home: Remote, ident: PID | Alias) -> RemoteActor:
        """The stand-in for ``ident`` (one per ident while it takes part in anything)."""
        actor = self.refs.get(ident)
        if actor is None:
            if len(self.refs) >= _MAX_REFS:
                self.refs = {k: v for k, v in self.refs.items() if not v.idle}
            actor = self.refs[ident] = RemoteActor(home, self, ident)
        return actor

    def sender(self, sid: int) -> PID:
        """The PID of this node with id ``sid`` (cached: a batch repeats its senders)."""
        pid = self.senders.get(sid)
        if pid is None:
            if len(self.senders) >= _MAX_REFS:
                self.senders.clear()
            pid = self.senders[sid] = PID(self.name, sid)
        return pid

    def sever(self, node_pid: PID) -> None:
        """It is down: fire every link and monitor with its actors once with
        ``"noconnection"``, fail our calls to it, drop its calls to us.

        ``node_pid`` (this node's) is the sender where the remote ident is an
        Alias: a mailbox's sender is always a PID.
        """
        reason = "noconnection"
        self.up = False
        refs, self.refs = self.refs, {}
        for remote in refs.values():
            ident = remote._mk_ident
            sender = ident if ident.__class__ is PID else node_pid
            links, remote._mk_links = remote._mk_links, None
            for local in links or ():
                if local._mk_links:
                    local._mk_links.discard(remote)
                local._mk_signal(Signal(ident, sender, reason, link=True))
            monitors, remote._mk_monitors = remote._mk_monitors, None
            for ref, watcher in (monitors or {}).items():
                if watcher._mk_watching:
                    watcher._mk_watching.pop(ref, None)
                watcher._mk_deliver_system(sender, Down(ident, ref, reason))
            watching, remote._mk_watching = remote._mk_watching, None
            for ref, target in (watching or {}).items():
                if target._mk_monitors:
                    target._mk_monitors.pop(ref, None)
        calls, self.calls = self.calls, {}
        for future, target in calls.values():
            if not future.done():
                future.set_exception(ProcessExited(target, reason))
        incoming, self.incoming = self.incoming, {}
        for future in incoming.values():
            future.cancel()


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

    def install(self) -> None:
        """Route what the table misses here (the node has joined)."""
        self.node._registry.remote = self

    def uninstall(self) -> None:
        """Stop routing to other nodes."""
        if self.node._registry.remote is self:
            self.node._registry.remote = None

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

    def unclaim(self, name: str, proc: Mailbox) -> None:
        """Undo :meth:`claim_local` (the cluster refused the name), telling no one."""
        registry = self.node._registry
        if registry.names.get(name) is proc:
            del registry.names[name]
            proc._mk_name = None

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
            except (TypeError, ValueError) as err:  # unencodable, or past max_payload
                exc = type(err)(f"the reply does not cross a node boundary: {err}")
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

    def log_limited(self, kind: str, text: str, *args: Any) -> None:
        """Log a warning of this ``kind`` at most once a second."""
        now = time.monotonic()
        if now - self._logged.get(kind, -2.0) >= 1.0:
            self._logged[kind] = now
            self._log.warning(text, *args)


def _ident(value: Any, node: str) -> None:
    """Check that a decoded ident is a PID or Alias of ``node`` (else the frame is bad)."""
    if (value.__class__ is not PID and value.__class__ is not Alias) or value.node != node:
        raise ValueError(f"not an ident of {node!r}: {value!r}")
