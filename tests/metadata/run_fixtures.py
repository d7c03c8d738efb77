"""Helpers of the pipeline and run tests: rows of M1's tables and snapshots built without servers."""

from __future__ import annotations

import secrets

from sqlalchemy import insert

from services.metadata.pipelines import Pipelines
from services.metadata.runs import Runs
from services.metadata.snapshots import SnapshotInput, StepDefinition
from services.metadata.store import MetadataStore, projects, stacks
from tests.clock import ManualClock
from tests.metadata.domain_fixtures import WORKLOAD, offline_domain


async def add_project_and_stack(store: MetadataStore, clock: ManualClock) -> tuple[str, str]:
    """A project and a stack of the workspace, written directly (M1's tables); their ids."""
    project_id, stack_id = f"p-{secrets.token_hex(4)}", f"s-{secrets.token_hex(4)}"
    now = clock.now()
    async with store.transaction() as tx:
        await tx.conn.execute(
            insert(projects).values(
                id=project_id,
                name=project_id,
                display_name=project_id,
                description="",
                create_time=now,
                update_time=now,
                version=1,
            )
        )
        await tx.conn.execute(
            insert(stacks).values(
                id=stack_id, name=stack_id, description="", create_time=now, update_time=now, version=1
            )
        )
    return project_id, stack_id


def diamond(stack_id: str, heartbeat_timeout_seconds: int = 60) -> SnapshotInput:
    """load -> (train, features) -> evaluate."""
    steps = (
        StepDefinition("load", "python:3.11", heartbeat_timeout_seconds=heartbeat_timeout_seconds),
        StepDefinition("train", "python:3.11", upstream_steps=("load",)),
        StepDefinition("features", "python:3.11", upstream_steps=("load",)),
        StepDefinition("evaluate", "python:3.11", upstream_steps=("train", "features")),
    )
    return SnapshotInput(steps=steps, stack_id=stack_id)


async def snapshot_in_new_project(
    store: MetadataStore, clock: ManualClock, snapshot: SnapshotInput | None = None
) -> tuple[str, str, str]:
    """A project with a pipeline and a snapshot (a diamond by default): project, pipeline, snapshot ids."""
    project_id, stack_id = await add_project_and_stack(store, clock)
    pipelines = Pipelines(offline_domain(store, clock))
    pipeline = await pipelines.create_pipeline(WORKLOAD, project_id, "training", "")
    made = await pipelines.create_snapshot(WORKLOAD, project_id, pipeline.id, snapshot or diamond(stack_id))
    return project_id, pipeline.id, made.id


def runs_of(store: MetadataStore, clock: ManualClock) -> Runs:
    """The Runs domain on the store."""
    return Runs(store, clock)
