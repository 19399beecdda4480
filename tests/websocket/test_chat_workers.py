"""``python examples/chat 0 --workers 2``: one port served by two worker
processes sharing their rooms over a local nats-server (DESIGN.md §9).

Clients are real: ``websockets``' client, and Debian's chromium through
Playwright (skipped where it is missing). Which worker a connection lands on
is the kernel's choice (SO_REUSEPORT); the page is told (``joined.node``), so
a test opens connections until it has one on each worker.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from queue import Empty, Queue
from typing import Any

import nats
import pytest
from chromium import CHROMIUM, launch
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from metakit.cluster import local_server
from metakit.testing import TIMEOUT

ROOT = Path(__file__).resolve().parents[2]
CHAT = ROOT / "examples" / "chat"
NODES = {"chat-1@localhost", "chat-2@localhost"}
# A worker's members are seen to leave once its node is judged down: within
# 3 heartbeats (1 s each); a restart and a rejoin come on top of that.
FAILOVER = TIMEOUT + 6.0

pytestmark = pytest.mark.timeout(120)


class Workers:
    """The chat with ``--workers 2``, its output lines read in a thread."""

    def __init__(self, *flags: str) -> None:
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(
            [sys.executable, str(CHAT), "0", "--workers", "2", *flags],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": path},
        )
        self.lines: Queue[str] = Queue()
        self.err: list[str] = []
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        self._threads = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.lines.put)),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.err.append)),
        ]
        for thread in self._threads:
            thread.start()
        self.url = self.listening()
        assert self.listening() == self.url  # the second worker, on the same port

    @staticmethod
    def _read(stream: Any, put: Any) -> None:
        for line in stream:
            put(line)

    def listening(self, timeout: float = TIMEOUT) -> str:
        """The URL of the next ``listening on`` line (a worker has started)."""
        try:
            line = self.lines.get(timeout=timeout)
        except Empty:
            raise AssertionError(f"no worker started; stderr:\n{''.join(self.err)}") from None
        match = re.fullmatch(r"listening on (http://127\.0\.0\.1:\d+)\n", line)
        assert match, line
        return match[1]

    def workers(self) -> list[int]:
        """The OS pids of the worker processes (children running multiprocessing's spawn)."""
        pids = []
        for pid in self.children():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except FileNotFoundError:
                continue
            if b"spawn_main" in cmdline:
                pids.append(int(pid))
        return pids

    def children(self) -> list[int]:
        """The OS pids of the parent's children: workers, nats-server, multiprocessing's."""
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [int(pid) for pid in children.read_text().split()]

    def stop(self, own_server: bool = True) -> None:
        """SIGTERM: every worker stops, then the parent, with 0; nothing is left."""
        children = self.children()
        assert len(children) >= 2 + own_server  # two workers (and the nats-server)
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=TIMEOUT * 3) == 0, "".join(self.err)
        for thread in self._threads:
            thread.join(TIMEOUT)
        # multiprocessing's resource tracker ends when the parent's pipe to it
        # closes, a moment after the parent: poll, with a deadline.
        deadline = time.monotonic() + TIMEOUT
        for pid in children:
            while Path(f"/proc/{pid}").exists() and not _zombie(pid):
                assert time.monotonic() < deadline, f"process {pid} left"
                time.sleep(0.01)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for thread in self._threads:
            thread.join(TIMEOUT)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except FileNotFoundError:
        return True


@pytest.fixture
def chat() -> Iterator[Workers]:
    workers = Workers()
    try:
        yield workers
        workers.stop()
    finally:
        workers.close()


class Client:
    """One WebSocket client of the chat."""

    def __init__(self, url: str) -> None:
        self._stack = contextlib.ExitStack()
        self.ws: ClientConnection = self._stack.enter_context(
            connect(url.replace("http", "ws") + "/ws", origin=url, open_timeout=TIMEOUT)  # type: ignore[arg-type]
        )

    def send(self, **message: Any) -> None:
        self.ws.send(json.dumps(message))

    def receive(self, timeout: float = TIMEOUT) -> Any:
        return json.loads(self.ws.recv(timeout=timeout))

    def until(self, predicate: Any, timeout: float = TIMEOUT) -> Any:
        """The first message ``predicate`` takes, skipping the others."""
        deadline = time.monotonic() + timeout
        while True:
            message = self.receive(max(0.01, deadline - time.monotonic()))
            if predicate(message):
                return message

    def close(self) -> None:
        self._stack.close()


def join(url: str, room: str, nick: str, timeout: float = TIMEOUT) -> tuple[Client, Any]:
    """A client seated in ``room`` as ``nick``, retrying while the nick is still
    held by a connection whose worker died; and its ``joined`` message."""
    deadline = time.monotonic() + timeout
    while True:
        client = Client(url)
        client.send(type="join", room=room, nick=nick)
        reply = client.receive()
        if reply["type"] == "joined":
            return client, reply
        client.close()
        assert time.monotonic() < deadline, reply
        time.sleep(0.2)  # a retry's pause, not a wait for an event


def one_on_each(url: str, room: str) -> dict[str, tuple[Client, str]]:
    """Clients seated in ``room`` until there is one on each worker: ``{node: (client, nick)}``."""
    found: dict[str, tuple[Client, str]] = {}
    spare: list[Client] = []
    for n in range(30):
        client, joined = join(url, room, f"u{n}")
        if joined["node"] in found:
            spare.append(client)
        else:
            found[joined["node"]] = (client, f"u{n}")
        if set(found) == NODES:
            break
    for client in spare:
        client.close()
    assert set(found) == NODES, f"30 connections, all on {set(found)}"
    return found


def test_members_on_different_workers_share_a_room(chat: Workers) -> None:
    (a, a_nick), (b, b_nick) = one_on_each(chat.url, "tea").values()
    # Presence: a newcomer on either worker sees both, and both see it come and go.
    c, joined = join(chat.url, "tea", "carol")
    assert {a_nick, b_nick, "carol"} <= set(joined["members"])
    for client in (a, b):
        assert client.until(lambda m: m.get("nick") == "carol")["type"] == "join"
    # Messages cross workers, both ways, in order.
    a.send(type="say", text="from a")
    b.send(type="say", text="from b")
    for client in (a, b, c):
        said = [client.until(lambda m: m["type"] == "message")["text"] for _ in range(2)]
        assert sorted(said) == ["from a", "from b"]
    # History: whoever joins later, on whichever worker, gets it.
    d, joined = join(chat.url, "tea", "dave")
    assert sorted(m["text"] for m in joined["history"]) == ["from a", "from b"]
    c.close()
    for client in (a, b, d):
        assert client.until(lambda m: m.get("nick") == "carol")["type"] == "leave"
    for client in (a, b, d):
        client.close()


def test_a_killed_worker_is_restarted_and_its_members_come_back(chat: Workers) -> None:
    members = one_on_each(chat.url, "tea")
    workers = chat.workers()
    assert len(workers) == 2
    os.kill(workers[0], signal.SIGKILL)
    # One client loses its connection; the other stays.
    lost = []
    for node, (client, nick) in members.items():
        try:
            client.until(lambda m: False, timeout=1.0)  # what comes, until closed
        except ConnectionClosed:
            lost.append((node, nick))
        except TimeoutError:
            pass
    assert len(lost) == 1, lost
    assert chat.listening(timeout=FAILOVER) == chat.url  # restarted, on the same port
    assert len(chat.workers()) == 2
    [(_, lost_nick)] = lost
    [(stayed, stayed_nick)] = [v for v in members.values() if v[1] != lost_nick]
    # The survivor sees the lost member leave once the room hears that its
    # worker went down, or, if the room was on the killed worker, is closed
    # and joins again (the room opens afresh on a live worker).
    try:
        stayed.until(lambda m: m == {"type": "leave", "nick": lost_nick}, FAILOVER)
    except ConnectionClosed:
        stayed, _ = join(chat.url, "tea", stayed_nick, FAILOVER)
    # The lost member comes back, and both sides chat again.
    back, joined = join(chat.url, "tea", lost_nick, timeout=FAILOVER)
    assert stayed_nick in joined["members"]
    back.send(type="say", text="back")
    stayed.send(type="say", text="welcome")
    for client in (back, stayed):
        said = [client.until(lambda m: m["type"] == "message")["text"] for _ in range(2)]
        assert sorted(said) == ["back", "welcome"]
    for client in (back, stayed):
        client.close()


async def test_workers_join_a_given_nats_server() -> None:
    async with local_server() as server:
        chat = Workers("--cluster", server.url)
        try:
            (a, _), (b, _) = one_on_each(chat.url, "tea").values()
            a.send(type="say", text="over the given server")
            assert b.until(lambda m: m["type"] == "message")["text"] == "over the given server"
            nc = await nats.connect(server.url)
            try:
                kv = await nc.jetstream().key_value("mk-chat")  # namespace "chat"
                keys = await kv.keys()
            finally:
                await nc.close()
            assert {"n.chat-1=40localhost", "n.chat-2=40localhost"} <= set(keys), keys
            for client in (a, b):
                client.close()
            chat.stop(own_server=False)
        finally:
            chat.close()


@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is not installed")
def test_two_pages_on_different_workers_chat(chat: Workers) -> None:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT * 1000)
    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            pages: dict[str, Any] = {}
            for n in range(30):  # a new context each: its own connections
                page = browser.new_context().new_page()
                page.goto(chat.url)
                page.fill("#nick", f"p{n}")
                page.fill("#room", "tea")
                page.click("#join-form button")
                expect(page.locator("#node")).to_have_text(re.compile(r"on chat-\d@localhost"))
                node = page.locator("#node").inner_text().removeprefix("on ")
                if node in pages:
                    page.context.close()
                else:
                    pages[node] = page
                if set(pages) == NODES:
                    break
            assert set(pages) == NODES
            one, two = pages["chat-1@localhost"], pages["chat-2@localhost"]
            one_nick = one.locator("#me").inner_text().removeprefix("as ")
            two_nick = two.locator("#me").inner_text().removeprefix("as ")
            for page in (one, two):
                expect(page.locator("#members li")).to_contain_text(sorted([one_nick, two_nick]))
            one.fill("#text", "hello from worker 1")
            one.press("#text", "Enter")
            expect(two.locator("#messages li.message .text")).to_have_text(["hello from worker 1"])
            two.fill("#text", "hello from worker 2")
            two.press("#text", "Enter")
            for page in (one, two):
                texts = page.locator("#messages li.message .text")
                expect(texts).to_have_text(["hello from worker 1", "hello from worker 2"])
        finally:
            browser.close()
