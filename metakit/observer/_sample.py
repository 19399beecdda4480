"""Sampling a node for the observer's page: snapshots, taken only when asked.

A :class:`Sampler` reads its node through the public introspection only
(``process_counters``, ``process_info`` for a supervisor's restarts,
``metas``/``meta_info``, ``events``, ``uptime``), on demand: nothing here
runs unless a page asks. The per-second rates are the deltas of the
counters between two snapshots, not totals.

The process table is kept by column (:class:`Table`: a list per field, not a
dict or tuple per process), built with ``map`` over the node's records, so
a sample of ten thousand processes is mostly C-level work; sorting and
filtering are done later, per view, on those columns (:mod:`._view`).
Everything rendered is plain ``str``/``int``/``float``/``bool``/``list``/
``dict``: it goes out as JSON, and crosses a cluster's wire as it is.
"""

from __future__ import annotations

import asyncio
import enum
import heapq
import time
from dataclasses import asdict, dataclass, field, is_dataclass
from itertools import repeat
from operator import attrgetter, sub
from typing import TYPE_CHECKING, Any

from .._introspect import open_fds, rss_kib
from ..errors import NoProcess
from ..ids import PID, Alias
from ..supervisor import Supervisor

if TYPE_CHECKING:
    from ..node import Node

__all__ = ["Sampler", "Snapshot", "Table", "display"]

_LOW = 0xFFFFFFFF  # a PID prints the low 32 bits of its id
_CHUNK = 500  # metas read per loop turn: the loop never stalls long
_MAX_SUPERVISORS = 200
_MAX_CHILDREN = 100
_MAX_METAS = 200
_MAX_EVENTS = 200
# The statistics fields with columns of their own; any other goes in "more".
_META_FIELDS = frozenset(
    {"bytes_in", "bytes_out", "messages_in", "messages_out"}
    | {"paused_reads", "held_writes", "dropped", "state"}
)
_pid, _id, _parent, _cls = map(attrgetter, ("pid", "id", "parent", "cls"))
_name, _state, _mailbox, _bound = map(attrgetter, ("name", "state", "mailbox", "mailbox_size"))
_in, _out = attrgetter("messages_in"), attrgetter("messages_out")


def display(ident: PID | Alias) -> str:
    """An id as the console's ``ps`` prints it: ``node.N``."""
    return f"{ident.node}.{ident.id & _LOW}"


@dataclass(slots=True)
class Table:
    """A node's processes at one moment, by column, oldest first.

    Attributes:
        pids: the processes.
        names: their registered names (None: none).
        classes: their class names.
        states: their states (as ``ProcessInfo.state``).
        mailbox: messages waiting in each.
        bound: each mailbox's bound (0: unbounded).
        d_in: messages delivered to each since the last sample.
        d_out: messages each sent since the last sample.
        scale: 1 / the seconds since the last sample (0 for a first one):
            ``d_in[i] * scale`` is messages in per second.
    """

    pids: list[PID]
    names: list[str | None]
    classes: list[str]
    states: list[str]
    mailbox: list[int]
    bound: list[int]
    d_in: list[int]
    d_out: list[int]
    scale: float


@dataclass(slots=True)
class Snapshot:
    """A node at one moment: what every view of it renders from.

    Attributes:
        taken: the loop's clock when it was taken.
        stats: the node's figures (uptime, loop, lag, RSS, fds, messages/s...).
        table: the processes.
        tree: the supervision tree, rendered.
        metas: the metas table, rendered.
        events: the events table, rendered.
    """

    taken: float
    stats: dict[str, Any]
    table: Table
    tree: list[dict[str, Any]] = field(default_factory=list)
    metas: dict[str, Any] = field(default_factory=dict)
    events: list[list[Any]] = field(default_factory=list)


class Sampler:
    """Takes snapshots of one node.

    Args:
        node: the node to read.
        max_age: a snapshot younger than this many seconds is reused, so
            pages (and observers of other nodes) asking at once cost one
            sample.
    """

    def __init__(self, node: Node, *, max_age: float = 0.5) -> None:
        self.node = node
        self.max_age = max_age
        self.samples = 0
        self.cost = 0.0  # seconds of work the last sample took (its pauses left out)
        self._last: Snapshot | None = None
        self._ins: dict[int, int] = {}  # pid id -> messages in, at the last sample
        self._outs: dict[int, int] = {}
        self._metas: dict[int, tuple[int, int, int, int]] = {}
        self._paused = 0.0

    async def take(self) -> Snapshot:
        """A snapshot of the node: the last one if it is recent enough."""
        loop = asyncio.get_running_loop()
        last = self._last
        if last is not None and loop.time() - last.taken < self.max_age:
            return last
        lag = await _lag(loop)  # first: what a callback waits now, before this sample's work
        now = loop.time()
        dt = now - last.taken if last is not None else 0.0
        self._paused = 0.0
        work = time.perf_counter()
        node = self.node
        table, tree = await self._processes(dt)
        metas = await self._meta_table(dt)
        events = [
            [e.name, display(e.producer), e.subscribers, ",".join(e.nodes), e.cluster, e.dropped]
            for e in node.events()[:_MAX_EVENTS]
        ]
        cost = time.perf_counter() - work - self._paused
        stats = {
            "name": node.name,
            "uptime": round(node.uptime, 1),
            "loop": "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio",
            "lag_ms": round(lag * 1000, 2),
            "rss_kib": rss_kib(),
            "fds": open_fds(),
            "processes": len(table.pids),
            "metas": metas["total"],
            "events": len(events),
            "messages_s": round(sum(table.d_in) * table.scale, 1),
            "sample_ms": round(cost * 1000, 2),
        }
        snapshot = Snapshot(now, stats, table, tree, metas, events)
        self._last = snapshot
        self.samples += 1
        self.cost = cost
        return snapshot

    async def _pause(self) -> None:
        """Let the loop run between chunks; the time is not the sample's cost."""
        start = time.perf_counter()
        await asyncio.sleep(0)
        self._paused += time.perf_counter() - start

    # -- the processes ------------------------------------------------------------------

    async def _processes(self, dt: float) -> tuple[Table, list[dict[str, Any]]]:
        """The process table, and the supervision tree."""
        node = self.node
        # One tuple per process, no handle_inspect: cheap at ten thousand.
        records: list[Any] = node.process_counters()
        raw = list(map(_cls, records))
        kinds = {c: (c.__name__, issubclass(c, Supervisor)) for c in set(raw)}
        classes = [kinds[c][0] for c in raw]
        sup_classes = {c for c, (_, sup) in kinds.items() if sup}
        sups = [i for i, c in enumerate(raw) if c in sup_classes] if sup_classes else []
        pids = list(map(_pid, records))
        ids = list(map(_id, pids))
        ins, outs = list(map(_in, records)), list(map(_out, records))
        if dt > 0:
            d_in = list(map(sub, ins, map(self._ins.get, ids, repeat(0))))
            d_out = list(map(sub, outs, map(self._outs.get, ids, repeat(0))))
        else:
            d_in = d_out = [0] * len(ids)
        self._ins, self._outs = dict(zip(ids, ins, strict=True)), dict(zip(ids, outs, strict=True))
        table = Table(
            pids,
            list(map(_name, records)),
            classes,
            list(map(_state, records)),
            list(map(_mailbox, records)),
            list(map(_bound, records)),
            d_in,
            d_out,
            1.0 / dt if dt > 0 else 0.0,
        )
        if not sups:
            return table, []
        parents = list(map(_id, map(_parent, records)))
        return table, self._tree(table, ids, parents, sups)

    def _tree(
        self,
        table: Table,
        ids: list[int],
        parents: list[int],
        sups: list[int],
    ) -> list[dict[str, Any]]:
        """The supervisors and their children (a supervisor's children are the
        processes it spawned), with restarts; at most ``_MAX_SUPERVISORS``."""
        row_of = {ids[i]: i for i in sups}
        children: dict[int, list[int]] = {ident: [] for ident in row_of}
        for i in [i for i, p in enumerate(parents) if p in row_of]:
            children[parents[i]].append(i)
        budget = [_MAX_SUPERVISORS]

        def walk(row: int) -> dict[str, Any]:
            budget[0] -= 1
            inspect = self._inspect(table.pids[row])
            kids = children[ids[row]]
            shown = []
            for kid in kids[:_MAX_CHILDREN]:
                if ids[kid] in row_of and budget[0] > 0:
                    shown.append(walk(kid))
                else:
                    shown.append(_leaf(table, kid))
            return {
                **_leaf(table, row),
                "strategy": inspect.get("strategy", ""),
                "restarts": _int(inspect.get("restarts", "0")),
                "children": shown,
                "more": max(0, len(kids) - _MAX_CHILDREN),
            }

        roots = [i for i in sups if parents[i] not in row_of]
        return [walk(row) for row in roots if budget[0] > 0]

    def _inspect(self, pid: PID) -> dict[str, str]:
        try:
            return dict(self.node.process_info(pid).inspect)
        except NoProcess:
            return {}

    # -- the metas --------------------------------------------------------------------------

    async def _meta_table(self, dt: float) -> dict[str, Any]:
        """The metas with their traffic per second, the busiest first (then the
        oldest), at most ``_MAX_METAS`` rows."""
        node = self.node
        prev = self._metas
        seen: dict[int, tuple[int, int, int, int]] = {}
        scale = 1.0 / dt if dt > 0 else 0.0
        found: list[tuple[float, float, list[Any]]] = []
        aliases = node.metas()
        for start in range(0, len(aliases), _CHUNK):
            if start:
                await self._pause()
            for alias in aliases[start : start + _CHUNK]:
                try:
                    info = node.meta_info(alias)
                except NoProcess:
                    continue
                stats = _fields(info.statistics)
                now = (
                    int(stats.get("bytes_in", 0)),
                    int(stats.get("bytes_out", 0)),
                    int(stats.get("messages_in", info.messages_in)),
                    int(stats.get("messages_out", info.messages_out)),
                )
                before = prev.get(alias.id, now if dt == 0 else (0, 0, 0, 0))
                seen[alias.id] = now
                rates = [round((a - b) * scale, 1) for a, b in zip(now, before, strict=True)]
                more = " ".join(f"{k}={v}" for k, v in stats.items() if k not in _META_FIELDS)
                peer = info.inspect.get("peer")
                if peer and peer != "None":
                    more = f"peer={peer} {more}".strip()
                row = [
                    str(alias.id),
                    display(alias),
                    info.behavior,
                    display(info.parent),
                    stats.get("state", info.state),
                    info.mailbox,
                    info.mailbox_size,
                    *rates,
                    now[0],
                    now[1],
                    stats.get("paused_reads"),
                    stats.get("held_writes"),
                    stats.get("dropped"),
                    more,
                ]
                found.append((rates[0] + rates[1], rates[2] + rates[3], row))
        self._metas = seen
        # nlargest is sorted(..., reverse=True)[:n], stable: the idle ones stay oldest first.
        top = heapq.nlargest(_MAX_METAS, found, key=lambda f: (f[0], f[1]))
        return {"total": len(found), "rows": [f[2] for f in top]}


def _leaf(table: Table, row: int) -> dict[str, Any]:
    pid = table.pids[row]
    return {
        "id": str(pid.id),
        "pid": display(pid),
        "name": table.names[row],
        "behavior": table.classes[row],
        "state": table.states[row],
    }


def _fields(stats: Any) -> dict[str, Any]:
    """A statistics dataclass as plain values (an enum by its name)."""
    if stats is None or not is_dataclass(stats) or isinstance(stats, type):
        return {}
    out: dict[str, Any] = {}
    for key, value in asdict(stats).items():
        if isinstance(value, enum.Enum):
            value = value.name.lower()
        elif not isinstance(value, int | float | str | bool) and value is not None:
            value = str(value)
        out[key] = value
    return out


def _int(text: Any) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        return 0


async def _lag(loop: asyncio.AbstractEventLoop) -> float:
    """Event-loop lag: how long a callback queued now waits before it runs."""
    start = loop.time()
    await asyncio.sleep(0)
    return loop.time() - start
