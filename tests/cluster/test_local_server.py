"""metakit.cluster.local_server: a real nats-server on 127.0.0.1, driven with nats-py."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import nats
import pytest

from metakit.cluster import local_server
from metakit.errors import MetakitError
from metakit.testing import TIMEOUT, LeakCheck


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has exited: only its entry waits to be reaped.
    return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()


async def test_serves_core_nats_and_jetstream_then_stops_clean() -> None:
    leaks = LeakCheck()
    server = local_server()
    await server.start()
    try:
        assert server.url is not None
        assert server.url.startswith("nats://127.0.0.1:")
        pid = server.pid
        assert pid is not None
        nc = await nats.connect(server.url, connect_timeout=TIMEOUT)
        try:
            sub = await nc.subscribe("greet")
            await nc.publish("greet", b"hello")
            msg = await sub.next_msg(timeout=TIMEOUT)
            assert msg.data == b"hello"
            kv = await nc.jetstream().create_key_value(bucket="names")
            await kv.create("a", b"1")
            assert (await kv.get("a")).value == b"1"
        finally:
            await nc.close()
    finally:
        await server.stop()
    assert not alive(pid)
    await leaks.check()


async def test_routed_servers_carry_messages_between_them() -> None:
    async with local_server(jetstream=False, cluster_name="t") as a:
        assert a.cluster_url is not None
        async with local_server(jetstream=False, routes=[a.cluster_url], cluster_name="t") as b:
            sender = await nats.connect(a.url, connect_timeout=TIMEOUT)
            receiver = await nats.connect(b.url, connect_timeout=TIMEOUT)
            try:
                sub = await receiver.subscribe("across")
                await receiver.flush()

                async def delivered() -> bytes:
                    # Until the route is up (interest propagated), publish again.
                    while True:
                        await sender.publish("across", b"x")
                        try:
                            return (await sub.next_msg(timeout=0.1)).data
                        except nats.errors.TimeoutError:
                            continue

                assert await asyncio.wait_for(delivered(), TIMEOUT) == b"x"
            finally:
                await sender.close()
                await receiver.close()


async def test_a_server_that_cannot_start_says_why(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with pytest.raises(MetakitError, match="storage directory is not a directory"):
        await local_server(store_dir=str(not_a_dir / "store"), start_timeout=TIMEOUT).start()


async def test_no_executable_is_a_clear_error() -> None:
    with pytest.raises(MetakitError, match="nats-server"):
        await local_server(executable="/nonexistent/nats-server").start()
