"""Cluster names (DESIGN.md §8, Names and Events): namespace-wide names of
processes, and of events.

Theory of operation
-------------------

A cluster name is a key ``name.<name>`` of the namespace's KV bucket
(``mk-<ns>``) holding ``[name, node, creation, id]``; a cluster event's is
``e.<name>`` with its producer, and is kept the same way by a second
:class:`Names` whose local half is the node's events
(:class:`~metakit._remote.EventClaims`). Claiming one is an
atomic create, after the local registry has taken the name (its checks
raise there, and a local name shadows one held elsewhere); a key whose
holder's run is not up is taken over with an update on the revision read,
so of two claimants one wins. The revision a node holds a name at is what
it releases: a delete on that revision never undoes a newer holder.

Every node watches ``name.>`` into a local view (``whereis`` never waits):
the current keys first, up to the watch's marker, then each change. The
owner releases its key when its process ends or drops the name; the
survivors release the names of a node that goes down. A node that is
leaving, or is cut off from the server itself, drops those names from its
view but leaves their keys alone: it is no judge of the others (its deletes
would go out on its reconnect and undo live holders), and a key whose
holder is gone is taken over by the next claim anyway.

On reconnect the node reclaims each name it holds (creating the key again
on a server that lost its state, giving the name up if another live node
holds it now) and restarts the watch. The restarted view keeps the names
of the peers still up until they have re-asserted them (a bounded wait):
a server that lost its state must not make a live name unknown for the
moment its holder takes to reconnect.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Protocol

import nats.js.errors

from ..errors import NameTaken
from ..ids import PID
from ..mailbox import Mailbox
from ._peer import token
from ._watch import KeyWatch

if TYPE_CHECKING:
    from .cluster import Cluster

__all__ = ["Local", "Names"]


class Local(Protocol):
    """The local half of a kind of cluster name (:class:`~metakit._remote.Remote`
    for process names, :class:`~metakit._remote.EventClaims` for events)."""

    def claim_local(self, name: str, pid: PID) -> Mailbox:
        """Take ``name`` for ``pid`` here (the local checks raise); a handle."""

    def holds(self, proc: Mailbox, name: str) -> bool:
        """Whether ``proc`` still holds ``name`` here."""

    def ident(self, proc: Mailbox) -> PID:
        """The PID of a handle."""

    def unclaim(self, name: str, proc: Mailbox) -> None:
        """Give ``name`` up here (the cluster refused it)."""

    def alive(self, ident: int) -> bool:
        """Whether the local actor of id ``ident`` is alive."""


class Names:
    """The cluster names of one kind of one node: the view of all, and those held here.

    Args:
        cluster: the attached cluster it serves (its bucket, codec, peers).
        local: the local half.
        prefix: the keys' first token (``name``, ``e``).
        kind: what the log calls them.

    Attributes:
        view: ``{name: (holder, revision)}``, every cluster name as the watch has it.
        owned: ``{name: (process, revision)}``, the names held by processes here.
    """

    def __init__(
        self, cluster: Cluster, local: Local, prefix: str = "name", kind: str = "cluster name"
    ) -> None:
        self._cluster = cluster
        self._local = local
        self._prefix = prefix
        self._kind = kind
        self._codec = cluster._codec
        self._loop = cluster._loop
        self.view: dict[str, tuple[PID, int]] = {}
        self._keys: dict[str, str] = {}  # KV key -> name, for the deletes
        self.owned: dict[str, tuple[Mailbox, int]] = {}
        self._watch = KeyWatch(self._apply)

    def register(self, name: str, pid: PID) -> Awaitable[None]:
        """Claim ``name`` for local process ``pid``: the local name now, the key in a task."""
        proc = self._local.claim_local(name, pid)  # the local checks raise here
        return self._loop.create_task(self._claim(name, proc))

    def _key(self, name: str) -> str:
        return f"{self._prefix}.{token(name)}"

    def _value(self, name: str, proc: Mailbox) -> bytes:
        c = self._cluster
        return self._codec.pack([name, c.name, c.creation, self._local.ident(proc).id])

    async def _claim(self, name: str, proc: Mailbox) -> None:
        key = self._key(name)
        value = self._value(name, proc)
        try:
            rev, holder = await self._take_stale(key, name, value)
        except BaseException:
            self._local.unclaim(name, proc)
            raise
        if rev is None:
            held = self.view.get(name)
            self._local.unclaim(name, proc)
            raise NameTaken(name, held[0] if held else holder)
        if not self._local.holds(proc, name):
            await self._release_key(name, rev)  # it ended, or dropped the name, meanwhile
            return
        self.owned[name] = (proc, rev)
        self.view[name] = (self._local.ident(proc), rev)

    async def _take_stale(self, key: str, name: str, value: bytes) -> tuple[int | None, PID | None]:
        """Create ``key``, or take it over from a holder whose node is not up:
        the revision, or None and the live holder met (the view may lag).
        Retries the races with a concurrent release."""
        c = self._cluster
        for _ in range(5):
            try:
                return int(await c._kv.create(key, value)), None
            except nats.js.errors.KeyWrongLastSequenceError:
                pass
            try:
                entry = await c._kv.get(key)
            except nats.js.errors.KeyNotFoundError:
                continue  # released meanwhile: create it
            _, holder, creation, ident = self._cluster._unpack(entry.value)
            peer = c._peers.get(holder)
            if (peer is not None and peer.creation == creation) or (
                holder == c.name and creation == c.creation and self._local.alive(ident)
            ):  # a live holder (a holder here that ended is being released)
                return None, PID(holder, ident)
            try:
                return int(await c._kv.update(key, value, last=entry.revision)), None
            except nats.js.errors.KeyWrongLastSequenceError:
                continue
        return None, None

    def holder(self, name: str) -> PID | None:
        """The holder of ``name`` in the view, or None."""
        held = self.view.get(name)
        return held[0] if held is not None else None

    async def reclaim(self) -> None:
        """After a reconnect: assert every name held here again."""
        for name, (proc, _rev) in list(self.owned.items()):
            await self._reclaim(name, proc)

    async def _reclaim(self, name: str, proc: Mailbox) -> None:
        c = self._cluster
        key = self._key(name)
        value = self._value(name, proc)
        try:
            entry = await c._kv.get(key)
            holder, creation = self._cluster._unpack(entry.value)[1:3]
            if holder == c.name and creation == c.creation:
                self.owned[name] = (proc, entry.revision)
                return
            rev, _ = await self._take_stale(key, name, value)
        except nats.js.errors.KeyNotFoundError:
            # Gone (a server that lost its state): create it again, minding a
            # claimant that creates it first.
            rev, _ = await self._take_stale(key, name, value)
        if rev is None:
            c._log.warning("%s %r is held elsewhere now; dropping it here", self._kind, name)
            self.owned.pop(name, None)
            self._local.unclaim(name, proc)
        else:
            self.owned[name] = (proc, rev)

    def released(self, name: str) -> None:
        """The local process holding ``name`` dropped it or ended: free the key."""
        owned = self.owned.get(name)
        if owned is not None:
            del self.owned[name]
            self.view.pop(name, None)
            self._cluster._spawn(self._release_key(name, owned[1]))

    def node_down(self, node: str) -> None:
        """``node`` is down: drop the names held there, and free their keys
        unless this node is leaving or cut off itself."""
        c = self._cluster
        release = c._connected and not c._leaving
        for name, (pid, rev) in list(self.view.items()):
            if pid.node == node:
                del self.view[name]
                if release:
                    c._spawn(self._release_key(name, rev))

    async def _release_key(self, name: str, rev: int) -> None:
        with contextlib.suppress(Exception):
            await self._cluster._kv.delete(self._key(name), last=rev)

    # -- the watch ------------------------------------------------------------------------

    async def watch(self) -> None:
        """(Re)start the watch: load the current names, then follow the changes.

        On a restart, the names of a peer that is still up stay in the view
        while it re-asserts them (a server that lost its state has none of
        them yet): until its own write replaces one, it goes down, or
        a bounded time passes.
        """
        c = self._cluster
        old = self.view
        view = await self._watch.start(c._kv, f"{self._prefix}.>", {})
        for name, (proc, rev) in self.owned.items():
            view.setdefault(name, (self._local.ident(proc), rev))
        peers = c._peers
        carried = {n: held for n, held in old.items() if n not in view and held[0].node in peers}
        if carried:
            view.update(carried)
            self._watch.later(c._carry_for, self._uncarry, view, carried)
        self.view = view

    @staticmethod
    def _uncarry(view: dict[str, tuple[PID, int]], carried: dict[str, tuple[PID, int]]) -> None:
        for name, held in carried.items():
            if view.get(name) is held:  # not re-asserted: gone with the old server
                del view[name]

    def _apply(self, view: dict[str, tuple[PID, int]], entry: Any) -> None:
        if entry.operation in ("DEL", "PURGE"):
            name = self._keys.pop(entry.key, None)
            if name is not None:
                view.pop(name, None)
                owned = self.owned.get(name)
                if owned is not None and self._local.holds(owned[0], name):
                    # Freed by the others while we hold it: they judged this node
                    # down (it stalled past the limit). Claim it again.
                    self._cluster._log.warning(
                        "%s %r was freed under us; claiming it again", self._kind, name
                    )
                    self._cluster._spawn(self._reclaim(name, owned[0]))
            return
        try:
            name, node, _creation, ident = self._cluster._unpack(entry.value)
            view[name] = (PID(node, ident), entry.revision)
        except Exception as exc:
            self._cluster._log_limited(
                self._prefix, "a %s entry does not decode: %r", self._kind, exc
            )
            return
        self._keys[entry.key] = name

    async def close(self) -> None:
        """Stop following the names (the connection is closing)."""
        await self._watch.close()
