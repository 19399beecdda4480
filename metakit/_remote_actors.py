"""Actors of other nodes, as the core holds them: :class:`RemoteActor`, the
stand-in for one, and :class:`Peer`, what this node keeps per other node
(DESIGN.md §8; :mod:`._remote` is the rest of the core's half of a cluster).

A stand-in is a :class:`~metakit.mailbox.Mailbox` in shape only, with no
queue: what the core does to an actor it turns into one frame for its node,
handed to the :class:`Transport`. It keeps the link and monitor attributes
of :mod:`._links` for its side of each relation, so a local death walks them
unchanged, and a node going down walks them once (:meth:`Peer.sever`):
every link fires with ``"noconnection"``, every monitor delivers
``Down(..., "noconnection")``, every call waiting on that node fails with
``ProcessExited(..., "noconnection")``.

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
SEND_GROUP   group, sid, message                            ``send_group``: to its members here
EVENT_SUB    name, producer id, 1 or 0                      subscribers here, or none left
EVENT        name, producer id, message                     ``send_event``: to its subscribers
EVENT_END    name, producer id, reason                      the event ended
===========  ============================================  ===================================
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from ._envelope import Signal
from ._state import RUNNING
from .errors import ProcessExited
from .ids import PID, Alias, Ref
from .mailbox import Mailbox
from .messages import Down

__all__ = ["Home", "Peer", "RemoteActor", "Transport"]

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
    SEND_GROUP,
    EVENT_SUB,
    EVENT,
    EVENT_END,
) = range(16)

# Stand-ins (and sender PIDs) kept per peer before the idle ones are dropped.
_MAX_REFS = 4096


class Transport(Protocol):
    """What the core needs of the cluster that carries its frames."""

    def queue(self, peer: Peer, frame: tuple[Any, ...], target: Any, system: bool) -> None:
        """Encode ``frame`` for ``peer``: TypeError if it does not encode, MailboxFull
        (unless ``system``) if too much waits for that node; nothing queued then."""

    def queue_many(self, peers: list[Peer], frame: tuple[Any, ...], target: Any) -> None:
        """Encode ``frame`` once for each of ``peers`` (TypeError, ValueError: nothing queued)."""

    def queue_system(self, peer: Peer, frame: tuple[Any, ...]) -> None:
        """Encode and queue, never refused (an unencodable last field goes as its repr)."""

    def released(self, name: str) -> None:
        """The local holder of cluster name ``name`` dropped it or ended."""

    def holder(self, name: str) -> PID | None:
        """The holder of cluster name ``name`` in the namespace's view, or None."""

    def event_producer(self, name: str) -> PID | None:
        """The producer of cluster event ``name`` in the namespace's view, or None."""

    def event_released(self, name: str) -> None:
        """The local cluster event ``name`` ended."""


class Home(Protocol):
    """What a stand-in needs of the node's :class:`~metakit._remote.Remote`."""

    transport: Transport
    node_pid: PID

    def call(self, peer: Peer, target: PID | Alias, pid: PID, request: Any) -> asyncio.Future[Any]:
        """Queue a call to ``target``; the future its reply settles."""


class RemoteActor(Mailbox):
    """Stands in, on this node, for a process or meta of another node."""

    __slots__ = ("_mk_home", "_mk_peer")

    _mk_remote = True

    def __init__(self, home: Home, peer: Peer, ident: PID | Alias) -> None:
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

    def ref(self, home: Home, ident: PID | Alias) -> RemoteActor:
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
