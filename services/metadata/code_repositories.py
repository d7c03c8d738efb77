"""Code repositories of a project: type, clone URL and a reference to credentials (never the secret)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from services.kit import errors
from services.kit.context import Principal
from services.kit.fieldmask import check_etag
from services.kit.filtering import AnyField, FilterField
from services.kit.rbac_lookup import lookup_condition
from services.metadata import rows, validation
from services.metadata.annotation_store import annotation_filters
from services.metadata.domain import MetadataDomain, create_owned, forget_quietly
from services.metadata.store import CODE_REPOSITORY_SORTABLE, code_repositories, project_exists

CREATE_METHOD = "keel.metadata.v1.CodeRepositoryService/CreateCodeRepository"
TYPES = ("GITHUB", "GITLAB", "BITBUCKET", "GIT")
UPDATABLE = ("name", "url", "credentials_ref", "description")
MAX_URL = 2048
# https://host/path, http://, ssh://, git:// or scp-like git@host:path; no user info with a password.
_URL = re.compile(
    r"(?:(?:https?|ssh|git)://[^\s/@:]+(?:@[^\s/:]+)?(?::[0-9]{1,5})?/\S+|[A-Za-z0-9._-]+@[^\s:]+:\S+)"
)
_PASSWORD_IN_URL = re.compile(r"://[^/\s@]*:[^/\s@]*@")

FILTERS: dict[str, AnyField] = {
    "name": FilterField(code_repositories.c.name, "string"),
    "type": FilterField(code_repositories.c.type, "enum", {name: name for name in TYPES}),
    "url": FilterField(code_repositories.c.url, "string"),
    "create_time": FilterField(code_repositories.c.create_time, "timestamp"),
    **annotation_filters("code_repository", code_repositories.c.id, code_repositories.c.project_id),
}


@dataclass(frozen=True)
class CodeRepositoryInput:
    """The client-settable fields of a code repository (type only on create)."""

    name: str = ""
    type: str = ""
    url: str = ""
    credentials_ref: str = ""
    description: str = ""


def check_url(value: str, field: str) -> str:
    """A clone URL without embedded credentials."""
    if not value:
        raise errors.InvalidArgument(field, "is required")
    if len(value) > MAX_URL:
        raise errors.InvalidArgument(field, f"must be at most {MAX_URL} characters")
    if _PASSWORD_IN_URL.search(value):
        # Never store (or echo) a credential: reference a secret through credentials_ref instead.
        raise errors.InvalidArgument(field, "must not contain a password; use credentials_ref")
    if not _URL.fullmatch(value):
        raise errors.InvalidArgument(
            field, "must be an https://, http://, ssh://, git:// or git@host:path URL"
        )
    return value


def _checks(fields: CodeRepositoryInput) -> dict[str, Any]:
    return {
        "name": lambda: validation.name(fields.name, "code_repository.name"),
        "url": lambda: check_url(fields.url, "code_repository.url"),
        "credentials_ref": lambda: validation.reference(
            fields.credentials_ref, "code_repository.credentials_ref"
        ),
        "description": lambda: validation.description(fields.description, "code_repository.description"),
    }


class CodeRepositories:
    """The code repository operations of one workspace server; every query names the project."""

    def __init__(self, domain: MetadataDomain) -> None:
        self._domain = domain

    async def create(
        self, principal: Principal, project_id: str, fields: CodeRepositoryInput, request_id: str = ""
    ) -> rows.Row:
        """A new repository of the project, owned by the caller."""
        validation.resource_id(project_id, "project_id", "project")
        if fields.type not in TYPES:
            raise errors.InvalidArgument("code_repository.type", f"must be one of {', '.join(TYPES)}")
        values = {name: check() for name, check in _checks(fields).items()}
        repository_id = str(uuid.uuid4())
        now = self._domain.clock.now()
        scope = {"project_id": project_id}

        async def precheck(conn: AsyncConnection) -> None:
            if not await project_exists(conn, project_id):
                raise errors.NotFound("project not found")

        async def write(conn: AsyncConnection) -> None:
            await precheck(conn)
            await rows.insert_row(
                conn,
                code_repositories,
                {
                    "id": repository_id,
                    "project_id": project_id,
                    "type": fields.type,
                    **values,
                    "create_time": now,
                    "update_time": now,
                    "version": 1,
                },
            )

        return await create_owned(
            self._domain,
            principal,
            method=CREATE_METHOD,
            request_id=request_id,
            resource_type="code_repository",
            resource_id=repository_id,
            project_id=project_id,
            what="code repository",
            fetch=lambda conn, row_id: rows.get_row(conn, code_repositories, row_id, scope),
            write=write,
            precheck=precheck,
        )

    async def get(self, project_id: str, repository_id: str) -> rows.Row:
        """The repository of the project; NOT_FOUND when missing (or in another project)."""
        validation.resource_id(project_id, "project_id", "project")
        validation.resource_id(repository_id, "code_repository_id", "code repository")
        async with self._domain.store.transaction() as tx:
            found = await rows.get_row(tx.conn, code_repositories, repository_id, {"project_id": project_id})
        if found is None:
            raise errors.NotFound("code repository not found")
        return found

    async def list(
        self, principal: Principal, project_id: str, query: rows.ListQuery
    ) -> tuple[list[rows.Row], str]:
        """One page of the project's repositories the caller may read."""
        validation.resource_id(project_id, "project_id", "project")
        readable = await self._domain.lookup.readable_ids(principal, "code_repository", "read", project_id)
        async with self._domain.store.transaction() as tx:
            if not await project_exists(tx.conn, project_id):
                raise errors.NotFound("project not found")
            return await rows.list_rows(
                tx.conn,
                code_repositories,
                query,
                method="ListCodeRepositories",
                filter_fields=FILTERS,
                sortable=CODE_REPOSITORY_SORTABLE,
                visible=lookup_condition(readable, code_repositories.c.id, code_repositories.c.project_id),
                scope={"project_id": project_id},
            )

    async def update(
        self,
        project_id: str,
        repository_id: str,
        fields: CodeRepositoryInput,
        mask: Collection[str],
        etag: str,
    ) -> rows.Row:
        """Writes the masked fields; the type is fixed."""
        validation.resource_id(project_id, "project_id", "project")
        validation.resource_id(repository_id, "code_repository.id", "code repository")
        checks = _checks(fields)
        values = {name: checks[name]() for name in UPDATABLE if name in mask}
        scope = {"project_id": project_id}
        async with self._domain.store.transaction() as tx:
            current = await rows.get_row(tx.conn, code_repositories, repository_id, scope)
            if current is None:
                raise errors.NotFound("code repository not found")
            check_etag(etag, current["version"])
            if all(current[name] == value for name, value in values.items()):
                return current
            try:
                updated = await rows.update_row(
                    tx.conn,
                    code_repositories,
                    repository_id,
                    current["version"],
                    {**values, "update_time": self._domain.clock.now()},
                    scope,
                )
            except rows.Conflict:
                raise errors.AlreadyExists("a code repository with this name already exists") from None
        if updated is None:
            raise errors.Aborted(
                "the code repository changed concurrently; retry", reason="CONCURRENT_UPDATE"
            )
        return updated

    async def delete(self, principal: Principal, project_id: str, repository_id: str, etag: str) -> rows.Row:
        """Deletes the repository and forgets its bindings."""
        validation.resource_id(project_id, "project_id", "project")
        validation.resource_id(repository_id, "code_repository_id", "code repository")
        scope = {"project_id": project_id}
        async with self._domain.store.transaction() as tx:
            current = await rows.get_row(tx.conn, code_repositories, repository_id, scope)
            if current is None:
                raise errors.NotFound("code repository not found")
            check_etag(etag, current["version"])
            if not await rows.delete_row(
                tx.conn, code_repositories, repository_id, current["version"], scope
            ):
                raise errors.Aborted(
                    "the code repository changed concurrently; retry", reason="CONCURRENT_UPDATE"
                )
        await forget_quietly(self._domain, principal, "code_repository", repository_id, project_id)
        return current
