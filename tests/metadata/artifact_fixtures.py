"""Helpers of the artifact, lineage, model and annotation tests: a project with runs, without servers."""

from __future__ import annotations

from dataclasses import dataclass

from services.metadata import run_store as rs
from services.metadata.runs import Runs
from services.metadata.store import MetadataStore
from tests.clock import ManualClock
from tests.metadata.run_fixtures import snapshot_in_new_project


@dataclass(frozen=True)
class RunOfSteps:
    """A run of the diamond snapshot (load -> train, features -> evaluate): its ids and step ids by name."""

    project_id: str
    snapshot_id: str
    run_id: str
    steps: dict[str, str]


async def new_run(store: MetadataStore, clock: ManualClock, project_id: str, snapshot_id: str) -> RunOfSteps:
    """Another run of a snapshot."""
    run, _ = await Runs(store, clock).create_run(project_id, snapshot_id, trigger="user", principal="u-1")
    async with store.transaction() as tx:
        steps = await rs.steps_of_run(tx.conn, run.id)
    return RunOfSteps(project_id, snapshot_id, run.id, {step.name: step.id for step in steps})


async def project_with_run(store: MetadataStore, clock: ManualClock) -> RunOfSteps:
    """A new project with a diamond snapshot and one run of it."""
    project_id, _, snapshot_id = await snapshot_in_new_project(store, clock)
    return await new_run(store, clock, project_id, snapshot_id)
