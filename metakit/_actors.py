"""Birth and death of actors: spawning processes and metas, undoing a failed
spawn, and reaping the dead (what a death sets off, in one place).

A spawn puts the actor in the routing table before its ``init`` runs (so it
can be named, linked and sent to from there; deliveries queue until ``init``
has finished). A death takes it out, fails the calls it held, ends its metas
(a forced exit with its reason), tells links, monitors and ``wait_exit``, and
drops what it watched or produced.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from ._envelope import Signal
from ._state import DEAD, EXITING
from .errors import NoProcess, ProcessExited, Stop
from .ids import PID, Alias, _next_id
from .mailbox import Mailbox, current_actor
from .meta import Meta
from .process import Process

if TYPE_CHECKING:
    from .node import Node

__all__ = ["Actors"]

P = TypeVar("P", bound=Process)


class Actors:
    """Spawns and reaps the actors of one node.

    Args:
        node: the node whose table, links and events it keeps.
    """

    __slots__ = ("node",)

    def __init__(self, node: Node) -> None:
        self.node = node

    async def spawn(
        self,
        cls: type[P],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        parent: Process | None,
        name: str | None,
        link: bool,
        mailbox_size: int,
        env: Mapping[str, Any] | None,
    ) -> PID:
        self.node._check_running()
        if not (isinstance(cls, type) and issubclass(cls, Process)):
            raise TypeError(f"spawn() needs a Process subclass, not {cls!r}")
        proc = cls()
        pid = PID(self.node.name, _next_id())
        merged = dict(parent._mk_env) if parent is not None and parent._mk_env else None
        if env:
            merged = {**(merged or {}), **env}
        proc._mk_setup(
            self.node, pid, parent._mk_pid if parent else self.node._pid, mailbox_size, merged
        )
        self.node._registry.table[pid.id] = proc
        try:
            if name is not None:
                self.node._registry.register(name, pid)
            if link and parent is not None:
                self.node._links.link(parent, proc)
            token = current_actor.set(proc)  # stop() awaited in init must not wait for itself
            try:
                result = proc.init(*args, **kwargs)
                if result is not None:
                    await result
            finally:
                current_actor.reset(token)
        except BaseException as exc:
            self.abort(proc, exc, parent)
            if isinstance(exc, Stop):
                raise ProcessExited(pid, exc.reason) from exc
            raise
        if proc._mk_state == DEAD:
            raise ProcessExited(pid, "kill")
        proc._mk_release()
        return pid

    async def spawn_meta(self, meta: Meta, parent: Process, mailbox_size: int) -> Alias:
        alias = self._add_meta(meta, parent, mailbox_size)
        try:
            await meta.init()
        except BaseException as exc:
            self.abort(meta, exc)
            raise
        self._run_meta(meta)
        return alias

    def spawn_meta_now(self, meta: Meta, parent: Process, mailbox_size: int = 0) -> Alias:
        alias = self._add_meta(meta, parent, mailbox_size)
        self._run_meta(meta)
        return alias

    def _add_meta(self, meta: Meta, parent: Process, mailbox_size: int) -> Alias:
        self.node._check_running()
        if not isinstance(meta, Meta):
            raise TypeError(f"spawn_meta() needs a Meta instance, not {meta!r}")
        if parent._mk_state >= EXITING:  # init is fine: servers bind in init
            raise NoProcess(parent._mk_pid)
        alias = Alias(self.node.name, _next_id())
        meta._mk_setup(self.node, alias, parent, mailbox_size or meta.mailbox_size)
        self.node._registry.table[alias.id] = meta
        if parent._mk_metas is None:
            parent._mk_metas = set()
        parent._mk_metas.add(meta)
        return alias

    def _run_meta(self, meta: Meta) -> None:
        if meta._mk_state == DEAD:
            raise ProcessExited(meta._mk_alias, "kill")
        meta._mk_release()
        meta._mk_start_main()
        if meta._mk_main is not None:
            self.node._shutdown.track_task(meta._mk_main)

    def abort(self, actor: Mailbox, reason: Any, spawner: Mailbox | None = None) -> None:
        """Undo a spawn whose init failed: the spawner hears it as an exception,
        not an exit signal; anything else linked (children spawned in init) is
        told as usual; metas are closed now."""
        if actor._mk_state == DEAD:
            return
        if spawner is not None:
            self.node._links.unlink(actor, spawner)
        for meta in list(getattr(actor, "_mk_metas", None) or ()):
            meta._mk_end(reason)
        self.reap(actor, reason)

    def reap(self, actor: Mailbox, reason: Any) -> None:
        """Remove a dead actor and tell everyone who asked to know."""
        if actor._mk_state == DEAD:
            return
        actor._mk_state = DEAD
        actor._mk_limit = -1
        self.node._registry.remove(actor)
        actor._mk_fail_calls(reason)
        if isinstance(actor, Process):
            sender = actor._mk_pid
            metas = actor._mk_metas
            if metas:
                actor._mk_metas = None
                parent_exit = Signal(sender, sender, reason, forced=True)
                for meta in list(metas):
                    meta._mk_signal(parent_exit)
        else:
            sender = actor._mk_parent_proc._mk_pid  # type: ignore[attr-defined]
            owner = actor._mk_parent_proc._mk_metas  # type: ignore[attr-defined]
            if owner:
                owner.discard(actor)
        self.node._links.actor_died(actor, sender, reason)
        self.node._events.forget(actor, reason)
        if isinstance(actor, Process):
            self.node._groups.forget(actor)
        waiters = actor._mk_waiters
        if waiters:
            actor._mk_waiters = None
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(reason)
        if not self.node._registry.table:
            self.node._shutdown.table_empty()
