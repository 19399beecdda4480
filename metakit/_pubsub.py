"""The node's pub/sub: links, monitors and events, and what a death sets off.

Bookkeeping lives on the actors so a death is handled in time proportional
to what that actor was part of:

* ``actor._mk_links``: the actors linked to it (both sides hold the other);
* ``actor._mk_monitors``: ``{ref: watcher}`` for the monitors set *on* it;
* ``process._mk_watching``: ``{ref: target actor | event name}`` for the
  monitors it holds;
* ``process._mk_subs``: ``{event name: ref | None}`` (None for ``link_event``);
* ``process._mk_events``: the events it produces; ``node._mk_events[name]`` holds
  the subscribers, so ``send_event`` is one pass over a dict.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import MailboxFull, NameTaken, UnknownEvent
from .ids import PID, Alias, Ref, _next_id
from .mailbox import Mailbox, Signal
from .messages import Down, EventMessage

if TYPE_CHECKING:
    from .process import Process

__all__: list[str] = []


class _Event:
    __slots__ = ("dropped", "name", "producer", "subs")

    def __init__(self, name: str, producer: Process) -> None:
        self.name = name
        self.producer = producer
        self.subs: dict[Process, Ref | None] = {}
        self.dropped = 0


class PubSub:
    """Mixed into Node: links, monitors, events."""

    name: str
    _mk_pid: PID
    _mk_events: dict[str, _Event]

    def _lookup(self, to: Any) -> Mailbox | None:
        raise NotImplementedError

    def _sender_of(self, actor: Mailbox) -> PID:
        raise NotImplementedError

    # -- links -----------------------------------------------------------------

    def _link(self, a: Mailbox, b: Mailbox) -> None:
        if a is b:
            return
        if a._mk_links is None:
            a._mk_links = set()
        if b._mk_links is None:
            b._mk_links = set()
        a._mk_links.add(b)
        b._mk_links.add(a)

    def _unlink(self, a: Mailbox, b: Mailbox) -> None:
        if a._mk_links:
            a._mk_links.discard(b)
        if b._mk_links:
            b._mk_links.discard(a)

    # -- monitors --------------------------------------------------------------

    def _monitor(self, watcher: Mailbox, target: PID | Alias | str) -> Ref:
        ref = Ref(self.name, _next_id())
        actor = self._lookup(target)
        if actor is None:
            watcher._mk_deliver_system(self._mk_pid, Down(target, ref, "noproc"))
            return ref
        if actor._mk_monitors is None:
            actor._mk_monitors = {}
        actor._mk_monitors[ref] = watcher
        if watcher._mk_watching is None:
            watcher._mk_watching = {}
        watcher._mk_watching[ref] = actor
        return ref

    def _demonitor(self, watcher: Mailbox, ref: Ref) -> None:
        target = watcher._mk_watching.pop(ref, None) if watcher._mk_watching else None
        if isinstance(target, str):
            self._unsubscribe(watcher, target)  # type: ignore[arg-type]
        elif target is not None and target._mk_monitors:
            target._mk_monitors.pop(ref, None)
        # A Down already queued for this ref must not arrive after demonitor.
        q = watcher._mk_q
        for i in range(1, len(q), 2):
            message = q[i]
            if message.__class__ is Down and message.ref == ref:
                del q[i]
                del q[i - 1]
                break

    # -- events ----------------------------------------------------------------

    def _register_event(self, producer: Process, name: str) -> None:
        event = self._mk_events.get(name)
        if event is not None:
            raise NameTaken(name, event.producer._mk_pid, "event already registered")
        self._mk_events[name] = _Event(name, producer)
        if producer._mk_events is None:
            producer._mk_events = set()
        producer._mk_events.add(name)

    def _unregister_event(self, producer: Process, name: str, reason: Any) -> None:
        event = self._mk_events.get(name)
        if event is None or event.producer is not producer:
            raise UnknownEvent(name, producer._mk_pid)
        del self._mk_events[name]
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

    def _send_event(self, producer: Process, name: str, message: Any) -> int:
        event = self._mk_events.get(name)
        if event is None or event.producer is not producer:
            raise UnknownEvent(name, producer._mk_pid)
        # One shared value and one append per subscriber: no Task, no copy.
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

    def _subscribe(self, sub: Process, name: str, *, monitor: bool) -> Ref:
        event = self._mk_events.get(name)
        ref = Ref(self.name, _next_id())
        if event is None:
            if not monitor:
                raise UnknownEvent(name)
            sub._mk_deliver_system(self._mk_pid, Down(name, ref, "noproc"))
            return ref
        if sub._mk_subs and name in sub._mk_subs:
            self._unsubscribe(sub, name)
        event.subs[sub] = ref if monitor else None
        if sub._mk_subs is None:
            sub._mk_subs = {}
        sub._mk_subs[name] = ref if monitor else None
        if monitor:
            if sub._mk_watching is None:
                sub._mk_watching = {}
            sub._mk_watching[ref] = name
        return ref

    def _unsubscribe(self, sub: Process, name: str) -> None:
        ref = sub._mk_subs.pop(name, None) if sub._mk_subs else None
        event = self._mk_events.get(name)
        if event is not None:
            event.subs.pop(sub, None)
        if ref is not None and sub._mk_watching:
            sub._mk_watching.pop(ref, None)

    # -- death -------------------------------------------------------------------

    def _notify_death(self, actor: Mailbox, reason: Any) -> None:
        """Tell links and monitors; drop what the dead actor watched or produced."""
        ident = actor._mk_ident
        sender = self._sender_of(actor)
        links = actor._mk_links
        if links:
            actor._mk_links = None
            # As in Erlang: a kill travels over links as "killed", which can
            # be trapped, so one kill does not take down a whole linked tree.
            link_reason = "killed" if reason == "kill" else reason
            for other in links:
                if other._mk_links:
                    other._mk_links.discard(actor)
                other._mk_signal(Signal(ident, sender, link_reason, link=True))
        monitors = actor._mk_monitors
        if monitors:
            actor._mk_monitors = None
            for ref, watcher in monitors.items():
                if watcher._mk_watching:
                    watcher._mk_watching.pop(ref, None)
                watcher._mk_deliver_system(sender, Down(ident, ref, reason))
        watching = actor._mk_watching
        if watching:
            actor._mk_watching = None
            for ref, target in watching.items():
                if isinstance(target, str):
                    event = self._mk_events.get(target)
                    if event is not None:
                        event.subs.pop(actor, None)  # type: ignore[call-overload]
                elif target._mk_monitors:
                    target._mk_monitors.pop(ref, None)
        subs = getattr(actor, "_mk_subs", None)
        if subs:
            actor._mk_subs = None  # type: ignore[attr-defined]
            for name in subs:
                event = self._mk_events.get(name)
                if event is not None:
                    event.subs.pop(actor, None)  # type: ignore[call-overload]
        produced = getattr(actor, "_mk_events", None)
        if produced:
            for name in list(produced):
                self._unregister_event(actor, name, reason)  # type: ignore[arg-type]
