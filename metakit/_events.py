"""The node's events: named pub/sub with one producer and many subscribers.

``Events.by_name[name]`` holds an event's subscribers, so ``send_event`` is
one pass over a dict: one shared ``EventMessage`` and one delivery per
subscriber, no Task, no copy. Each process also keeps what it takes part in
(``process._mk_events``: the events it produces; ``process._mk_subs``:
``{event: ref | None}``, None for ``link_event``), so a death costs time in
proportion to what the process was part of.

On a cluster (DESIGN.md §8, Events) an event registered with
``cluster=True`` has a namespace-wide name, and :attr:`Events.remote` (the
core's :class:`~metakit._remote.Remote`) finds the producer of one held on
another node. This node's subscribers to such an event share one
:class:`Away` record, and the producer's node learns of this node once, not
of each subscriber (:attr:`Event.nodes`), so a ``send_event`` is one frame
per node with subscribers, which that node fans out here
(:meth:`Events.arrived`). The end of the event, or of its node, ends every
subscription here once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from ._envelope import Signal
from ._groups import check_name
from .errors import MailboxFull, NameTaken, NoProcess, UnknownEvent
from .ids import PID, Ref, _next_id
from .messages import Down, EventMessage

if TYPE_CHECKING:
    from .mailbox import Mailbox
    from .process import Process

__all__ = ["Away", "Event", "EventRouter", "Events"]


class Event:
    """One registered event: its producer, its subscribers, what they missed.

    Attributes:
        cluster: registered with ``cluster=True``.
        nodes: the other nodes with subscribers, by name (a cluster event).
    """

    __slots__ = ("cluster", "dropped", "name", "nodes", "producer", "subs")

    def __init__(self, name: str, producer: Process, cluster: bool = False) -> None:
        self.name = name
        self.producer = producer
        self.subs: dict[Process, Ref | None] = {}
        self.dropped = 0
        self.cluster = cluster
        self.nodes: dict[str, None] = {}


class Away:
    """A cluster event produced on another node, as its subscribers here hold it."""

    __slots__ = ("dropped", "name", "producer", "subs")

    def __init__(self, name: str, producer: PID) -> None:
        self.name = name
        self.producer = producer
        self.subs: dict[Process, Ref | None] = {}
        self.dropped = 0


class EventRouter(Protocol):
    """What a cluster adds to the events (:class:`~metakit._remote.Remote`)."""

    def event_producer(self, name: str) -> PID | None:
        """The producer of cluster event ``name`` on another live node, or None."""

    def event_subscribe(self, away: Away, subscribe: bool) -> None:
        """Tell the producer's node that this node now has (or no longer has) subscribers."""

    def event_publish(self, event: Event, message: Any) -> int:
        """Send to ``event.nodes``; how many nodes (TypeError: nothing sent)."""

    def event_ended(self, event: Event, reason: Any) -> None:
        """A cluster event here ended: tell its nodes, free its name."""


class Events:
    """The events of one node.

    Args:
        node_name: the node's name (for the Refs it makes).
        node_pid: the node's PID (the sender of a ``Down`` for an unknown event).

    Attributes:
        by_name: the events produced here.
        away: the cluster events of other nodes that processes here subscribe to.
        remote: the cluster's side, or None.
    """

    __slots__ = ("away", "by_name", "node_name", "node_pid", "remote")

    def __init__(self, node_name: str, node_pid: PID) -> None:
        self.node_name = node_name
        self.node_pid = node_pid
        self.by_name: dict[str, Event] = {}
        self.away: dict[str, Away] = {}
        self.remote: EventRouter | None = None

    def register(self, producer: Process, name: str, cluster: bool = False) -> None:
        """Make ``producer`` the producer of ``name``; NameTaken if it has one,
        ValueError if ``name`` is not one NATS subject token."""
        check_name("event", name)
        event = self.by_name.get(name)
        if event is not None:
            raise NameTaken(name, event.producer._mk_pid, "event already registered")
        self.by_name[name] = Event(name, producer, cluster)
        if producer._mk_events is None:
            producer._mk_events = set()
        producer._mk_events.add(name)

    def unregister(self, producer: Process, name: str, reason: Any) -> None:
        """Withdraw ``name``: monitors get ``Down``, links an exit signal, with ``reason``."""
        event = self.by_name.get(name)
        if event is None or event.producer is not producer:
            raise UnknownEvent(name, producer._mk_pid)
        del self.by_name[name]
        if producer._mk_events:
            producer._mk_events.discard(name)
        if event.cluster and self.remote is not None:
            self.remote.event_ended(event, reason)
        self._ended(event.subs, name, producer._mk_pid, reason)

    @staticmethod
    def _ended(subs: dict[Process, Ref | None], name: str, producer: PID, reason: Any) -> None:
        # As over a process link, a kill reaches a link_event as "killed" (trappable).
        link_reason = "killed" if reason == "kill" else reason
        for sub, ref in subs.items():
            if sub._mk_subs:
                sub._mk_subs.pop(name, None)
            if ref is None:
                sub._mk_signal(Signal(name, producer, link_reason, link=True))
            else:
                if sub._mk_watching:
                    sub._mk_watching.pop(ref, None)
                sub._mk_deliver_system(producer, Down(name, ref, reason))

    def send(self, producer: Process, name: str, message: Any) -> int:
        """Publish to every subscriber; how many got it here, plus the other
        nodes it went to (a full mailbox misses it, logged).

        Raises:
            UnknownEvent: ``producer`` does not produce ``name``.
            TypeError: a cluster event's ``message`` does not cross a node
                boundary (checked first: nothing is delivered).
        """
        event = self.by_name.get(name)
        if event is None or event.producer is not producer:
            raise UnknownEvent(name, producer._mk_pid)
        nodes = self.remote.event_publish(event, message) if event.nodes and self.remote else 0
        envelope = EventMessage(name, message)
        sender = producer._mk_pid
        delivered = 0
        dropped = 0
        for sub in event.subs:
            try:
                sub._mk_deliver(sender, envelope)
            except MailboxFull:
                dropped += 1
            else:
                delivered += 1
        producer._mk_out += delivered
        if dropped:
            event.dropped += dropped
            producer.log.warning(
                "event %r: %d subscriber(s) with a full mailbox missed a message (%d so far)",
                name,
                dropped,
                event.dropped,
            )
        return delivered + nodes

    def subscribe(self, sub: Process, name: str, *, monitor: bool) -> Ref:
        """``monitor_event`` (a Ref, ``Down`` at the end) or ``link_event`` (an exit signal)."""
        check_name("event", name)
        if sub._mk_subs and name in sub._mk_subs:
            self.unsubscribe(sub, name)
        event = self.by_name.get(name)
        ref = Ref(self.node_name, _next_id())
        subs: dict[Process, Ref | None]
        if event is not None:
            subs = event.subs
        else:
            producer = self.remote.event_producer(name) if self.remote is not None else None
            if producer is None:
                if not monitor:
                    raise UnknownEvent(name)
                sub._mk_deliver_system(self.node_pid, Down(name, ref, "noproc"))
                return ref
            subs = self._away(name, producer).subs
        subs[sub] = ref if monitor else None
        if sub._mk_subs is None:
            sub._mk_subs = {}
        sub._mk_subs[name] = ref if monitor else None
        if monitor:
            if sub._mk_watching is None:
                sub._mk_watching = {}
            sub._mk_watching[ref] = name
        return ref

    def _away(self, name: str, producer: PID) -> Away:
        away = self.away.get(name)
        if away is not None and away.producer != producer:
            self._end_away(away, "noproc")  # an earlier producer's, not yet ended here
            away = None
        if away is None:
            away = self.away[name] = Away(name, producer)
            self.remote.event_subscribe(away, True)  # type: ignore[union-attr]
        return away

    def unsubscribe(self, sub: Mailbox, name: str) -> None:
        """Drop ``sub``'s subscription to ``name``, if any."""
        subs = getattr(sub, "_mk_subs", None)
        ref = subs.pop(name, None) if subs else None
        self._leave(sub, name)
        if ref is not None and sub._mk_watching:
            sub._mk_watching.pop(ref, None)

    def _leave(self, sub: Mailbox, name: str) -> None:
        event = self.by_name.get(name)
        if event is not None:
            event.subs.pop(sub, None)  # type: ignore[call-overload]
            return
        away = self.away.get(name)
        if away is not None:
            away.subs.pop(sub, None)  # type: ignore[call-overload]
            if not away.subs:
                del self.away[name]
                if self.remote is not None:
                    self.remote.event_subscribe(away, False)

    def forget(self, actor: Mailbox, reason: Any) -> None:
        """A dead actor leaves every event it subscribed to; its own events end with ``reason``."""
        subs = getattr(actor, "_mk_subs", None)
        if subs:
            actor._mk_subs = None  # type: ignore[attr-defined]
            for name in subs:
                self._leave(actor, name)
        produced = getattr(actor, "_mk_events", None)
        if produced:
            for name in list(produced):
                self.unregister(actor, name, reason)  # type: ignore[arg-type]

    def unwatch(self, actor: Mailbox, name: str) -> None:
        """A dead watcher's event monitor on ``name`` goes."""
        self._leave(actor, name)

    # -- cluster events: what other nodes tell -----------------------------------------

    def subscribed(self, node: str, name: str, producer_id: int, subscribe: bool) -> bool:
        """``node`` has subscribers to (or has none left of) event ``name``
        here; False if ``producer_id`` does not produce it as a cluster event."""
        event = self.by_name.get(name)
        if event is None or not event.cluster or event.producer._mk_pid.id != producer_id:
            return not subscribe
        if subscribe:
            event.nodes[node] = None
        else:
            event.nodes.pop(node, None)
        return True

    def arrived(self, producer: PID, name: str, message: Any) -> int:
        """A ``send_event`` of another node's ``producer``: to the subscribers
        here; how many a full mailbox refused."""
        away = self.away.get(name)
        if away is None or away.producer != producer:
            return 0  # unsubscribed meanwhile
        envelope = EventMessage(name, message)
        dropped = 0
        for sub in away.subs:
            try:
                sub._mk_deliver(producer, envelope)
            except (MailboxFull, NoProcess):
                dropped += 1
        away.dropped += dropped
        return dropped

    def ended(self, producer: PID, name: str, reason: Any) -> None:
        """Another node's cluster event ended (its producer died or withdrew it)."""
        away = self.away.get(name)
        if away is not None and away.producer == producer:
            self._end_away(away, reason)

    def _end_away(self, away: Away, reason: Any) -> None:
        del self.away[away.name]
        self._ended(away.subs, away.name, away.producer, reason)

    def node_down(self, node: str) -> None:
        """``node`` is down: its events end here with ``"noconnection"``, and it
        stops getting those produced here."""
        for away in [a for a in self.away.values() if a.producer.node == node]:
            self._end_away(away, "noconnection")
        for event in self.by_name.values():
            if event.nodes:
                event.nodes.pop(node, None)
