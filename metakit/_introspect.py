"""Snapshots of one actor: what ``node.process_info`` and ``node.meta_info`` return."""

from __future__ import annotations

import os
from collections.abc import Iterable
from types import MappingProxyType
from typing import TYPE_CHECKING

from .ids import PID
from .info import MetaInfo, ProcessCounters, ProcessInfo

if TYPE_CHECKING:
    from .mailbox import Mailbox
    from .meta import Meta
    from .process import Process

__all__ = ["meta_info", "open_fds", "process_counters", "process_info", "rss_kib"]


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


def process_counters(actors: Iterable[Mailbox]) -> list[ProcessCounters]:
    """The counters of the processes among ``actors`` (metas are skipped), in order."""
    rows: list[ProcessCounters] = []
    append = rows.append
    # tuple.__new__ skips the NamedTuple's Python-level __new__: a third of the cost.
    make = tuple.__new__
    for actor in actors:
        pid = actor._mk_ident
        if pid.__class__ is not PID:
            continue
        proc: Process = actor  # type: ignore[assignment]
        pending = len(proc._mk_q) >> 1  # as _mk_pending, without the property call
        append(
            make(
                ProcessCounters,
                (
                    pid,
                    proc._mk_parent,
                    proc._mk_name,
                    proc.__class__,
                    proc._mk_state_name,
                    pending,
                    proc._mk_size,
                    proc._mk_in + pending,
                    proc._mk_out,
                ),
            )
        )
    return rows


def rss_kib() -> int | None:
    """This OS process's resident memory in KiB (None where /proc is not there)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    except OSError:
        return None


def open_fds() -> int | None:
    """How many file descriptors this OS process has open (None without /proc)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None
