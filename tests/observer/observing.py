"""What the observer tests share: spawning one, reading its stream, a few
processes to look at."""

from __future__ import annotations

import asyncio
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


async def next_sample(
    ws: aiohttp.ClientWebSocketResponse,
    until: Callable[[dict[str, Any]], Any] = bool,
    timeout: float = TIMEOUT,
) -> dict[str, Any]:
    """Read the stream until a sample satisfies ``until``; that sample."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    while True:
        left = deadline - loop.time()
        if left <= 0:
            raise AssertionError(f"no such sample within {timeout:g} s; the last: {last!r:.2000}")
        try:
            message = await ws.receive_json(timeout=left)
        except TimeoutError:
            continue
        sample = message.get("sample")
        if sample is not None:
            last = sample
            if until(sample):
                return sample


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
