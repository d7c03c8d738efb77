"""Models, model versions, stages and links: the rules; no gRPC, no SQL.

Stages: NONE (new), STAGING, PRODUCTION, ARCHIVED; any stage may move to any
other. At most one version per model is in PRODUCTION: promoting one into
PRODUCTION moves the previous production version to ARCHIVED in the same
transaction (ARCHIVED rather than STAGING: a version that served and was
replaced is retired, and STAGING keeps meaning "candidate"). Promotions of one
model are serialized by the model row's lock, taken first; the partial unique
index is the backstop. Moving a version to the stage it is in changes nothing.

Deleting a model deletes its versions, their links and annotations in a
bounded number of statements (one per table). Models and versions are created
through `domain.create_owned` (the caller's ownership first, then the insert).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from services.kit.context import Principal
from services.kit.errors import Aborted, AlreadyExists, InvalidArgument, NotFound
from services.kit.fieldmask import check_etag
from services.kit.rbac_lookup import Lookup
from services.metadata import annotation_store as ans
from services.metadata import artifact_store as ast
from services.metadata import model_store as st
from services.metadata import validation
from services.metadata.artifact_store import ListQuery
from services.metadata.domain import MetadataDomain, create_owned
from services.metadata.model_store import LinkRecord, ModelRecord, ModelVersionRecord
from services.metadata.pipelines import check_id, require_project
from services.metadata.run_store import runs
from services.metadata.store import RequestKey, register_project_content_check

UPDATABLE = ("description",)
# What UpdateModelVersion may change: the stage moves only by promotion, the number never.
VERSION_UPDATABLE = ("description",)
# The stage a production version is moved to when another is promoted.
DEMOTED_STAGE = st.ARCHIVED
LINK_TARGETS = ("artifact_version", "run")

register_project_content_check(st.project_has_models)


@dataclass(frozen=True)
class Promotion:
    """The moved version and the production version it replaced (None when none was)."""

    version: ModelVersionRecord
    demoted: ModelVersionRecord | None


class Models:
    """Models, versions, stages and links of the projects of this workspace."""

    def __init__(self, domain: MetadataDomain, new_id: Callable[[], str] | None = None) -> None:
        self._domain = domain
        self._store = domain.store
        self._clock = domain.clock
        self._new_id = new_id or (lambda: str(uuid.uuid4()))

    async def create_model(
        self, principal: Principal, project_id: str, name: str, description: str, request_id: str = ""
    ) -> ModelRecord:
        """A new model the caller owns; a retry with `request_id` returns the first one."""
        check_id(project_id, "project_id")
        validation.name(name, "model.name")
        validation.description(description, "model.description")
        model_id = self._new_id()

        async def precheck(conn: AsyncConnection) -> None:
            await require_project(conn, project_id)

        async def write(conn: AsyncConnection) -> None:
            await require_project(conn, project_id)
            now = self._clock.now()
            try:
                await st.insert_model(
                    conn, ModelRecord(model_id, project_id, name, description, 0, now, now, 1)
                )
            except st.NameTaken:
                raise AlreadyExists(f"a model named {name!r} exists in the project") from None

        return await create_owned(
            self._domain,
            principal,
            method=f"CreateModel/{project_id}",
            request_id=request_id,
            resource_type="model",
            resource_id=model_id,
            project_id=project_id,
            what="model",
            fetch=lambda conn, found_id: st.get_model(conn, project_id, found_id),
            write=write,
            precheck=precheck,
        )

    async def get_model(self, project_id: str, model_id: str) -> ModelRecord:
        """The model; NOT_FOUND also for another project's."""
        async with self._store.transaction() as tx:
            return await self._model(tx.conn, project_id, model_id)

    async def list_models(
        self, project_id: str, readable: Lookup, query: ListQuery
    ) -> tuple[list[ModelRecord], str]:
        """One page of the readable models of a project."""
        check_id(project_id, "project_id")
        async with self._store.transaction() as tx:
            await require_project(tx.conn, project_id)
            return await st.list_models(tx.conn, project_id, query, readable)

    async def update_model(
        self, project_id: str, model_id: str, supplied_etag: str, values: Mapping[str, Any]
    ) -> ModelRecord:
        """Writes the description (already masked); ABORTED on a stale etag."""
        if "description" in values:
            validation.description(values["description"], "model.description")
        async with self._store.transaction() as tx:
            current = await self._model(tx.conn, project_id, model_id)
            check_etag(supplied_etag, current.version)
            expected = current.version if supplied_etag else None
            if not await st.update_model(
                tx.conn, project_id, model_id, values, self._clock.now(), expected_version=expected
            ):
                if supplied_etag:
                    # The etag matched, then a promotion or another update landed before the write.
                    raise Aborted(
                        "the model changed while being updated; read it again", reason="ETAG_MISMATCH"
                    )
                raise NotFound("model not found")  # deleted between the read and the write
            return await self._model(tx.conn, project_id, model_id)

    async def delete_model(self, project_id: str, model_id: str, supplied_etag: str) -> int:
        """Deletes the model, its versions, links and annotations; how many versions went."""
        async with self._store.transaction() as tx:
            current = await self._model(tx.conn, project_id, model_id)
            check_etag(supplied_etag, current.version)
            await ans.delete_for_targets(
                tx.conn, "model_version", st.version_ids_of_model(project_id, model_id)
            )
            await ans.delete_for_targets(tx.conn, "model", [model_id])
            return await st.delete_model(tx.conn, project_id, model_id)

    async def create_version(
        self, principal: Principal, project_id: str, model_id: str, description: str, request_id: str = ""
    ) -> ModelVersionRecord:
        """A new version (stage NONE) numbered atomically, owned by the caller; a retry returns the first."""
        check_id(project_id, "project_id")
        check_id(model_id, "model_id")
        validation.description(description, "model_version.description")
        version_id = self._new_id()

        async def precheck(conn: AsyncConnection) -> None:
            await self._model(conn, project_id, model_id)

        async def write(conn: AsyncConnection) -> None:
            now = self._clock.now()
            number = await st.next_version_number(conn, project_id, model_id, now)
            if number is None:
                raise NotFound("model not found")
            await st.insert_version(
                conn,
                ModelVersionRecord(
                    version_id, project_id, model_id, number, description, st.NONE, now, now, now, 1
                ),
            )

        return await create_owned(
            self._domain,
            principal,
            method=f"CreateModelVersion/{project_id}/{model_id}",
            request_id=request_id,
            resource_type="model_version",
            resource_id=version_id,
            project_id=project_id,
            what="model version",
            fetch=lambda conn, found_id: st.get_version(conn, project_id, model_id, found_id),
            write=write,
            precheck=precheck,
        )

    async def get_version(self, project_id: str, model_id: str, version_id: str) -> ModelVersionRecord:
        """The version; NOT_FOUND also for another model's or project's."""
        async with self._store.transaction() as tx:
            return await self._version(tx.conn, project_id, model_id, version_id)

    async def list_versions(
        self, project_id: str, model_id: str, readable: Lookup, query: ListQuery
    ) -> tuple[list[ModelVersionRecord], str]:
        """One page of the readable versions of a model."""
        check_id(project_id, "project_id")
        check_id(model_id, "model_id")
        async with self._store.transaction() as tx:
            await self._model(tx.conn, project_id, model_id)
            return await st.list_versions(tx.conn, project_id, model_id, query, readable)

    async def update_version(
        self, project_id: str, model_id: str, version_id: str, supplied_etag: str, values: Mapping[str, Any]
    ) -> ModelVersionRecord:
        """Writes the masked user-editable fields (description); ABORTED on a stale etag."""
        check_id(project_id, "project_id")
        check_id(model_id, "model_id")
        check_id(version_id, "model_version.id")
        if "description" in values:
            validation.description(values["description"], "model_version.description")
        async with self._store.transaction() as tx:
            current = await self._version(tx.conn, project_id, model_id, version_id)
            check_etag(supplied_etag, current.version)
            updated = await st.update_version(
                tx.conn,
                current,
                values,
                self._clock.now(),
                expected_version=current.version if supplied_etag else None,
            )
        if updated is None and not supplied_etag:
            raise NotFound("model version not found")  # deleted between the read and the write
        if updated is None:
            # The etag matched, then a promotion or another update landed before the write.
            raise Aborted(
                "the model version changed while being updated; read it again", reason="ETAG_MISMATCH"
            )
        return updated

    async def delete_version(self, project_id: str, model_id: str, version_id: str) -> None:
        """Deletes a version, its links and annotations."""
        async with self._store.transaction() as tx:
            if not await st.delete_version(tx.conn, project_id, model_id, version_id):
                raise NotFound("model version not found")
            await ans.delete_for_targets(tx.conn, "model_version", [version_id])

    async def promote(
        self, project_id: str, model_id: str, version_id: str, stage: str, supplied_etag: str = ""
    ) -> Promotion:
        """Moves a version to `stage`; into PRODUCTION it archives the previous production one atomically."""
        check_id(project_id, "project_id")
        check_id(model_id, "model_id")
        check_id(version_id, "model_version_id")
        if stage not in st.STAGES:
            raise InvalidArgument("stage", "must be NONE, STAGING, PRODUCTION or ARCHIVED")
        async with self._store.transaction() as tx:
            now = self._clock.now()
            # The model's row lock first: concurrent promotions of this model queue here.
            if not await st.lock_model(tx.conn, project_id, model_id, now):
                raise NotFound("model not found")
            current = await self._version(tx.conn, project_id, model_id, version_id)
            check_etag(supplied_etag, current.version)
            if current.stage == stage:
                return Promotion(current, None)
            demoted = None
            if stage == st.PRODUCTION:
                demoted = await st.demote_production(tx.conn, project_id, model_id, DEMOTED_STAGE, now)
            moved = await st.set_stage(tx.conn, project_id, model_id, version_id, stage, now)
            return Promotion(moved, demoted)

    async def create_link(
        self,
        project_id: str,
        model_id: str,
        version_id: str,
        target_kind: str,
        target_id: str,
        name: str,
        *,
        principal: str = "",
        request_id: str = "",
    ) -> LinkRecord:
        """Links a version to an artifact version or run of the same project."""
        if target_kind not in LINK_TARGETS:
            raise InvalidArgument("link.target", "set artifact_version_id or run_id")
        check_id(target_id, f"link.{target_kind}_id")
        if len(name) > 100:
            raise InvalidArgument("link.name", "must be at most 100 characters")
        method = f"CreateModelVersionLink/{project_id}/{version_id}"
        async with self._store.transaction() as tx:
            key = RequestKey(method, principal, request_id)
            known = await key.recall(tx.conn)
            if known is not None:
                return await self._link(tx.conn, project_id, version_id, known.decode())
            await self._version(tx.conn, project_id, model_id, version_id)
            if not await self._target_exists(tx.conn, project_id, target_kind, target_id):
                raise NotFound(f"{target_kind.replace('_', ' ')} not found")
            now = self._clock.now()
            record = LinkRecord(
                self._new_id(), project_id, model_id, version_id, target_kind, target_id, name, now
            )
            try:
                await st.insert_link(tx.conn, record)
            except st.LinkTaken:
                raise AlreadyExists("the model version already has this link") from None
            await key.remember(tx.conn, record.id.encode(), now)
        return record

    async def list_links(
        self, project_id: str, model_id: str, version_id: str, size: int, page_token: str
    ) -> tuple[list[LinkRecord], str]:
        """One page of a version's links, oldest first."""
        async with self._store.transaction() as tx:
            await self._version(tx.conn, project_id, model_id, version_id)
            return await st.list_links(tx.conn, project_id, version_id, size, page_token)

    async def delete_link(self, project_id: str, model_id: str, version_id: str, link_id: str) -> None:
        """Removes one link of a version."""
        async with self._store.transaction() as tx:
            await self._version(tx.conn, project_id, model_id, version_id)
            if not await st.delete_link(tx.conn, project_id, version_id, link_id):
                raise NotFound("link not found")

    async def _target_exists(self, conn: AsyncConnection, project_id: str, kind: str, target_id: str) -> bool:
        if kind == "artifact_version":
            return await ast.get_version(conn, project_id, target_id) is not None
        found = await conn.scalar(
            select(runs.c.id).where(runs.c.id == target_id, runs.c.project_id == project_id)
        )
        return found is not None

    async def _link(
        self, conn: AsyncConnection, project_id: str, version_id: str, link_id: str
    ) -> LinkRecord:
        links, _ = await st.list_links(conn, project_id, version_id, 500, "")
        for link in links:
            if link.id == link_id:
                return link
        raise NotFound("link not found")

    async def _model(self, conn: AsyncConnection, project_id: str, model_id: str) -> ModelRecord:
        found = await st.get_model(conn, project_id, model_id)
        if found is None:
            raise NotFound("model not found")
        return found

    async def _version(
        self, conn: AsyncConnection, project_id: str, model_id: str, version_id: str
    ) -> ModelVersionRecord:
        found = await st.get_version(conn, project_id, model_id, version_id)
        if found is None:
            raise NotFound("model version not found")
        return found
