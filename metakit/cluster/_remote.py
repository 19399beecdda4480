"""The other nodes as this node sees them: a :class:`Peer` per node, and the
stand-in (:class:`RemoteActor`) the registry hands out for an actor there.

A stand-in is a :class:`~metakit.mailbox.Mailbox` in shape only: it has no
queue of its own. What the core does to an actor (deliver, call, signal,
kill, link, monitor) it turns into one frame for its peer's outgoing batch,
through :meth:`Cluster.queue <metakit.cluster.cluster.Cluster.queue>`. It
keeps the three link and monitor attributes of :mod:`metakit._links` for
its side of each relation, so a local death walks them unchanged and a
node-down walks them once (:meth:`Peer.sever`).

Frames are msgpack lists (``_wire.py``), the kind first; ``tid`` is the id
of the actor on the receiving node, ``sid`` the id of a PID of the sending
node, ``cid`` a call number per peer:

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
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._envelope import Signal
from .._state import RUNNING
from ..ids import PID, Alias, Ref
from ..mailbox import Mailbox
from ..messages import Down

if TYPE_CHECKING:
    import asyncio

    from .cluster import Cluster

__all__ = ["Peer", "RemoteActor", "token"]

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

# Stand-ins kept per peer before the idle ones (no link, no monitor) are dropped.
_MAX_REFS = 4096

_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


def token(name: str) -> str:
    """``name`` as one NATS subject token and KV key part: ``[A-Za-z0-9_-]``
    kept, every other byte of its UTF-8 as ``=XX`` (``"a@h.x"`` → ``"a=40h=2Ex"``)."""
    if all(c in _SAFE for c in name) and name:
        return name
    return "".join(c if c in _SAFE else "".join(f"={b:02X}" for b in c.encode()) for c in name)


class RemoteActor(Mailbox):
    """Stands in, on this node, for a process or meta of another node."""

    __slots__ = ("_mk_cluster", "_mk_peer")

    _mk_remote = True

    def __init__(self, cluster: Cluster, peer: Peer, ident: PID | Alias) -> None:
        self._mk_cluster = cluster
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
        self._mk_cluster.queue(self._mk_peer, (SEND, ident.id, sender.id, message), ident)

    _mk_post = _mk_deliver

    def _mk_deliver_system(self, sender: Any, message: Any) -> None:
        ident = self._mk_ident
        if message.__class__ is Down and message.ref.node == ident.node:
            # A Down for a monitor this remote actor holds on one of ours.
            down = (DOWN, ident.id, message.target, message.ref.id, message.reason)
            self._mk_cluster.queue_system(self._mk_peer, down)
        else:
            frame = (SEND_SYS, ident.id, sender.id, message)
            self._mk_cluster.queue(self._mk_peer, frame, ident, system=True)

    def _mk_call(self, pid: PID, request: Any) -> asyncio.Future[Any]:
        return self._mk_cluster.call(self._mk_peer, self._mk_ident, pid, request)

    def _mk_signal(self, sig: Signal) -> None:
        ident = self._mk_ident
        if sig.link:  # a local actor linked to it has ended
            self._mk_cluster.queue_system(
                self._mk_peer, (LINK_EXIT, ident.id, sig.source, sig.reason)
            )
        else:
            frame = (EXIT, ident.id, sig.sender.id, sig.reason)
            self._mk_cluster.queue(self._mk_peer, frame, ident)

    def _mk_kill(self) -> None:
        ident = self._mk_ident
        frame = (EXIT, ident.id, self._mk_cluster.node_pid.id, "kill")
        self._mk_cluster.queue(self._mk_peer, frame, ident)

    def _mk_remote_link(self, other: Mailbox) -> None:
        self._mk_cluster.queue_system(self._mk_peer, (LINK, self._mk_ident, other._mk_ident))

    def _mk_remote_unlink(self, other: Mailbox) -> None:
        self._mk_cluster.queue_system(
            self._mk_peer, (UNLINK, self._mk_ident.id, other._mk_ident.id)
        )

    def _mk_remote_monitor(self, watcher: Mailbox, ref: Ref) -> None:
        self._mk_cluster.queue_system(
            self._mk_peer, (MONITOR, self._mk_ident, watcher._mk_ident, ref.id)
        )

    def _mk_remote_demonitor(self, ref: Ref) -> None:
        self._mk_cluster.queue_system(self._mk_peer, (DEMONITOR, self._mk_ident.id, ref.id))

    def __repr__(self) -> str:
        return f"<RemoteActor {self._mk_ident!r}>"


class Peer:
    """Another node of the namespace, while it is up.

    Attributes:
        name: its node name.
        creation: its run's stamp (a new one means it restarted).
        subject: where its frames go.
        last_seen: loop time of its last heartbeat or batch.
        chunks: encoded frames waiting for the next batch.
        pending: their size in bytes.
        refs: stand-ins for its actors, by ident.
        calls: ``{cid: (future, target)}``, our calls it has not answered.
        incoming: ``{cid: future}``, its calls we have not answered.
    """

    __slots__ = (
        "calls",
        "chunks",
        "confirmed",
        "creation",
        "dirty",
        "incoming",
        "last_seen",
        "name",
        "next_cid",
        "pending",
        "refs",
        "senders",
        "subject",
        "up",
    )

    def __init__(self, name: str, creation: int, subject: str, now: float) -> None:
        self.name = name
        self.creation = creation
        self.subject = subject
        self.last_seen = now
        self.up = True
        self.confirmed = True  # False from our reconnect until it shows it is back
        self.dirty = False
        self.chunks: list[bytes] = []
        self.pending = 0
        self.refs: dict[PID | Alias, RemoteActor] = {}
        self.calls: dict[int, tuple[asyncio.Future[Any], PID | Alias]] = {}
        self.incoming: dict[int, asyncio.Future[Any]] = {}
        self.senders: dict[int, PID] = {}
        self.next_cid = 0

    def ref(self, cluster: Cluster, ident: PID | Alias) -> RemoteActor:
        """The stand-in for ``ident`` (one per ident while it takes part in anything)."""
        actor = self.refs.get(ident)
        if actor is None:
            if len(self.refs) >= _MAX_REFS:
                self.refs = {k: v for k, v in self.refs.items() if not v.idle}
            actor = self.refs[ident] = RemoteActor(cluster, self, ident)
        return actor

    def sender(self, sid: int) -> PID:
        """The PID of this node with id ``sid`` (cached: a batch repeats its senders)."""
        pid = self.senders.get(sid)
        if pid is None:
            if len(self.senders) >= _MAX_REFS:
                self.senders.clear()
            pid = self.senders[sid] = PID(self.name, sid)
        return pid

    def sever(self, reason: Any, failed: Any, node_pid: PID) -> None:
        """It is down: fire every link and monitor with its actors once, fail
        our calls to it, drop its calls to us and what waits to be sent.

        ``node_pid`` (this node's) is the sender where the remote ident is an
        Alias: a mailbox's sender is always a PID."""
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
                future.set_exception(failed(target, reason))
        incoming, self.incoming = self.incoming, {}
        for future in incoming.values():
            future.cancel()
        self.chunks = []
        self.pending = 0
