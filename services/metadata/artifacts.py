"""Artifacts, artifact versions and step inputs/outputs: the rules; no gRPC, no SQL.

A version is a pointer (a URI with a scheme), never the data. Step outputs
are idempotent by (step run, output name): a retry of the same output returns
the version recorded first, and a different URI under a recorded name is
ALREADY_EXISTS; step inputs are idempotent by (step run, input name) the same
way. Deleting a version that a step consumed is FAILED_PRECONDITION (lineage
would dangle); deleting an artifact deletes its versions unless one of them is
a step's input, in which case nothing is deleted (FAILED_PRECONDITION).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from services.kit.clock import Clock
from services.kit.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from services.kit.fieldmask import check_etag
from services.kit.rbac_lookup import Lookup
from services.metadata import annotation_store as ans
from services.metadata import artifact_store as st
from services.metadata import validation
from services.metadata.artifact_store import (
    ArtifactRecord,
    LinkRecord,
    ListQuery,
    VersionInput,
    VersionRecord,
)
from services.metadata.pipelines import check_id, require_project
from services.metadata.run_store import step_runs
from services.metadata.store import MetadataStore, RequestKey, register_project_content_check

UPDATABLE = ("type", "description")
MAX_LINKS = 100
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://\S+|[A-Za-z][A-Za-z0-9+.\-]*:/\S*")
_LINK_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,100}")

register_project_content_check(st.project_has_artifacts)


def check_uri(value: str, field: str) -> str:
    """A URI with a scheme (s3://..., gs://..., file:///...), at most 2,048 characters."""
    if not value:
        raise InvalidArgument(field, "is required")
    if len(value) > 2048 or not _URI.fullmatch(value):
        raise InvalidArgument(field, "must be a URI with a scheme, at most 2,048 characters")
    return value


def _check_text(value: str, field: str, limit: int) -> str:
    if len(value) > limit:
        raise InvalidArgument(field, f"must be at most {limit} characters")
    return value


def check_version_input(version: VersionInput, field: str) -> VersionInput:
    """INVALID_ARGUMENT naming the first bad field of a new version."""
    check_uri(version.uri, f"{field}.uri")
    _check_text(version.type, f"{field}.type", 100)
    _check_text(version.materializer, f"{field}.materializer", 512)
    _check_text(version.content_hash, f"{field}.content_hash", 256)
    if version.size_bytes < 0:
        raise InvalidArgument(f"{field}.size_bytes", "must not be negative")
    return version


def _check_link_name(value: str, field: str) -> str:
    if not _LINK_NAME.fullmatch(value):
        raise InvalidArgument(field, "must be 1-100 characters of letters, digits, '_', '.' and '-'")
    return value


@dataclass(frozen=True)
class StepOutput:
    """One output of a step run: the artifact (by name) and the new version."""

    name: str
    artifact_name: str
    version: VersionInput


def check_output(output: StepOutput, field: str) -> None:
    """INVALID_ARGUMENT naming the first bad field of a step output."""
    _check_link_name(output.name, f"{field}.name")
    validation.name(output.artifact_name, f"{field}.artifact_name")
    check_version_input(output.version, f"{field}.artifact_version")


@dataclass(frozen=True)
class RecordedOutputs:
    """The versions of a RecordStepOutputs call, and which artifacts/versions it created now (to own)."""

    versions: list[VersionRecord]
    new_artifact_ids: list[str]
    new_version_ids: list[str]


async def run_of_step(conn: AsyncConnection, project_id: str, step_run_id: str) -> str:
    """The run of a step run of the project; NOT_FOUND otherwise (the run area's table, read only)."""
    run_id = await conn.scalar(
        select(step_runs.c.run_id).where(step_runs.c.id == step_run_id, step_runs.c.project_id == project_id)
    )
    if run_id is None:
        raise NotFound("step run not found")
    return str(run_id)


class Artifacts:
    """Artifacts, versions and step inputs/outputs of the projects of this workspace."""

    def __init__(self, store: MetadataStore, clock: Clock, new_id: Callable[[], str] | None = None) -> None:
        self._store = store
        self._clock = clock
        self._new_id = new_id or (lambda: str(uuid.uuid4()))

    async def create_artifact(
        self,
        project_id: str,
        name: str,
        type_: str,
        description: str,
        *,
        principal: str = "",
        request_id: str = "",
    ) -> tuple[ArtifactRecord, bool]:
        """The new artifact and whether it was created now (False: a retry of `request_id`)."""
        check_id(project_id, "project_id")
        validation.name(name, "artifact.name")
        _check_text(type_, "artifact.type", 100)
        validation.description(description, "artifact.description")
        method = f"CreateArtifact/{project_id}"
        async with self._store.transaction() as tx:
            key = RequestKey(method, principal, request_id)
            known = await key.recall(tx.conn)
            if known is not None:
                return await self._artifact(tx.conn, project_id, known.decode()), False
            await require_project(tx.conn, project_id)
            now = self._clock.now()
            record = ArtifactRecord(self._new_id(), project_id, name, type_, description, 0, now, now, 1)
            try:
                await st.insert_artifact(tx.conn, record)
            except st.NameTaken:
                raise AlreadyExists(f"an artifact named {name!r} exists in the project") from None
            await key.remember(tx.conn, record.id.encode(), now)
        return record, True

    async def get_artifact(self, project_id: str, artifact_id: str) -> ArtifactRecord:
        """The artifact; NOT_FOUND also for another project's."""
        async with self._store.transaction() as tx:
            return await self._artifact(tx.conn, project_id, artifact_id)

    async def list_artifacts(
        self, project_id: str, readable: Lookup, query: ListQuery
    ) -> tuple[list[ArtifactRecord], str]:
        """One page of the readable artifacts of a project."""
        check_id(project_id, "project_id")
        async with self._store.transaction() as tx:
            await require_project(tx.conn, project_id)
            return await st.list_artifacts(tx.conn, project_id, query, readable)

    async def update_artifact(
        self, project_id: str, artifact_id: str, supplied_etag: str, values: Mapping[str, Any]
    ) -> ArtifactRecord:
        """Writes type/description (already masked); ABORTED on a stale etag."""
        if "type" in values:
            _check_text(values["type"], "artifact.type", 100)
        if "description" in values:
            validation.description(values["description"], "artifact.description")
        async with self._store.transaction() as tx:
            current = await self._artifact(tx.conn, project_id, artifact_id)
            check_etag(supplied_etag, current.version)
            updated = await st.update_artifact(tx.conn, project_id, artifact_id, values, self._clock.now())
            if updated is None:
                raise NotFound("artifact not found")
            return updated

    async def delete_artifact(self, project_id: str, artifact_id: str, supplied_etag: str) -> int:
        """Deletes the artifact, its versions and their annotations; how many versions went."""
        async with self._store.transaction() as tx:
            current = await self._artifact(tx.conn, project_id, artifact_id)
            check_etag(supplied_etag, current.version)
            version_ids = st.version_ids_of_artifact(project_id, artifact_id)
            try:
                # Annotations first, while the versions still name them; InUse rolls everything back.
                await ans.delete_for_targets(tx.conn, "artifact_version", version_ids)
                await ans.delete_for_targets(tx.conn, "artifact", [artifact_id])
                return await st.delete_artifact(tx.conn, project_id, artifact_id)
            except st.InUse as error:
                raise FailedPrecondition(
                    f"{error}: delete the runs that consumed it first", reason="ARTIFACT_IN_USE"
                ) from None

    async def create_version(
        self,
        project_id: str,
        artifact_id: str,
        version: VersionInput,
        *,
        principal: str = "",
        request_id: str = "",
    ) -> tuple[VersionRecord, bool]:
        """A version uploaded by hand (no producing step); False: a retry of `request_id`."""
        check_id(project_id, "project_id")
        check_id(artifact_id, "artifact_id")
        check_version_input(version, "artifact_version")
        method = f"CreateArtifactVersion/{project_id}/{artifact_id}"
        async with self._store.transaction() as tx:
            key = RequestKey(method, principal, request_id)
            known = await key.recall(tx.conn)
            if known is not None:
                return await self._version(tx.conn, project_id, known.decode()), False
            record = await self._new_version(tx.conn, project_id, artifact_id, version, "", "")
            await key.remember(tx.conn, record.id.encode(), record.create_time)
        return record, True

    async def get_version(self, project_id: str, artifact_id: str, version_id: str) -> VersionRecord:
        """The version; NOT_FOUND also for another artifact's or project's."""
        async with self._store.transaction() as tx:
            return await self._version(tx.conn, project_id, version_id, artifact_id)

    async def list_versions(
        self, project_id: str, artifact_id: str, readable: Lookup, query: ListQuery
    ) -> tuple[list[VersionRecord], str]:
        """One page of the readable versions of an artifact."""
        check_id(project_id, "project_id")
        check_id(artifact_id, "artifact_id")
        async with self._store.transaction() as tx:
            await self._artifact(tx.conn, project_id, artifact_id)
            return await st.list_versions(tx.conn, project_id, artifact_id, query, readable)

    async def delete_version(self, project_id: str, artifact_id: str, version_id: str) -> None:
        """Deletes a version and its annotations; FAILED_PRECONDITION while a step consumed it."""
        async with self._store.transaction() as tx:
            try:
                deleted = await st.delete_version(tx.conn, project_id, artifact_id, version_id)
            except st.InUse as error:
                raise FailedPrecondition(str(error), reason="ARTIFACT_VERSION_IN_USE") from None
            if not deleted:
                raise NotFound("artifact version not found")
            await ans.delete_for_targets(tx.conn, "artifact_version", [version_id])

    async def record_inputs(
        self,
        project_id: str,
        step_run_id: str,
        inputs: Sequence[tuple[str, str]],
        *,
        principal: str = "",
        request_id: str = "",
    ) -> list[LinkRecord]:
        """Links (input name, artifact version id) pairs to a step run; the links as recorded."""
        check_id(project_id, "project_id")
        check_id(step_run_id, "step_run_id")
        if not inputs or len(inputs) > MAX_LINKS:
            raise InvalidArgument("inputs", f"must hold 1 to {MAX_LINKS} inputs")
        names = [_check_link_name(name, f"inputs[{i}].name") for i, (name, _) in enumerate(inputs)]
        if len(set(names)) != len(names):
            raise InvalidArgument("inputs", "input names must be distinct")
        for i, (_, version_id) in enumerate(inputs):
            check_id(version_id, f"inputs[{i}].artifact_version_id")
        async with self._store.transaction() as tx:
            run_id = await run_of_step(tx.conn, project_id, step_run_id)
            found = {v.id: v for v in await st.get_versions(tx.conn, project_id, [v for _, v in inputs])}
            for i, (_, version_id) in enumerate(inputs):
                if version_id not in found:
                    raise NotFound(f"artifact version of inputs[{i}] not found")
            now = self._clock.now()
            links = [
                LinkRecord(
                    step_run_id, st.INPUT, name, version_id, found[version_id].artifact_id, run_id, now
                )
                for name, version_id in inputs
            ]
            try:
                await st.record_links(tx.conn, project_id, links)
            except st.LinkConflict as error:
                raise AlreadyExists(str(error), reason="STEP_INPUT_RECORDED") from None
            # Inputs are idempotent by name already; the key only guards a reused request_id.
            key = RequestKey(f"RecordStepInputs/{project_id}/{step_run_id}", principal, request_id)
            if await key.recall(tx.conn) is None:
                await key.remember(tx.conn, b"recorded", now)
        return links

    async def record_outputs(
        self,
        project_id: str,
        step_run_id: str,
        outputs: Sequence[StepOutput],
        *,
        principal: str = "",
        request_id: str = "",
    ) -> RecordedOutputs:
        """Records each output as a new version of its artifact (created when missing), linked to the step."""
        check_id(project_id, "project_id")
        check_id(step_run_id, "step_run_id")
        if not outputs or len(outputs) > MAX_LINKS:
            raise InvalidArgument("outputs", f"must hold 1 to {MAX_LINKS} outputs")
        for i, output in enumerate(outputs):
            check_output(output, f"outputs[{i}]")
        if len({output.name for output in outputs}) != len(outputs):
            raise InvalidArgument("outputs", "output names must be distinct")
        method = f"RecordStepOutputs/{project_id}/{step_run_id}"
        async with self._store.transaction() as tx:
            key = RequestKey(method, principal, request_id)
            known = await key.recall(tx.conn)
            if known is not None:
                ids = known.decode().split(",")
                by_id = {v.id: v for v in await st.get_versions(tx.conn, project_id, ids)}
                return RecordedOutputs([by_id[i] for i in ids if i in by_id], [], [])
            run_id = await run_of_step(tx.conn, project_id, step_run_id)
            recorded = {
                link.name: link
                for link in await st.links_of_steps(tx.conn, project_id, [step_run_id], st.OUTPUT)
            }
            earlier = {
                v.id: v
                for v in await st.get_versions(
                    tx.conn, project_id, [link.artifact_version_id for link in recorded.values()]
                )
            }
            result = RecordedOutputs([], [], [])
            for output in outputs:
                link = recorded.get(output.name)
                if link is not None:
                    version = earlier.get(link.artifact_version_id)
                    if version is None or version.uri != output.version.uri:
                        raise AlreadyExists(
                            f"output {output.name!r} of the step run is recorded with another version",
                            reason="STEP_OUTPUT_RECORDED",
                        )
                    result.versions.append(version)
                    continue
                artifact = await self._artifact_for_output(tx.conn, project_id, output.artifact_name, result)
                version = await self._new_version(
                    tx.conn, project_id, artifact.id, output.version, step_run_id, run_id
                )
                link = LinkRecord(
                    step_run_id, st.OUTPUT, output.name, version.id, artifact.id, run_id, version.create_time
                )
                try:
                    await st.record_links(tx.conn, project_id, [link])
                except st.LinkConflict as error:
                    raise AlreadyExists(str(error), reason="STEP_OUTPUT_RECORDED") from None
                result.versions.append(version)
                result.new_version_ids.append(version.id)
            await key.remember(tx.conn, ",".join(v.id for v in result.versions).encode(), self._clock.now())
        return result

    async def list_step_links(
        self, project_id: str, step_run_id: str, direction: str, size: int, page_token: str
    ) -> tuple[list[LinkRecord], str]:
        """One page of a step run's inputs and outputs (NOT_FOUND for a step run of another project)."""
        check_id(project_id, "project_id")
        check_id(step_run_id, "step_run_id")
        async with self._store.transaction() as tx:
            await run_of_step(tx.conn, project_id, step_run_id)
            return await st.list_step_links(tx.conn, project_id, step_run_id, direction, size, page_token)

    async def _artifact_for_output(
        self, conn: AsyncConnection, project_id: str, name: str, result: RecordedOutputs
    ) -> ArtifactRecord:
        found = await st.get_artifact_by_name(conn, project_id, name)
        if found is not None:
            return found
        now = self._clock.now()
        record = ArtifactRecord(self._new_id(), project_id, name, "", "", 0, now, now, 1)
        try:
            await st.insert_artifact(conn, record)
        except st.NameTaken:
            # A concurrent output created it first: use theirs.
            found = await st.get_artifact_by_name(conn, project_id, name)
            if found is None:
                raise
            return found
        result.new_artifact_ids.append(record.id)
        return record

    async def _new_version(
        self,
        conn: AsyncConnection,
        project_id: str,
        artifact_id: str,
        version: VersionInput,
        step_run_id: str,
        run_id: str,
    ) -> VersionRecord:
        number = await st.next_version_number(conn, project_id, artifact_id)
        if number is None:
            raise NotFound("artifact not found")
        artifact = await self._artifact(conn, project_id, artifact_id)
        record = VersionRecord(
            id=self._new_id(),
            project_id=project_id,
            artifact_id=artifact_id,
            number=number,
            uri=version.uri,
            type=version.type or artifact.type,
            materializer=version.materializer,
            content_hash=version.content_hash,
            size_bytes=version.size_bytes,
            producer_step_run_id=step_run_id,
            producer_run_id=run_id,
            create_time=self._clock.now(),
        )
        await st.insert_version(conn, record)
        return record

    async def _artifact(self, conn: AsyncConnection, project_id: str, artifact_id: str) -> ArtifactRecord:
        found = await st.get_artifact(conn, project_id, artifact_id)
        if found is None:
            raise NotFound("artifact not found")
        return found

    async def _version(
        self, conn: AsyncConnection, project_id: str, version_id: str, artifact_id: str = ""
    ) -> VersionRecord:
        found = await st.get_version(conn, project_id, version_id, artifact_id)
        if found is None:
            raise NotFound("artifact version not found")
        return found
