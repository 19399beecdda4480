"""Many connections at once: a server's :class:`ConnectionSet`, and :func:`broadcast`.

A server or handler keeps the connections it made in a ``ConnectionSet``:
each leaves it when it ends, ``end_all`` ends them with the owner, and
``wait_empty`` is what a graceful ``quiesce`` returns. ``broadcast`` writes
one message to many connections, encoding it once per kind of connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from ._envelope import Signal
from .connection import Connection
from .errors import MailboxFull
from .ids import Alias

if TYPE_CHECKING:
    from .meta import Meta
    from .process import Process

__all__ = ["ConnectionSet", "broadcast"]

_NONE: Any = object()  # no prepare_key seen yet (None is a key)


class ConnectionSet:
    """The open connections of a server or handler, which end with it.

    ::

        self.conns = ConnectionSet(self)       # in the server's __init__
        self.conns.add(conn)                   # once spawned; it leaves when it ends
        self.conns.end_all(reason)             # in the server's terminate

    Args:
        owner: the meta that owns the connections (its Alias is the source of
            their exit signal).
    """

    __slots__ = ("_conns", "_empty", "owner")

    def __init__(self, owner: Meta) -> None:
        self.owner = owner
        self._conns: set[Connection] = set()
        self._empty: asyncio.Future[None] | None = None

    def add(self, conn: Connection) -> None:
        """Hold ``conn`` until it ends."""
        conn._mk_on_end = self
        self._conns.add(conn)

    def discard(self, conn: Connection) -> None:
        """Forget ``conn`` (it has ended)."""
        self._conns.discard(conn)
        if not self._conns and self._empty is not None and not self._empty.done():
            self._empty.set_result(None)

    def __len__(self) -> int:
        return len(self._conns)

    def __iter__(self) -> Iterator[Connection]:
        return iter(list(self._conns))

    def end_all(self, reason: Any) -> None:
        """End every connection with ``reason``, forced: in order with its mailbox,
        but past held writes and without lingering (the owner is going)."""
        owner = self.owner
        ending = Signal(owner._mk_alias, owner._mk_parent_proc._mk_pid, reason, forced=True)
        for conn in list(self._conns):
            conn._mk_signal(ending)

    def wait_empty(self) -> asyncio.Future[None] | None:
        """A future done when every connection has ended; None if none is open."""
        if not self._conns:
            return None
        if self._empty is None or self._empty.done():
            self._empty = self.owner._mk_loop.create_future()
        return self._empty


def broadcast(sender: Process, conns: Iterable[Alias], data: Any) -> int:
    """Send ``data`` to every connection in ``conns``; return how many took it.

    The same as ``sender.send(conn, Message(conn, data))`` for each, in order
    with the sender's other messages to them, but cheaper per connection,
    and a broadcast does not stop half-way:

    * a connection that is gone is skipped (its Disconnect is on its way to
      its worker), where ``send`` would raise ``NoProcess``;
    * a connection whose bounded mailbox is full (a peer far behind) is
      skipped and counts it in its ``dropped`` statistic, where ``send``
      would raise ``MailboxFull``;
    * ``data`` is encoded once per kind of connection
      (:meth:`Connection.prepare`), not once per connection.

    Raises:
        TypeError: ``data`` cannot be encoded for one of the connections.
    """
    table = sender._mk_table
    pid = sender._mk_pid
    prepared: dict[Any, Any] = {}
    last_key: Any = _NONE
    ready: Any = None
    took = 0
    for conn in conns:
        target = table.get(conn.id)
        if not isinstance(target, Connection):
            continue  # gone
        key = target.prepare_key
        if key is not last_key:  # most broadcasts reach one kind of connection
            if key in prepared:
                ready = prepared[key]
            else:
                ready = prepared[key] = target.prepare(data)
            last_key = key
        if not target._mk_scheduled:
            # Idle: write now, as Process.send does for an idle eager meta
            # (and as Connection.handle_message counts a write).
            if target.writable:
                written = target._mk_run_now(target.write_prepared, data, ready)
                if written is not None:
                    target._mk_bytes_out += written
                    target._mk_writes += 1
            else:
                target._mk_dropped += 1  # closed: its worker has the Disconnect
                continue
        else:
            # Busy or held: it takes this in its turn.
            try:
                target._mk_deliver(pid, target._mk_make(conn, data))
            except MailboxFull:
                target._mk_dropped += 1
                continue
        took += 1
    sender._mk_out += took
    return took
