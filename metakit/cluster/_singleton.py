"""The singleton: one instance of a process class in the namespace (DESIGN.md §8).

Every node calls ``spawn_singleton(cls, name=...)``; each keeps a task that
competes for the lease, the bucket key ``s.<name>`` written with a TTL of
``⌈3 x heartbeat⌉`` s. The node that creates it runs the instance,
registers it under the cluster name, and renews the lease every heartbeat
with ``last=`` its revision, which is the instance's fencing token: a
renewal can only succeed while nobody else has taken the key. The others
try again every half heartbeat and can only win once the key is gone: the
holder released it (its instance ended) or the server expired it (the
holder stopped renewing), so another node starts the instance within
``3 x heartbeat + 1 s`` of its node going down.

A holder that cannot renew (its node cut off, even with its TCP connection
open) stops the instance with reason ``"lease_lost"`` one heartbeat before
its lease can expire on the server: never two instances at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import nats.js.errors

from ..ids import PID
from ._peer import token

if TYPE_CHECKING:
    from .cluster import Cluster

__all__ = ["Singleton"]


class Singleton:
    """This node's part in one singleton: competing for its lease, running it when held.

    Args:
        cluster: the attached cluster.
        cls, args, kwargs: what to spawn.
        name: the singleton's cluster name (one NATS subject token).
    """

    def __init__(
        self, cluster: Cluster, cls: Any, args: tuple[Any, ...], kwargs: dict[str, Any], name: str
    ) -> None:
        self._cluster = cluster
        self._cls = cls
        self._args = args
        self._kwargs = kwargs
        self.name = name
        self._subject = f"$KV.{cluster._bucket}.s.{token(name)}"
        self.pid: PID | None = None
        self._rev = 0
        self._renewed = 0.0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> PID | None:
        """One try now, then the competing task; the instance's PID if this node runs it."""
        await self._try()
        self._task = self._cluster._loop.create_task(
            self._run(), name=f"metakit singleton {self.name}"
        )
        return self.pid

    async def _try(self) -> None:
        c = self._cluster
        live = c._liveness
        value = c._codec.pack([c.name, c.creation])
        try:
            latest = await live._latest(self._subject)
            if latest is not None and not latest[1]:
                return  # held (maybe by a node that is down: wait for its lease to expire)
            rev = await live._put(self._subject, value, latest[0] if latest else 0)
        except nats.js.errors.KeyWrongLastSequenceError:
            return  # another node won
        except Exception as exc:
            c._log_limited("singleton", "singleton %r: %r", self.name, exc)
            return
        self._rev = rev
        self._renewed = c._loop.time()
        node = c._node
        assert node is not None
        # The lease can expire before the old holder's node is judged down (the
        # lease and the heartbeats keep separate clocks): its name is then still
        # held. Start nothing until it is free, renewing the lease meanwhile.
        if not await self._name_free(value):
            await self._release()
            return
        pid = None
        try:
            pid = await node.spawn(self._cls, *self._args, **self._kwargs)
            await node.register_name(self.name, pid, cluster=True)
        except Exception as exc:
            c._log.warning("singleton %r did not start: %r", self.name, exc)
            if pid is not None:
                node.kill(pid)  # never two: an instance without the name must not run
            await self._release()
            return
        self.pid = pid
        c._log.info("singleton %r runs here as %r (lease %d)", self.name, pid, rev)

    async def _name_free(self, value: bytes) -> bool:
        """Wait (up to one lease) until no live instance holds the name; False
        if it stays held, or the lease cannot be renewed meanwhile."""
        c = self._cluster
        hb = c.heartbeat
        deadline = c._loop.time() + c._ttl
        while self._name_held():
            if c._loop.time() > deadline:
                return False
            if c._loop.time() - self._renewed >= hb / 2:
                try:
                    await self._renew(value)
                except Exception:
                    return False
            await asyncio.sleep(hb / 8)
        return True

    async def _renew(self, value: bytes) -> None:
        """Renew the lease on its revision; one that does not come back within a
        quarter heartbeat counts as failed (the lease clock does not wait)."""
        c = self._cluster
        put = c._liveness._put(self._subject, value, self._rev)
        self._rev = await asyncio.wait_for(put, c.heartbeat / 4)
        self._renewed = c._loop.time()

    def _name_held(self) -> bool:
        holder = self._cluster._names.holder(self.name)
        if holder is None:
            return False
        if holder.node == self._cluster.name:
            return self._cluster._remote.alive(holder.id)
        return holder.node in self._cluster._peers

    async def _run(self) -> None:
        c = self._cluster
        hb = c.heartbeat
        value = c._codec.pack([c.name, c.creation])
        while not c._leaving:
            if self.pid is None:
                await asyncio.sleep(hb / 2)
                await self._try()
                continue
            # Renew each heartbeat; a renewal that does not come back within a
            # quarter heartbeat counts as failed (the lease clock does not wait).
            if c._loop.time() - self._renewed >= hb and c._connected:
                node = c._node
                if node is None or node.whereis(self.name) != self.pid:
                    # The instance ended (or lost its name): free the lease for another run.
                    self.pid = None
                    await self._release()
                    continue
                try:
                    await self._renew(value)
                except nats.js.errors.KeyWrongLastSequenceError:
                    # A renewal given up on may still have landed: adopt it if it is
                    # ours; anyone else's means the lease is gone (the clock decides).
                    with contextlib.suppress(Exception):
                        latest = await c._liveness._latest(self._subject)
                        if latest is not None and not latest[1] and latest[2] == c.creation:
                            self._rev = latest[0]
                except Exception as exc:
                    c._log_limited("singleton", "singleton %r: renewing failed: %r", self.name, exc)
            # Stop a heartbeat before the server can expire the lease, fenced or cut off.
            if self.pid is not None and c._loop.time() - self._renewed > c._ttl - hb:
                c._log.warning("singleton %r lost its lease; stopping it", self.name)
                pid, self.pid = self.pid, None
                c._remote.stop(pid, "lease_lost")
                continue
            await asyncio.sleep(hb / 8)

    async def _release(self) -> None:
        if not self._cluster._connected:
            return  # it expires on the server
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                self._cluster._kv.delete(f"s.{token(self.name)}", last=self._rev), 2.0
            )

    async def close(self) -> None:
        """The node is leaving: stop competing, free the lease if held."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        if self.pid is not None:
            self.pid = None
            await self._release()
