"""What the observer tests share: spawning one, reading its stream, a few
processes to look at."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import Any

import aiohttp

import metakit
from metakit import PID, Node
from metakit.observer import Observer
from metakit.testing import TIMEOUT

INTERVAL = 0.2  # seconds between samples in the tests (the default is 1.0)


async def observe(node: Node, **options: Any) -> tuple[PID, str]:
    """An observer on ``node`` (sampling every ``INTERVAL``), and its URL."""
    options.setdefault("interval", INTERVAL)
    pid = await node.spawn(Observer, **options)
    return pid, await node.call(pid, "url")


def inspect(node: Node, pid: PID) -> dict[str, str]:
    return dict(node.process_info(pid).inspect)


def agent(node: Node, observer: PID) -> PID:
    """The observer's agent (linked to it: the one process it links to)."""
    (found,) = [p for p in node.process_info(observer).links if isinstance(p, PID)]
    return found


def base(url: str) -> str:
    """The URL without its query (the token)."""
    return url.split("?", 1)[0]


def stream_url(url: str, token: str | None = None) -> str:
    return base(url) + "stream" + (f"?token={token}" if token else "")


class Mirror:
    """The sample a page has after each frame, kept as observer.js keeps it: a
    whole frame (``{"sample"}``) replaces it, a delta (``{"delta"}``) is applied
    to it, and must add up — no unchanged row, no needless order, no key gone
    that was not there, the order naming exactly the rows there are."""

    def __init__(self) -> None:
        self.sample: dict[str, Any] | None = None

    def apply(self, message: dict[str, Any]) -> dict[str, Any] | None:
        """The sample after ``message`` (a new dict: a returned one never
        changes), or None for a frame that is no sample (the hello, an error)."""
        if "sample" in message:
            sample = message["sample"]
            self.sample = None if "error" in sample else sample
            return sample
        delta = message.get("delta")
        if delta is None:
            return None
        assert self.sample is not None, f"a delta before any whole frame: {delta!r:.500}"
        sample = {**self.sample, **{k: v for k, v in delta.items() if k not in TABLES}}
        for name, figures in TABLES.items():
            if name in delta:
                part = sample[name]
                table = delta[name]
                if figures is None:
                    sample[name] = _apply_rows(part, table)
                else:
                    changed = {key: table[key] for key in figures if key in table}
                    sample[name] = {**part, **changed, "rows": _apply_rows(part["rows"], table)}
        self.sample = sample
        return sample


TABLES: dict[str, tuple[str, ...] | None] = {
    "processes": ("total", "matched"),
    "metas": ("total",),
    "events": None,
}
"""The row tables of a sample, and the figures beside their rows."""


def _apply_rows(rows: list[list[Any]], table: dict[str, Any]) -> list[list[Any]]:
    """A table's rows after its part of a delta (checking that it adds up)."""
    assert table, "an empty table delta was sent"
    by_key = {row[0]: row for row in rows}
    for key in table.get("gone", []):
        assert key in by_key, f"{key!r} is gone, but was not there"
        del by_key[key]
    order = list(by_key)
    for row in table.get("changed", []):
        assert by_key.get(row[0]) != row, f"an unchanged row was sent: {row!r}"
        by_key[row[0]] = row
    if "order" in table:
        assert table["order"] != order, "the order was sent, unchanged"
        order = table["order"]
    assert sorted(order) == sorted(by_key), f"the order {order!r:.300} is not the rows'"
    return [by_key[key] for key in order]


_mirrors: weakref.WeakKeyDictionary[aiohttp.ClientWebSocketResponse, Mirror] = (
    weakref.WeakKeyDictionary()
)


async def next_frame(
    ws: aiohttp.ClientWebSocketResponse,
    until: Callable[[dict[str, Any]], Any] = bool,
    timeout: float = TIMEOUT,
) -> dict[str, Any]:
    """Read the stream until a message (a frame as it came: hello, sample,
    delta or error) satisfies ``until``; that message. Every frame read also
    updates the stream's :class:`Mirror` (read by :func:`next_sample`)."""
    mirror = _mirrors.setdefault(ws, Mirror())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    while True:
        left = deadline - loop.time()
        if left <= 0:
            raise AssertionError(f"no such frame within {timeout:g} s; the last: {last!r:.2000}")
        try:
            message = await ws.receive_json(timeout=left)
        except TimeoutError:
            continue
        mirror.apply(message)
        last = message
        if until(message):
            return message


async def next_sample(
    ws: aiohttp.ClientWebSocketResponse,
    until: Callable[[dict[str, Any]], Any] = bool,
    timeout: float = TIMEOUT,
) -> dict[str, Any]:
    """Read the stream until the sample the page has (whole frames and the
    deltas since, added up) satisfies ``until``; that sample."""
    found: list[dict[str, Any]] = []

    def check(message: dict[str, Any]) -> bool:
        if "sample" not in message and "delta" not in message:
            return False
        sample = _mirrors[ws].sample if "delta" in message else message["sample"]
        if sample is not None and until(sample):
            found.append(sample)
            return True
        return False

    await next_frame(ws, check, timeout)
    return found[0]


def rows_by_name(sample: dict[str, Any]) -> dict[str | None, list[Any]]:
    """The process rows of a sample, by name:
    ``[id, pid, name, class, state, mailbox, bound, in/s, out/s]``."""
    return {row[2]: row for row in sample["processes"]["rows"]}


async def stays(condition: Callable[[], Any], seconds: float, what: str) -> None:
    """Check ``condition()`` every 10 ms for ``seconds``; fail the moment it is false
    (for what must not happen: a sample while no page is open)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        assert condition(), what
        await asyncio.sleep(0.01)


class Idle(metakit.Process):
    """Takes messages and does nothing with them."""

    def handle_message(self, sender: PID, message: Any) -> None:
        pass

    def handle_inspect(self) -> dict[str, str]:
        return {"mood": "idle"}


class Stuck(metakit.Process):
    """Blocks in its first message until ``gate`` is set: the rest wait in its mailbox."""

    async def init(self, gate: asyncio.Event) -> None:
        self.gate = gate

    async def handle_message(self, sender: PID, message: Any) -> None:
        await self.gate.wait()


def delta_rows(frame: dict[str, Any], key: str = "changed") -> list[Any]:
    """A delta frame's process rows (``"changed"``) or keys (``"gone"``,
    ``"order"``); ``[]`` for a whole frame, or a delta without them."""
    return list(frame.get("delta", {}).get("processes", {}).get(key, []))
