"""The node's pub/sub: links, monitors and events, and what a death sets off.

Bookkeeping lives on the actors so a death is handled in time proportional
to what that actor was part of:

* ``actor._links``: the actors linked to it (both sides hold the other);
* ``actor._monitors``: ``{ref: watcher}`` for the monitors set *on* it;
* ``process._watching``: ``{ref: target actor | event name}`` for the
  monitors it holds;
* ``process._subs``: ``{event name: ref | None}`` (None for ``link_event``);
* ``process._events``: the events it produces; ``node._events[name]`` holds
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
    _pid: PID
    _events: dict[str, _Event]

    def _lookup(self, to: Any) -> Mailbox | None:
        raise NotImplementedError

    def _sender_of(self, actor: Mailbox) -> PID:
        raise NotImplementedError

    # -- links -----------------------------------------------------------------

    def _link(self, a: Mailbox, b: Mailbox) -> None:
        if a is b:
            return
        if a._links is None:
            a._links = set()
        if b._links is None:
            b._links = set()
        a._links.add(b)
        b._links.add(a)

    def _unlink(self, a: Mailbox, b: Mailbox) -> None:
        if a._links:
            a._links.discard(b)
        if b._links:
            b._links.discard(a)

    # -- monitors --------------------------------------------------------------

    def _monitor(self, watcher: Mailbox, target: PID | Alias | str) -> Ref:
        ref = Ref(self.name, _next_id())
        actor = self._lookup(target)
        if actor is None:
            watcher._deliver_system(self._pid, Down(target, ref, "noproc"))
            return ref
        if actor._monitors is None:
            actor._monitors = {}
        actor._monitors[ref] = watcher
        if watcher._watching is None:
            watcher._watching = {}
        watcher._watching[ref] = actor
        return ref

    def _demonitor(self, watcher: Mailbox, ref: Ref) -> None:
        target = watcher._watching.pop(ref, None) if watcher._watching else None
        if isinstance(target, str):
            self._unsubscribe(watcher, target)  # type: ignore[arg-type]
        elif target is not None and target._monitors:
            target._monitors.pop(ref, None)
        # A Down already queued for this ref must not arrive after demonitor.
        q = watcher._q
        for i in range(1, len(q), 2):
            message = q[i]
            if message.__class__ is Down and message.ref == ref:
                del q[i]
                del q[i - 1]
                break

    # -- events ----------------------------------------------------------------

    def _register_event(self, producer: Process, name: str) -> None:
        event = self._events.get(name)
        if event is not None:
            raise NameTaken(name, event.producer._pid, "event already registered")
        self._events[name] = _Event(name, producer)
        if producer._events is None:
            producer._events = set()
        producer._events.add(name)

    def _unregister_event(self, producer: Process, name: str, reason: Any) -> None:
        event = self._events.get(name)
        if event is None or event.producer is not producer:
            raise UnknownEvent(name, producer._pid)
        del self._events[name]
        if producer._events:
            producer._events.discard(name)
        for sub, ref in event.subs.items():
            if sub._subs:
                sub._subs.pop(name, None)
            if ref is None:
                sub._signal(Signal(name, producer._pid, reason, link=True))
            else:
                if sub._watching:
                    sub._watching.pop(ref, None)
                sub._deliver_system(producer._pid, Down(name, ref, reason))

    def _send_event(self, producer: Process, name: str, message: Any) -> int:
        event = self._events.get(name)
        if event is None or event.producer is not producer:
            raise UnknownEvent(name, producer._pid)
        # One shared value and one append per subscriber: no Task, no copy.
        envelope = EventMessage(name, message)
        sender = producer._pid
        delivered = 0
        dropped = 0
        for sub in event.subs:
            try:
                sub._deliver(sender, envelope)
            except MailboxFull:
                dropped += 1
            else:
                delivered += 1
        producer._out += delivered
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
        event = self._events.get(name)
        ref = Ref(self.name, _next_id())
        if event is None:
            if not monitor:
                raise UnknownEvent(name)
            sub._deliver_system(self._pid, Down(name, ref, "noproc"))
            return ref
        if sub._subs and name in sub._subs:
            self._unsubscribe(sub, name)
        event.subs[sub] = ref if monitor else None
        if sub._subs is None:
            sub._subs = {}
        sub._subs[name] = ref if monitor else None
        if monitor:
            if sub._watching is None:
                sub._watching = {}
            sub._watching[ref] = name
        return ref

    def _unsubscribe(self, sub: Process, name: str) -> None:
        ref = sub._subs.pop(name, None) if sub._subs else None
        event = self._events.get(name)
        if event is not None:
            event.subs.pop(sub, None)
        if ref is not None and sub._watching:
            sub._watching.pop(ref, None)

    # -- death -------------------------------------------------------------------

    def _notify_death(self, actor: Mailbox, reason: Any) -> None:
        """Tell links and monitors; drop what the dead actor watched or produced."""
        ident = actor._ident
        sender = self._sender_of(actor)
        links = actor._links
        if links:
            actor._links = None
            # As in Erlang: a kill travels over links as "killed", which can
            # be trapped, so one kill does not take down a whole linked tree.
            link_reason = "killed" if reason == "kill" else reason
            for other in links:
                if other._links:
                    other._links.discard(actor)
                other._signal(Signal(ident, sender, link_reason, link=True))
        monitors = actor._monitors
        if monitors:
            actor._monitors = None
            for ref, watcher in monitors.items():
                if watcher._watching:
                    watcher._watching.pop(ref, None)
                watcher._deliver_system(sender, Down(ident, ref, reason))
        watching = actor._watching
        if watching:
            actor._watching = None
            for ref, target in watching.items():
                if isinstance(target, str):
                    event = self._events.get(target)
                    if event is not None:
                        event.subs.pop(actor, None)  # type: ignore[call-overload]
                elif target._monitors:
                    target._monitors.pop(ref, None)
        subs = getattr(actor, "_subs", None)
        if subs:
            actor._subs = None  # type: ignore[attr-defined]
            for name in subs:
                event = self._events.get(name)
                if event is not None:
                    event.subs.pop(actor, None)  # type: ignore[call-overload]
        produced = getattr(actor, "_events", None)
        if produced:
            for name in list(produced):
                self._unregister_event(actor, name, reason)  # type: ignore[arg-type]
