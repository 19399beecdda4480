"""Process groups across nodes (DESIGN.md §8, Groups).

Each node writes its own members of a group as one key of the namespace's
bucket, ``g.<group>.<node>`` = ``[node, creation, [ids]]``, whenever they
change (coalesced: one write per group per loop turn; ``join_group``
awaits it, so every other node's view has it within a heartbeat), and
deletes it when the last one leaves. Every node watches ``g.>`` into a view
``{group: {node: (creation, [PID, ...])}}``; :meth:`ClusterGroups.members`
reads the entries of live runs only, so a node that goes down leaves its
groups at once, and the survivors delete its keys.

``send_group`` is one frame per node with members (the same bytes for
each), which that node fans out to its members; ``call_group`` is a call to
one member, round-robin over all (:mod:`metakit._groups`).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from .._remote_actors import SEND_GROUP
from ..ids import PID
from ._peer import token
from ._watch import KeyWatch

if TYPE_CHECKING:
    from .cluster import Cluster

__all__ = ["ClusterGroups"]


class ClusterGroups:
    """The groups' view and writes of one cluster (the core's ``Groups.remote``).

    Args:
        cluster: the attached cluster it serves.
    """

    def __init__(self, cluster: Cluster) -> None:
        self._cluster = cluster
        self._loop = cluster._loop
        self._local = cluster._node._groups  # type: ignore[union-attr]
        self.view: dict[str, dict[str, tuple[int, list[PID]]]] = {}
        self._dirty: dict[str, asyncio.Future[None]] = {}
        self._watch = KeyWatch(self._apply)

    def _key(self, group: str, node: str | None = None) -> str:
        return f"g.{group}.{token(node or self._cluster.name)}"

    # -- this node's members --------------------------------------------------------

    def changed(self, group: str) -> asyncio.Future[None]:
        """The local members of ``group`` changed: write them at the end of this turn."""
        done = self._dirty.get(group)
        if done is None:
            done = self._dirty[group] = self._loop.create_future()
            self._loop.call_soon(self._write_soon, group)
        return done

    def _write_soon(self, group: str) -> None:
        self._cluster._spawn(self._write(group))

    async def _write(self, group: str) -> None:
        done = self._dirty.pop(group, None)
        c = self._cluster
        try:
            members = self._local.local(group)
            key = self._key(group)
            if members:
                value = c._codec.pack([c.name, c.creation, [p.id for p in members]])
                await c._kv.put(key, value)
            else:
                with contextlib.suppress(Exception):
                    await c._kv.delete(key)
        except Exception as exc:
            c._log_limited("groups", "writing group %r failed: %r", group, exc)
        finally:
            if done is not None and not done.done():
                done.set_result(None)

    async def reassert(self) -> None:
        """After a reconnect: write every local group again."""
        for group in list(self._local.by_name):
            await self._write(group)

    # -- the other nodes' members ------------------------------------------------------

    def members(self, group: str) -> list[PID]:
        """The members of ``group`` on the other live nodes."""
        entries = self.view.get(group)
        if not entries:
            return []
        peers = self._cluster._peers
        found: list[PID] = []
        for node in sorted(entries):
            creation, pids = entries[node]
            peer = peers.get(node)
            if peer is not None and peer.creation == creation:
                found += pids
        return found

    def send(self, sender: PID, group: str, message: Any) -> int:
        """One frame per other node with members of ``group``; how many nodes."""
        entries = self.view.get(group)
        if not entries:
            return 0
        peers = self._cluster._peers
        targets = [
            peers[node]
            for node, (creation, pids) in entries.items()
            if pids and node in peers and peers[node].creation == creation
        ]
        if targets:
            self._cluster.queue_many(targets, (SEND_GROUP, group, sender.id, message), group)
        return len(targets)

    def node_down(self, node: str) -> None:
        """``node`` is down: out of every group's view; free its keys unless this
        node is leaving or cut off itself."""
        c = self._cluster
        release = c._connected and not c._leaving
        for group, entries in list(self.view.items()):
            if entries.pop(node, None) is not None and release:
                c._spawn(self._delete(self._key(group, node)))
            if not entries:
                del self.view[group]

    async def _delete(self, key: str) -> None:
        with contextlib.suppress(Exception):
            await self._cluster._kv.delete(key)

    # -- the watch ----------------------------------------------------------------------

    async def watch(self) -> None:
        """(Re)start the watch: load the groups, then follow them.

        On a restart, the members of a peer still up stay in the view while it
        writes them again (as names do, :meth:`~._names.Names.watch`).
        """
        c = self._cluster
        old = self.view
        view = await self._watch.start(c._kv, "g.>", {})
        carried = []
        for group, entries in old.items():
            for node, held in entries.items():
                peer = c._peers.get(node)
                live = peer is not None and peer.creation == held[0]
                if live and node not in view.get(group, ()):
                    view.setdefault(group, {})[node] = held
                    carried.append((group, node, held))
        if carried:
            self._watch.later(c._carry_for, self._uncarry, view, carried)
        self.view = view

    @staticmethod
    def _uncarry(view: dict[str, dict[str, tuple[int, list[PID]]]], carried: list[Any]) -> None:
        for group, node, held in carried:
            entries = view.get(group)
            if entries is not None and entries.get(node) is held:  # not written again
                del entries[node]
                if not entries:
                    del view[group]

    def _apply(self, view: dict[str, dict[str, tuple[int, list[PID]]]], entry: Any) -> None:
        c = self._cluster
        try:
            _, group, _node_token = entry.key.split(".", 2)
            if entry.operation in ("DEL", "PURGE"):
                for node in list(view.get(group, ())):
                    if self._key(group, node) == entry.key:
                        del view[group][node]
                if group in view and not view[group]:
                    del view[group]
                if entry.key == self._key(group) and self._local.by_name.get(group):
                    self.changed(group)  # freed by the others (they judged us down): again
                return
            node, creation, ids = c._unpack(entry.value)
            if node == c.name:
                return  # our own: the local groups have them
            view.setdefault(group, {})[node] = (creation, [PID(node, i) for i in ids])
        except Exception as exc:
            c._log_limited("groups", "a group entry does not decode: %r", exc)

    async def close(self) -> None:
        """Stop following (the connection is closing, or the watch restarts)."""
        await self._watch.close()

    async def delete_own(self) -> None:
        """Leaving: delete this node's keys."""
        for group in list(self._local.by_name):
            await self._delete(self._key(group))
