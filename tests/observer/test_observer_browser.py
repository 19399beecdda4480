"""The observer's page in Debian's chromium, driven by Playwright (skipped where
it is missing; Playwright's own browser downloads are never used). Every wait
is one of Playwright's auto-waiting ``expect`` assertions, bounded by
``TIMEOUT``, or a poll with a deadline.

Run on uvloop only, the loop users get (the HTTP tests cover both loops).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest
from observing import Idle, Stuck, base, inspect, observe

import metakit
from metakit import ChildSpec, Node, Supervisor
from metakit.tcp import TCPMessage, TCPServer
from metakit.testing import TIMEOUT, wait_until

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "websocket"))
from chromium import CHROMIUM, launch

pytestmark = [
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is not installed"),
    pytest.mark.asyncio(loop_factories=["uvloop"]),
    pytest.mark.timeout(60),
]
WAIT = TIMEOUT * 1000  # Playwright counts milliseconds


class Echo(metakit.Process):
    """A TCP echo server (metakit.tcp): every chunk goes back as it came."""

    async def init(self) -> None:
        self.server = TCPServer("127.0.0.1", 0)
        await self.spawn_meta(self.server)

    def handle_call(self, sender: metakit.Caller, request: Any) -> Any:
        return self.server.address

    def handle_message(self, sender: metakit.PID, message: Any) -> None:
        if isinstance(message, TCPMessage):
            self.send(message.conn, TCPMessage(message.conn, message.data))


def row_of(page: Any, name: str) -> Any:
    """The process table's row of the process named ``name``."""
    return page.locator("#processes tbody tr").filter(has=page.locator("td.name", has_text=name))


async def test_the_page_shows_the_node(node: Node) -> None:
    from playwright.async_api import async_playwright, expect

    await node.spawn(Idle, name="greeter")
    await node.spawn(
        Supervisor,
        [ChildSpec(Idle, name="worker-1"), ChildSpec(Idle, name="worker-2")],
        name="workers",
    )
    gate = asyncio.Event()
    stuck = await node.spawn(Stuck, gate, name="stuck")
    for n in range(250):
        node.send(stuck, n)  # one in its handler, 249 waiting
    later = await node.spawn(Stuck, gate, name="stuffed-later")
    leaver = await node.spawn(Idle, name="leaver")
    echo = await node.spawn(Echo, name="echo")
    host, port = await node.call(echo, "address")
    reader, writer = await asyncio.open_connection(host, port)  # a plain socket client
    payload = b"observe these bytes\n" * 20  # 400 bytes
    writer.write(payload)
    assert await reader.readexactly(len(payload)) == payload
    observer, url = await observe(node)
    try:
        async with async_playwright() as playwright:
            browser = await launch(playwright)
            try:
                page = await browser.new_page(viewport={"width": 1200, "height": 800})
                errors: list[str] = []
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                await page.goto(url)
                await expect(page.locator("#status")).to_have_text("live", timeout=WAIT)
                # A named process; the stuffed mailbox, the fullest first by default.
                await expect(row_of(page, "greeter")).to_have_count(1, timeout=WAIT)
                first = page.locator("#processes tbody tr").first
                await expect(first.locator("td.name")).to_have_text("stuck", timeout=WAIT)
                await expect(first.locator("td.mailbox")).to_have_text("249/∞")
                await expect(first.locator("td.mailbox")).to_have_class("num mailbox hot")
                # The supervisor and its children, with restarts.
                tree = page.locator("#tree")
                await expect(tree).to_contain_text("workers Supervisor", timeout=WAIT)
                await expect(tree).to_contain_text("one_for_one · 0 restarts")
                await expect(tree.locator("li.sup li")).to_have_text(
                    ["worker-1 Idle idle", "worker-2 Idle idle"]
                )
                # The TCP connection's bytes, both ways.
                conn = page.locator("#metas tbody tr").filter(has_text="TCPConnection")
                await expect(conn.locator("td.bytes-in")).to_have_text("400 B", timeout=WAIT)
                await expect(conn.locator("td.bytes-out")).to_have_text("400 B")
                await expect(page.locator("#s-loop")).to_have_text("uvloop")
                # After the first frame come deltas: the page applies them.
                # Spawned after the page loaded: it shows up, no reload.
                await node.spawn(Idle, name="late-comer")
                await expect(row_of(page, "late-comer")).to_have_count(1, timeout=WAIT)
                # A mailbox stuffed after load: its row changes, and moves up.
                mailbox = row_of(page, "stuffed-later").locator("td.mailbox")
                await expect(mailbox).to_have_text("0/∞")
                for n in range(120):
                    node.send(later, n)
                await expect(mailbox).to_have_text("119/∞", timeout=WAIT)
                await expect(mailbox).to_have_class("num mailbox hot")
                second = page.locator("#processes tbody tr").nth(1).locator("td.name")
                await expect(second).to_have_text("stuffed-later")
                # A process that ends: its row goes.
                await expect(row_of(page, "leaver")).to_have_count(1)
                node.kill(leaver)
                await expect(row_of(page, "leaver")).to_have_count(0, timeout=WAIT)
                await expect(first.locator("td.name")).to_have_text("stuck")
                count = await page.locator("#processes tbody tr").count()
                assert count == len(node.processes())  # every row once (fewer than 200)
                # The filter and the sort run on the server.
                await page.fill("#filter", "worker-")
                names = page.locator("#processes tbody td.name")
                await expect(names).to_have_text(["worker-1", "worker-2"], timeout=WAIT)
                await page.click("#processes th[data-sort=name]")  # by name, A to Z
                await page.click("#processes th[data-sort=name]")  # Z to A
                await expect(names).to_have_text(["worker-2", "worker-1"], timeout=WAIT)
                await page.fill("#filter", "")
                # A name opens its process_info and handle_inspect, on the same page.
                await row_of(page, "greeter").locator("button.link").click()
                details = page.locator("#details")
                await expect(details).to_be_visible(timeout=WAIT)
                await expect(page.locator("#details-title")).to_have_text("greeter")
                await expect(page.locator("#details-info")).to_contain_text("classIdle")
                await expect(page.locator("#details-inspect")).to_have_text("moodidle")
                # Actions are off: no controls for them.
                await expect(page.locator("#actions button")).to_have_count(0)
                assert errors == []  # a CSP violation, say, would be logged here
                # Whole frames for the views sent only; every delta added up.
                frames = await page.evaluate("state.frames")
                assert frames["resyncs"] == 0, frames
                assert frames["delta"] > 5, frames
                await page.close()
                # The page has gone: the observer is quiet within 2 s.
                await wait_until(
                    lambda: (
                        inspect(node, observer)["pages"] == "0"
                        and inspect(node, observer)["ticking"] == "no"
                    ),
                    2.0,
                    "the observer still ticks 2 s after the page closed",
                )
            finally:
                await browser.close()
    finally:
        gate.set()
        writer.close()
        await writer.wait_closed()


async def test_the_token_and_the_actions(node: Node, probe: Any) -> None:
    from playwright.async_api import async_playwright, expect

    target = await probe("target")
    _, url = await observe(node, token="tok-123", allow_actions=True)
    async with async_playwright() as playwright:
        browser = await launch(playwright)
        try:
            context = await browser.new_context()
            page = await context.new_page()
            for wrong in (base(url), base(url) + "?token=nope"):
                response = await page.goto(wrong)
                assert response is not None
                assert response.status == 401
            response = await page.goto(url)
            assert response is not None
            assert response.status == 200
            await expect(page.locator("#status")).to_have_text("live", timeout=WAIT)
            # The stream wants the token too: a wrong one is refused at the upgrade.
            opened = await page.evaluate(
                """() => new Promise((done) => {
                    const ws = new WebSocket(`ws://${location.host}/stream?token=nope`);
                    ws.onopen = () => done("open");
                    ws.onerror = () => done("refused");
                })"""
            )
            assert opened == "refused"
            # And the page's files: another browser context has no cookie.
            other = await browser.new_context()
            for path in ("observer.js", "observer.css", "stream"):
                answer = await other.request.get(base(url) + path)
                assert answer.status == 401, path
            await other.close()
            # Actions are on: a process's details offer Send, Exit and Kill.
            await row_of(page, "target").locator("button.link").click()
            buttons = page.locator("#actions button")
            await expect(buttons).to_have_text(["Send", "Exit", "Kill"], timeout=WAIT)
            await page.fill("#action-value", '{"ping": [1, 2]}')
            await page.click("#actions button:text('Send')")
            await expect(page.locator("#action-result")).to_have_text("sent", timeout=WAIT)
            assert await target.receive() == {"ping": [1, 2]}
            gone = node.wait_exit(target.pid, TIMEOUT)
            await page.click("#actions button:text('Kill')")
            assert await gone == "kill"
            await expect(page.locator("#details-title")).to_have_text("Process ended", timeout=WAIT)
            await context.close()
        finally:
            await browser.close()
