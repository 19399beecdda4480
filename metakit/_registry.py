"""The node's registry: the routing table of live actors and the registered names.

The table maps the int ``id`` of a PID or Alias to its live actor: the send
hot path is one dict lookup with a C-level hash (``Process.send`` reads
``table[to.id]`` directly). An actor is in the table from spawn until it is
reaped, so whatever the table holds is alive (or ending).

On a cluster node (DESIGN.md §8) :attr:`Registry.remote` is the cluster's
router: :meth:`Registry.route` hands it what the table and the names miss,
and it answers with a stand-in for the remote actor (``_mk_remote`` true)
that the send, call, exit, link and monitor paths treat like a local one.
:meth:`Registry.lookup` stays local: introspection and ``wait_exit`` never
leave the node.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from .errors import NameTaken, NoProcess
from .ids import PID, Alias

if TYPE_CHECKING:
    from .mailbox import Mailbox
    from .process import Process

__all__ = ["Registry", "Router"]


class Router(Protocol):
    """What a cluster gives the registry (``metakit.cluster`` implements it)."""

    def route(self, to: PID | Alias) -> Mailbox | None:
        """A stand-in for a live remote node's actor, or None (not a node we know)."""

    def route_name(self, name: str) -> Mailbox | None:
        """A stand-in for the holder of cluster name ``name``, or None."""

    def whereis(self, name: str) -> PID | None:
        """The holder of cluster name ``name``, or None."""

    def released(self, name: str, proc: Mailbox) -> None:
        """``proc`` has dropped (or died with) its name ``name``."""


class Registry:
    """Live actors by id, and processes by name.

    Attributes:
        table: ``{id: actor}`` for every live process and meta, oldest first.
        names: ``{name: process}``.
    """

    __slots__ = ("names", "node_name", "remote", "table")

    def __init__(self, node_name: str = "") -> None:
        self.table: dict[int, Mailbox] = {}
        self.names: dict[str, Process] = {}
        self.node_name = node_name
        self.remote: Router | None = None

    def lookup(self, to: Any) -> Mailbox | None:
        """The live actor a PID, Alias or name stands for, or None."""
        cls = to.__class__
        if cls is PID or cls is Alias:
            return self.table.get(to.id)
        if cls is str:
            return self.names.get(to)
        raise TypeError(f"expected a PID, an Alias or a registered name, not {to!r}")

    def resolve(self, to: Any) -> Mailbox:
        """:meth:`lookup`, raising NoProcess for nothing."""
        actor = self.lookup(to)
        if actor is None:
            raise NoProcess(to)
        return actor

    def route(self, to: Any) -> Mailbox:
        """Where a message for ``to`` goes: a local actor, or a remote stand-in.

        Raises:
            NoProcess: nothing answers to ``to`` here, nor (on a cluster) on a live node.
        """
        actor = self.lookup(to)
        if actor is None and self.remote is not None:
            if to.__class__ is str:
                actor = self.remote.route_name(to)
            elif to.node != self.node_name:
                actor = self.remote.route(to)
        if actor is None:
            raise NoProcess(to)
        return actor

    def remove(self, actor: Mailbox) -> None:
        """Take a dead actor out of the table and drop its name."""
        ident = actor._mk_ident
        self.table.pop(ident.id, None)
        name = getattr(actor, "_mk_name", None)
        if name is not None and self.names.get(name) is actor:
            del self.names[name]
            if self.remote is not None:
                self.remote.released(name, actor)

    def processes(self) -> list[PID]:
        """PIDs of the live processes, oldest first."""
        return [i for i in (a._mk_ident for a in self.table.values()) if i.__class__ is PID]

    def metas(self) -> list[Alias]:
        """Aliases of the live metas, oldest first."""
        return [i for i in (a._mk_ident for a in self.table.values()) if i.__class__ is Alias]

    def register(self, name: str, pid: PID) -> None:
        """Register ``pid`` under ``name`` (see ``Node.register_name``)."""
        proc = self.table.get(pid.id)
        if proc is None or pid.__class__ is not PID:
            raise NoProcess(pid)
        owner = self.names.get(name)
        if owner is not None:
            raise NameTaken(name, owner._mk_pid)
        current = proc._mk_name  # type: ignore[attr-defined]
        if current is not None:
            raise NameTaken(name, None, f"{pid!r} is already registered as {current!r}")
        self.names[name] = proc  # type: ignore[assignment]
        proc._mk_name = name  # type: ignore[attr-defined]

    def unregister(self, name: str) -> PID | None:
        """Drop a name; the PID it pointed to, or None."""
        proc = self.names.pop(name, None)
        if proc is None:
            return None
        proc._mk_name = None
        if self.remote is not None:
            self.remote.released(name, proc)
        return proc._mk_pid

    def whereis(self, name: str) -> PID | None:
        """The PID registered under ``name`` here, else (on a cluster) anywhere, or None."""
        proc = self.names.get(name)
        if proc is not None:
            return proc._mk_pid
        return self.remote.whereis(name) if self.remote is not None else None
