"""The send hop two ways: ``Process.send`` (``mailbox.process_send``, inlined for
speed) and the original it copies (the mailbox's post method, which ``Meta.send``
uses).

Every case runs through both, so the copy cannot drift from the original.
"""

from __future__ import annotations

from typing import Any

import pytest

import metakit
from metakit import MailboxFull, Meta, Node, NoProcess, Process
from metakit.testing import wait_until


class Eager(Meta):
    """An eager meta (a connection's kind): a send to it when idle runs the handler at once."""

    eager = True

    def __init__(self) -> None:
        self.got: list[tuple[Any, Any]] = []

    def handle_message(self, sender: Any, message: Any) -> None:
        if message == "boom":
            raise RuntimeError("boom")
        self.got.append((sender, message))


class Quiet(Meta):
    """A meta that only sends: the second way to send."""


class Sink(Process):
    async def init(self, holder: list[Any]) -> None:
        self.got: list[Any] = []
        holder.append(self)

    def handle_message(self, sender: Any, message: Any) -> None:
        self.got.append(message)


class Sender(Process):
    async def init(self, holder: list[Any]) -> None:
        self.quiet = Quiet()
        await self.spawn_meta(self.quiet)
        holder.append(self)


async def setup(node: Node) -> tuple[Sender, Sink]:
    holder: list[Any] = []
    await node.spawn(Sender, holder)
    await node.spawn(Sink, holder, name="sink", mailbox_size=2)
    return holder[0], holder[1]


def send_via(way: str, sender: Sender) -> Any:
    return sender.send if way == "process" else sender.quiet.send


WAYS = ["process", "meta"]


@pytest.mark.parametrize("way", WAYS)
async def test_an_idle_eager_meta_handles_it_inside_the_send(node: Node, way: str) -> None:
    sender, _ = await setup(node)
    eager = Eager()
    alias = await sender.spawn_meta(eager)
    send_via(way, sender)(alias, "now")
    assert eager.got == [(sender.pid, "now")]  # before send returned: no loop turn
    assert node.meta_info(alias).messages_in == 1


@pytest.mark.parametrize("way", WAYS)
async def test_a_busy_eager_meta_takes_it_in_order(node: Node, way: str) -> None:
    sender, _ = await setup(node)
    eager = Eager()
    alias = await sender.spawn_meta(eager)
    node.send(alias, "queued first")  # node.send queues: the meta is now scheduled
    send_via(way, sender)(alias, "then this")
    assert eager.got == []
    await wait_until(lambda: len(eager.got) == 2)
    assert [m for _, m in eager.got] == ["queued first", "then this"]


@pytest.mark.parametrize("way", WAYS)
async def test_an_eager_handler_that_raises_ends_the_target_not_the_sender(
    node: Node, way: str
) -> None:
    sender, _ = await setup(node)
    alias = await sender.spawn_meta(Eager())
    gone = node.wait_exit(alias, 5)
    send_via(way, sender)(alias, "boom")
    assert isinstance(await gone, RuntimeError)
    assert sender.pid in node.processes()


@pytest.mark.parametrize("way", WAYS)
async def test_a_process_target_by_name_queues_and_its_bound_pushes_back(
    node: Node, way: str
) -> None:
    sender, sink = await setup(node)
    send = send_via(way, sender)
    send("sink", 1)
    send(sink.pid, 2)
    with pytest.raises(MailboxFull):
        send("sink", 3)  # bound 2, nothing drained yet: refused, not dropped
    await wait_until(lambda: sink.got == [1, 2])
    send("sink", 4)
    await wait_until(lambda: sink.got == [1, 2, 4])


@pytest.mark.parametrize("way", WAYS)
async def test_an_unknown_or_dead_target_raises_no_process(node: Node, way: str) -> None:
    sender, sink = await setup(node)
    send = send_via(way, sender)
    with pytest.raises(NoProcess):
        send("nobody", 1)
    node.kill(sink.pid)
    with pytest.raises(NoProcess):
        send(sink.pid, 1)
    with pytest.raises(TypeError):
        send(42, 1)  # not a PID, an Alias or a name


async def test_process_send_is_the_inlined_copy() -> None:
    # The inlined hop is the method users call (so the tests above run the copy).
    from metakit.mailbox import process_send

    assert Process.send is process_send
    assert metakit.Process.send.__doc__
