"""Meta-processes: task and thread main loops, every way of ending."""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

import pytest

import metakit
from metakit import Down, Meta, Node, Process
from metakit.testing import TIMEOUT, Probe, wait_until


def main_task(alias: metakit.Alias) -> asyncio.Task[Any]:
    """The running main-loop Task of an ``async def start`` meta (named after its Alias)."""
    [task] = [t for t in asyncio.all_tasks() if t.get_name() == f"metakit main {alias!r}"]
    return task


def main_thread(alias: metakit.Alias) -> threading.Thread:
    """The running main-loop thread of a plain ``def start`` meta (named after its Alias)."""
    [thread] = [t for t in threading.enumerate() if t.name == f"metakit {alias!r}"]
    return thread


class Ticker(Meta):
    """Async main loop: sends ticks to its parent until told to stop."""

    def __init__(self, *, finish_after: int | None = None, fail: bool = False) -> None:
        self.finish_after = finish_after
        self.fail = fail
        self.terminated: list[Any] = []
        self.ticks = 0
        self.go = asyncio.Event()

    async def start(self) -> None:
        while True:
            await self.go.wait()
            self.go.clear()
            self.ticks += 1
            self.send(self.parent, ("tick", self.ticks))
            if self.finish_after is not None and self.ticks >= self.finish_after:
                if self.fail:
                    raise RuntimeError("main loop failed")
                return

    def handle_message(self, sender: metakit.PID, message: Any) -> None:
        if message == "tick":
            self.go.set()
        elif message == "raise":
            raise LookupError("handler failed")

    def handle_call(self, sender: metakit.Caller, request: Any) -> Any:
        return ("ticks", self.ticks)

    def terminate(self, reason: Any) -> None:
        self.terminated.append(reason)

    def handle_inspect(self) -> dict[str, str]:
        return {"ticks": str(self.ticks)}


async def _spawn_watched(probe: Any, meta: Meta) -> tuple[Probe, Probe, metakit.Alias, Any]:
    owner: Probe = await probe()
    watcher: Probe = await probe()
    alias = await owner.spawn_meta(meta)
    ref = watcher.monitor(alias)
    return owner, watcher, alias, ref


async def test_async_meta_runs_as_task_and_sends_as_parent(node: Node, probe: Any) -> None:
    owner: Probe = await probe()
    meta = Ticker()
    alias = await owner.spawn_meta(meta)
    assert node.meta_info(alias).main_loop == "task"
    owner.send(alias, "tick")
    sender, message = await owner.receive_from()
    assert (sender, message) == (owner.pid, ("tick", 1))
    # The mailbox handler answers while the main loop is running.
    assert await owner.call(alias, "ticks") == ("ticks", 1)
    info = node.meta_info(alias)
    assert info.parent == owner.pid
    assert info.inspect["ticks"] == "1"
    assert alias in node.process_info(owner.pid).metas


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ("start returns", "normal"),
        ("start raises", RuntimeError),
        ("handler raises", LookupError),
        ("send_exit", "shutdown"),
        ("kill", "kill"),
        ("parent exits", "parent-gone"),
        ("parent killed", "kill"),
    ],
)
async def test_meta_ends_and_terminates_once(
    node: Node, probe: Any, how: str, expected: Any
) -> None:
    meta = Ticker(finish_after=1, fail=how == "start raises")
    owner, watcher, alias, ref = await _spawn_watched(probe, meta)
    main = main_task(alias)
    watcher.link(alias)
    if how in ("start returns", "start raises"):
        owner.send(alias, "tick")
    elif how == "handler raises":
        owner.send(alias, "raise")
    elif how == "send_exit":
        owner.send_exit(alias, "shutdown")
    elif how == "kill":
        node.kill(alias)
    elif how == "parent exits":
        node.send_exit(owner.pid, "parent-gone")
    elif how == "parent killed":
        node.kill(owner.pid)
    got = [await watcher.receive(), await watcher.receive()]
    down = next(m for m in got if isinstance(m, Down))
    exit_ = next(m for m in got if isinstance(m, metakit.Exit))
    assert down.target == alias
    assert down.ref == ref
    assert exit_.source == alias
    if isinstance(expected, type):
        assert isinstance(down.reason, expected)
    else:
        assert down.reason == expected
    assert meta.terminated == [down.reason]  # exactly once, with the reason
    assert alias not in node.metas()
    await wait_until(main.done)


async def test_meta_exit_does_not_overtake_queued_messages(node: Node, probe: Any) -> None:
    class Recorder(Meta):
        def __init__(self) -> None:
            self.seen: list[Any] = []
            self.reason: Any = None

        def handle_message(self, sender: metakit.PID, message: Any) -> None:
            self.seen.append(message)

        def terminate(self, reason: Any) -> None:
            self.reason = reason

    owner: Probe = await probe()
    meta = Recorder()
    alias = await owner.spawn_meta(meta)
    for i in range(5):
        owner.send(alias, i)
    owner.send_exit(alias, "normal")
    await wait_until(lambda: meta.reason is not None)
    assert meta.seen == [0, 1, 2, 3, 4]
    assert meta.reason == "normal"
    assert node.meta_info  # the meta is gone:
    with pytest.raises(metakit.NoProcess):
        node.meta_info(alias)


async def test_meta_spawns_meta_for_same_parent(node: Node, probe: Any) -> None:
    class Child(Meta):
        def handle_message(self, sender: metakit.PID, message: Any) -> None:
            self.send(self.parent, ("child", message))

    class Spawner(Meta):
        async def init(self) -> None:
            self.child = await self.spawn(Child())

        def handle_message(self, sender: metakit.PID, message: Any) -> None:
            self.send(self.child, message)

    owner: Probe = await probe()
    alias = await owner.spawn_meta(Spawner())
    owner.send(alias, "hello")
    assert await owner.receive() == ("child", "hello")
    assert len(node.process_info(owner.pid).metas) == 2


async def test_meta_init_error_reaches_spawner(node: Node, probe: Any) -> None:
    class BadInit(Meta):
        async def init(self) -> None:
            raise OSError("cannot bind")

    owner: Probe = await probe()
    with pytest.raises(OSError, match="cannot bind"):
        await owner.spawn_meta(BadInit())
    assert node.metas() == []


async def test_meta_instance_spawns_once(node: Node, probe: Any) -> None:
    owner: Probe = await probe()
    meta = Ticker()
    await owner.spawn_meta(meta)
    with pytest.raises(ValueError, match="spawned already"):
        await owner.spawn_meta(meta)


def test_meta_terminate_must_be_plain() -> None:
    with pytest.raises(TypeError, match="plain def"):

        class Bad(Meta):
            async def terminate(self, reason: Any) -> None:  # type: ignore[override]
                pass


# -- 7. thread main loop ---------------------------------------------------------


class SocketReader(Meta):
    """Blocking main loop: reads a blocking socket in its own thread."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.terminated: list[Any] = []
        self.thread_ids: set[int] = set()

    def start(self) -> None:
        self.sock.setblocking(True)
        while True:
            data = self.sock.recv(4096)  # blocks this thread, not the loop
            self.thread_ids.add(threading.get_ident())
            if not data:
                return
            self.send(self.parent, data)

    def terminate(self, reason: Any) -> None:
        self.terminated.append(reason)
        # shutdown() wakes a recv() blocked in the other thread; close() alone does not.
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


async def test_thread_meta_reads_blocking_socket(node: Node, probe: Any) -> None:
    owner: Probe = await probe()
    ours, theirs = socket.socketpair()
    with ours:
        meta = SocketReader(theirs)
        alias = await owner.spawn_meta(meta)
        assert node.meta_info(alias).main_loop == "thread"
        thread = main_thread(alias)
        for chunk in (b"one", b"two"):
            ours.sendall(chunk)
            sender, data = await owner.receive_from()
            assert sender == owner.pid
            assert data == chunk
        assert threading.get_ident() not in meta.thread_ids
        # Peer closes: recv returns b"", start returns, the meta ends normally.
        ref = owner.monitor(alias)
        ours.shutdown(socket.SHUT_WR)
        assert await owner.receive() == Down(alias, ref, "normal")
    assert meta.terminated == ["normal"]
    await wait_until(lambda: not thread.is_alive())


async def test_thread_meta_closed_when_parent_exits(node: Node, probe: Any) -> None:
    owner: Probe = await probe()
    watcher: Probe = await probe()
    ours, theirs = socket.socketpair()
    with ours:
        meta = SocketReader(theirs)
        alias = await owner.spawn_meta(meta)
        thread = main_thread(alias)
        ref = watcher.monitor(alias)
        node.send_exit(owner.pid, "shutdown")
        assert await watcher.receive() == Down(alias, ref, "shutdown")
        assert meta.terminated == ["shutdown"]
        assert theirs.fileno() == -1
        await wait_until(lambda: not thread.is_alive())


async def test_thread_meta_send_errors_raise_in_thread(node: Node, probe: Any) -> None:
    class SendsToNobody(Meta):
        def start(self) -> None:
            self.send("nobody", "x")

    owner: Probe = await probe()
    ref = owner.monitor(await owner.spawn_meta(SendsToNobody()))
    down = await owner.receive()
    assert down.ref == ref
    assert isinstance(down.reason, metakit.NoProcess)


async def test_node_stop_leaves_no_thread() -> None:
    before = set(threading.enumerate())
    ours, theirs = socket.socketpair()
    try:
        async with Node("stop@localhost") as node:

            class Owner(Process):
                async def init(self, meta: Meta) -> None:
                    await self.spawn_meta(meta)

            meta = SocketReader(theirs)
            await node.spawn(Owner, meta)
            await wait_until(lambda: main_thread(meta.id).is_alive())
        assert meta.terminated == ["shutdown"]
        assert set(threading.enumerate()) - before == set()
    finally:
        ours.close()


async def test_node_stop_waits_for_async_main_loops() -> None:
    async with Node("stop2@localhost") as node:

        class Owner(Process):
            async def init(self, metas: list[Ticker]) -> None:
                for meta in metas:
                    await self.spawn_meta(meta)

        metas = [Ticker() for _ in range(3)]
        await node.spawn(Owner, metas)
        mains = [main_task(m.id) for m in metas]
        await node.stop(timeout=TIMEOUT)
        assert all(main.done() for main in mains)
        assert [m.terminated for m in metas] == [["shutdown"]] * 3


async def test_stuck_coroutine_handler_does_not_outlive_node_stop() -> None:
    class Stuck(Meta):
        async def handle_message(self, sender: metakit.PID, message: Any) -> None:
            await asyncio.Event().wait()  # never returns

    node = await Node("stuck@localhost").start()

    class Owner(Process):
        async def init(self) -> None:
            self.meta = await self.spawn_meta(Stuck())
            self.send(self.meta, "block")

    pid = await node.spawn(Owner)
    [alias] = node.process_info(pid).metas
    await wait_until(lambda: node.meta_info(alias).state == "running")
    await node.stop(timeout=0.2)  # the parent's exit waits behind the stuck handler...
    assert node.metas() == []  # ...so the timeout's kill takes the meta too


async def test_meta_handler_stops_with_the_meta(node: Node, probe: Any) -> None:
    seen: list[str] = []

    class Short(Meta):
        def __init__(self) -> None:
            self.go = asyncio.Event()
            self.handler_ended = asyncio.Event()

        async def start(self) -> None:
            await self.go.wait()  # returns: the meta ends

        async def handle_message(self, sender: metakit.PID, message: Any) -> None:
            try:
                seen.append("started")
                self.go.set()
                await asyncio.sleep(0)  # the main loop returns meanwhile
                await asyncio.Event().wait()
                seen.append("ran after terminate")
            finally:
                self.handler_ended.set()

    owner: Probe = await probe()
    meta = Short()
    alias = await owner.spawn_meta(meta)
    ref = owner.monitor(alias)
    owner.send(alias, "go")
    assert await owner.receive() == Down(alias, ref, "normal")
    await wait_until(meta.handler_ended.is_set)
    assert seen == ["started"]
