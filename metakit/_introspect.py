"""Snapshots of one actor: what ``node.process_info`` and ``node.meta_info`` return."""

from __future__ import annotations

from types import MappingProxyType
from typing import TYPE_CHECKING

from .info import MetaInfo, ProcessInfo

if TYPE_CHECKING:
    from .meta import Meta
    from .process import Process

__all__ = ["meta_info", "process_info"]


def process_info(proc: Process) -> ProcessInfo:
    """An immutable snapshot of a live process."""
    pending = proc._mk_pending
    return ProcessInfo(
        pid=proc._mk_pid,
        name=proc._mk_name,
        parent=proc._mk_parent,
        state=proc._mk_state_name,
        mailbox=pending,
        mailbox_size=proc._mk_size,
        messages_in=proc._mk_in + pending,
        messages_out=proc._mk_out,
        handlers="coroutine" if proc._mk_async_mode else "plain",
        trap_exit=proc.trap_exit,
        links=tuple(a._mk_ident for a in proc._mk_links or ()),
        monitors=tuple(proc._mk_monitors or ()),
        metas=tuple(m._mk_alias for m in proc._mk_metas or ()),
        events=tuple(sorted(proc._mk_events or ())),
        inspect=MappingProxyType(dict(proc.handle_inspect())),
        behavior=type(proc).__name__,
    )


def meta_info(meta: Meta) -> MetaInfo:
    """An immutable snapshot of a live meta-process, its ``statistics()`` included."""
    pending = meta._mk_pending
    return MetaInfo(
        alias=meta._mk_alias,
        parent=meta._mk_parent_proc._mk_pid,
        behavior=type(meta).__name__,
        state=meta._mk_state_name,
        mailbox=pending,
        mailbox_size=meta._mk_size,
        messages_in=meta._mk_in + pending,
        messages_out=meta._mk_out,
        main_loop=meta._mk_main_kind,
        links=tuple(a._mk_ident for a in meta._mk_links or ()),
        monitors=tuple(meta._mk_monitors or ()),
        inspect=MappingProxyType(dict(meta.handle_inspect())),
        statistics=meta.statistics(),
    )
