"""Process groups (Erlang's ``pg``): named sets of processes to send to at once.

A process joins any number of groups; ``send_group`` delivers to every
member once, ``call_group`` to one member, round-robin. ``Groups.by_name``
holds each group's local members in join order; ``Groups.by_actor`` what
each process belongs to, so a death costs time in proportion to its groups
(``forget``, from the reaper). A group with no member left is dropped.

A group name is one NATS subject token, ``[A-Za-z0-9_-]``, 1 to 128
characters, on every node, so a program that runs on one node runs on a
cluster unchanged; anything else is a ``ValueError`` before anything
happens. On a cluster node the members of other nodes come from
:attr:`Groups.remote` (DESIGN.md §8).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Protocol

from .errors import MailboxFull, NoProcess
from .ids import PID

if TYPE_CHECKING:
    from .process import Process

__all__ = ["Groups", "check_name"]

_NAME = re.compile(r"[A-Za-z0-9_-]{1,128}")


def check_name(kind: str, name: Any) -> None:
    """Refuse a group or event name that is not one NATS subject token."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(
            f"a {kind} name is 1-128 of [A-Za-z0-9_-] (one NATS subject token), not {name!r}"
        )


class GroupRouter(Protocol):
    """What a cluster adds to the groups (the members on other nodes)."""

    def changed(self, group: str) -> Any:
        """The local members of ``group`` changed; an awaitable for when the others know."""

    def members(self, group: str) -> list[PID]:
        """The members of ``group`` on the other live nodes."""

    def send(self, sender: PID, group: str, message: Any) -> int:
        """Send to the members on the other nodes; how many nodes it went to."""


class Groups:
    """The process groups of one node.

    Attributes:
        by_name: ``{group: {process: None}}``, the local members in join order.
        by_actor: ``{process: {group, ...}}``.
        remote: the cluster's side, or None.
        dropped: deliveries a full mailbox refused.
    """

    __slots__ = ("_turn", "by_actor", "by_name", "dropped", "remote")

    def __init__(self) -> None:
        self.by_name: dict[str, dict[Process, None]] = {}
        self.by_actor: dict[Process, set[str]] = {}
        self.remote: GroupRouter | None = None
        self.dropped = 0
        self._turn: dict[str, int] = {}

    def join(self, proc: Process, group: str) -> Any:
        """Add ``proc`` to ``group``; what the cluster returns (an awaitable), or None."""
        check_name("group", group)
        members = self.by_name.setdefault(group, {})
        if proc in members:
            return None
        members[proc] = None
        self.by_actor.setdefault(proc, set()).add(group)
        return self.remote.changed(group) if self.remote is not None else None

    def leave(self, proc: Process, group: str) -> Any:
        """Take ``proc`` out of ``group``, if it is in it."""
        check_name("group", group)
        members = self.by_name.get(group)
        if members is None or proc not in members:
            return None
        self._drop(proc, group, members)
        groups = self.by_actor.get(proc)
        if groups is not None:
            groups.discard(group)
            if not groups:
                del self.by_actor[proc]
        return self.remote.changed(group) if self.remote is not None else None

    def _drop(self, proc: Process, group: str, members: dict[Process, None]) -> None:
        del members[proc]
        if not members:
            del self.by_name[group]
            self._turn.pop(group, None)

    def forget(self, proc: Process) -> None:
        """``proc`` has ended: out of every group it was in."""
        groups = self.by_actor.pop(proc, None)
        if not groups:
            return
        for group in groups:
            members = self.by_name.get(group)
            if members is not None and proc in members:
                self._drop(proc, group, members)
            if self.remote is not None:
                self.remote.changed(group)

    def local(self, group: str) -> list[PID]:
        """The members of ``group`` on this node, in join order."""
        return [p._mk_pid for p in self.by_name.get(group, ())]

    def members(self, group: str) -> list[PID]:
        """The members of ``group`` on every node: this node's first."""
        check_name("group", group)
        found = self.local(group)
        if self.remote is not None:
            found += self.remote.members(group)
        return found

    def send(self, sender: PID, group: str, message: Any) -> int:
        """Deliver to every member once (the local ones here); how many it reached
        here plus the other nodes it went to.

        Raises:
            TypeError: on a cluster, ``message`` does not cross a node
                boundary (checked first: nothing is delivered).
        """
        check_name("group", group)
        remote = self.remote.send(sender, group, message) if self.remote is not None else 0
        return self.deliver(sender, group, message) + remote

    def deliver(self, sender: PID, group: str, message: Any) -> int:
        """Deliver to the local members of ``group``; how many took it (a full
        mailbox is skipped and counted)."""
        reached = 0
        for proc in list(self.by_name.get(group, ())):
            try:
                proc._mk_deliver(sender, message)
            except (MailboxFull, NoProcess):
                self.dropped += 1
                continue
            reached += 1
        return reached

    def pick(self, group: str) -> PID:
        """One member for a ``call_group``, round-robin over the members.

        Raises:
            NoProcess: the group has no member.
        """
        members = self.members(group)  # checks the name
        if not members:
            raise NoProcess(group)
        turn = self._turn.get(group, 0)
        self._turn[group] = turn + 1
        return members[turn % len(members)]
