"""The state machine of runs and step runs: which reported transitions apply, and how a run follows its steps.

Pure rules: no gRPC, no SQL, no clock. Statuses are the lower-case names of
the proto enums (`Run.Status`, `StepRun.Status`).

Forward only, by rank: INITIALIZING < PROVISIONING < QUEUED < RUNNING (= RETRYING)
< STOPPING < terminal (COMPLETED, FAILED, STOPPED, CACHED). A report is applied
when its rank is higher than the current one; terminal statuses absorb
everything. The one sideways move is a step's RUNNING ⇄ RETRYING: RETRYING
closes an attempt and RUNNING after it starts the next one. Anything else (a
repeat, a late RUNNING after COMPLETED) changes nothing and the caller is told
`applied = false` with the current status.

A run follows its steps (`run_status_from_steps`): the first step to run
moves a run that is not yet RUNNING to RUNNING; once every step is terminal,
the run becomes FAILED if any step failed, else STOPPED if any step was
stopped, else CACHED if every step was cached, else COMPLETED.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

INITIALIZING = "initializing"
PROVISIONING = "provisioning"
QUEUED = "queued"
RUNNING = "running"
COMPLETED = "completed"
FAILED = "failed"
STOPPING = "stopping"
STOPPED = "stopped"
CACHED = "cached"
RETRYING = "retrying"

TERMINAL = frozenset({COMPLETED, FAILED, STOPPED, CACHED})
RUN_STATUSES = (INITIALIZING, PROVISIONING, QUEUED, RUNNING, COMPLETED, FAILED, STOPPING, STOPPED, CACHED)
# The statuses a run can still leave, sorted (a partial index covers the runs in them).
OPEN_RUN_STATUSES = tuple(sorted(set(RUN_STATUSES) - TERMINAL))
STEP_STATUSES = (*RUN_STATUSES, RETRYING)

_RANK = {
    INITIALIZING: 0,
    PROVISIONING: 1,
    QUEUED: 2,
    RUNNING: 3,
    RETRYING: 3,
    STOPPING: 4,
    COMPLETED: 5,
    FAILED: 5,
    STOPPED: 5,
    CACHED: 5,
}


def rank(status: str) -> int:
    """Position of a status in the forward order."""
    return _RANK[status]


def is_terminal(status: str) -> bool:
    """Whether nothing can follow the status."""
    return status in TERMINAL


def step_transition_applies(current: str, reported: str) -> bool:
    """Whether a step in `current` moves to `reported`."""
    if current in TERMINAL:
        return False
    if {current, reported} == {RUNNING, RETRYING}:
        return True
    return _RANK[reported] > _RANK[current]


def run_transition_applies(current: str, reported: str) -> bool:
    """Whether a run in `current` moves to `reported` (runs never RETRY)."""
    if reported == RETRYING:
        raise ValueError("a run has no RETRYING status")
    return current not in TERMINAL and _RANK[reported] > _RANK[current]


def starts_attempt(current: str, reported: str) -> bool:
    """Whether an applied step transition begins a new attempt (entering RUNNING)."""
    return reported == RUNNING and current != RUNNING


@dataclass(frozen=True)
class StepCounts:
    """How many steps of a run are in each status."""

    by_status: dict[str, int]

    @classmethod
    def of(cls, statuses: Iterable[tuple[str, int]]) -> StepCounts:
        """From (status, count) pairs, as a GROUP BY answers them."""
        counts: dict[str, int] = {}
        for status, count in statuses:
            counts[status] = counts.get(status, 0) + count
        return cls(counts)

    def total(self) -> int:
        """Number of steps."""
        return sum(self.by_status.values())

    def count(self, *statuses: str) -> int:
        """Number of steps in any of `statuses`."""
        return sum(self.by_status.get(status, 0) for status in statuses)


def run_status_from_steps(current: str, steps: StepCounts) -> str | None:
    """The status the run moves to because of its steps, or None when it stays."""
    if current in TERMINAL or steps.total() == 0:
        return None
    if steps.count(*TERMINAL) == steps.total():
        if steps.count(FAILED):
            target = FAILED
        elif steps.count(STOPPED):
            target = STOPPED
        elif steps.count(CACHED) == steps.total():
            target = CACHED
        else:
            target = COMPLETED
        return target
    if steps.count(RUNNING, RETRYING, *TERMINAL) and _RANK[current] < _RANK[RUNNING]:
        return RUNNING
    return None
