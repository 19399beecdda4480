"""Node: names, env, stop, stop_force, introspection snapshots, metakit.run."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest

import metakit
from metakit import Node, Process
from metakit.tcp import TCPServer
from metakit.testing import TIMEOUT, Probe, wait_until


class Recorder(Process):
    """Appends its terminate reason to a shared list (and itself to ``holder``)."""

    async def init(
        self, log: list[Any], tag: str = "", holder: list[Recorder] | None = None
    ) -> None:
        self.record = log
        self.tag = tag
        if holder is not None:
            holder.append(self)

    def terminate(self, reason: Any) -> None:
        self.record.append((self.tag, reason))


class Stubborn(Process):
    """Its terminate never finishes: only a kill ends it."""

    async def terminate(self, reason: Any) -> None:
        await asyncio.Event().wait()


# -- names and env ----------------------------------------------------------------


async def test_names(node: Node) -> None:
    pid = await node.spawn(Recorder, [])
    node.register_name("rec", pid)
    assert node.whereis("rec") == pid
    with pytest.raises(metakit.NameTaken):
        node.register_name("rec", await node.spawn(Recorder, []))
    with pytest.raises(metakit.NameTaken, match="already registered as"):
        node.register_name("other", pid)
    assert node.unregister_name("rec") == pid
    assert node.unregister_name("rec") is None
    assert node.whereis("rec") is None
    node.register_name("rec", pid)
    node.kill(pid)
    assert node.whereis("rec") is None  # a dead process loses its name


async def test_env_inherited_from_parent_then_node() -> None:
    class Child(Process):
        def handle_call(self, sender: metakit.Caller, key: Any) -> Any:
            return self.env(key, "default")

    class Parent(Process):
        async def init(self) -> None:
            self.child = await self.spawn(Child, env={"own": 3})

        def handle_call(self, sender: metakit.Caller, key: Any) -> Any:
            return self.child

    async with Node("env@localhost", env={"shared": 1, "own": 0}) as node:
        parent = await node.spawn(Parent, env={"from_parent": 2})
        child = await node.call(parent, None)
        assert await node.call(child, "shared") == 1
        assert await node.call(child, "from_parent") == 2
        assert await node.call(child, "own") == 3
        assert await node.call(child, "missing") == "default"


# -- 9. stop ------------------------------------------------------------------------


async def test_stop_runs_terminate_with_shutdown() -> None:
    log: list[Any] = []
    async with Node("s@localhost") as node:
        for tag in "abc":
            await node.spawn(Recorder, log, tag)
    assert sorted(log) == [("a", "shutdown"), ("b", "shutdown"), ("c", "shutdown")]
    assert node.processes() == []
    with pytest.raises(metakit.NodeNotRunning):
        await node.spawn(Recorder, log)


async def test_stop_kills_after_timeout() -> None:
    log: list[Any] = []
    node = await Node("slow@localhost").start()
    await node.spawn(Stubborn)
    await node.spawn(Recorder, log, "ok")
    loop = asyncio.get_running_loop()
    started = loop.time()
    await node.stop(timeout=0.2)
    assert node.processes() == []
    assert log == [("ok", "shutdown")]
    assert loop.time() - started < TIMEOUT


class Draining(metakit.Meta):
    """A meta with work in flight at stop(): the node waits for ``done`` first."""

    def __init__(self, done: asyncio.Future[None], fail: bool = False) -> None:
        self.done = done
        self.fail = fail
        self.quiesced = False

    def quiesce(self) -> asyncio.Future[None]:
        self.quiesced = True
        if self.fail:
            raise RuntimeError("quiesce failed")
        return self.done


async def spawn_owner(node: Node, log: list[Any]) -> Recorder:
    """A Recorder tagged "owner", as an object: the test spawns metas from it."""
    holder: list[Recorder] = []
    await node.spawn(Recorder, log, "owner", holder=holder)
    return holder[0]


async def test_stop_lets_metas_finish_first_and_spawning_goes_on_meanwhile() -> None:
    log: list[Any] = []
    node = await Node("q@localhost").start()
    owner = await spawn_owner(node, log)
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    draining = Draining(done)
    await owner.spawn_meta(draining)
    server = TCPServer("127.0.0.1", 0)
    await owner.spawn_meta(server)
    address = server.address
    stopping = asyncio.ensure_future(node.stop(timeout=TIMEOUT))
    await wait_until(lambda: draining.quiesced)
    # Work in flight: every process runs, and may still spawn...
    assert log == []
    helper = await node.spawn(Recorder, log, "helper")
    assert helper in node.processes()
    # ...but the TCP server has stopped listening.
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(*address)
    done.set_result(None)
    await stopping
    assert sorted(log) == [("helper", "shutdown"), ("owner", "shutdown")]
    assert node.processes() == []
    assert node.metas() == []


async def test_stop_carries_on_when_a_meta_fails_to_quiesce(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log: list[Any] = []
    node = await Node("qf@localhost").start()
    owner = await spawn_owner(node, log)
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    await owner.spawn_meta(Draining(never, fail=True))
    await node.stop(timeout=TIMEOUT)
    assert log == [("owner", "shutdown")]
    assert "quiesce failed" in caplog.text


async def test_stop_force_kills_without_terminate() -> None:
    log: list[Any] = []
    node = await Node("force@localhost").start()
    await node.spawn(Recorder, log)
    await node.spawn(Stubborn)
    node.stop_force()
    assert node.processes() == []
    assert log == []  # "kill" skips terminate
    await node.stop()  # still fine afterwards


@pytest.mark.parametrize("kind", ["plain", "coroutine"])
async def test_stop_from_inside_a_handler(kind: str) -> None:
    log: list[Any] = []

    class Stopper(Process):
        def handle_message(self, sender: metakit.PID, message: Any) -> None:
            self.node.stop()  # plain handler: schedules the shutdown

    class AsyncStopper(Process):
        async def handle_message(self, sender: metakit.PID, message: Any) -> None:
            await self.node.stop()  # would wait for itself: returns at once
            log.append("after stop")

    node = await Node("inside@localhost").start()
    pid = await node.spawn(Stopper if kind == "plain" else AsyncStopper)
    await node.spawn(Recorder, log, "other")
    node.send(pid, "stop now")
    await asyncio.wait_for(node.stop(), TIMEOUT)  # the same shutdown, finished
    assert node.processes() == []
    assert ("other", "shutdown") in log
    if kind == "coroutine":
        assert "after stop" in log


async def test_stop_twice_and_unstarted() -> None:
    await Node("never@localhost").stop()
    node = await Node("twice@localhost").start()
    first = node.stop()
    second = node.stop()
    await asyncio.gather(first, second)
    with pytest.raises(metakit.NodeNotRunning):
        await node.start()


# -- 10. snapshots -------------------------------------------------------------------


async def test_process_info_snapshot(node: Node, probe: Any) -> None:
    class Inspected(Process):
        def handle_inspect(self) -> dict[str, str]:
            return {"answer": "42"}

        def handle_message(self, sender: metakit.PID, message: Any) -> None:
            self.send(sender, message)

    p: Probe = await probe()
    pid = await node.spawn(Inspected, name="insp", mailbox_size=10)
    p.link(pid)
    ref = p.monitor(pid)
    for i in range(3):
        p.send(pid, i)
    for _ in range(3):
        await p.receive()
    info = node.process_info("insp")
    assert info.pid == pid
    assert info.name == "insp"
    assert info.parent == node.pid
    assert (info.messages_in, info.messages_out) == (3, 3)
    assert (info.mailbox, info.mailbox_size) == (0, 10)
    assert info.state == "idle"
    assert info.handlers == "plain"
    assert info.links == (p.pid,)
    assert info.monitors == (ref,)
    assert info.inspect["answer"] == "42"
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.state = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        info.inspect["answer"] = "0"  # type: ignore[index]
    p.send(pid, "later")
    assert info.messages_in == 3  # a snapshot: it does not change
    with pytest.raises(metakit.NoProcess):
        node.process_info(metakit.PID("test@localhost", 10**9))


async def test_process_counters_agree_with_process_info(node: Node, probe: Any) -> None:
    """``node.process_counters()``: every process (no metas), the same counters as
    ``process_info``, without calling ``handle_inspect``."""

    class Loud(Process):
        def handle_inspect(self) -> dict[str, str]:
            raise AssertionError("process_counters called handle_inspect")

    p: Probe = await probe()
    pid = await node.spawn(Loud, name="loud", mailbox_size=10)
    server = TCPServer("127.0.0.1", 0)
    await p.spawn_meta(server)
    for i in range(3):
        p.send(pid, i)
    await wait_until(lambda: node.process_info(p.pid).messages_out == 3)
    rows = {row.pid: row for row in node.process_counters()}
    assert set(rows) == set(node.processes())
    row = rows[pid]
    assert (row.name, row.cls, row.parent, row.mailbox_size) == ("loud", Loud, node.pid, 10)
    want = node.process_info(p.pid)
    got = rows[p.pid]
    assert (got.state, got.mailbox, got.messages_in, got.messages_out) == (
        want.state,
        want.mailbox,
        want.messages_in,
        want.messages_out,
    )


async def test_meta_info_snapshot(node: Node, probe: Any) -> None:
    class Quiet(metakit.Meta):
        def handle_message(self, sender: metakit.PID, message: Any) -> None:
            pass

        def handle_inspect(self) -> dict[str, str]:
            return {"kind": "quiet"}

    p: Probe = await probe()
    alias = await p.spawn_meta(Quiet(), mailbox_size=5)
    p.send(alias, 1)
    await wait_until(lambda: node.meta_info(alias).mailbox == 0)
    info = node.meta_info(alias)
    assert info.alias == alias
    assert info.parent == p.pid
    assert info.behavior == "Quiet"
    assert info.main_loop == "none"
    assert info.messages_in == 1
    assert info.mailbox_size == 5
    assert info.inspect == {"kind": "quiet"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.state = "x"  # type: ignore[misc]
    with pytest.raises(metakit.NoProcess):
        node.meta_info(p.pid)  # type: ignore[arg-type]


async def test_wait_exit(node: Node) -> None:
    pid = await node.spawn(Recorder, [])
    waiting = asyncio.ensure_future(node.wait_exit(pid, timeout=TIMEOUT))
    await asyncio.sleep(0)
    node.send_exit(pid, "bye")
    assert await waiting == "bye"
    assert await node.wait_exit(pid) == "noproc"
    with pytest.raises(TimeoutError):
        await node.wait_exit(await node.spawn(Recorder, []), timeout=0.01)


# -- metakit.run --------------------------------------------------------------------------


def _run_script(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "METAKIT_LOOP": "asyncio"}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 4,
        env=env,
        check=False,
    )


def test_run_with_coroutine_and_process_class() -> None:
    result = _run_script(
        """
        import metakit

        class Once(metakit.Process):
            async def init(self, word):
                self.word = word
                self.send(self.pid, "go")
            def handle_message(self, sender, message):
                print(self.word, flush=True)
                raise metakit.Stop("done")

        async def main(node, x):
            return x * 2

        print(metakit.run(main, 21))
        print(metakit.run(Once, "hello"))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["42", "hello", "done"]


def test_run_stops_cleanly_on_sigterm() -> None:
    result = _run_script(
        """
        import os, signal, metakit

        class Forever(metakit.Process):
            async def init(self):
                self.send(self.pid, "kill me")
            def handle_message(self, sender, message):
                os.kill(os.getpid(), signal.SIGTERM)
            def terminate(self, reason):
                print("terminate", reason, flush=True)

        print(metakit.run(Forever))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["terminate", "shutdown", "shutdown"]


def test_loop_factory_respects_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METAKIT_LOOP", "asyncio")
    assert metakit.loop_factory() is None
    monkeypatch.setenv("METAKIT_LOOP", "")
    factory = metakit.loop_factory()
    if sys.platform != "win32":
        assert factory is not None
        assert "uvloop" in factory.__module__


async def test_stop_awaited_in_init_does_not_wait_for_itself() -> None:
    class StopsEarly(Process):
        async def init(self) -> None:
            await self.node.stop()  # returns at once: the shutdown carries on

    node = await Node("early@localhost").start()
    await node.spawn(StopsEarly)
    await asyncio.wait_for(node.stop(), TIMEOUT / 2)
    assert node.processes() == []
