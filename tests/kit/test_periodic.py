"""PeriodicTask: runs at once and on the interval, survives a failing step, stops promptly."""

from __future__ import annotations

import asyncio

import pytest

from services.kit.periodic import PeriodicTask


async def test_runs_at_once_repeats_and_survives_failures() -> None:
    calls: list[int] = []
    third = asyncio.Event()

    async def step() -> None:
        calls.append(len(calls))
        if len(calls) == 1:
            raise RuntimeError("a database hiccup")
        if len(calls) == 3:
            third.set()

    task = PeriodicTask("test-step", step, interval_seconds=0.01)
    task.start()
    await asyncio.wait_for(third.wait(), timeout=5)
    await task.stop()
    stopped_at = len(calls)
    await asyncio.sleep(0.05)  # nothing runs after stop(): the count stays put

    assert stopped_at >= 3
    assert len(calls) == stopped_at


async def test_stop_does_not_wait_for_the_interval() -> None:
    ran = asyncio.Event()

    async def step() -> None:
        ran.set()

    task = PeriodicTask("slow", step, interval_seconds=3600)
    task.start()
    await asyncio.wait_for(ran.wait(), timeout=5)
    await asyncio.wait_for(task.stop(), timeout=5)


def test_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        PeriodicTask("bad", lambda: asyncio.sleep(0), interval_seconds=0)
