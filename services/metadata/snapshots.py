"""Snapshot definitions and their validation: a bounded DAG of steps; no gRPC, no SQL.

Limits (every one is INVALID_ARGUMENT naming the field, e.g.
`snapshot.steps[3].upstream_steps`):

- 1 to 1,000 steps; names `[A-Za-z0-9][A-Za-z0-9-_.]{0,99}`, unique;
- upstream steps must name other steps of the snapshot, without repeats, and
  the graph must have no cycle (the error names one: `a -> b -> a`); at most
  10,000 edges in all;
- image 1 to 512 characters; command and args at most 64 items of at most
  4,096 characters; parameters at most 64 KiB as JSON; cpu 0 to 1,024,
  memory 0 to 2^50 bytes, gpu 0 to 64; at most 100 cache key inputs of at
  most 256 characters; heartbeat timeout 1 second to 24 hours (default 10
  minutes);
- the whole step list at most 4 MiB as JSON; description at most 1,000
  characters; code reference commit at most 64, subdirectory at most 1,024.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from services.kit.errors import InvalidArgument
from services.metadata import validation

MAX_STEPS = 1000
MAX_EDGES = 10_000
MAX_IMAGE = 512
MAX_ARGV_ITEMS = 64
MAX_ARGV_ITEM = 4096
MAX_PARAMETERS_BYTES = 64 * 1024
MAX_CPU = 1024.0
MAX_MEMORY_BYTES = 2**50
MAX_GPU = 64
MAX_CACHE_INPUTS = 100
MAX_CACHE_INPUT = 256
MIN_HEARTBEAT_SECONDS = 1
MAX_HEARTBEAT_SECONDS = 24 * 3600
DEFAULT_HEARTBEAT_SECONDS = 600
MAX_STEPS_JSON_BYTES = 4 * 1024 * 1024
MAX_COMMIT = 64
MAX_SUBDIRECTORY = 1024

_STEP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-_.]{0,99}")


@dataclass(frozen=True)
class StepDefinition:
    """One step of a snapshot, as stored."""

    name: str
    image: str
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    parameters: Mapping[str, Any] = field(default_factory=dict)
    upstream_steps: tuple[str, ...] = ()
    cpu: float = 0.0
    memory_bytes: int = 0
    gpu: int = 0
    cache_enabled: bool = False
    cache_key_inputs: tuple[str, ...] = ()
    # 0 means "not given": validation turns it into the default.
    heartbeat_timeout_seconds: int = 0

    def to_json(self) -> dict[str, Any]:
        """The stored form."""
        return {
            "name": self.name,
            "image": self.image,
            "command": list(self.command),
            "args": list(self.args),
            "parameters": dict(self.parameters),
            "upstream_steps": list(self.upstream_steps),
            "cpu": self.cpu,
            "memory_bytes": self.memory_bytes,
            "gpu": self.gpu,
            "cache_enabled": self.cache_enabled,
            "cache_key_inputs": list(self.cache_key_inputs),
            "heartbeat_timeout_seconds": self.heartbeat_timeout_seconds,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StepDefinition:
        """From the stored form."""
        return cls(
            name=data["name"],
            image=data["image"],
            command=tuple(data["command"]),
            args=tuple(data["args"]),
            parameters=dict(data["parameters"]),
            upstream_steps=tuple(data["upstream_steps"]),
            cpu=float(data["cpu"]),
            memory_bytes=int(data["memory_bytes"]),
            gpu=int(data["gpu"]),
            cache_enabled=bool(data["cache_enabled"]),
            cache_key_inputs=tuple(data["cache_key_inputs"]),
            heartbeat_timeout_seconds=int(data["heartbeat_timeout_seconds"]),
        )


@dataclass(frozen=True)
class CodeReference:
    """Where a snapshot's code came from; all empty for none."""

    code_repository_id: str = ""
    commit: str = ""
    subdirectory: str = ""


@dataclass(frozen=True)
class SnapshotInput:
    """What CreateSnapshot asks for."""

    steps: tuple[StepDefinition, ...]
    stack_id: str
    description: str = ""
    code_reference: CodeReference = CodeReference()


def validate_snapshot(snapshot: SnapshotInput, prefix: str = "snapshot") -> SnapshotInput:
    """The snapshot with defaults filled in; INVALID_ARGUMENT naming the first bad field."""
    validation.description(snapshot.description, f"{prefix}.description")
    if not snapshot.stack_id:
        raise InvalidArgument(f"{prefix}.stack_id", "is required")
    _check_code_reference(snapshot.code_reference, f"{prefix}.code_reference")
    steps = validate_steps(snapshot.steps, f"{prefix}.steps")
    return SnapshotInput(steps, snapshot.stack_id, snapshot.description, snapshot.code_reference)


def validate_steps(steps: Sequence[StepDefinition], path: str) -> tuple[StepDefinition, ...]:
    """The steps with defaults filled in, checked one by one and then as a graph."""
    if not steps:
        raise InvalidArgument(path, "needs at least one step")
    if len(steps) > MAX_STEPS:
        raise InvalidArgument(path, f"must have at most {MAX_STEPS} steps")
    positions: dict[str, int] = {}
    checked: list[StepDefinition] = []
    for index, step in enumerate(steps):
        where = f"{path}[{index}]"
        checked.append(_check_step(step, where))
        if step.name in positions:
            raise InvalidArgument(
                f"{where}.name", f"{step.name!r} is also the name of step {positions[step.name]}"
            )
        positions[step.name] = index
    edges = 0
    for index, step in enumerate(checked):
        where = f"{path}[{index}].upstream_steps"
        seen: set[str] = set()
        for upstream in step.upstream_steps:
            if upstream not in positions:
                raise InvalidArgument(where, f"{upstream!r} is not a step of this snapshot")
            if upstream == step.name:
                raise InvalidArgument(where, f"step {step.name!r} cannot depend on itself")
            if upstream in seen:
                raise InvalidArgument(where, f"{upstream!r} is listed more than once")
            seen.add(upstream)
        edges += len(step.upstream_steps)
        if edges > MAX_EDGES:
            raise InvalidArgument(path, f"must have at most {MAX_EDGES} upstream edges in all")
    cycle = find_cycle(checked)
    if cycle:
        raise InvalidArgument(path, f"the steps form a cycle: {' -> '.join(cycle)}")
    encoded = json.dumps([step.to_json() for step in checked], separators=(",", ":"))
    if len(encoded.encode()) > MAX_STEPS_JSON_BYTES:
        raise InvalidArgument(path, f"must be at most {MAX_STEPS_JSON_BYTES} bytes as JSON")
    return tuple(checked)


def find_cycle(steps: Sequence[StepDefinition]) -> list[str]:
    """One cycle as [a, b, ..., a] (following upstream edges), or [] for a DAG.

    Iterative depth-first search (no recursion limit at 1,000 steps).
    """
    upstream = {step.name: step.upstream_steps for step in steps}
    done: set[str] = set()
    for root in upstream:
        if root in done:
            continue
        on_path: dict[str, int] = {root: 0}
        path = [root]
        iterators = [iter(upstream[root])]
        while iterators:
            following = next(iterators[-1], None)
            if following is None:
                finished = path.pop()
                done.add(finished)
                del on_path[finished]
                iterators.pop()
                continue
            if following in on_path:
                return [*path[on_path[following] :], following]
            if following not in done:
                on_path[following] = len(path)
                path.append(following)
                iterators.append(iter(upstream.get(following, ())))
    return []


def topological_order(steps: Sequence[StepDefinition]) -> list[str]:
    """Step names with every step after its upstream steps (stable: snapshot order breaks ties)."""
    remaining = {step.name: len(step.upstream_steps) for step in steps}
    downstream: dict[str, list[str]] = {step.name: [] for step in steps}
    for step in steps:
        for upstream in step.upstream_steps:
            downstream[upstream].append(step.name)
    ready = [step.name for step in steps if not step.upstream_steps]
    order: list[str] = []
    while ready:
        name = ready.pop(0)
        order.append(name)
        for child in downstream[name]:
            remaining[child] -= 1
            if remaining[child] == 0:
                ready.append(child)
    return order


def _check_step(step: StepDefinition, where: str) -> StepDefinition:
    if not _STEP_NAME.fullmatch(step.name):
        raise InvalidArgument(f"{where}.name", "must match [A-Za-z0-9][A-Za-z0-9-_.]{0,99}")
    if not step.image or len(step.image) > MAX_IMAGE:
        raise InvalidArgument(f"{where}.image", f"is required, at most {MAX_IMAGE} characters")
    for name, values in (("command", step.command), ("args", step.args)):
        if len(values) > MAX_ARGV_ITEMS or any(len(value) > MAX_ARGV_ITEM for value in values):
            raise InvalidArgument(
                f"{where}.{name}",
                f"must have at most {MAX_ARGV_ITEMS} items of at most {MAX_ARGV_ITEM} characters",
            )
    try:
        parameters = json.dumps(dict(step.parameters), separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError):
        raise InvalidArgument(f"{where}.parameters", "must be JSON without NaN or infinities") from None
    if len(parameters.encode()) > MAX_PARAMETERS_BYTES:
        raise InvalidArgument(f"{where}.parameters", f"must be at most {MAX_PARAMETERS_BYTES} bytes as JSON")
    if not 0 <= step.cpu <= MAX_CPU:
        raise InvalidArgument(f"{where}.resources.cpu", f"must be between 0 and {MAX_CPU:g}")
    if not 0 <= step.memory_bytes <= MAX_MEMORY_BYTES:
        raise InvalidArgument(f"{where}.resources.memory_bytes", "must be between 0 and 2^50")
    if not 0 <= step.gpu <= MAX_GPU:
        raise InvalidArgument(f"{where}.resources.gpu", f"must be between 0 and {MAX_GPU}")
    inputs = step.cache_key_inputs
    if len(inputs) > MAX_CACHE_INPUTS or any(not value or len(value) > MAX_CACHE_INPUT for value in inputs):
        raise InvalidArgument(
            f"{where}.cache_policy.cache_key_inputs",
            f"must have at most {MAX_CACHE_INPUTS} non-empty items of at most {MAX_CACHE_INPUT} characters",
        )
    timeout = step.heartbeat_timeout_seconds or DEFAULT_HEARTBEAT_SECONDS
    if not MIN_HEARTBEAT_SECONDS <= timeout <= MAX_HEARTBEAT_SECONDS:
        raise InvalidArgument(f"{where}.heartbeat_timeout", "must be between 1 second and 24 hours")
    return StepDefinition(
        name=step.name,
        image=step.image,
        command=tuple(step.command),
        args=tuple(step.args),
        parameters=dict(step.parameters),
        upstream_steps=tuple(step.upstream_steps),
        cpu=step.cpu,
        memory_bytes=step.memory_bytes,
        gpu=step.gpu,
        cache_enabled=step.cache_enabled,
        cache_key_inputs=tuple(inputs),
        heartbeat_timeout_seconds=timeout,
    )


def _check_code_reference(reference: CodeReference, path: str) -> None:
    if len(reference.commit) > MAX_COMMIT:
        raise InvalidArgument(f"{path}.commit", f"must be at most {MAX_COMMIT} characters")
    if len(reference.subdirectory) > MAX_SUBDIRECTORY:
        raise InvalidArgument(f"{path}.subdirectory", f"must be at most {MAX_SUBDIRECTORY} characters")
    if (reference.commit or reference.subdirectory) and not reference.code_repository_id:
        raise InvalidArgument(f"{path}.code_repository_id", "is required with a commit or subdirectory")
