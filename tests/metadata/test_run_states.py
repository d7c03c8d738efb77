"""The run and step state machine: forward-only transitions and how a run follows its steps."""

from __future__ import annotations

import itertools

import pytest

from services.metadata import run_states as s
from services.metadata.run_states import StepCounts, run_status_from_steps


def test_forward_transitions_apply_in_rank_order() -> None:
    order = [s.INITIALIZING, s.PROVISIONING, s.QUEUED, s.RUNNING, s.STOPPING, s.STOPPED]
    for current, reported in itertools.pairwise(order):
        assert s.run_transition_applies(current, reported)
        assert s.step_transition_applies(current, reported)


@pytest.mark.parametrize("terminal", sorted(s.TERMINAL))
def test_terminal_statuses_absorb_every_report(terminal: str) -> None:
    for reported in s.STEP_STATUSES:
        assert not s.step_transition_applies(terminal, reported)
        if reported != s.RETRYING:
            assert not s.run_transition_applies(terminal, reported)


def test_late_running_after_completed_changes_nothing() -> None:
    assert not s.run_transition_applies(s.COMPLETED, s.RUNNING)
    assert not s.step_transition_applies(s.COMPLETED, s.RUNNING)


def test_regressions_and_repeats_are_not_applied() -> None:
    assert not s.run_transition_applies(s.QUEUED, s.PROVISIONING)
    assert not s.run_transition_applies(s.RUNNING, s.RUNNING)
    assert not s.step_transition_applies(s.STOPPING, s.RUNNING)


def test_stopping_and_terminal_statuses_are_reachable_from_any_non_terminal_status() -> None:
    for current in (s.INITIALIZING, s.PROVISIONING, s.QUEUED, s.RUNNING):
        assert s.run_transition_applies(current, s.STOPPING)
        for terminal in s.TERMINAL:
            assert s.run_transition_applies(current, terminal)
    assert s.run_transition_applies(s.STOPPING, s.COMPLETED)


def test_a_step_moves_between_running_and_retrying_and_each_running_starts_an_attempt() -> None:
    assert s.step_transition_applies(s.RUNNING, s.RETRYING)
    assert s.step_transition_applies(s.RETRYING, s.RUNNING)
    assert s.starts_attempt(s.RETRYING, s.RUNNING)
    assert s.starts_attempt(s.QUEUED, s.RUNNING)
    assert not s.starts_attempt(s.RUNNING, s.RETRYING)
    assert not s.step_transition_applies(s.RETRYING, s.QUEUED)


def test_a_run_has_no_retrying_status() -> None:
    with pytest.raises(ValueError, match="RETRYING"):
        s.run_transition_applies(s.RUNNING, s.RETRYING)


def counts(**by_status: int) -> StepCounts:
    return StepCounts.of(by_status.items())


def test_the_run_starts_running_with_its_first_running_step() -> None:
    assert run_status_from_steps(s.QUEUED, counts(running=1, initializing=2)) == s.RUNNING
    assert run_status_from_steps(s.INITIALIZING, counts(cached=1, queued=1)) == s.RUNNING
    assert run_status_from_steps(s.RUNNING, counts(running=1, queued=1)) is None
    assert run_status_from_steps(s.QUEUED, counts(queued=3)) is None


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        ({"completed": 2, "cached": 1}, s.COMPLETED),
        ({"cached": 3}, s.CACHED),
        ({"completed": 1, "failed": 1, "stopped": 1}, s.FAILED),
        ({"completed": 1, "stopped": 1}, s.STOPPED),
    ],
)
def test_the_run_ends_when_every_step_is_terminal(steps: dict[str, int], expected: str) -> None:
    assert run_status_from_steps(s.RUNNING, counts(**steps)) == expected
    assert run_status_from_steps(s.STOPPING, counts(**steps)) == expected


def test_a_terminal_run_does_not_follow_its_steps() -> None:
    assert run_status_from_steps(s.STOPPED, counts(completed=2)) is None
    assert run_status_from_steps(s.RUNNING, counts()) is None
