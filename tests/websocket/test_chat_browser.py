"""examples/chat in a real browser: Debian's chromium, driven by Playwright.

Skipped where ``/usr/bin/chromium`` is missing (Playwright's own browser
downloads are never used). Every wait is one of Playwright's auto-waiting
``expect`` assertions, bounded by ``TIMEOUT``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from chromium import CHROMIUM, launch
from playwright.sync_api import Browser, Page, expect, sync_playwright

from metakit.testing import TIMEOUT

ROOT = Path(__file__).resolve().parents[2]
CHAT = ROOT / "examples" / "chat"

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is not installed")

expect.set_options(timeout=TIMEOUT * 1000)


@pytest.fixture
def chat_url() -> Iterator[str]:
    """``python examples/chat 0 --crash-demo`` with a rate limit a test can reach without
    waiting for refills; its URL; SIGTERM must stop it with exit code 0."""
    # The metakit of this checkout, whatever the environment has installed.
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    with subprocess.Popen(
        [sys.executable, str(CHAT), "0", "--crash-demo", "--burst", "10", "--rate", "0.5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": path},
    ) as proc:
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline()
            match = re.fullmatch(r"listening on (http://127\.0\.0\.1:\d+)\n", first)
            assert match, first
            yield match[1]
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=TIMEOUT)
            assert proc.returncode == 0, err
        finally:
            if proc.poll() is None:
                proc.kill()


@pytest.fixture
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            yield browser
        finally:
            browser.close()


def open_chat(browser: Browser, url: str, nick: str, room: str) -> Page:
    """A new browser context (its own user) on the chat page, joining ``room`` as ``nick``.

    Whatever the page logs as an error goes to ``ERRORS`` (a CSP violation, say).
    """
    page = browser.new_context(viewport={"width": 900, "height": 560}).new_page()
    page.on("console", lambda msg: msg.type == "error" and ERRORS.append(msg.text))
    page.goto(url)
    page.fill("#nick", nick)
    page.fill("#room", room)
    page.click("#join-form button")
    return page


ERRORS: list[str] = []


@pytest.fixture(autouse=True)
def no_errors_on_the_pages() -> Iterator[None]:
    """Fail a test whose pages logged an error other than a refused connection."""
    ERRORS.clear()
    yield
    # A page reconnecting while the server restarts a room logs the failure.
    assert [e for e in ERRORS if "WebSocket connection" not in e] == []


def say(page: Page, text: str) -> None:
    page.fill("#text", text)
    page.press("#text", "Enter")


def test_two_users_chat_in_a_browser(browser: Browser, chat_url: str) -> None:
    ada = open_chat(browser, chat_url, "ada", "tea")
    expect(ada.locator("#room-title")).to_have_text("#tea")
    expect(ada.locator("#members li")).to_have_text(["ada"])
    # The policy holds: a script injected inline does not run.
    ran = ada.evaluate(
        """() => { const script = document.createElement("script");
            script.textContent = "window.injected = true";
            document.head.append(script);
            return window.injected === true; }"""
    )
    assert ran is False
    assert any("Content Security Policy" in e for e in ERRORS), ERRORS
    ERRORS.clear()
    bob = open_chat(browser, chat_url, "bob", "tea")
    expect(bob.locator("#members li")).to_have_text(["ada", "bob"])
    expect(ada.locator("#members li")).to_have_text(["ada", "bob"])
    expect(ada.locator("#messages")).to_contain_text("bob joined")

    say(ada, "hello bob")
    say(bob, "hi <b>ada</b>")  # shown as typed, never as HTML
    for page in (ada, bob):
        messages = page.locator("#messages li.message")
        expect(messages).to_have_count(2)
        expect(messages.nth(0).locator(".nick")).to_have_text("ada")
        expect(messages.nth(0).locator(".text")).to_have_text("hello bob")
        expect(messages.nth(1).locator(".text")).to_have_text("hi <b>ada</b>")
        expect(page.locator("#messages b")).to_have_count(0)

    # A third user wanting a taken nick sees why, and stays on the form.
    imp = open_chat(browser, chat_url, "ada", "tea")
    expect(imp.locator("#join-error")).to_have_text("the nick ada is taken in tea")
    expect(imp.locator("#room-view")).to_be_hidden()
    imp.fill("#nick", "a b")
    imp.click("#join-form button")
    expect(imp.locator("#join-error")).to_contain_text("a nick is 1 to 16")
    imp.context.close()

    # A room that crashes: both pages say so, reconnect, and carry on.
    say(bob, "/crash")
    for page in (ada, bob):
        expect(page.locator("#messages .notice.error")).to_contain_text(
            ["connection lost (code 1011) — reconnecting…"]
        )
        expect(page.locator("#messages .notice.good")).to_have_text(["reconnected"])
        expect(page.locator("#members li")).to_have_text(["ada", "bob"])
        expect(page.locator("#messages li.message")).to_have_count(2)  # still on screen
    say(ada, "back again")
    expect(bob.locator("#messages li.message").last).to_contain_text("back again")

    # A page that closes leaves the room.
    bob.context.close()
    expect(ada.locator("#messages li").last).to_have_text("bob left")
    expect(ada.locator("#members li")).to_have_text(["ada"])

    # A page sending too fast (a script on it, say) is told why and not reconnected.
    flood = open_chat(browser, chat_url, "imp", "tea")
    expect(flood.locator("#members li")).to_have_text(["ada", "imp"])
    # One past the burst, no more: what a peer sends after the server has closed
    # makes the close a reset, which may lose the notice.
    flood.evaluate(
        """() => { for (let i = 0; i < 11; i++)
            socket.send(JSON.stringify({type: "say", text: `flood ${i}`})); }"""
    )
    expect(flood.locator("#join-view")).to_be_visible()
    expect(flood.locator("#join-error")).to_have_text(
        "too many messages: at most 10 at once, then 0.5 a second; disconnected"
    )
    expect(ada.locator("#messages li").last).to_have_text("imp left")
    flood.context.close()

    # Leave, and join again: the room emptied, so it stopped, and opens afresh.
    ada.click("#leave")
    expect(ada.locator("#join-view")).to_be_visible()
    ada.click("#join-form button")
    expect(ada.locator("#members li")).to_have_text(["ada"])
    expect(ada.locator("#messages li.notice")).to_have_count(0)
    expect(ada.locator("#messages li.message")).to_have_count(0)
    say(ada, "anew")
    expect(ada.locator("#messages li.message .text")).to_have_text(["anew"])
    ada.context.close()
