"""The hot paths inlined in mailbox.py, each run beside its original.

The send hop two ways: ``Process.send`` (``mailbox.process_send``, inlined for
speed) and the original it copies (the mailbox's post method, which ``Meta.send``
uses).

Every case runs through both, so the copy cannot drift from the original.
Likewise a connection's read: ``data_received`` and ``feed_one`` (inlined)
against ``feed``.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass
from typing import Any

import pytest

import metakit
from metakit import MailboxFull, Meta, Node, NoProcess, Process
from metakit.framing import Line
from metakit.mailbox import IDLE
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


# -- a connection's read: data_received and feed_one (inlined in mailbox.py) and
# feed (the original) must deliver the same.


@dataclass(frozen=True, slots=True)
class PairLine:
    conn: Any
    data: Any


class PairConnection(metakit.Connection, asyncio.Protocol):
    """A minimal adapter on one end of a real socketpair."""

    message_type = PairLine

    def __init__(self) -> None:
        super().__init__(framing=Line(), high_watermark=4, low_watermark=1)
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.open(None, "hello")

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost(exc or "closed")

    def set_reading(self, on: bool) -> None:
        if on:
            self.transport.resume_reading()
        else:
            self.transport.pause_reading()

    def close_transport(self, reason: Any, abort: bool) -> None:
        self.transport.abort() if abort else self.transport.close()

    def disconnect_message(self, reason: Any) -> Any:
        return ("bye", reason)

    def write(self, data: Any) -> int:
        self.transport.write(data + b"\n")
        return len(data) + 1


async def connected(probe: Any) -> tuple[Any, PairConnection, socket.socket]:
    here, there = socket.socketpair()
    parent = await probe()
    conn = PairConnection()
    await parent.spawn_meta(conn, mailbox_size=0)
    loop = asyncio.get_running_loop()
    await loop.connect_accepted_socket(lambda: conn, here)
    assert await parent.receive() == "hello"
    return parent, conn, there


@pytest.mark.parametrize("way", ["read", "feed_one", "feed"])
async def test_an_idle_worker_takes_a_frame_inside_the_read(
    node: Node, probe: Any, way: str
) -> None:
    """A read for an idle plain worker runs its handler at once: nothing queued,
    no drain scheduled; a busy worker gets it queued, in order."""
    parent, conn, peer = await connected(probe)
    worker = node._registry.table[parent.pid.id]
    if way == "read":
        conn.data_received(b"first\n")  # as the loop calls it
    elif way == "feed_one":
        conn.feed_one(b"first", 6)
    else:
        conn.feed([b"first"], 6)
    # Handled already (the probe's handler puts it in its inbox), and idle again.
    assert parent.inbox.qsize() == 1
    assert not worker._mk_scheduled
    assert worker._mk_q is IDLE
    node.send(parent.pid, "busy")
    conn.feed_one(b"second", 7)
    assert worker._mk_scheduled  # queued behind "busy"
    assert [await parent.receive() for _ in range(3)] == [
        PairLine(conn.id, b"first"),
        "busy",
        PairLine(conn.id, b"second"),
    ]
    parent.send_exit(conn.id, "normal")
    assert await parent.receive() == ("bye", "normal")
    peer.close()


@pytest.mark.parametrize("way", ["read", "feed_one", "feed"])
async def test_every_read_path_delivers_the_same(node: Node, probe: Any, way: str) -> None:
    parent, conn, peer = await connected(probe)
    frames = [b"line %d" % i for i in range(40)]
    if way == "read":
        peer.setblocking(False)
        for frame in frames:  # one frame per read: the inlined branch
            peer.send(frame + b"\n")
            assert await parent.receive() == PairLine(conn.id, frame)
    else:
        # All at once, before the worker runs (a message of its own keeps it
        # busy: an idle worker would take each frame at once): past the high
        # watermark the rest waits in the connection and reading pauses;
        # nothing is lost.
        parent.node.send(parent.pid, "busy")
        if way == "feed_one":
            for frame in frames:
                conn.feed_one(frame, len(frame) + 1)
        else:
            conn.feed(frames, sum(len(f) + 1 for f in frames))
        assert await parent.receive() == "busy"
        for frame in frames:
            assert await parent.receive() == PairLine(conn.id, frame)
        assert conn.statistics().paused_reads >= 1
    stats = conn.statistics()
    assert stats.messages_in == len(frames)
    assert stats.bytes_in == sum(len(f) + 1 for f in frames)
    parent.send_exit(conn.id, "normal")
    assert await parent.receive() == ("bye", "normal")
    peer.close()


async def test_tcp_writes_count_the_same_through_send_and_broadcast(node: Node, probe: Any) -> None:
    # TCPConnection.handle_message inlines Connection's write path; broadcast
    # takes the original. Both must count in statistics().
    from metakit.tcp import TCPConnect, TCPMessage, TCPServer

    worker = await probe()
    server = TCPServer("127.0.0.1", 0, framing=Line())
    await worker.spawn_meta(server)
    reader, writer = await asyncio.open_connection(*server.address)
    hello = await worker.receive()
    assert isinstance(hello, TCPConnect)
    conn = hello.conn
    for text in (b"a", b"bb", b"ccc"):
        worker.send(conn, TCPMessage(conn, text))
    assert metakit.broadcast(worker, [conn], b"dddd") == 1
    assert metakit.broadcast(worker, [conn], b"e") == 1
    for text in (b"a", b"bb", b"ccc", b"dddd", b"e"):
        assert await asyncio.wait_for(reader.readline(), 5) == text + b"\n"
    stats = node.meta_info(conn).statistics
    assert (stats.messages_out, stats.bytes_out) == (5, 16)  # 11 bytes, 5 newlines
    writer.close()
    await writer.wait_closed()
