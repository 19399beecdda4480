"""Process groups across two nodes on a real nats-server (DESIGN.md §8, Groups)."""

from __future__ import annotations

from typing import Any

from conftest import cluster, until

import metakit
from metakit.cluster import LocalServer


class Member(metakit.Process):
    async def init(self, tag: str) -> None:
        self.tag = tag
        self.got: list[Any] = []

    def handle_message(self, sender: metakit.PID, message: Any) -> None:
        self.got.append(message)

    async def handle_call(self, sender: metakit.Caller, request: Any) -> Any:
        match request:
            case ("join", group):
                await self.join_group(group)
            case ("leave", group):
                await self.leave_group(group)
            case ("send", group, message):
                return self.send_group(group, message)
            case ("call", group, inner):
                return await self.call_group(group, inner)
            case "got":
                return self.got
            case "tag":
                return self.tag
        return None


async def test_groups_span_nodes_and_members_leave(server: LocalServer, namespace: str) -> None:
    a = metakit.Node("a@test", cluster=cluster(server, namespace))
    b = metakit.Node("b@test", cluster=cluster(server, namespace))
    async with a:
        await b.start()
        await until(lambda: a.nodes() == b.nodes() == ["a@test", "b@test"])
        on_a = [await a.spawn(Member, f"a{i}") for i in range(3)]
        on_b = [await b.spawn(Member, f"b{i}") for i in range(2)]
        for pid in on_a:
            await a.call(pid, ("join", "crew"))
        for pid in on_b:
            await b.call(pid, ("join", "crew"))
        everyone = set(on_a + on_b)
        await until(
            lambda: set(a.group_members("crew")) == set(b.group_members("crew")) == everyone
        )
        # send_group: every member once, wherever it is.
        sender = await a.spawn(Member, "s")
        assert await a.call(sender, ("send", "crew", "hi")) == 3 + 1  # 3 here, 1 other node
        for node, pids in ((a, on_a), (b, on_b)):
            for pid in pids:
                await until(lambda n=node, p=pid: _got(n, p) == ["hi"])
        # call_group: one member each time, round-robin over both nodes.
        tags = [await a.call(sender, ("call", "crew", "tag")) for _ in range(5)]
        assert sorted(tags) == ["a0", "a1", "a2", "b0", "b1"]
        # Leaving, dying, and a node going down take members out.
        await b.call(on_b[0], ("leave", "crew"))
        await until(lambda: on_b[0] not in a.group_members("crew"))
        a.kill(on_a[0])
        await until(lambda: on_a[0] not in b.group_members("crew"))
        await b.stop()
        await until(lambda: a.group_members("crew") == on_a[1:])


def _got(node: metakit.Node, pid: metakit.PID) -> list[Any]:
    proc = node._registry.table.get(pid.id)
    return list(proc.got) if proc is not None else []  # type: ignore[attr-defined]
