"""Links and monitors (Erlang semantics)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import metakit
from metakit import Down, Exit, Node, Process
from metakit.testing import TIMEOUT, Probe, wait_until


class Worker(Process):
    def handle_message(self, sender: metakit.PID, message: Any) -> None:
        if message == "crash":
            raise RuntimeError("crashed")
        if message == "stop":
            raise metakit.Stop()


class Linker(Process):
    """Links to a target in init; reports nothing (it just lives or dies)."""

    async def init(self, target: metakit.PID, trap: bool = False) -> None:
        self.trap_exit = trap
        self.exits: list[Exit] = []
        self.link(target)

    def handle_message(self, sender: metakit.PID, message: Any) -> None:
        if isinstance(message, Exit):
            self.exits.append(message)

    def handle_call(self, sender: metakit.Caller, request: Any) -> Any:
        match request:
            case ("link", target):
                self.link(target)
            case ("unlink", target):
                self.unlink(target)
            case "exits":
                return list(self.exits)
        return None

    def handle_inspect(self) -> dict[str, str]:
        return {"exits": str(len(self.exits))}


class Held(Process):
    """Busy while handling ``("hold", gate)`` until the test sets ``gate``, so
    what arrives meanwhile stays queued; other messages go to :attr:`inbox`."""

    async def init(self, holder: list[Held]) -> None:
        holder.append(self)
        self.inbox: asyncio.Queue[Any] = asyncio.Queue()

    async def handle_message(self, sender: metakit.PID, message: Any) -> None:
        match message:
            case ("hold", asyncio.Event() as gate):
                await gate.wait()
            case _:
                self.inbox.put_nowait(message)


async def test_abnormal_exit_propagates_over_link(node: Node, probe: Any) -> None:
    p: Probe = await probe()
    worker = await node.spawn(Worker)
    linker = await node.spawn(Linker, worker)
    ref = p.monitor(linker)
    node.send(worker, "crash")
    down = await p.receive()
    assert down.ref == ref
    assert isinstance(down.reason, RuntimeError)  # same reason as the worker


async def test_normal_exit_does_not_kill_linked(node: Node, probe: Any) -> None:
    p: Probe = await probe()
    worker = await node.spawn(Worker)
    linker = await node.spawn(Linker, worker)
    ref = p.monitor(worker)
    node.send(worker, "stop")
    assert await p.receive() == Down(worker, ref, "normal")
    assert await node.call(linker, "exits") == []
    assert node.process_info(linker).links == ()


async def test_trap_exit_turns_signal_into_message(node: Node) -> None:
    worker = await node.spawn(Worker)
    linker = await node.spawn(Linker, worker, True)
    node.send(worker, "crash")
    await wait_until(lambda: node.process_info(linker).inspect["exits"] != "0")
    exits = await node.call(linker, "exits")
    assert exits[0].source == worker
    assert isinstance(exits[0].reason, RuntimeError)
    # A trapping process also sees a linked "normal" exit, as a message.
    worker2 = await node.spawn(Worker)
    await node.call(linker, ("link", worker2))
    node.send(worker2, "stop")
    await wait_until(lambda: node.process_info(linker).inspect["exits"] == "2")
    assert (await node.call(linker, "exits"))[1] == Exit(worker2, "normal")


async def test_kill_cannot_be_trapped(node: Node, probe: Any) -> None:
    p: Probe = await probe()
    worker = await node.spawn(Worker)
    linker = await node.spawn(Linker, worker, True)
    ref = p.monitor(linker)
    p.send_exit(linker, "kill")
    assert await p.receive() == Down(linker, ref, "kill")


async def test_link_is_bidirectional(node: Node, probe: Any) -> None:
    p: Probe = await probe()
    worker = await node.spawn(Worker)
    linker = await node.spawn(Linker, worker)
    ref = p.monitor(worker)
    node.kill(linker)  # a kill travels over the link as "killed"
    assert await p.receive() == Down(worker, ref, "killed")


async def test_link_to_dead_raises(node: Node) -> None:
    worker = await node.spawn(Worker)
    node.kill(worker)
    with pytest.raises(metakit.NoProcess):
        await node.spawn(Linker, worker)


async def test_unlink(node: Node, probe: Any) -> None:
    p: Probe = await probe()
    worker = await node.spawn(Worker)
    linker = await node.spawn(Linker, worker)
    await node.call(linker, ("unlink", worker))
    ref = p.monitor(worker)
    node.send(worker, "crash")
    assert (await p.receive()).ref == ref
    assert linker in node.processes()


async def test_monitor_delivers_down_exactly_once(node: Node, probe: Any) -> None:
    p: Probe = await probe()
    worker = await node.spawn(Worker, name="w")
    ref1 = p.monitor(worker)
    ref2 = p.monitor("w")  # by name: resolves to the same process
    node.send(worker, "crash")
    downs = [await p.receive(), await p.receive()]
    assert {d.ref for d in downs} == {ref1, ref2}
    assert all(d.target == worker for d in downs)
    # And nothing more arrives: the monitors are gone with the process.
    p.send(p.pid, "marker")
    assert await p.receive() == "marker"
    assert node.process_info(p.pid).monitors == ()


async def test_monitor_dead_target_gives_noproc(node: Node, probe: Any) -> None:
    p: Probe = await probe()
    worker = await node.spawn(Worker)
    node.kill(worker)
    ref = p.monitor(worker)
    assert await p.receive() == Down(worker, ref, "noproc")
    ref2 = p.monitor("nobody")
    assert await p.receive() == Down("nobody", ref2, "noproc")


async def test_demonitor_removes_queued_down(node: Node) -> None:
    holder: list[Held] = []
    await node.spawn(Held, holder)
    [p] = holder
    worker = await node.spawn(Worker)
    ref = p.monitor(worker)
    p.demonitor(ref)
    node.send(worker, "crash")
    await wait_until(lambda: worker not in node.processes())
    # Down that is queued but not yet handled is withdrawn as well.
    w2 = await node.spawn(Worker)
    ref2 = p.monitor(w2)
    gate = asyncio.Event()
    p.send(p.pid, ("hold", gate))  # keep it busy so the Down stays queued
    await wait_until(lambda: node.process_info(p.pid).mailbox == 0)  # it is holding
    node.kill(w2)
    assert node.process_info(p.pid).mailbox == 1
    p.demonitor(ref2)
    assert node.process_info(p.pid).mailbox == 0
    gate.set()
    p.send(p.pid, "marker")
    assert await asyncio.wait_for(p.inbox.get(), TIMEOUT) == "marker"


async def test_monitor_meta_alias(node: Node, probe: Any) -> None:
    class Quits(metakit.Meta):
        def handle_message(self, sender: metakit.PID, message: Any) -> None:
            raise ValueError("meta handler failed")

    owner: Probe = await probe()
    watcher: Probe = await probe()
    alias = await owner.spawn_meta(Quits())
    ref = watcher.monitor(alias)
    watcher.link(alias)
    node.send(alias, "x")
    received = [await watcher.receive(), await watcher.receive()]
    down = next(m for m in received if isinstance(m, Down))
    exit_ = next(m for m in received if isinstance(m, Exit))
    assert down.target == alias
    assert down.ref == ref
    assert isinstance(down.reason, ValueError)
    assert exit_.source == alias
