"""Process groups on one node: join, leave, send_group, call_group, members
leaving at exit, and names refused before anything happens."""

from __future__ import annotations

from typing import Any

import pytest

import metakit
from metakit import NoProcess
from metakit.testing import TIMEOUT


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


async def test_send_group_reaches_every_member_once_and_call_group_one(node: metakit.Node) -> None:
    pids = [await node.spawn(Member, tag) for tag in ("a", "b", "c")]
    for pid in pids:
        await node.call(pid, ("join", "workers"))
    await node.call(pids[0], ("join", "workers"))  # twice: still one membership
    assert node.group_members("workers") == pids
    outsider = await node.spawn(Member, "x")
    assert await node.call(outsider, ("send", "workers", "hello")) == 3
    for pid in pids:
        assert await node.call(pid, "got") == ["hello"]
    assert await node.call(outsider, "got") == []
    tags = [await node.call(outsider, ("call", "workers", "tag")) for _ in range(6)]
    assert tags == ["a", "b", "c", "a", "b", "c"]  # round-robin, one member each time


async def test_members_leave_on_request_and_at_exit(node: metakit.Node) -> None:
    a = await node.spawn(Member, "a")
    b = await node.spawn(Member, "b")
    await node.call(a, ("join", "g"))
    await node.call(b, ("join", "g"))
    await node.call(a, ("join", "other"))
    await node.call(a, ("leave", "g"))
    assert node.group_members("g") == [b]
    done = node.wait_exit(b)
    node.kill(b)
    await done
    assert node.group_members("g") == []
    assert node.group_members("other") == [a]
    with pytest.raises(NoProcess):
        await node.call(a, ("call", "g", "tag"), timeout=TIMEOUT)


@pytest.mark.parametrize("bad", ["", "a.b", "a b", "*", ">", "x" * 129, "é", 7])
async def test_a_group_name_that_is_not_a_subject_token_is_refused(
    node: metakit.Node, bad: Any
) -> None:
    pid = await node.spawn(Member, "a")
    with pytest.raises(ValueError, match="subject token"):
        await node.call(pid, ("join", bad))
    with pytest.raises(ValueError, match="subject token"):
        node.group_members(bad)
    with pytest.raises(ValueError, match="subject token"):
        await node.call(pid, ("send", bad, "x"))
    assert node._groups.by_name == {}


class Producer(metakit.Process):
    def handle_call(self, sender: metakit.Caller, request: Any) -> Any:
        kind, name = request
        if kind == "register":
            self.register_event(name)
        else:
            self.monitor_event(name)


@pytest.mark.parametrize("bad", ["a.b", "", "room 1", "*"])
async def test_an_event_name_that_is_not_a_subject_token_is_refused(
    node: metakit.Node, bad: str
) -> None:
    pid = await node.spawn(Producer)
    for kind in ("register", "monitor"):
        with pytest.raises(ValueError, match="subject token"):
            await node.call(pid, (kind, bad))
    await node.call(pid, ("register", "fine-name_1"))
