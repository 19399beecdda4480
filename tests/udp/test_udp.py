"""UDPServer: echo, pools, limits, drops that are counted, ICMP errors, clean ends."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

import metakit
from metakit import Node
from metakit.testing import Probe, wait_until
from metakit.udp import UDPError, UDPPacket, UDPServer


class Echo(metakit.Process):
    async def init(self, server: UDPServer | None = None) -> None:
        self.server = server
        if server is not None:
            await self.spawn_meta(server)
        self.errors: list[UDPError] = []

    def handle_message(self, sender: metakit.PID, message: Any) -> None:
        match message:
            case UDPPacket(server, addr, data):
                self.send(server, UDPPacket(server, addr, data))
            case UDPError():
                self.errors.append(message)

    def handle_call(self, sender: metakit.Caller, request: Any) -> Any:
        return list(self.errors)  # "errors"

    def handle_inspect(self) -> dict[str, str]:
        return {"errors": str(len(self.errors))}


async def echo_server(node: Node, **options: Any) -> tuple[metakit.PID, UDPServer]:
    server = UDPServer(options.pop("host", "127.0.0.1"), 0, **options)
    pid = await node.spawn(Echo, server)
    return pid, server


@contextmanager
def client(family: int = socket.AF_INET) -> Iterator[socket.socket]:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
    sock.setblocking(False)
    try:
        yield sock
    finally:
        sock.close()


async def recv(sock: socket.socket) -> bytes:
    """The next datagram on a non-blocking socket, polled with a deadline."""

    def poll() -> bytes | None:
        try:
            return sock.recv(70000)
        except BlockingIOError:
            return None

    result: bytes = await wait_until(poll)
    return result


async def test_echo_and_packet_fields(node: Node, probe: Any) -> None:
    worker: Probe = await probe()
    server = UDPServer("127.0.0.1", 0)
    alias = await worker.spawn_meta(server)
    assert server.address[0] == "127.0.0.1"
    with client() as sock:
        sock.sendto(b"ping", server.address)
        packet = await worker.receive()
        assert packet == UDPPacket(alias, sock.getsockname(), b"ping")
        worker.send(alias, UDPPacket(alias, packet.addr, b"pong"))
        assert await recv(sock) == b"pong"


async def test_many_clients_at_once(node: Node) -> None:
    _, server = await echo_server(node)
    with contextlib_all([client() for _ in range(50)]) as socks:
        for j in range(10):  # each round: 50 clients with a datagram in flight
            for i, sock in enumerate(socks):
                sock.sendto(b"%d-%d" % (i, j), server.address)
            for i, sock in enumerate(socks):
                assert await recv(sock) == b"%d-%d" % (i, j)
    assert server.statistics().received == 500
    assert server.statistics().sent == 500
    assert server.kernel_drops() == 0


async def test_kernel_drops_are_reported(node: Node, probe: Any) -> None:
    worker: Probe = await probe()
    server = UDPServer("127.0.0.1", 0, recv_buffer=4096)
    await worker.spawn_meta(server)
    with client() as sock:
        for _ in range(200):  # far more than a 4 KiB buffer holds, before the loop reads
            sock.sendto(b"x" * 512, server.address)
    # Every datagram is accounted for: read by the server, or dropped by the kernel.
    await wait_until(lambda: server.statistics().received + (server.kernel_drops() or 0) == 200)
    drops = server.kernel_drops()
    assert drops is not None
    assert drops > 0
    assert node.meta_info(server.id).inspect["dropped_kernel"] == str(drops)


@contextmanager
def contextlib_all(managers: list[Any]) -> Iterator[list[socket.socket]]:
    from contextlib import ExitStack

    with ExitStack() as stack:
        yield [stack.enter_context(m) for m in managers]


async def test_pool_round_robin_per_datagram(node: Node, probe: Any) -> None:
    owner: Probe = await probe()
    members: list[Probe] = [await probe() for _ in range(3)]
    server = UDPServer("127.0.0.1", 0, pool=[m.pid for m in members])
    await owner.spawn_meta(server)
    with client() as sock:
        for i in range(6):
            sock.sendto(b"%d" % i, server.address)
        for member in members:
            got = [(await member.receive()).data for _ in range(2)]
            assert len(got) == 2
        node.kill(members[0].pid)  # dead members are skipped
        for i in range(4):
            sock.sendto(b"later %d" % i, server.address)
        for member in members[1:]:
            assert [(await member.receive()).data for _ in range(2)]
    assert owner.pending() == []


async def test_max_datagram_and_one_over(node: Node) -> None:
    _, server = await echo_server(node, max_datagram=1000)
    with client() as sock:
        sock.sendto(b"a" * 1000, server.address)
        assert await recv(sock) == b"a" * 1000
        sock.sendto(b"b" * 1001, server.address)  # dropped and counted
        sock.sendto(b"after", server.address)
        assert await recv(sock) == b"after"  # nothing came back for the big one
    assert server.statistics().dropped_oversize == 1
    assert node.meta_info(server.id).inspect["dropped_oversize"] == "1"


async def test_slow_worker_drops_are_counted_and_memory_bounded(node: Node, probe: Any) -> None:
    gate = asyncio.Event()

    class Slow(metakit.Process):
        async def init(self, server: UDPServer) -> None:
            self.handled = 0
            await self.spawn_meta(server)

        async def handle_message(self, sender: metakit.PID, message: Any) -> None:
            await gate.wait()
            self.handled += 1

        def handle_inspect(self) -> dict[str, str]:
            return {"handled": str(self.handled)}

    server = UDPServer("127.0.0.1", 0, max_queue=8)
    pid = await node.spawn(Slow, server)
    with client() as sock:
        for i in range(100):
            sock.sendto(b"%d" % i, server.address)
        await wait_until(lambda: server.statistics().received == 100)
        assert server.statistics().dropped_full >= 100 - 9  # 8 queued, 1 in the handler
        assert node.process_info(pid).mailbox <= 8
        gate.set()
        await wait_until(
            lambda: (
                node.process_info(pid).inspect["handled"]
                == str(100 - server.statistics().dropped_full)
            )
        )
    # Still serving.
    assert node.meta_info(server.id).state in ("idle", "running")


async def test_reply_to_closed_port_is_udp_error(node: Node) -> None:
    pid, server = await echo_server(node)
    with client() as sock:
        sock.sendto(b"are you there?", server.address)
        addr = sock.getsockname()
    # The client is gone before the loop reads the datagram (an idle worker
    # echoes inside the read): the echo gets ICMP port unreachable.
    await wait_until(lambda: server.statistics().received == 1)
    await wait_until(lambda: node.process_info(pid).inspect["errors"] != "0")
    error = (await node.call(pid, "errors"))[0]
    assert error == UDPError(server.id, addr, error.error)
    assert isinstance(error.error, ConnectionRefusedError)
    # The server is alive and serving.
    with client() as sock:
        sock.sendto(b"still here", server.address)
        assert await recv(sock) == b"still here"


def _has_ipv6() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6(), reason="this machine has no IPv6 loopback (::1)")
async def test_ipv6(node: Node) -> None:
    _, server = await echo_server(node, host="::1")
    assert server.address[0] == "::1"
    with client(socket.AF_INET6) as sock:
        sock.sendto(b"six", server.address[:2])
        assert await recv(sock) == b"six"


@pytest.mark.parametrize("how", ["send_exit", "parent exit", "node stop"])
async def test_ends_cleanly_and_frees_the_port(how: str) -> None:
    async with Node("udp@localhost") as node:
        pid, server = await echo_server(node)
        port = server.address[1]
        if how == "send_exit":
            node.send_exit(server.id, "normal")
        elif how == "parent exit":
            node.send_exit(pid, "shutdown")
        else:
            await node.stop()
        await wait_until(lambda: server.id not in node.metas())
    # The port is free again.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        await wait_until(lambda: _binds(sock, port))


def _binds(sock: socket.socket, port: int) -> bool:
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        return False
    return True


async def test_bind_error_raises_at_spawn(node: Node) -> None:
    _, server = await echo_server(node)
    with pytest.raises(OSError, match="in use"):  # the same error on both loops
        await node.spawn(Echo, UDPServer("127.0.0.1", server.address[1]))


async def test_malformed_reply_is_an_error_not_a_crash(node: Node, probe: Any) -> None:
    worker: Probe = await probe()
    server = UDPServer("127.0.0.1", 0)
    alias = await worker.spawn_meta(server)
    with client() as sock:
        sock.sendto(b"hi", server.address)
        packet = await worker.receive()
        worker.send(alias, UDPPacket(alias, packet.addr, "not bytes"))  # type: ignore[arg-type]
        error = await worker.receive()
        assert isinstance(error, UDPError)
        assert isinstance(error.error, TypeError)
        assert server.statistics().send_errors == 1
        worker.send(alias, UDPPacket(alias, packet.addr, b"fine"))  # still serving
        assert await recv(sock) == b"fine"
