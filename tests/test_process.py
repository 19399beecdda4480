"""Processes: spawn, send, call, handler serialisation."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import metakit
from metakit import NO_REPLY, Caller, Node, Process
from metakit.testing import TIMEOUT, Probe, wait_until


class Counter(Process):
    async def init(self, start: int = 0) -> None:
        self.count = start

    def handle_message(self, sender: metakit.PID, message: Any) -> None:
        self.count += message

    def handle_call(self, sender: Caller, request: Any) -> Any:
        if request == "get":
            return self.count
        if request == "boom":
            raise ValueError("bad request")
        if request == "stop":
            raise metakit.Stop("normal")
        return request


class FailingInit(Process):
    async def init(self, meta: metakit.Meta | None = None) -> None:
        if meta is not None:
            await self.spawn_meta(meta)
        raise RuntimeError("init failed")


class Idle(metakit.Meta):
    terminated: list[Any]

    def __init__(self) -> None:
        self.terminated = []

    async def start(self) -> None:
        await asyncio.Event().wait()

    def terminate(self, reason: Any) -> None:
        self.terminated.append(reason)


# -- 1. spawn awaits init -----------------------------------------------------


async def test_spawn_runs_init_before_returning(node: Node) -> None:
    pid = await node.spawn(Counter, 41)
    assert await node.call(pid, "get") == 41
    assert node.process_info(pid).state == "idle"


async def test_init_exception_reaches_caller_and_leaves_nothing(node: Node) -> None:
    tasks_before = asyncio.all_tasks()
    meta = Idle()
    with pytest.raises(RuntimeError, match="init failed"):
        await node.spawn(FailingInit, meta, name="failing")
    assert node.processes() == []
    assert node.metas() == []
    assert node.whereis("failing") is None
    # The meta spawned during init was closed, its main-loop task ended.
    assert meta.terminated == [meta.terminated[0]]
    assert isinstance(meta.terminated[0], RuntimeError)
    await wait_until(lambda: not (asyncio.all_tasks() - tasks_before - {asyncio.current_task()}))


async def test_stop_in_init_is_process_exited(node: Node) -> None:
    class Refuses(Process):
        async def init(self) -> None:
            raise metakit.Stop("not today")

    with pytest.raises(metakit.ProcessExited) as info:
        await node.spawn(Refuses)
    assert info.value.reason == "not today"


async def test_plain_def_init_and_kwargs(node: Node) -> None:
    class Plain(Process):
        def init(self, a: int, *, b: int) -> None:  # type: ignore[override]
            self.total = a + b

        def handle_call(self, sender: Caller, request: Any) -> Any:
            return self.total

    pid = await node.spawn(Plain, 1, b=2)
    assert await node.call(pid, None) == 3


async def test_name_taken(node: Node) -> None:
    await node.spawn(Counter, name="counter")
    with pytest.raises(metakit.NameTaken):
        await node.spawn(Counter, name="counter")
    assert len(node.processes()) == 1


# -- 2. send --------------------------------------------------------------------


async def test_send_to_pid_name_and_alias(node: Node, probe: Any) -> None:
    pid = await node.spawn(Counter, name="counter")
    node.send(pid, 1)
    node.send("counter", 2)
    assert await node.call("counter", "get") == 3

    class Echo(metakit.Meta):
        def handle_message(self, sender: metakit.PID, message: Any) -> None:
            self.send(sender, ("echo", message))

    p: Probe = await probe()
    alias = await p.spawn_meta(Echo())
    p.send(alias, "hi")
    assert await p.receive_from() == (p.pid, ("echo", "hi"))


async def test_send_to_unknown_raises_no_process(node: Node) -> None:
    pid = await node.spawn(Counter)
    node.kill(pid)
    with pytest.raises(metakit.NoProcess):
        node.send(pid, 1)
    with pytest.raises(metakit.NoProcess):
        node.send("nobody", 1)
    with pytest.raises(LookupError):  # NoProcess is also a LookupError
        node.send(metakit.Alias("test@localhost", 10**9), 1)
    with pytest.raises(TypeError):
        node.send(42, 1)  # type: ignore[arg-type]


async def test_full_mailbox_refuses_whole_message(node: Node) -> None:
    gate = asyncio.Event()

    class Slow(Process):
        async def init(self) -> None:
            self.seen: list[Any] = []

        async def handle_message(self, sender: metakit.PID, message: Any) -> None:
            await gate.wait()
            self.seen.append(message)

        def handle_call(self, sender: Caller, request: Any) -> Any:
            return list(self.seen)

    pid = await node.spawn(Slow, mailbox_size=3)
    node.send(pid, 0)  # taken by the handler, which blocks on the gate
    await wait_until(lambda: node.process_info(pid).mailbox == 0)
    for i in (1, 2, 3):
        node.send(pid, i)
    with pytest.raises(metakit.MailboxFull) as info:
        node.send(pid, 4)
    assert info.value.size == 3
    assert node.process_info(pid).mailbox == 3
    gate.set()
    await wait_until(lambda: node.process_info(pid).mailbox == 0)
    assert await node.call(pid, "seen", timeout=TIMEOUT) == [0, 1, 2, 3]


# -- 3. call ------------------------------------------------------------------------


async def test_call_returns_reply(node: Node) -> None:
    pid = await node.spawn(Counter, 7)
    assert await node.call(pid, "get") == 7
    assert await node.call(pid, ("any", 1)) == ("any", 1)


async def test_call_timeout_and_late_reply_discarded(node: Node, probe: Any) -> None:
    class Deferring(Process):
        async def init(self) -> None:
            self.callers: list[Caller] = []

        def handle_call(self, sender: Caller, request: Any) -> Any:
            self.callers.append(sender)
            return NO_REPLY

        def handle_message(self, sender: metakit.PID, message: Any) -> None:
            for caller in self.callers:
                self.reply(caller, "late")
            self.send(sender, "replied")

    p: Probe = await probe()
    server = await node.spawn(Deferring)
    with pytest.raises(metakit.CallTimeout) as info:
        await p.call(server, "q", timeout=0.05)
    assert isinstance(info.value, TimeoutError)
    p.send(server, "reply now")
    assert await p.receive() == "replied"
    # The late reply went nowhere: not into the caller's mailbox.
    assert p.pending() == []
    assert node.process_info(p.pid).mailbox == 0


async def test_handle_call_exception_reraised_callee_survives(node: Node) -> None:
    pid = await node.spawn(Counter, 1)
    with pytest.raises(ValueError, match="bad request"):
        await node.call(pid, "boom")
    assert await node.call(pid, "get") == 1


async def test_no_reply_then_reply(node: Node) -> None:
    class Relay(Process):
        async def init(self) -> None:
            self.waiting: Caller | None = None

        def handle_call(self, sender: Caller, request: Any) -> Any:
            if request == "wait":
                self.waiting = sender
                return NO_REPLY
            assert self.waiting is not None
            self.reply(self.waiting, f"answered by {request}")
            return "ok"

    pid = await node.spawn(Relay)
    pending = asyncio.ensure_future(node.call(pid, "wait"))
    await wait_until(lambda: (i := node.process_info(pid)).messages_in == 1 and i.mailbox == 0)
    assert not pending.done()
    assert await node.call(pid, "second") == "ok"
    assert await pending == "answered by second"


async def test_callee_dies_mid_call(node: Node) -> None:
    class Hangs(Process):
        async def handle_call(self, sender: Caller, request: Any) -> Any:
            await asyncio.Event().wait()

    pid = await node.spawn(Hangs)
    pending = asyncio.ensure_future(node.call(pid, "x", timeout=TIMEOUT))
    await wait_until(lambda: node.process_info(pid).state == "running")
    node.send_exit(pid, "shutdown")  # waits for the handler...
    node.kill(pid)  # ...so kill it
    with pytest.raises(metakit.ProcessExited) as info:
        await pending
    assert info.value.reason == "kill"


async def test_queued_calls_fail_when_callee_stops(node: Node) -> None:
    pid = await node.spawn(Counter)
    first = asyncio.ensure_future(node.call(pid, "stop"))
    second = asyncio.ensure_future(node.call(pid, "get"))
    for pending in (first, second):
        with pytest.raises(metakit.ProcessExited):
            await pending


async def test_call_self_is_refused(node: Node) -> None:
    class Selfish(Process):
        async def handle_call(self, sender: Caller, request: Any) -> Any:
            return await self.call(self.pid, "again")

    pid = await node.spawn(Selfish)
    with pytest.raises(metakit.MetakitError, match="cannot call itself"):
        await node.call(pid, "go")


# -- 4. handlers never overlap --------------------------------------------------------


@pytest.mark.parametrize("kind", ["plain", "coroutine"])
async def test_handlers_never_overlap(node: Node, kind: str) -> None:
    class Helper(Process):
        async def handle_call(self, sender: Caller, request: Any) -> Any:
            await asyncio.sleep(0)
            return request

    class Serial(Process):
        async def init(self, helper: metakit.PID) -> None:
            self.helper = helper
            self.active = 0
            self.max_active = 0
            self.order: list[int] = []

        def enter(self) -> None:
            self.active += 1
            self.max_active = max(self.max_active, self.active)

        def handle_call(self, sender: Caller, request: Any) -> Any:
            return self.max_active, self.order

    class PlainSerial(Serial):
        def handle_message(self, sender: metakit.PID, message: Any) -> None:
            self.enter()
            if isinstance(message, int):
                # A message to itself is queued behind the others, not run now.
                self.send(self.pid, ("nested", message))
                self.order.append(message)
            self.active -= 1

    class CoroutineSerial(Serial):
        async def handle_message(self, sender: metakit.PID, message: Any) -> None:
            self.enter()
            # Awaiting a call must not let the next message in.
            await self.call(self.helper, message)
            self.order.append(message)
            self.active -= 1

    helper = await node.spawn(Helper)
    cls = PlainSerial if kind == "plain" else CoroutineSerial
    pid = await node.spawn(cls, helper)
    assert node.process_info(pid).handlers == kind
    for i in range(50):
        node.send(pid, i)
    max_active, order = await node.call(pid, "report")
    assert max_active == 1
    assert order == list(range(50))


async def test_plain_process_drains_without_tasks(node: Node) -> None:
    pid = await node.spawn(Counter)
    tasks = asyncio.all_tasks()
    for _ in range(1000):
        node.send(pid, 1)
    assert asyncio.all_tasks() == tasks  # delivery created no Task
    assert await node.call(pid, "get") == 1000
    assert node.process_info(pid).handlers == "plain"


async def test_crash_in_handle_message_ends_process(node: Node, probe: Any) -> None:
    class Fragile(Process):
        def handle_message(self, sender: metakit.PID, message: Any) -> None:
            raise KeyError(message)

    p: Probe = await probe()
    pid = await node.spawn(Fragile)
    ref = p.monitor(pid)
    node.send(pid, "x")
    down = await p.receive()
    assert down == metakit.Down(pid, ref, down.reason)
    assert isinstance(down.reason, KeyError)


async def test_call_timeouts_mixed_and_behind_a_pending_call(node: Node) -> None:
    class Silent(Process):
        def handle_call(self, sender: Caller, request: Any) -> Any:
            return NO_REPLY if request == "never" else request

    pid = await node.spawn(Silent)
    loop = asyncio.get_running_loop()
    long_wait = node.call(pid, "never", timeout=TIMEOUT)  # stays at the front of its queue
    answered = [await node.call(pid, i, timeout=TIMEOUT) for i in range(100)]
    assert answered == list(range(100))
    started = loop.time()
    short = node.call(pid, "never", timeout=0.05)  # a later call, a shorter timeout
    with pytest.raises(metakit.CallTimeout) as info:
        await short
    assert info.value.timeout == 0.05
    assert loop.time() - started < TIMEOUT / 2  # it did not wait for the long one
    assert not long_wait.done()
    node.kill(pid)
    with pytest.raises(metakit.ProcessExited):
        await long_wait


async def test_subclass_private_names_do_not_touch_the_runtime(node: Node) -> None:
    class StateMachine(Process):
        """Uses the names an actor author reaches for first."""

        async def init(self) -> None:
            self._state = "idle"
            self._name = "machine"
            self._events: list[Any] = []
            self._log = "mine"
            self._q: list[Any] = []
            self._parent = None

        def _end(self, reason: Any) -> None:  # a helper of the user's own
            self._events.append(("end", reason))

        def handle_message(self, sender: metakit.PID, message: Any) -> None:
            self._events.append(message)
            self._end("step")

        def handle_call(self, sender: Caller, request: Any) -> Any:
            return self._state, list(self._events)

    pid = await node.spawn(StateMachine, name="sm")
    node.send("sm", "go")
    assert await node.call(pid, None) == ("idle", ["go", ("end", "step")])
    assert node.whereis("sm") == pid
    assert node.process_info(pid).state == "idle"


async def test_failed_init_takes_children_linked_in_init(node: Node) -> None:
    class Child(Process):
        pass

    class Parent(Process):
        async def init(self) -> None:
            await self.spawn(Child, name="child", link=True)
            raise RuntimeError("init failed after spawning a child")

    with pytest.raises(RuntimeError, match="after spawning"):
        await node.spawn(Parent)
    await wait_until(lambda: node.processes() == [])
    assert node.whereis("child") is None


async def test_call_without_timeout(node: Node) -> None:
    class Later(Process):
        async def init(self) -> None:
            self.caller: Caller | None = None

        def handle_call(self, sender: Caller, request: Any) -> Any:
            if request == "wait":
                self.caller = sender
                return NO_REPLY
            assert self.caller is not None
            self.reply(self.caller, "answered")
            return "ok"

    pid = await node.spawn(Later)
    pending = node.call(pid, "wait", timeout=None)
    assert await node.call(pid, "now") == "ok"
    assert await pending == "answered"
