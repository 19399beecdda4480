"""Back-pressure both ways: a slow worker pauses reading; a slow reader pushes back writes."""

from __future__ import annotations

import asyncio
import sys
import textwrap
import zlib
from typing import Any

import pytest

import metakit
from metakit import Node
from metakit.errors import MailboxFull
from metakit.framing import Raw
from metakit.tcp import TCPConnect, TCPDisconnect, TCPMessage, TCPServer
from metakit.testing import TIMEOUT, Probe, wait_until

BLOCK = bytes(range(256)) * 256  # 64 KiB
FLOOD_BLOCKS = 3200  # 200 MiB

CLIENT = """
import socket, sys
block = bytes(range(256)) * 256
with socket.create_connection(("127.0.0.1", int(sys.argv[1]))) as s:
    for _ in range(int(sys.argv[2])):
        s.sendall(block)
    s.shutdown(socket.SHUT_WR)
    while s.recv(65536):
        pass
"""


def rss() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


class SlowSink(metakit.Process):
    """Checks the stream's order with a running CRC, slower than the network."""

    async def init(self, done: asyncio.Future[Any], holder: list[SlowSink]) -> None:
        holder.append(self)
        self.done = done
        self.crc = 0
        self.size = 0
        self.peak_rss = rss()
        self.peak_mailbox = 0
        self.max_pauses = 0
        self.max_frame = 0
        self.server: TCPServer | None = None

    async def handle_message(self, sender: metakit.PID, message: Any) -> None:
        match message:
            case TCPMessage(conn, data):
                self.crc = zlib.crc32(data, self.crc)
                self.size += len(data)
                self.max_frame = max(self.max_frame, len(data))
                mailbox = self.node.process_info(self.pid).mailbox
                self.peak_mailbox = max(self.peak_mailbox, mailbox)
                if self.size % (4 << 20) < len(data):
                    self.peak_rss = max(self.peak_rss, rss())
                    info = self.node.meta_info(conn).inspect
                    self.max_pauses = max(self.max_pauses, int(info["paused_reads"]))
                # The slow part: four loop turns per message, while the socket
                # delivers a read every turn, so the worker falls behind.
                for _ in range(4):
                    await asyncio.sleep(0)
            case TCPDisconnect(_, reason):
                self.done.set_result(reason)


async def flood(node: Node, blocks: int, timeout: float, **options: Any) -> SlowSink:
    """A client sends ``blocks`` of BLOCK to a SlowSink's server, then closes;
    every byte must arrive, in order."""
    done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    holder: list[SlowSink] = []
    await node.spawn(SlowSink, done, holder)
    [sink] = holder
    server = TCPServer("127.0.0.1", 0, **options)
    await sink.spawn_meta(server)
    client = await asyncio.create_subprocess_exec(
        sys.executable, "-c", textwrap.dedent(CLIENT), str(server.address[1]), str(blocks)
    )
    try:
        assert await asyncio.wait_for(done, timeout) == "closed"
        assert await asyncio.wait_for(client.wait(), TIMEOUT) == 0
    finally:
        if client.returncode is None:
            client.kill()
            await client.wait()
    expected = 0
    for _ in range(blocks):
        expected = zlib.crc32(BLOCK, expected)
    assert sink.size == len(BLOCK) * blocks  # every byte...
    assert sink.crc == expected  # ...in order
    return sink


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_flood_at_slow_worker_stays_bounded_and_in_order(node: Node) -> None:
    baseline = rss()
    sink = await flood(node, FLOOD_BLOCKS, TIMEOUT * 20)
    assert sink.max_pauses > 0  # reading did pause
    assert sink.peak_mailbox <= 64 + 2  # high watermark, plus the read in flight
    # 64 MiB is the bound; 64 frames of 64 KiB queued is 4 MiB, so a
    # quarter of it catches frames or queues growing past what they should be.
    assert sink.peak_rss - baseline < 16 << 20, f"RSS grew {(sink.peak_rss - baseline) >> 20} MiB"
    print(
        f"flood: {sink.size >> 20} MiB, peak mailbox {sink.peak_mailbox}, "
        f"pauses {sink.max_pauses}, RSS growth {(sink.peak_rss - baseline) / (1 << 20):.1f} MiB"
    )


async def test_a_read_of_many_frames_stops_at_the_high_watermark(node: Node) -> None:
    # One read can bring hundreds of frames (small Raw frames, short lines): the
    # mailbox must still stop near the high watermark, the rest waiting in the
    # connection, and every byte arrive in order.
    options = {"framing": Raw(read_size=1000), "high_watermark": 4, "low_watermark": 1}
    sink = await flood(node, 128, TIMEOUT * 4, **options)  # 8 MiB
    assert sink.peak_mailbox <= 4 + 2, sink.peak_mailbox
    assert sink.max_frame == 1000  # chunks as they arrive, up to read_size


async def test_slow_reader_pushes_back_with_mailbox_full(node: Node, probe: Any) -> None:
    worker: Probe = await probe()
    server = TCPServer("127.0.0.1", 0, mailbox_size=8)
    await worker.spawn_meta(server)
    reader, writer = await asyncio.open_connection(*server.address, limit=1 << 16)
    conn = (await worker.receive()).conn
    assert isinstance(conn, metakit.Alias)
    sent = 0
    refused = False
    # Write until the connection pushes back: the client reads nothing, so the
    # kernel buffers and then the transport's buffer fill, the connection
    # stops taking writes, and its 8-message mailbox fills up.
    for _ in range(10_000):
        try:
            worker.send(conn, TCPMessage(conn, sent.to_bytes(8, "big") + BLOCK[8:]))
        except MailboxFull:
            refused = True
            break
        sent += 1
        await asyncio.sleep(0)  # let the connection drain what it can
    assert refused
    assert sent > 8  # some went out before the push-back
    assert node.meta_info(conn).inspect["writing"] == "held"
    # The reader catches up: everything arrives, in order, nothing lost.
    for i in range(sent):
        chunk = await asyncio.wait_for(reader.readexactly(len(BLOCK)), TIMEOUT)
        assert int.from_bytes(chunk[:8], "big") == i
    assert node.meta_info(conn).inspect["writing"] == "on"
    worker.send(conn, TCPMessage(conn, b"more"))  # taken again
    assert await asyncio.wait_for(reader.readexactly(4), TIMEOUT) == b"more"
    writer.close()
    assert isinstance(await worker.receive(), TCPDisconnect)


class CountingEcho(metakit.Process):
    """Echoes every chunk and counts the bytes it has read."""

    async def init(self, holder: list[CountingEcho]) -> None:
        holder.append(self)
        self.received = 0
        self.conn: metakit.Alias | None = None
        self.server = TCPServer("127.0.0.1", 0)
        await self.spawn_meta(self.server)

    def handle_message(self, sender: metakit.PID, message: Any) -> None:
        match message:
            case TCPConnect(conn, _, _):
                self.conn = conn
            case TCPMessage(conn, data):
                self.received += len(data)
                self.send(conn, TCPMessage(conn, data))


async def test_peer_that_does_not_read_is_not_read_either(node: Node) -> None:
    # An echo's peer sends 64 MiB and reads nothing: once the replies back up,
    # the connection stops reading that peer, so the server holds a bounded
    # amount (kernel buffers and the transport's high-water mark), not 64 MiB.
    holder: list[CountingEcho] = []
    await node.spawn(CountingEcho, holder)
    [echo] = holder
    reader, writer = await asyncio.open_connection(*echo.server.address, limit=1 << 20)
    total = 64 << 20
    for i in range(total // len(BLOCK)):
        writer.write(i.to_bytes(8, "big") + BLOCK[8:])  # buffered on the client side
    conn = await wait_until(lambda: echo.conn)

    def stalled() -> bool:
        info = node.meta_info(conn).inspect
        return info["reading"] == "paused" and info["writing"] == "held"

    await wait_until(stalled, message="the connection kept reading a peer that reads nothing")
    held = echo.received
    assert held < 32 << 20, f"read {held >> 20} MiB from a peer that reads nothing"
    assert int(node.meta_info(conn).inspect["held_writes"]) >= 1
    # The peer reads again: everything comes back, in order, and reading resumes.
    for i in range(total // len(BLOCK)):
        chunk = await asyncio.wait_for(reader.readexactly(len(BLOCK)), TIMEOUT)
        assert int.from_bytes(chunk[:8], "big") == i
    assert echo.received == total
    assert node.meta_info(conn).inspect["reading"] == "on"
    writer.close()
    await writer.wait_closed()
