"""SSEHandler with a real EventSource in Debian's chromium (Playwright;
skipped where it is missing): events arrive, and after the stream ends the
browser reconnects by itself with ``Last-Event-ID``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

import metakit
from metakit import Node
from metakit.web import SSEConnect, SSEEvent, SSEHandler, WebServer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "websocket"))
from chromium import ARGS, CHROMIUM

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is not installed")

PAGE = """<!doctype html><meta charset="utf-8"><title>sse</title><ol id="got"></ol>
<script>
const source = new EventSource("/events");
source.addEventListener("tick", (event) => {
  const li = document.createElement("li");
  li.textContent = `${event.lastEventId}:${JSON.parse(event.data)}`;
  document.getElementById("got").append(li);
});
</script>"""


async def page(request: web.Request) -> web.Response:
    return web.Response(text=PAGE, content_type="text/html")


class Ticks(metakit.Process):
    """Sends ticks 1-3 on a new stream and ends it; a stream that resumes after
    id N gets N+1 and N+2."""

    async def init(self) -> None:
        sse = SSEHandler(self.pid)
        await self.spawn_meta(sse)
        app = web.Application()
        app.router.add_get("/", page)
        app.router.add_get("/events", sse)
        self.server = WebServer("127.0.0.1", 0, app)
        await self.spawn_meta(self.server)
        self.resumed: list[str | None] = []

    def handle_call(self, sender: metakit.Caller, request: Any) -> Any:
        return self.server.url if request == "url" else self.resumed

    def handle_message(self, sender: metakit.PID, message: Any) -> None:
        match message:
            case SSEConnect(conn, _, None):
                for n in (1, 2, 3):
                    self.send(conn, SSEEvent(conn, f"tick {n}", event="tick", id=str(n), retry=100))
                self.send_exit(conn, "normal")  # the browser comes back after retry ms
            case SSEConnect(conn, _, str(last)):
                self.resumed.append(last)
                for n in (int(last) + 1, int(last) + 2):
                    self.send(conn, SSEEvent(conn, f"tick {n}", event="tick", id=str(n)))


async def test_event_source_reconnects_with_last_event_id(node: Node) -> None:
    from playwright.async_api import async_playwright, expect

    pid = await node.spawn(Ticks)
    url = await node.call(pid, "url")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=ARGS
        )
        try:
            page = await browser.new_page()
            await page.goto(url)
            expected = [f"{n}:tick {n}" for n in range(1, 6)]
            await expect(page.locator("#got li")).to_have_text(expected, timeout=15_000)
            assert (await node.call(pid, "resumed"))[0] == "3"
        finally:
            await browser.close()
