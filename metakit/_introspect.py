"""The node's directory: registered names, lists of live actors, and snapshots of one."""

from __future__ import annotations

from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from .errors import NameTaken, NoProcess
from .ids import PID, Alias
from .info import MetaInfo, ProcessInfo
from .meta import Meta
from .process import Process

if TYPE_CHECKING:
    from .mailbox import Mailbox

__all__: list[str] = []


class Introspection:
    """Mixed into Node: names, ``processes``, ``metas``, ``process_info``, ``meta_info``."""

    _mk_table: dict[int, Mailbox]
    _names: dict[str, Process]

    def _resolve(self, to: Any) -> Mailbox:
        raise NotImplementedError

    def processes(self) -> list[PID]:
        """PIDs of the live processes, oldest first."""
        return [a._mk_pid for a in self._mk_table.values() if isinstance(a, Process)]

    def metas(self) -> list[Alias]:
        """Aliases of the live meta-processes, oldest first."""
        return [a._mk_alias for a in self._mk_table.values() if isinstance(a, Meta)]

    def process_info(self, pid: PID | str) -> ProcessInfo:
        """An immutable snapshot of a live process.

        Raises:
            NoProcess: it is not alive.
        """
        proc = self._resolve(pid)
        if not isinstance(proc, Process):
            raise NoProcess(pid)
        return ProcessInfo(
            pid=proc._mk_pid,
            name=proc._mk_name,
            parent=proc._mk_parent,
            state=proc._mk_state_name,
            mailbox=proc._mk_mailbox_len,
            mailbox_size=proc._mk_size,
            messages_in=proc._mk_in + proc._mk_mailbox_len,
            messages_out=proc._mk_out,
            handlers="coroutine" if proc._mk_async_mode else "plain",
            trap_exit=proc.trap_exit,
            links=tuple(a._mk_ident for a in proc._mk_links or ()),
            monitors=tuple(proc._mk_monitors or ()),
            metas=tuple(m._mk_alias for m in proc._mk_metas or ()),
            events=tuple(sorted(proc._mk_events or ())),
            inspect=MappingProxyType(dict(proc.handle_inspect())),
        )

    def meta_info(self, alias: Alias) -> MetaInfo:
        """An immutable snapshot of a live meta-process.

        Raises:
            NoProcess: it is not alive.
        """
        meta = self._resolve(alias)
        if not isinstance(meta, Meta):
            raise NoProcess(alias)
        return MetaInfo(
            alias=meta._mk_alias,
            parent=meta._mk_parent_proc._mk_pid,
            behavior=type(meta).__name__,
            state=meta._mk_state_name,
            mailbox=meta._mk_mailbox_len,
            mailbox_size=meta._mk_size,
            messages_in=meta._mk_in + meta._mk_mailbox_len,
            messages_out=meta._mk_out,
            main_loop=meta._mk_main_kind,
            links=tuple(a._mk_ident for a in meta._mk_links or ()),
            monitors=tuple(meta._mk_monitors or ()),
            inspect=MappingProxyType(dict(meta.handle_inspect())),
        )

    # -- names ---------------------------------------------------------------------

    def register_name(self, name: str, pid: PID) -> None:
        """Register ``pid`` under ``name``.

        Raises:
            NameTaken: the name is taken, or the process already has a name.
            NoProcess: ``pid`` is not a live process.
        """
        proc = self._mk_table.get(pid.id)
        if not isinstance(proc, Process):
            raise NoProcess(pid)
        owner = self._names.get(name)
        if owner is not None:
            raise NameTaken(name, owner._mk_pid)
        if proc._mk_name is not None:
            raise NameTaken(name, None, f"{pid!r} is already registered as {proc._mk_name!r}")
        self._names[name] = proc
        proc._mk_name = name

    def unregister_name(self, name: str) -> PID | None:
        """Drop a name; returns the PID it pointed to, or None."""
        proc = self._names.pop(name, None)
        if proc is None:
            return None
        proc._mk_name = None
        return proc._mk_pid

    def whereis(self, name: str) -> PID | None:
        """The PID registered under ``name``, or None."""
        proc = self._names.get(name)
        return proc._mk_pid if proc is not None else None
