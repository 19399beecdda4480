"""The node's events: named pub/sub with one producer and many subscribers.

``Events.by_name[name]`` holds an event's subscribers, so ``send_event`` is
one pass over a dict: one shared ``EventMessage`` and one delivery per
subscriber, no Task, no copy. Each process also keeps what it takes part in
(``process._mk_events``: the events it produces; ``process._mk_subs``:
``{event: ref | None}``, None for ``link_event``), so a death costs time in
proportion to what the process was part of.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._envelope import Signal
from ._groups import check_name
from .errors import MailboxFull, NameTaken, UnknownEvent
from .ids import PID, Ref, _next_id
from .messages import Down, EventMessage

if TYPE_CHECKING:
    from .mailbox import Mailbox
    from .process import Process

__all__ = ["Event", "Events"]


class Event:
    """One registered event: its producer, its subscribers, what they missed."""

    __slots__ = ("dropped", "name", "producer", "subs")

    def __init__(self, name: str, producer: Process) -> None:
        self.name = name
        self.producer = producer
        self.subs: dict[Process, Ref | None] = {}
        self.dropped = 0


class Events:
    """The events of one node.

    Args:
        node_name: the node's name (for the Refs it makes).
        node_pid: the node's PID (the sender of a ``Down`` for an unknown event).
    """

    __slots__ = ("by_name", "node_name", "node_pid")

    def __init__(self, node_name: str, node_pid: PID) -> None:
        self.node_name = node_name
        self.node_pid = node_pid
        self.by_name: dict[str, Event] = {}

    def register(self, producer: Process, name: str) -> None:
        """Make ``producer`` the producer of ``name``; NameTaken if it has one,
        ValueError if ``name`` is not one NATS subject token."""
        check_name("event", name)
        event = self.by_name.get(name)
        if event is not None:
            raise NameTaken(name, event.producer._mk_pid, "event already registered")
        self.by_name[name] = Event(name, producer)
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
        for sub, ref in event.subs.items():
            if sub._mk_subs:
                sub._mk_subs.pop(name, None)
            if ref is None:
                sub._mk_signal(Signal(name, producer._mk_pid, reason, link=True))
            else:
                if sub._mk_watching:
                    sub._mk_watching.pop(ref, None)
                sub._mk_deliver_system(producer._mk_pid, Down(name, ref, reason))

    def send(self, producer: Process, name: str, message: Any) -> int:
        """Publish to every subscriber; how many got it (a full mailbox misses it, logged)."""
        event = self.by_name.get(name)
        if event is None or event.producer is not producer:
            raise UnknownEvent(name, producer._mk_pid)
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
        return delivered

    def subscribe(self, sub: Process, name: str, *, monitor: bool) -> Ref:
        """``monitor_event`` (a Ref, ``Down`` at the end) or ``link_event`` (an exit signal)."""
        check_name("event", name)
        event = self.by_name.get(name)
        ref = Ref(self.node_name, _next_id())
        if event is None:
            if not monitor:
                raise UnknownEvent(name)
            sub._mk_deliver_system(self.node_pid, Down(name, ref, "noproc"))
            return ref
        if sub._mk_subs and name in sub._mk_subs:
            self.unsubscribe(sub, name)
        event.subs[sub] = ref if monitor else None
        if sub._mk_subs is None:
            sub._mk_subs = {}
        sub._mk_subs[name] = ref if monitor else None
        if monitor:
            if sub._mk_watching is None:
                sub._mk_watching = {}
            sub._mk_watching[ref] = name
        return ref

    def unsubscribe(self, sub: Mailbox, name: str) -> None:
        """Drop ``sub``'s subscription to ``name``, if any."""
        subs = getattr(sub, "_mk_subs", None)
        ref = subs.pop(name, None) if subs else None
        event = self.by_name.get(name)
        if event is not None:
            event.subs.pop(sub, None)  # type: ignore[call-overload]
        if ref is not None and sub._mk_watching:
            sub._mk_watching.pop(ref, None)

    def forget(self, actor: Mailbox, reason: Any) -> None:
        """A dead actor leaves every event it subscribed to; its own events end with ``reason``."""
        subs = getattr(actor, "_mk_subs", None)
        if subs:
            actor._mk_subs = None  # type: ignore[attr-defined]
            for name in subs:
                event = self.by_name.get(name)
                if event is not None:
                    event.subs.pop(actor, None)  # type: ignore[call-overload]
        produced = getattr(actor, "_mk_events", None)
        if produced:
            for name in list(produced):
                self.unregister(actor, name, reason)  # type: ignore[arg-type]

    def unwatch(self, actor: Mailbox, name: str) -> None:
        """A dead watcher's event monitor on ``name`` goes."""
        event = self.by_name.get(name)
        if event is not None:
            event.subs.pop(actor, None)  # type: ignore[call-overload]
