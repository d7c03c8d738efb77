"""Snapshot validation: the step graph is a bounded DAG and every limit names its field."""

from __future__ import annotations

import pytest

from services.kit.errors import InvalidArgument
from services.metadata.snapshots import (
    DEFAULT_HEARTBEAT_SECONDS,
    MAX_STEPS,
    CodeReference,
    SnapshotInput,
    StepDefinition,
    find_cycle,
    topological_order,
    validate_snapshot,
)


def step(name: str, *upstream: str, **other: object) -> StepDefinition:
    return StepDefinition(name=name, image="python:3.11", upstream_steps=upstream, **other)  # type: ignore[arg-type]


def snapshot(*steps: StepDefinition, **other: object) -> SnapshotInput:
    return SnapshotInput(steps=steps, stack_id="stack-1", **other)  # type: ignore[arg-type]


def violation(error: pytest.ExceptionInfo[InvalidArgument]) -> tuple[str, str]:
    first = error.value.violations[0]
    return first.field, first.description


def test_a_valid_dag_gets_its_defaults() -> None:
    checked = validate_snapshot(snapshot(step("load"), step("train", "load"), step("eval", "train", "load")))
    assert [one.heartbeat_timeout_seconds for one in checked.steps] == [DEFAULT_HEARTBEAT_SECONDS] * 3
    assert topological_order(checked.steps) == ["load", "train", "eval"]


def test_a_cycle_is_refused_and_named() -> None:
    with pytest.raises(InvalidArgument) as error:
        validate_snapshot(snapshot(step("a", "c"), step("b", "a"), step("c", "b"), step("d")))
    field, description = violation(error)
    assert field == "snapshot.steps"
    assert "a -> c -> b -> a" in description


def test_find_cycle_is_empty_for_a_diamond() -> None:
    assert find_cycle([step("a"), step("b", "a"), step("c", "a"), step("d", "b", "c")]) == []


def test_find_cycle_handles_a_long_chain_without_recursion() -> None:
    chain = [step("s0", "s999")] + [step(f"s{i}", f"s{i - 1}") for i in range(1, 1000)]
    cycle = find_cycle(chain)
    assert cycle[0] == cycle[-1]
    assert len(cycle) == 1001


def test_unknown_upstream_is_refused_naming_the_step() -> None:
    with pytest.raises(InvalidArgument) as error:
        validate_snapshot(snapshot(step("a"), step("b", "nope")))
    assert violation(error) == ("snapshot.steps[1].upstream_steps", "'nope' is not a step of this snapshot")


def test_self_dependency_and_repeated_upstream_are_refused() -> None:
    with pytest.raises(InvalidArgument) as error:
        validate_snapshot(snapshot(step("a", "a")))
    assert "itself" in violation(error)[1]
    with pytest.raises(InvalidArgument) as error:
        validate_snapshot(snapshot(step("a"), step("b", "a", "a")))
    assert "more than once" in violation(error)[1]


def test_duplicate_names_are_refused() -> None:
    with pytest.raises(InvalidArgument) as error:
        validate_snapshot(snapshot(step("a"), step("a")))
    assert violation(error)[0] == "snapshot.steps[1].name"


def test_step_count_is_bounded() -> None:
    with pytest.raises(InvalidArgument) as error:
        validate_snapshot(snapshot())
    assert violation(error)[0] == "snapshot.steps"
    validate_snapshot(snapshot(*(step(f"s{i}") for i in range(MAX_STEPS))))
    with pytest.raises(InvalidArgument):
        validate_snapshot(snapshot(*(step(f"s{i}") for i in range(MAX_STEPS + 1))))


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"name": "-x"}, "snapshot.steps[0].name"),
        ({"image": ""}, "snapshot.steps[0].image"),
        ({"command": ("x",) * 65}, "snapshot.steps[0].command"),
        ({"args": ("x" * 4097,)}, "snapshot.steps[0].args"),
        ({"parameters": {"blob": "x" * 70_000}}, "snapshot.steps[0].parameters"),
        ({"cpu": -1.0}, "snapshot.steps[0].resources.cpu"),
        ({"memory_bytes": 2**51}, "snapshot.steps[0].resources.memory_bytes"),
        ({"gpu": 65}, "snapshot.steps[0].resources.gpu"),
        ({"cache_key_inputs": ("",)}, "snapshot.steps[0].cache_policy.cache_key_inputs"),
        ({"heartbeat_timeout_seconds": 100_000}, "snapshot.steps[0].heartbeat_timeout"),
    ],
)
def test_step_limits_name_their_field(bad: dict[str, object], field: str) -> None:
    values: dict[str, object] = {"name": "a", "image": "python:3.11", **bad}
    with pytest.raises(InvalidArgument) as error:
        validate_snapshot(snapshot(StepDefinition(**values)))  # type: ignore[arg-type]
    assert violation(error)[0] == field


def test_snapshot_fields_are_checked() -> None:
    with pytest.raises(InvalidArgument) as error:
        validate_snapshot(SnapshotInput(steps=(step("a"),), stack_id=""))
    assert violation(error)[0] == "snapshot.stack_id"
    with pytest.raises(InvalidArgument) as error:
        validate_snapshot(snapshot(step("a"), code_reference=CodeReference(commit="abc")))
    assert violation(error)[0] == "snapshot.code_reference.code_repository_id"
