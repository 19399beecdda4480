"""Deltas on the wire: what one page was last sent, and the frame for its next sample.

A page gets one full frame (``{"sample": ...}``, see
:mod:`metakit.observer.observer` for the format), then deltas
(``{"delta": ...}``): of its row tables — processes, metas, events — the
rows that changed, keyed by their first cell (a process's or meta's id, an
event's name), the keys of the rows that left, and the order of the keys
when it is not the old order less the rows that left; of the rest, the
node's figures (``stats``) always, and any other part only when it is not
what the page has. On an idle node of ten thousand processes, that is the
figures and the page's own connection's row, not two hundred rows.

No I/O here: :meth:`Sent.frame` turns a sample into the next frame and
remembers what it sent. The observer keeps one :class:`Sent` per page and
drops it — so the next frame is full — when the page changes its view,
reconnects, or misses a frame (a full mailbox at its connection).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["Sent"]

# The row tables of a sample, each with the figures that go with its rows
# (None: the part is a bare list of rows).
_TABLES: dict[str, tuple[str, ...] | None] = {
    "processes": ("total", "matched"),
    "metas": ("total",),
    "events": None,
}
_ALWAYS = frozenset({"stats"})  # small, and changes every second anyway


class _Rows:
    """One table as the page has it: rows by key, their order, its figures."""

    __slots__ = ("fields", "order", "rows")

    def __init__(self, rows: dict[str, Sequence[Any]], fields: dict[str, Any]) -> None:
        self.rows = rows
        self.order = list(rows)
        self.fields = fields

    def diff(self, rows: dict[str, Sequence[Any]], fields: dict[str, Any]) -> dict[str, Any]:
        """What turns this table into ``rows``/``fields`` (and remember them)."""
        old = self.rows
        out = {key: value for key, value in fields.items() if self.fields.get(key) != value}
        changed = [row for key, row in rows.items() if old.get(key) != row]
        gone = [key for key in old if key not in rows]
        order = list(rows)
        # The page drops the rows that left from its order by itself.
        if order != ([key for key in self.order if key in rows] if gone else self.order):
            out["order"] = order
        if changed:
            out["changed"] = changed
        if gone:
            out["gone"] = gone
        self.rows, self.order, self.fields = rows, order, fields
        return out


class Sent:
    """What one page was last sent; :meth:`frame` gives it the next frame."""

    __slots__ = ("parts", "tables")

    def __init__(self) -> None:
        self.tables: dict[str, _Rows] | None = None  # None: the next frame is full
        self.parts: dict[str, Any] = {}

    def frame(self, sample: dict[str, Any]) -> dict[str, Any]:
        """The frame to send for ``sample``: full the first time (and for an
        error, or rows without keys), else the delta from the last one."""
        tables = _tables(sample)
        if tables is None:  # an error, or an answer from a node that sends no keys
            self.tables, self.parts = None, {}
            return {"sample": sample}
        parts = {key: value for key, value in sample.items() if key not in _TABLES}
        if self.tables is None:
            self.tables = {name: _Rows(rows, fields) for name, (rows, fields) in tables.items()}
            self.parts = parts
            return {"sample": sample}
        delta: dict[str, Any] = {
            key: value
            for key, value in parts.items()
            if key in _ALWAYS or key not in self.parts or self.parts[key] != value
        }
        for name, (rows, fields) in tables.items():
            table = self.tables[name].diff(rows, fields)
            if table:
                delta[name] = table
        self.parts = parts
        return {"delta": delta}


def _tables(sample: dict[str, Any]) -> dict[str, tuple[dict[str, Any], dict[str, Any]]] | None:
    """A sample's row tables as rows by key and figures; None for an error
    sample, or one whose rows are not keyed lists."""
    if "error" in sample:
        return None
    out = {}
    for name, fields in _TABLES.items():
        part = sample.get(name)
        rows: Any
        if fields is None:
            rows, figures = part, {}
        elif isinstance(part, dict):
            rows, figures = part.get("rows"), {key: part.get(key) for key in fields}
        else:
            return None
        if not isinstance(rows, list | tuple):
            return None
        by_key = {}
        for row in rows:
            if not isinstance(row, list | tuple) or not row or not isinstance(row[0], str):
                return None
            by_key[row[0]] = row
        if len(by_key) != len(rows):  # a key twice: the page could not place them
            return None
        out[name] = (by_key, figures)
    return out
