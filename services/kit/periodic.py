"""Background work that repeats on an interval: key rotation, registry sweeps, housekeeping.

`PeriodicTask(name, step, interval_seconds)` runs `step()` at once and then
every interval until `stop()`; a failing step is logged and tried again next
round, so a database hiccup never ends the task. Tests call the step directly
(with a controllable clock) rather than waiting for the interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)


class PeriodicTask:
    """Runs an async step every `interval_seconds` in the background, between start() and stop()."""

    def __init__(self, name: str, step: Callable[[], Awaitable[object]], interval_seconds: float) -> None:
        if interval_seconds <= 0:
            raise ValueError("interval_seconds must be positive")
        self.name = name
        self._step = step
        self._interval = interval_seconds
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Starts the loop (idempotent)."""
        if self._task is None:
            self._stopping.clear()
            self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        """Ends the loop after the step in progress, if any."""
        self._stopping.set()
        if self._task is not None:
            task, self._task = self._task, None
            await task

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self._step()
            except Exception:  # CancelledError is not an Exception: cancelling still ends the loop
                logger.exception("%s failed; retrying in %ss", self.name, self._interval)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=self._interval)
