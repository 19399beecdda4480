"""Pump: coroutines run by hand, handed to a Task only when they wait."""

from __future__ import annotations

import asyncio

import pytest

from metakit._eager import Pump


async def test_a_coroutine_that_does_not_wait_runs_at_once() -> None:
    pump = Pump()
    done: list[int] = []

    async def work(i: int) -> None:
        done.append(i)

    for i in range(3):
        assert pump.run(work(i)) is None
    assert done == [0, 1, 2]


async def test_an_exception_raises_at_run_and_the_pump_goes_on() -> None:
    pump = Pump()

    async def fail() -> None:
        raise ConnectionResetError("gone")

    async def fine() -> None:
        pass

    with pytest.raises(ConnectionResetError, match="gone"):
        pump.run(fail())
    assert pump.run(fine()) is None


async def test_a_coroutine_that_waits_is_finished_by_a_task() -> None:
    pump = Pump()
    gate: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    got: list[int] = []

    async def wait_then_record() -> None:
        got.append(await gate)

    task = pump.run(wait_then_record())
    assert task is not None
    assert not task.done()
    gate.set_result(7)
    await asyncio.wait_for(task, 5)
    assert got == [7]

    async def after() -> None:
        got.append(8)

    assert pump.run(after()) is None  # a fresh pump: the Task owned the old one
    assert got == [7, 8]


async def test_failures_and_cancellation_reach_the_coroutine_through_the_task() -> None:
    pump = Pump()
    loop = asyncio.get_running_loop()
    gate: asyncio.Future[None] = loop.create_future()

    async def wait_then_fail() -> None:
        await gate
        raise BrokenPipeError("late")

    task = pump.run(wait_then_fail())
    assert task is not None
    gate.set_result(None)
    with pytest.raises(BrokenPipeError, match="late"):
        await asyncio.wait_for(task, 5)

    cleaned: list[str] = []

    async def wait_forever() -> None:
        try:
            await loop.create_future()
        finally:
            cleaned.append("finally")

    task = pump.run(wait_forever())
    assert task is not None
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned == ["finally"]
