"""The node's links and monitors, and what a death sets off.

Bookkeeping lives on the actors so a death costs time in proportion to what
that actor was part of:

* ``actor._mk_links``: the actors linked to it (both sides hold the other);
* ``actor._mk_monitors``: ``{ref: watcher}`` for the monitors set *on* it;
* ``actor._mk_watching``: ``{ref: target actor | event name}`` for the
  monitors it holds (an event's monitors are kept by :mod:`._events`).

A cluster's stand-in for a remote actor (``_mk_remote``, see
:mod:`._registry`) keeps the same three attributes for its side, so a death
here walks them unchanged; the four ``_mk_remote_*`` calls below tell the
remote node what changed, and the stand-in turns a signal or a ``Down``
delivered to it into a frame for that node. :meth:`Links.tie` and
:meth:`Links.watch` record a link or a monitor without those calls: the
cluster records what another node told it that way, so the news does not
bounce back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._envelope import Signal
from .errors import NoProcess
from .ids import PID, Alias, Ref, _next_id
from .messages import Down

if TYPE_CHECKING:
    from ._events import Events
    from ._registry import Registry
    from .mailbox import Mailbox

__all__ = ["Links"]


class Links:
    """Links and monitors between the actors of one node.

    Args:
        node_name: the node's name (for the Refs it makes).
        node_pid: the node's PID (the sender of ``Down(..., "noproc")``).
        registry: where targets are looked up.
        events: the node's events (a monitor may watch an event).
    """

    __slots__ = ("events", "node_name", "node_pid", "registry")

    def __init__(self, node_name: str, node_pid: PID, registry: Registry, events: Events) -> None:
        self.node_name = node_name
        self.node_pid = node_pid
        self.registry = registry
        self.events = events

    def link(self, a: Mailbox, b: Mailbox) -> None:
        """Tie two lives together, both ways."""
        if a is b:
            return
        fresh = not a._mk_links or b not in a._mk_links
        self.tie(a, b)
        if fresh and b._mk_remote:
            b._mk_remote_link(a)

    @staticmethod
    def tie(a: Mailbox, b: Mailbox) -> None:
        """Record a link both ways, telling no other node (a cluster's inbound
        ``LINK`` uses this: the node that sent it has recorded its side)."""
        if a._mk_links is None:
            a._mk_links = set()
        if b._mk_links is None:
            b._mk_links = set()
        a._mk_links.add(b)
        b._mk_links.add(a)

    def unlink(self, a: Mailbox, b: Mailbox) -> None:
        """Remove a link, if there is one."""
        linked = bool(a._mk_links) and b in a._mk_links  # type: ignore[operator]
        if a._mk_links:
            a._mk_links.discard(b)
        if b._mk_links:
            b._mk_links.discard(a)
        if linked and b._mk_remote:
            b._mk_remote_unlink(a)

    def monitor(self, watcher: Mailbox, target: PID | Alias | str) -> Ref:
        """Watch ``target``: one ``Down`` when it ends (at once, ``"noproc"``, if gone).

        A target on a node that is not up gets ``"noconnection"`` at once.
        """
        ref = Ref(self.node_name, _next_id())
        try:
            actor = self.registry.route(target)
        except NoProcess:
            actor = None
        if actor is None:
            remote = (
                self.registry.remote is not None
                and target.__class__ is not str
                and target.node != self.node_name  # type: ignore[union-attr]
            )
            reason = "noconnection" if remote else "noproc"
            watcher._mk_deliver_system(self.node_pid, Down(target, ref, reason))
            return ref
        self.watch(watcher, actor, ref)
        if actor._mk_remote:
            actor._mk_remote_monitor(watcher, ref)
        return ref

    @staticmethod
    def watch(watcher: Mailbox, actor: Mailbox, ref: Ref) -> None:
        """Record that ``watcher`` monitors ``actor`` under ``ref``, telling no
        other node (a cluster's inbound ``MONITOR`` uses this)."""
        if actor._mk_monitors is None:
            actor._mk_monitors = {}
        actor._mk_monitors[ref] = watcher
        if watcher._mk_watching is None:
            watcher._mk_watching = {}
        watcher._mk_watching[ref] = actor

    def demonitor(self, watcher: Mailbox, ref: Ref) -> None:
        """Stop watching; a ``Down`` for ``ref`` already queued is taken back."""
        target = watcher._mk_watching.pop(ref, None) if watcher._mk_watching else None
        if isinstance(target, str):
            self.events.unsubscribe(watcher, target)
        elif target is not None:
            if target._mk_monitors:
                target._mk_monitors.pop(ref, None)
            if target._mk_remote:
                target._mk_remote_demonitor(ref)
        watcher._mk_withdraw(lambda m: m.__class__ is Down and m.ref == ref)

    def actor_died(self, actor: Mailbox, sender: PID, reason: Any) -> None:
        """Tell links and monitors; drop the monitors the dead actor held."""
        ident = actor._mk_ident
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
                    self.events.unwatch(actor, target)
                else:
                    if target._mk_monitors:
                        target._mk_monitors.pop(ref, None)
                    if target._mk_remote:
                        target._mk_remote_demonitor(ref)
