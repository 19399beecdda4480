"""What one page shows: a :class:`View`, and a snapshot rendered for it.

A page sends its view (the node, the sort, a filter, a row cap, the process
whose details are open); :func:`render` turns a snapshot and a view into
what goes on the wire: the top ``limit`` rows only, sorted and filtered on
the server, so the page of a node with ten thousand processes gets two
hundred rows a second, never ten thousand. The sorts run over row numbers
with a column's ``__getitem__`` as the key, in ``heapq`` (O(n log limit),
and stable, as ``sorted(...)[:limit]`` is): ties stay oldest first.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import NoProcess
from ..ids import PID
from ._sample import Snapshot, Table, display

if TYPE_CHECKING:
    from ..node import Node

__all__ = ["SORTS", "View", "details", "render"]

SORTS = ("pid", "name", "class", "state", "mailbox", "in", "out")
"""The process table's sort keys."""
_LOW = 0xFFFFFFFF
_MAX_FILTER = 200


@dataclass(slots=True)
class View:
    """What one page shows.

    Attributes:
        node: the node shown.
        sort: one of :data:`SORTS`.
        desc: largest first.
        filter: a case-insensitive substring of the name or the class (or of
            the number of the PID, for digits).
        limit: the rows sent, at most.
        selected: the id (``str(pid.id)``) of the process whose details are
            shown, or None.
    """

    node: str
    sort: str = "mailbox"
    desc: bool = True
    filter: str = ""
    limit: int = 200
    selected: str | None = None

    @classmethod
    def parse(cls, data: Any, *, node: str, max_rows: int) -> View:
        """A view from what a page sent (untrusted): checked field by field.

        Raises:
            ValueError: a field of the wrong type or out of range.
        """
        if not isinstance(data, dict):
            raise ValueError("a view is a JSON object")
        view = cls(node=node, limit=min(200, max_rows))
        shown = data.get("node", node)
        sort = data.get("sort", view.sort)
        desc = data.get("desc", view.desc)
        text = data.get("filter", "")
        limit = data.get("limit", view.limit)
        selected = data.get("selected")
        if not isinstance(shown, str) or not shown or len(shown) > 256:
            raise ValueError("node is a node's name")
        if sort not in SORTS:
            raise ValueError(f"sort is one of {', '.join(SORTS)}")
        if not isinstance(desc, bool):
            raise ValueError("desc is true or false")
        if not isinstance(text, str) or len(text) > _MAX_FILTER:
            raise ValueError(f"filter is a string of at most {_MAX_FILTER} characters")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError("limit is a whole number of rows, at least 1")
        if selected is not None and not (
            isinstance(selected, str) and selected.isdigit() and len(selected) <= 20
        ):
            raise ValueError("selected is a process id (digits) or null")
        view.node, view.sort, view.desc, view.filter = shown, sort, desc, text.strip()
        view.limit = min(limit, max_rows)
        view.selected = selected
        return view

    def wire(self) -> dict[str, Any]:
        """The view as a plain dict (what :meth:`parse` reads back)."""
        return {
            "node": self.node,
            "sort": self.sort,
            "desc": self.desc,
            "filter": self.filter,
            "limit": self.limit,
            "selected": self.selected,
        }


def render(node: Node, snapshot: Snapshot, view: View) -> dict[str, Any]:
    """What one page gets: the node's figures, the top rows of its process
    table for ``view``, the tree, metas, events, and the selected process."""
    table = snapshot.table
    rows: Sequence[int] = range(len(table.pids))
    if view.filter:
        rows = _filtered(table, view.filter.lower())
    top = _top(table, rows, view.sort, view.desc, view.limit)
    pids, names, classes, states = table.pids, table.names, table.classes, table.states
    mailbox, bound, d_in, d_out, scale = (
        table.mailbox,
        table.bound,
        table.d_in,
        table.d_out,
        table.scale,
    )
    return {
        "stats": snapshot.stats,
        "processes": {
            "total": len(table.pids),
            "matched": len(rows),
            "rows": [
                [
                    str(pids[i].id),
                    display(pids[i]),
                    names[i],
                    classes[i],
                    states[i],
                    mailbox[i],
                    bound[i],
                    round(d_in[i] * scale, 1),
                    round(d_out[i] * scale, 1),
                ]
                for i in top
            ],
        },
        "tree": snapshot.tree,
        "metas": snapshot.metas,
        "events": snapshot.events,
        "details": details(node, view.selected) if view.selected else None,
        "view": view.wire(),
    }


def details(node: Node, selected: str) -> dict[str, Any]:
    """A process's ``process_info`` (``handle_inspect`` included) as plain
    values; ``{"id": ..., "gone": True}`` once it has ended."""
    pid = PID(node.name, int(selected))
    try:
        info = node.process_info(pid)
    except NoProcess:
        return {"id": selected, "gone": True}
    return {
        "id": selected,
        "pid": display(pid),
        "name": info.name,
        "parent": display(info.parent),
        "behavior": info.behavior,
        "state": info.state,
        "mailbox": info.mailbox,
        "mailbox_size": info.mailbox_size,
        "messages_in": info.messages_in,
        "messages_out": info.messages_out,
        "handlers": info.handlers,
        "trap_exit": info.trap_exit,
        "links": [display(i) for i in info.links],
        "monitors": len(info.monitors),
        "metas": [display(i) for i in info.metas],
        "events": list(info.events),
        "inspect": {str(k): str(v) for k, v in info.inspect.items()},
    }


def _filtered(table: Table, text: str) -> list[int]:
    """The rows whose name or class holds ``text`` (or, digits, whose PID's number)."""
    found = [
        i
        for i, (name, cls) in enumerate(zip(table.names, table.classes, strict=True))
        if (name is not None and text in name.lower()) or text in cls.lower()
    ]
    if text.isdigit():
        numbered = {i for i, pid in enumerate(table.pids) if text in str(pid.id & _LOW)}
        found = sorted(numbered.union(found))
    return found


def _top(table: Table, rows: Sequence[int], sort: str, desc: bool, limit: int) -> list[int]:
    """The first ``limit`` of ``rows`` in the view's order; ties stay oldest first."""
    if sort == "pid":
        return list(rows[::-1][:limit] if desc else rows[:limit])
    key: Callable[[int], Any]
    if sort == "name":
        names = table.names
        if desc:  # the named ones first, largest first

            def key(i: int) -> Any:
                return (names[i] is not None, names[i] or "")
        else:  # the named ones first, smallest first

            def key(i: int) -> Any:
                return (names[i] is None, names[i] or "")
    else:
        columns: dict[str, Sequence[Any]] = {
            "class": table.classes,
            "state": table.states,
            "mailbox": table.mailbox,
            "in": table.d_in,
            "out": table.d_out,
        }
        key = columns[sort].__getitem__
    if desc:
        return heapq.nlargest(limit, rows, key=key)
    return heapq.nsmallest(limit, rows, key=key)
