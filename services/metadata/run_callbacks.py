"""Orchestrator callbacks in bulk: one run's callbacks applied in order, in one transaction; no gRPC.

The batch means exactly what the single callbacks (UpdateRunStatus,
UpdateStepStatus, SendStepHeartbeat, RecordStepOutputs) would mean sent one
after the other, with the same state machine and the same answers (`applied`
per callback), but costs a fixed number of statements whatever its size: the
run's row lock, its steps (at most 1,000) read once, every transition
evaluated in memory, then one executemany UPDATE for the steps, one UPDATE
for the run, the outputs in bulk (artifacts by name, version numbers for all
of them in two statements, one INSERT of versions, one of links), the
idempotency row and the change log (one row per applied transition, in
order, so watchers see every step of the batch as if it had come alone).

A batch is all or nothing: an unknown step, an output conflicting with a
recorded one or bad input anywhere refuses the whole batch and changes
nothing. The request id keys the whole batch; a retry gets the first answer.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from services.kit.clock import Clock
from services.kit.errors import AlreadyExists, InvalidArgument, NotFound
from services.metadata import artifact_store as st
from services.metadata import run_changes as rc
from services.metadata import run_states as states
from services.metadata import run_store as rs
from services.metadata.artifacts import MAX_LINKS, StepOutput, check_output
from services.metadata.runs import (
    MAX_CACHE_KEY,
    MAX_ORCHESTRATOR_RUN_ID,
    check_reason,
    check_request_id,
    follow_values,
    run_or_not_found,
    run_transition,
    step_transition,
)
from services.metadata.store import MetadataStore, RequestKey

MAX_CALLBACKS = 1000


@dataclass(frozen=True)
class RunStatusReport:
    """UpdateRunStatus's content."""

    status: str
    reason: str = ""
    orchestrator_run_id: str = ""


@dataclass(frozen=True)
class StepStatusReport:
    """UpdateStepStatus's content."""

    step_name: str
    status: str
    reason: str = ""
    cache_key: str = ""


@dataclass(frozen=True)
class StepHeartbeatReport:
    """SendStepHeartbeat's content."""

    step_name: str


@dataclass(frozen=True)
class StepOutputsReport:
    """RecordStepOutputs's content, the step named."""

    step_name: str
    outputs: Sequence[StepOutput]


Callback = RunStatusReport | StepStatusReport | StepHeartbeatReport | StepOutputsReport


@dataclass
class CallbackResult:
    """What one callback did."""

    applied: bool
    versions: list[st.VersionRecord] = field(default_factory=list)


@dataclass
class BatchResult:
    """The answer of a batch, and what it created now (for ownership)."""

    results: list[CallbackResult]
    run: rs.RunRecord
    new_artifact_ids: list[str] = field(default_factory=list)
    new_version_ids: list[str] = field(default_factory=list)


def validate(callbacks: Sequence[Callback]) -> None:
    """INVALID_ARGUMENT naming the first bad field, before anything is read."""
    if not 1 <= len(callbacks) <= MAX_CALLBACKS:
        raise InvalidArgument("callbacks", f"must hold 1 to {MAX_CALLBACKS} callbacks")
    for i, callback in enumerate(callbacks):
        where = f"callbacks[{i}]"
        if isinstance(callback, RunStatusReport):
            if callback.status not in states.RUN_STATUSES:
                raise InvalidArgument(f"{where}.run_status.status", "must be a run status")
            check_reason(callback.reason, f"{where}.run_status.status_reason")
            if len(callback.orchestrator_run_id) > MAX_ORCHESTRATOR_RUN_ID:
                raise InvalidArgument(
                    f"{where}.run_status.orchestrator_run_id",
                    f"must be at most {MAX_ORCHESTRATOR_RUN_ID} characters",
                )
            continue
        kind = {
            StepStatusReport: "step_status",
            StepHeartbeatReport: "step_heartbeat",
            StepOutputsReport: "step_outputs",
        }[type(callback)]
        if not callback.step_name:
            raise InvalidArgument(f"{where}.{kind}.step_name", "is required")
        if isinstance(callback, StepStatusReport):
            if callback.status not in states.STEP_STATUSES:
                raise InvalidArgument(f"{where}.step_status.status", "must be a step status")
            check_reason(callback.reason, f"{where}.step_status.status_reason")
            if len(callback.cache_key) > MAX_CACHE_KEY:
                raise InvalidArgument(
                    f"{where}.step_status.cache_key", f"must be at most {MAX_CACHE_KEY} characters"
                )
        elif isinstance(callback, StepOutputsReport):
            if not 1 <= len(callback.outputs) <= MAX_LINKS:
                raise InvalidArgument(f"{where}.step_outputs.outputs", f"must hold 1 to {MAX_LINKS} outputs")
            for j, output in enumerate(callback.outputs):
                check_output(output, f"{where}.step_outputs.outputs[{j}]")
            if len({output.name for output in callback.outputs}) != len(callback.outputs):
                raise InvalidArgument(f"{where}.step_outputs.outputs", "output names must be distinct")


class _Run:
    """The run and its steps as the batch moves them, with the change log entries in order."""

    def __init__(self, run: rs.RunRecord, steps: list[rs.StepRunRecord], now: datetime) -> None:
        self.run = run
        self.run_changed = False
        self.steps = {step.name: step for step in steps}
        # Steps by status, kept as they move: the run follows its steps after every step change.
        self.statuses = Counter(step.status for step in steps)
        self.changed_steps: set[str] = set()
        self.changes = rc.ChangeBatch()
        self.now = now

    def step(self, name: str, index: int) -> rs.StepRunRecord:
        found = self.steps.get(name)
        if found is None:
            raise NotFound(f"callbacks[{index}]: the run has no step {name!r}")
        return found

    def _set_step(self, step: rs.StepRunRecord, values: dict[str, Any]) -> rs.StepRunRecord:
        self.statuses[step.status] -= 1
        step = dataclasses.replace(step, **values)
        self.statuses[step.status] += 1
        self.steps[step.name] = step
        self.changed_steps.add(step.name)
        return step

    def _set_run(self, values: dict[str, Any]) -> None:
        self.run = dataclasses.replace(self.run, **{**values, "update_time": self.now})
        self.run_changed = True

    def run_status(self, report: RunStatusReport) -> bool:
        applied = states.run_transition_applies(self.run.status, report.status)
        values: dict[str, Any] = {}
        if report.orchestrator_run_id and not self.run.orchestrator_run_id:
            values["orchestrator_run_id"] = report.orchestrator_run_id
        if applied:
            values.update(run_transition(self.run, report.status, report.reason, self.now))
        if values:
            self._set_run(values)
        if applied:
            self.changes.run(self.run)
            if states.is_terminal(report.status):
                self._stop_open_steps(f"the run ended {report.status.upper()}")
        return applied

    def _stop_open_steps(self, reason: str) -> None:
        values = {
            "status": states.STOPPED,
            "status_reason": reason,
            "end_time": self.now,
            "update_time": self.now,
            "heartbeat_deadline": None,
        }
        for step in sorted(self.steps.values(), key=lambda s: s.position):
            if not states.is_terminal(step.status):
                self.changes.step(self.run, self._set_step(step, values))

    def step_status(self, report: StepStatusReport, index: int) -> bool:
        step = self.step(report.step_name, index)
        if not states.step_transition_applies(step.status, report.status):
            return False
        values = step_transition(step, report.status, report.reason, self.now)
        if report.cache_key:
            values["cache_key"] = report.cache_key
        self.changes.step(self.run, self._set_step(step, values))
        counts = states.StepCounts.of(self.statuses.items())
        follow = follow_values(self.run, counts, self.now)
        if follow is not None:
            self._set_run(follow)
            self.changes.run(self.run)
        return True

    def heartbeat(self, report: StepHeartbeatReport, index: int) -> bool:
        step = self.step(report.step_name, index)
        if step.status != states.RUNNING:
            return False
        deadline = self.now + timedelta(seconds=step.heartbeat_timeout_seconds)
        self._set_step(step, {"last_heartbeat_time": self.now, "heartbeat_deadline": deadline})
        return True

    async def write(self, conn: AsyncConnection) -> None:
        await rs.write_steps(
            conn,
            [self.steps[name] for name in sorted(self.changed_steps)],
            self.run if self.run_changed else None,
        )


@dataclass
class _Planned:
    """The outputs of a batch once decided: per output (in order) the version recorded before or the id
    of a new one, the new ones to write, and their artifacts by name."""

    entries: list[tuple[CallbackResult, rs.StepRunRecord, StepOutput, st.VersionRecord | None, str]] = field(
        default_factory=list
    )
    fresh: list[tuple[rs.StepRunRecord, StepOutput, str]] = field(default_factory=list)
    artifacts: dict[str, st.ArtifactRecord] = field(default_factory=dict)

    def version_ids(self, results: Sequence[CallbackResult]) -> list[list[str]]:
        """Per result, in order, the ids of its versions (one pass over the entries)."""
        by_result: dict[int, list[str]] = {id(result): [] for result in results}
        for result, *_, version_id in self.entries:
            by_result[id(result)].append(version_id)
        return [by_result[id(result)] for result in results]


class RunCallbacks:
    """Applies batches of orchestrator callbacks to the runs of this workspace."""

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

    async def apply(
        self,
        project_id: str,
        run_id: str,
        callbacks: Sequence[Callback],
        *,
        principal: str,
        request_id: str,
    ) -> BatchResult:
        """Applies the callbacks in order (all or nothing); a retry of `request_id` gets the first answer."""
        validate(callbacks)
        check_request_id(request_id)
        key = RequestKey(f"RecordRunCallbacks/{run_id}", principal, request_id)
        async with self._store.transaction() as tx:
            run = await run_or_not_found(tx.conn, project_id, run_id, for_update=True)
            first = await key.recall(tx.conn)
            if first is not None:
                return await _replayed(tx.conn, project_id, run, first)
            now = self._clock.now()
            state = _Run(run, await rs.steps_of_run(tx.conn, run_id), now)
            results: list[CallbackResult] = []
            outputs: list[tuple[CallbackResult, rs.StepRunRecord, StepOutputsReport]] = []
            for index, callback in enumerate(callbacks):
                if isinstance(callback, RunStatusReport):
                    results.append(CallbackResult(state.run_status(callback)))
                elif isinstance(callback, StepStatusReport):
                    results.append(CallbackResult(state.step_status(callback, index)))
                elif isinstance(callback, StepHeartbeatReport):
                    results.append(CallbackResult(state.heartbeat(callback, index)))
                else:
                    result = CallbackResult(False)
                    outputs.append((result, state.step(callback.step_name, index), callback))
                    results.append(result)
            batch = BatchResult(results, state.run)
            planned = await self._plan_outputs(tx.conn, project_id, run_id, outputs, batch, now)
            await state.write(tx.conn)
            batch.run = state.run
            response = {
                "applied": [result.applied for result in results],
                "versions": planned.version_ids(results),
            }
            await key.remember(tx.conn, json.dumps(response).encode(), now)
            # The shared rows last, so their locks are held briefly: the artifacts' version
            # counters (every run of a pipeline bumps the same ones), then the change log's.
            await self._write_versions(tx.conn, project_id, run_id, planned, batch, now)
            last = await state.changes.record(tx.conn, now)
        if last is not None and self._notify is not None:
            self._notify(last)
        return batch

    async def _plan_outputs(
        self,
        conn: AsyncConnection,
        project_id: str,
        run_id: str,
        outputs: list[tuple[CallbackResult, rs.StepRunRecord, StepOutputsReport]],
        batch: BatchResult,
        now: datetime,
    ) -> _Planned:
        """Decides every output (new version, or the one recorded already), creates missing artifacts and
        writes the new versions' links; the versions themselves wait for their numbers (`_write_versions`).
        """
        planned = _Planned()
        if not outputs:
            return planned
        step_ids = sorted({step.id for _, step, _ in outputs})
        recorded = {
            (link.step_run_id, link.name): link
            for link in await st.links_of_steps(conn, project_id, step_ids, st.OUTPUT)
        }
        earlier = {
            version.id: version
            for version in await st.get_versions(
                conn, project_id, [link.artifact_version_id for link in recorded.values()]
            )
        }
        # Outputs repeated with the same URI (here or earlier) are answered, not redone.
        uris: dict[tuple[str, str], str] = {}
        new_ids: dict[tuple[str, str], str] = {}
        for result, step, report in outputs:
            for output in report.outputs:
                key = (step.id, output.name)
                link = recorded.get(key)
                version = None if link is None else earlier.get(link.artifact_version_id)
                if key in uris:
                    uri: str | None = uris[key]
                else:
                    uri = None if link is None else "" if version is None else version.uri
                if uri is not None and uri != output.version.uri:
                    raise AlreadyExists(
                        f"output {output.name!r} of step {step.name!r} is recorded with another version",
                        reason="STEP_OUTPUT_RECORDED",
                    )
                uris[key] = output.version.uri
                if version is not None:
                    planned.entries.append((result, step, output, version, version.id))
                    continue
                if key not in new_ids:
                    new_ids[key] = self._new_id()
                    planned.fresh.append((step, output, new_ids[key]))
                    result.applied = True
                planned.entries.append((result, step, output, None, new_ids[key]))
        if not planned.fresh:
            return planned
        planned.artifacts = await self._artifacts(
            conn, project_id, [output.artifact_name for _, output, _ in planned.fresh], batch, now
        )
        links = [
            st.LinkRecord(
                step.id,
                st.OUTPUT,
                output.name,
                version_id,
                planned.artifacts[output.artifact_name].id,
                run_id,
                now,
            )
            for step, output, version_id in planned.fresh
        ]
        try:
            # Checked against the recorded links above, under the run's lock.
            await st.insert_links(conn, project_id, links)
        except st.LinkConflict as error:
            raise AlreadyExists(str(error), reason="STEP_OUTPUT_RECORDED") from None
        return planned

    async def _write_versions(
        self,
        conn: AsyncConnection,
        project_id: str,
        run_id: str,
        planned: _Planned,
        batch: BatchResult,
        now: datetime,
    ) -> None:
        """Numbers and inserts the new versions (per artifact, atomically) and fills the results."""
        artifacts = planned.artifacts
        fresh = [
            st.VersionRecord(
                id=version_id,
                project_id=project_id,
                artifact_id=artifacts[output.artifact_name].id,
                number=0,  # numbered by the store
                uri=output.version.uri,
                type=output.version.type or artifacts[output.artifact_name].type,
                materializer=output.version.materializer,
                content_hash=output.version.content_hash,
                size_bytes=output.version.size_bytes,
                producer_step_run_id=step.id,
                producer_run_id=run_id,
                create_time=now,
            )
            for step, output, version_id in planned.fresh
        ]
        created = {
            version.id: version for version in await st.insert_numbered_versions(conn, project_id, fresh)
        }
        batch.new_version_ids.extend(version.id for version in fresh)
        for result, _, _, version, version_id in planned.entries:
            result.versions.append(version or created[version_id])

    async def _artifacts(
        self, conn: AsyncConnection, project_id: str, names: list[str], batch: BatchResult, now: datetime
    ) -> dict[str, st.ArtifactRecord]:
        """The artifacts of these names, created when missing (one query when they all exist)."""
        found = await st.get_artifacts_by_names(conn, project_id, names)
        for name in sorted(set(names) - set(found)):
            record = st.ArtifactRecord(self._new_id(), project_id, name, "", "", 0, now, now, 1)
            try:
                await st.insert_artifact(conn, record)
                batch.new_artifact_ids.append(record.id)
            except st.NameTaken:
                # A concurrent output created it first: use theirs.
                found.update(await st.get_artifacts_by_names(conn, project_id, [name]))
                continue
            found[name] = record
        return found


async def _replayed(conn: AsyncConnection, project_id: str, run: rs.RunRecord, first: bytes) -> BatchResult:
    """The first answer of a batch, with the versions it recorded read back."""
    answer = json.loads(first)
    ids = [version_id for ids in answer["versions"] for version_id in ids]
    by_id = {version.id: version for version in await st.get_versions(conn, project_id, ids)}
    results = [
        CallbackResult(bool(applied), [by_id[i] for i in version_ids if i in by_id])
        for applied, version_ids in zip(answer["applied"], answer["versions"], strict=True)
    ]
    return BatchResult(results, run, [], ids)
