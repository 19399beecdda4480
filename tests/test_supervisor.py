"""Supervisor strategies, restart types and restart intensity."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import metakit
from metakit import ChildSpec, Down, Node, Process, StartChild, Supervisor
from metakit.testing import TIMEOUT, Probe, wait_until


class Child(Process):
    def handle_message(self, sender: metakit.PID, message: Any) -> None:
        if message == "crash":
            raise RuntimeError("child crashed")
        if message == "stop":
            raise metakit.Stop()


async def children(node: Node, sup: metakit.PID) -> list[metakit.PID | None]:
    return [pid for _, pid in await node.call(sup, "which_children")]


async def wait_restarted(
    node: Node, sup: metakit.PID, old: list[Any], changed: set[int]
) -> list[Any]:
    """Poll until exactly the children at ``changed`` have new PIDs; return them all."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while True:
        now = await children(node, sup)
        if all(
            (pid is not None and pid != old[i]) if i in changed else pid == old[i]
            for i, pid in enumerate(now)
        ):
            return now
        if loop.time() > deadline:
            raise AssertionError(f"children {now} (before {old}), expected changes at {changed}")
        await asyncio.sleep(0)


def specs(**kw: Any) -> list[ChildSpec]:
    return [ChildSpec(Child, name=f"c{i}", **kw) for i in range(3)]


@pytest.mark.parametrize(
    ("strategy", "changed"),
    [("one_for_one", {1}), ("one_for_all", {0, 1, 2}), ("rest_for_one", {1, 2})],
)
async def test_strategies(node: Node, strategy: str, changed: set[int]) -> None:
    sup = await node.spawn(Supervisor, specs(), strategy=strategy)
    before = await children(node, sup)
    assert all(before)
    assert node.whereis("c1") == before[1]
    node.send("c1", "crash")
    after = await wait_restarted(node, sup, before, changed)
    assert node.whereis("c1") == after[1]  # the name moved to the new child
    for pid in set(before) - set(after):
        assert pid not in node.processes()


@pytest.mark.parametrize(
    ("restart", "message", "restarted"),
    [
        ("permanent", "stop", True),
        ("permanent", "crash", True),
        ("transient", "stop", False),
        ("transient", "crash", True),
        ("temporary", "crash", False),
    ],
)
async def test_restart_types(
    node: Node, probe: Any, restart: str, message: str, restarted: bool
) -> None:
    p: Probe = await probe()
    sup = await node.spawn(Supervisor, [ChildSpec(Child, restart=restart)])  # type: ignore[arg-type]
    (old,) = await children(node, sup)
    assert old is not None
    ref = p.monitor(old)
    node.send(old, message)
    assert (await p.receive()).ref == ref  # Down: the child is gone
    if restarted:
        await wait_restarted(node, sup, [old], {0})
    else:
        # The supervisor got the Exit before this call, and did not restart.
        assert await children(node, sup) == [None]


async def test_gives_up_after_max_restarts(node: Node, probe: Any) -> None:
    p: Probe = await probe()
    sup = await node.spawn(Supervisor, [ChildSpec(Child, name="c")], max_restarts=2, max_seconds=60)
    ref = p.monitor(sup)
    for _ in range(2):
        (old,) = await children(node, sup)
        node.send("c", "crash")
        await wait_restarted(node, sup, [old], {0})
    node.send("c", "crash")  # the third restart within the period is too many
    down = await p.receive()
    assert down.ref == ref
    assert isinstance(down.reason, metakit.TooManyRestarts)
    await wait_until(lambda: node.processes() == [p.pid])


async def test_supervisor_stops_children_in_reverse_on_exit(node: Node, probe: Any) -> None:
    order: list[str] = []

    class Named(Process):
        async def init(self, tag: str) -> None:
            self.tag = tag

        def terminate(self, reason: Any) -> None:
            order.append(f"{self.tag}:{reason}")

    p: Probe = await probe()
    sup = await node.spawn(Supervisor, [ChildSpec(Named, args=(t,)) for t in ("a", "b", "c")])
    ref = p.monitor(sup)
    node.send_exit(sup, "shutdown")
    assert await p.receive() == Down(sup, ref, "shutdown")
    assert order == ["c:shutdown", "b:shutdown", "a:shutdown"]


async def test_failing_child_init_fails_supervisor_spawn(node: Node) -> None:
    class Broken(Process):
        async def init(self) -> None:
            raise ValueError("no config")

    with pytest.raises(ValueError, match="no config"):
        await node.spawn(Supervisor, [ChildSpec(Child, name="ok"), ChildSpec(Broken)])
    assert node.processes() == []
    assert node.whereis("ok") is None


async def test_subclass_children_and_inspect(node: Node) -> None:
    class Workers(Supervisor):
        strategy = "one_for_all"

        def children(self) -> list[ChildSpec]:
            return [ChildSpec(Child), ChildSpec(Child)]

    sup = await node.spawn(Workers)
    info = node.process_info(sup)
    assert info.inspect["strategy"] == "one_for_all"
    assert info.inspect["children"] == "2"
    assert info.trap_exit is True


def test_childspec_validates_restart() -> None:
    with pytest.raises(ValueError, match="restart"):
        ChildSpec(Child, restart="sometimes")  # type: ignore[arg-type]


async def test_start_child_on_demand(node: Node, probe: Any) -> None:
    p: Probe = await probe()
    sup = await node.spawn(Supervisor, [])
    pid = await p.call(sup, StartChild(ChildSpec(Child, name="room:a", restart="permanent")))
    assert node.whereis("room:a") == pid
    with pytest.raises(metakit.NameTaken):
        await p.call(sup, StartChild(ChildSpec(Child, name="room:a")))
    assert await children(node, sup) == [pid]  # the failed one left nothing
    node.send(pid, "crash")  # supervised like the others: restarted
    restarted = await wait_restarted(node, sup, [pid], {0})
    assert node.whereis("room:a") == restarted[0]


async def test_no_restarts_while_the_node_stops(caplog: pytest.LogCaptureFixture) -> None:
    node = await Node("sup-stop@localhost").start()
    sup = await node.spawn(Supervisor, specs(), max_restarts=1)
    exit_reason = node.wait_exit(sup)
    await node.stop()
    assert await exit_reason == "shutdown"  # not TooManyRestarts
    assert "restarting child" not in caplog.text
