"""Runs and step runs: creation from a snapshot, orchestrator callbacks, the heartbeat sweep; no gRPC, no SQL.

Every callback of a run takes the run's row lock first (then its step's), so
callbacks of one run are serialized and "is every step terminal?" is decided
on a consistent view: two steps finishing at once cannot both miss that the
run is done. Transitions follow `run_states` (forward only). A callback with a
`request_id` is remembered with its first answer (`applied`), which a retry
gets back unchanged together with the current state.

When a run reaches a terminal status by a callback, its steps still open are
STOPPED in one statement, so nothing of a finished run waits on heartbeats.

Every status change (and a run's creation and deletion) is appended to the
change log (run_changes) last in its transaction; after the commit `notify`
wakes this process's watchers (other replicas hear PostgreSQL's NOTIFY).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from services.kit.clock import Clock
from services.kit.errors import InvalidArgument, NotFound
from services.kit.idempotency import validate_request_id
from services.kit.rbac_lookup import Lookup
from services.metadata import artifact_store
from services.metadata import pipeline_store as ps
from services.metadata import run_changes as rc
from services.metadata import run_states as states
from services.metadata import run_store as rs
from services.metadata.pipelines import check_id
from services.metadata.run_store import RunRecord, StepRunRecord
from services.metadata.store import MetadataStore, RequestKey

MAX_REASON = 1000
MAX_ORCHESTRATOR_RUN_ID = 256
MAX_CACHE_KEY = 256
SILENT_STEP_REASON = "no heartbeat within the step's heartbeat timeout"

# A deleted run takes its steps' artifact links and the annotations of it and its steps with it.
rs.register_run_deletion(artifact_store.forget_runs)


@dataclass(frozen=True)
class RunUpdate:
    """The answer of UpdateRunStatus."""

    applied: bool
    run: RunRecord


@dataclass(frozen=True)
class StepUpdate:
    """The answer of UpdateStepStatus."""

    applied: bool
    step: StepRunRecord
    run_status: str


@dataclass(frozen=True)
class Heartbeat:
    """The answer of SendStepHeartbeat."""

    applied: bool
    status: str


@dataclass(frozen=True)
class RunDag:
    """A run with all its steps (edges are each step's parents)."""

    run: RunRecord
    steps: list[StepRunRecord]


def check_reason(value: str, field: str) -> str:
    """INVALID_ARGUMENT when a status reason is too long."""
    if len(value) > MAX_REASON:
        raise InvalidArgument(field, f"must be at most {MAX_REASON} characters")
    return value


def check_request_id(value: str) -> str:
    """INVALID_ARGUMENT unless a callback's request id is present and well formed."""
    if not value:
        raise InvalidArgument("request_id", "is required on orchestrator callbacks")
    validate_request_id(value)
    return value


class Runs:
    """Runs and step runs of the projects of this workspace."""

    def __init__(
        self,
        store: MetadataStore,
        clock: Clock,
        new_id: Callable[[], str] | None = None,
        notify: Callable[[int], None] | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._new_id = new_id or (lambda: str(uuid.uuid4()))
        self._notify = notify

    def _wake(self, last: int | None) -> None:
        """After a commit that logged changes: wakes this process's watchers."""
        if last is not None and self._notify is not None:
            self._notify(last)

    async def create_run(
        self,
        project_id: str,
        snapshot_id: str,
        *,
        trigger: str,
        principal: str,
        orchestrator_run_id: str = "",
        request_id: str = "",
        triggered_by: str = "",
        run_id: str = "",
    ) -> tuple[RunRecord, bool]:
        """A new INITIALIZING run with one step run per snapshot step; False when a retry of `request_id`.

        `principal` keys the request id; `triggered_by` (default: `principal`) is the trigger's principal id;
        `run_id` (default: a new one) is the new run's id.
        """
        check_id(project_id, "project_id")
        check_id(snapshot_id, "snapshot_id")
        if trigger not in rs.TRIGGERS:
            raise InvalidArgument("trigger.kind", "must be USER, SCHEDULE or DASHBOARD")
        if len(orchestrator_run_id) > MAX_ORCHESTRATOR_RUN_ID:
            raise InvalidArgument(
                "orchestrator_run_id", f"must be at most {MAX_ORCHESTRATOR_RUN_ID} characters"
            )
        validate_request_id(request_id)
        method = f"CreateRun/{project_id}"
        async with self._store.transaction() as tx:
            key = RequestKey(method, principal, request_id)
            known = await key.recall(tx.conn)
            if known is not None:
                return await run_or_not_found(tx.conn, project_id, known.decode()), False
            snapshot = await ps.get_snapshot(tx.conn, project_id, snapshot_id, for_share=True)
            if snapshot is None:
                raise NotFound("snapshot not found")
            # Held until commit: a concurrent DeletePipeline waits, then sees this run.
            await ps.get_pipeline(tx.conn, project_id, snapshot.pipeline_id, for_share=True)
            now = self._clock.now()
            run = RunRecord(
                id=run_id or self._new_id(),
                project_id=project_id,
                pipeline_id=snapshot.pipeline_id,
                snapshot_id=snapshot_id,
                status=states.INITIALIZING,
                status_reason="",
                orchestrator_run_id=orchestrator_run_id,
                trigger=trigger,
                trigger_principal_id=triggered_by or principal,
                step_count=len(snapshot.steps),
                create_time=now,
                update_time=now,
                start_time=None,
                end_time=None,
            )
            steps = [
                StepRunRecord(
                    id=self._new_id(),
                    run_id=run.id,
                    project_id=project_id,
                    name=step.name,
                    position=position,
                    status=states.INITIALIZING,
                    status_reason="",
                    attempt_count=0,
                    cache_key="",
                    parents=step.upstream_steps,
                    create_time=now,
                    update_time=now,
                    start_time=None,
                    end_time=None,
                    last_heartbeat_time=None,
                    heartbeat_timeout_seconds=step.heartbeat_timeout_seconds,
                    heartbeat_deadline=None,
                )
                for position, step in enumerate(snapshot.steps)
            ]
            await rs.insert_run(tx.conn, run, steps)
            await key.remember(tx.conn, run.id.encode(), now)
            changes = rc.ChangeBatch()
            changes.run(run)
            last = await changes.record(tx.conn, now)
        self._wake(last)
        return run, True

    async def get_run(self, project_id: str, run_id: str) -> RunRecord:
        """The run; NOT_FOUND also for another project's."""
        async with self._store.read() as tx:
            return await run_or_not_found(tx.conn, project_id, run_id)

    async def list_runs(
        self,
        project_id: str,
        readable: Lookup,
        *,
        filter_text: str,
        order_by: str,
        size: int,
        page_token: str,
    ) -> tuple[list[RunRecord], str]:
        """One page of the readable runs of a project."""
        check_id(project_id, "project_id")
        async with self._store.transaction() as tx:
            return await rs.list_runs(
                tx.conn,
                project_id,
                readable,
                filter_text=filter_text,
                order_by=order_by,
                size=size,
                page_token=page_token,
            )

    async def delete_run(self, project_id: str, run_id: str) -> RunRecord:
        """Deletes a run with its steps (and what hooks hold about it)."""
        async with self._store.transaction() as tx:
            run = await run_or_not_found(tx.conn, project_id, run_id, for_update=True)
            await rs.delete_run(tx.conn, run_id)
            changes = rc.ChangeBatch()
            changes.run(run, rc.DELETED)
            last = await changes.record(tx.conn, self._clock.now())
        self._wake(last)
        return run

    async def run_dag(self, project_id: str, run_id: str) -> RunDag:
        """The run and every step with its parents: two statements."""
        async with self._store.transaction() as tx:
            run = await run_or_not_found(tx.conn, project_id, run_id)
            return RunDag(run, await rs.steps_of_run(tx.conn, run_id))

    async def list_step_runs(
        self, project_id: str, run_id: str, *, filter_text: str, size: int, page_token: str
    ) -> tuple[list[StepRunRecord], str]:
        """One page of a run's step runs."""
        async with self._store.transaction() as tx:
            await run_or_not_found(tx.conn, project_id, run_id)
            return await rs.list_step_runs(
                tx.conn, run_id, filter_text=filter_text, size=size, page_token=page_token
            )

    async def get_step_run(self, project_id: str, run_id: str, step_run_id: str) -> StepRunRecord:
        """A step run of a run of the project."""
        async with self._store.transaction() as tx:
            await run_or_not_found(tx.conn, project_id, run_id)
            step = await rs.get_step_run(tx.conn, run_id, step_run_id)
        if step is None:
            raise NotFound("step run not found")
        return step

    async def update_run_status(
        self,
        project_id: str,
        run_id: str,
        status: str,
        *,
        reason: str = "",
        orchestrator_run_id: str = "",
        principal: str,
        request_id: str,
    ) -> RunUpdate:
        """Applies a reported run status when it moves forward; says whether it did."""
        if status not in states.RUN_STATUSES:
            raise InvalidArgument("status", "must be a run status")
        reason = check_reason(reason, "status_reason")
        if len(orchestrator_run_id) > MAX_ORCHESTRATOR_RUN_ID:
            raise InvalidArgument(
                "orchestrator_run_id", f"must be at most {MAX_ORCHESTRATOR_RUN_ID} characters"
            )
        check_request_id(request_id)
        key = RequestKey(f"UpdateRunStatus/{run_id}", principal, request_id)
        async with self._store.transaction() as tx:
            run = await run_or_not_found(tx.conn, project_id, run_id, for_update=True)
            first = await key.recall(tx.conn)
            if first is not None:
                return RunUpdate(bool(json.loads(first)["applied"]), run)
            now = self._clock.now()
            applied = states.run_transition_applies(run.status, status)
            values: dict[str, Any] = {}
            if orchestrator_run_id and not run.orchestrator_run_id:
                values["orchestrator_run_id"] = orchestrator_run_id
            if applied:
                values.update(run_transition(run, status, reason, now))
            if values:
                run = await rs.update_run(tx.conn, run_id, {**values, "update_time": now})
            changes = rc.ChangeBatch()
            if applied:
                changes.run(run)
            if applied and states.is_terminal(status):
                stopped = await rs.stop_open_steps(tx.conn, run_id, f"the run ended {status.upper()}", now)
                changes.steps(run, stopped)
            await key.remember(tx.conn, json.dumps({"applied": applied}).encode(), now)
            last = await changes.record(tx.conn, now)
        self._wake(last)
        return RunUpdate(applied, run)

    async def update_step_status(
        self,
        project_id: str,
        run_id: str,
        step_name: str,
        status: str,
        *,
        reason: str = "",
        cache_key: str = "",
        principal: str,
        request_id: str,
    ) -> StepUpdate:
        """Applies a reported step status when it moves forward; the run follows its steps."""
        if status not in states.STEP_STATUSES:
            raise InvalidArgument("status", "must be a step status")
        if not step_name:
            raise InvalidArgument("step_name", "is required")
        reason = check_reason(reason, "status_reason")
        if len(cache_key) > MAX_CACHE_KEY:
            raise InvalidArgument("cache_key", f"must be at most {MAX_CACHE_KEY} characters")
        check_request_id(request_id)
        key = RequestKey(f"UpdateStepStatus/{run_id}/{step_name}", principal, request_id)
        async with self._store.transaction() as tx:
            run = await run_or_not_found(tx.conn, project_id, run_id, for_update=True)
            step = await _step_or_not_found(tx.conn, run_id, step_name)
            first = await key.recall(tx.conn)
            if first is not None:
                return StepUpdate(bool(json.loads(first)["applied"]), step, run.status)
            now = self._clock.now()
            applied = states.step_transition_applies(step.status, status)
            changes = rc.ChangeBatch()
            if applied:
                values = step_transition(step, status, reason, now)
                if cache_key:
                    values["cache_key"] = cache_key
                step = await rs.update_step(tx.conn, step.id, values)
                changes.step(run, step)
                run = await _follow_steps(tx.conn, run, now, changes)
            await key.remember(tx.conn, json.dumps({"applied": applied}).encode(), now)
            last = await changes.record(tx.conn, now)
        self._wake(last)
        return StepUpdate(applied, step, run.status)

    async def heartbeat(
        self, project_id: str, run_id: str, step_name: str, *, principal: str, request_id: str = ""
    ) -> Heartbeat:
        """Pushes a RUNNING step's heartbeat deadline; applied = False when the step is not RUNNING."""
        if not step_name:
            raise InvalidArgument("step_name", "is required")
        validate_request_id(request_id)
        key = RequestKey(f"SendStepHeartbeat/{run_id}/{step_name}", principal, request_id)
        async with self._store.transaction() as tx:
            await run_or_not_found(tx.conn, project_id, run_id)
            step = await _step_or_not_found(tx.conn, run_id, step_name)
            first = await key.recall(tx.conn)
            if first is not None:
                return Heartbeat(bool(json.loads(first)["applied"]), step.status)
            now = self._clock.now()
            deadline = now + timedelta(seconds=step.heartbeat_timeout_seconds)
            # Conditional on RUNNING in the UPDATE itself: a sweep committed meanwhile wins.
            applied = step.status == states.RUNNING and await rs.record_heartbeat(
                tx.conn, step.id, now, deadline
            )
            await key.remember(tx.conn, json.dumps({"applied": applied}).encode(), now)
        return Heartbeat(applied, step.status)

    async def sweep_silent_steps(self, limit: int = 500) -> int:
        """Marks RUNNING steps past their heartbeat timeout FAILED (at most `limit`); their runs follow.

        The steps move in one bounded UPDATE; each affected run then follows in
        its own short transaction (run lock first, as in the callbacks).
        """
        now = self._clock.now()
        async with self._store.transaction() as tx:
            failed = await rs.fail_silent_step_records(tx.conn, now, SILENT_STEP_REASON, limit)
            run_ids = sorted({step.run_id for step in failed})
            # Runs an earlier sweep failed the steps of but did not get to move (a crash between).
            behind = await rs.runs_behind_their_steps(tx.conn, limit)
            changes = rc.ChangeBatch()
            of_run = await rs.runs_by_id(tx.conn, run_ids)
            for step in failed:
                changes.step(of_run[step.run_id], step)
            last = await changes.record(tx.conn, now)
        self._wake(last)
        run_ids = sorted(set(run_ids) | set(behind))
        for run_id in run_ids:
            async with self._store.transaction() as tx:
                project_id = await rs.project_of_run(tx.conn, run_id)
                if project_id is None:
                    continue
                run = await rs.get_run(tx.conn, project_id, run_id, for_update=True)
                changes = rc.ChangeBatch()
                if run is not None:
                    await _follow_steps(tx.conn, run, now, changes)
                last = await changes.record(tx.conn, now)
            self._wake(last)
        return len(run_ids)


def run_transition(run: RunRecord, status: str, reason: str, now: Any) -> dict[str, Any]:
    values: dict[str, Any] = {"status": status, "status_reason": reason}
    if status == states.RUNNING and run.start_time is None:
        values["start_time"] = now
    if states.is_terminal(status):
        values["end_time"] = now
    return values


def step_transition(step: StepRunRecord, status: str, reason: str, now: Any) -> dict[str, Any]:
    values: dict[str, Any] = {"status": status, "status_reason": reason, "update_time": now}
    if states.starts_attempt(step.status, status):
        values["attempt_count"] = step.attempt_count + 1
        values["last_heartbeat_time"] = now
        values["heartbeat_deadline"] = now + timedelta(seconds=step.heartbeat_timeout_seconds)
        if step.start_time is None:
            values["start_time"] = now
    elif status != states.RUNNING:
        values["heartbeat_deadline"] = None
    if states.is_terminal(status):
        values["end_time"] = now
    return values


def follow_values(run: RunRecord, counts: states.StepCounts, now: Any) -> dict[str, Any] | None:
    """The run's new values when its steps (counted by status) move it, else None."""
    target = states.run_status_from_steps(run.status, counts)
    if target is None:
        return None
    reason = "a step failed" if target == states.FAILED else ""
    return {**run_transition(run, target, reason, now), "update_time": now}


async def _follow_steps(
    conn: AsyncConnection, run: RunRecord, now: Any, changes: rc.ChangeBatch
) -> RunRecord:
    values = follow_values(run, states.StepCounts.of(await rs.step_status_counts(conn, run.id)), now)
    if values is None:
        return run
    run = await rs.update_run(conn, run.id, values)
    changes.run(run)
    return run


async def run_or_not_found(
    conn: AsyncConnection, project_id: str, run_id: str, *, for_update: bool = False
) -> RunRecord:
    """The run of the project (row-locked when `for_update`); NOT_FOUND otherwise."""
    check_id(run_id, "run_id")
    found = await rs.get_run(conn, project_id, run_id, for_update=for_update)
    if found is None:
        raise NotFound("run not found")
    return found


async def _step_or_not_found(conn: AsyncConnection, run_id: str, name: str) -> StepRunRecord:
    found = await rs.get_step_by_name(conn, run_id, name)
    if found is None:
        raise NotFound("step run not found")
    return found
