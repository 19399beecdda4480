"""The test helpers themselves: the leak check must be able to fail."""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest

from metakit.testing import LeakCheck, wait_until


async def test_leak_check_names_a_leaked_socket_task_and_thread() -> None:
    leaks = LeakCheck()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()  # the check sees listening or connected TCP sockets, bound UDP ones
    task = asyncio.ensure_future(asyncio.Event().wait())
    release = threading.Event()
    thread = threading.Thread(target=release.wait, name="leaky-thread")
    thread.start()
    try:
        with pytest.raises(AssertionError) as info:
            await leaks.check(timeout=0.05)
        message = str(info.value)
        assert "leaky-thread" in message
        assert "socket:" in message
        assert "Event.wait" in message
    finally:
        sock.close()
        task.cancel()
        release.set()
        thread.join()
    await leaks.check()  # all gone now


async def test_wait_until_times_out() -> None:
    with pytest.raises(TimeoutError, match="never"):
        await wait_until(lambda: False, timeout=0.01, message="never")
    assert await wait_until(lambda: 7) == 7
