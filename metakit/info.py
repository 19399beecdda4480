"""Immutable snapshots returned by ``node.process_info`` and ``node.meta_info``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from .ids import PID, Alias, Ref

__all__ = ["EventInfo", "MetaInfo", "ProcessCounters", "ProcessInfo"]


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """A process as it was when the snapshot was taken.

    Attributes:
        pid: the process.
        name: its registered name, or None.
        parent: who spawned it.
        state: ``"init"``, ``"idle"``, ``"running"`` (messages waiting or a
            handler in progress), ``"exiting"`` or ``"terminated"``.
        mailbox: messages waiting.
        mailbox_size: the mailbox bound (0: unbounded).
        messages_in: messages delivered to it so far (calls included).
        messages_out: messages and calls it has sent.
        handlers: ``"plain"`` (drained without a Task) or ``"coroutine"``.
        trap_exit: whether it traps exits.
        links: what it is linked to.
        monitors: the Refs of monitors set on it by others.
        metas: the meta-processes it owns.
        events: the events it produces.
        inspect: what its ``handle_inspect`` returned.
        behavior: its class name.
    """

    pid: PID
    name: str | None
    parent: PID
    state: str
    mailbox: int
    mailbox_size: int
    messages_in: int
    messages_out: int
    handlers: str
    trap_exit: bool
    links: tuple[PID | Alias, ...]
    monitors: tuple[Ref, ...]
    metas: tuple[Alias, ...]
    events: tuple[str, ...]
    inspect: Mapping[str, str]
    behavior: str = ""


class ProcessCounters(NamedTuple):
    """A process's counters as they were, one row of ``node.process_counters()``.

    A plain tuple, without ``handle_inspect`` or copies of links and
    monitors: cheap enough to take for ten thousand processes once a second
    (the observer's page, DESIGN.md §11). :class:`ProcessInfo` has the rest.

    Attributes:
        pid: the process.
        parent: who spawned it.
        name: its registered name, or None.
        cls: its class (``cls.__name__`` is ``ProcessInfo.behavior``).
        state: as in :class:`ProcessInfo`.
        mailbox: messages waiting.
        mailbox_size: the mailbox bound (0: unbounded).
        messages_in: messages delivered to it so far (calls included).
        messages_out: messages and calls it has sent.
    """

    pid: PID
    parent: PID
    name: str | None
    cls: type
    state: str
    mailbox: int
    mailbox_size: int
    messages_in: int
    messages_out: int


@dataclass(frozen=True, slots=True)
class MetaInfo:
    """A meta-process as it was when the snapshot was taken.

    Attributes:
        alias: the meta.
        parent: the process that owns it.
        behavior: its class name.
        state: as in :class:`ProcessInfo`.
        mailbox: messages waiting.
        mailbox_size: the mailbox bound (0: unbounded).
        messages_in: messages delivered to it so far.
        messages_out: messages it has sent.
        main_loop: ``"task"`` (``async def start``), ``"thread"`` (``def
            start``) or ``"none"``.
        links: what it is linked to.
        monitors: the Refs of monitors set on it.
        inspect: what its ``handle_inspect`` returned.
        statistics: what its ``statistics()`` returned: a frozen dataclass of
            counters for the ready metas, None for a meta without any.
    """

    alias: Alias
    parent: PID
    behavior: str
    state: str
    mailbox: int
    mailbox_size: int
    messages_in: int
    messages_out: int
    main_loop: str
    links: tuple[PID | Alias, ...]
    monitors: tuple[Ref, ...]
    inspect: Mapping[str, str]
    statistics: Any = None


@dataclass(frozen=True, slots=True)
class EventInfo:
    """An event produced on this node, as it was when the snapshot was taken
    (``node.events()``).

    Attributes:
        name: the event's name.
        producer: the process that produces it.
        subscribers: its subscribers on this node.
        nodes: the other nodes with subscribers (a cluster event).
        cluster: registered with ``cluster=True``.
        dropped: deliveries a full mailbox here refused so far.
    """

    name: str
    producer: PID
    subscribers: int
    nodes: tuple[str, ...]
    cluster: bool
    dropped: int
