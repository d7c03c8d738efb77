"""The heartbeat sweeper: RUNNING steps silent past their heartbeat timeout become FAILED, their runs follow.

Runs on a kit PeriodicTask in every replica. Safe when several sweep at
once: the steps move in one bounded, conditional UPDATE with SKIP LOCKED
(run_store.fail_silent_steps), so each step fails once; a run then follows
under its row lock like any callback. Batches repeat within one round until
a short one, so a backlog drains without waiting for the next interval.
"""

from __future__ import annotations

import logging

from services.kit.periodic import PeriodicTask
from services.metadata.runs import Runs

logger = logging.getLogger(__name__)

SWEEP_SECONDS = 5.0
BATCH = 500
MAX_BATCHES_PER_ROUND = 20


class RunSweeper:
    """Fails silent steps on an interval (`start`/`stop`); `sweep_once` is the step tests call."""

    def __init__(self, runs: Runs, *, interval_seconds: float = SWEEP_SECONDS, batch: int = BATCH) -> None:
        self._runs = runs
        self._batch = batch
        self.task = PeriodicTask("metadata-run-sweeper", self.sweep_once, interval_seconds)

    async def sweep_once(self) -> int:
        """One round; how many runs had steps failed."""
        total = 0
        for _ in range(MAX_BATCHES_PER_ROUND):
            touched = await self._runs.sweep_silent_steps(self._batch)
            total += touched
            if touched == 0:
                break
        if total:
            logger.info("marked silent steps FAILED in %d runs", total)
        return total

    def start(self) -> None:
        """Starts sweeping in the background."""
        self.task.start()

    async def stop(self) -> None:
        """Stops after the round in progress."""
        await self.task.stop()
