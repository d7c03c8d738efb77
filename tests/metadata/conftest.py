"""Fixtures of the metadata tests: a real control plane (authn, RBAC, orgs) and a workspace server.

`metadata_stack` runs on the parametrized backend: authn, RBAC and orgs as in
tests/orgs/conftest.py, an organization (its admin `stack.owner`), a workspace
created through orgs whose credential file the metadata server starts with,
and the metadata server itself (registered with orgs, so its identity is the
real one). Helpers create users with roles, projects and shares.

`metadata_store` is a migrated `MetadataStore` on the parametrized backend, for
store and domain tests that need no servers.

M2 and M3 reuse these fixtures; keep them general.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from google.rpc import error_details_pb2
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from keel.orgs.v1 import workspaces_pb2, workspaces_pb2_grpc
from keel.rbac.v1 import rbac_pb2
from services.kit.status import rich_status_of
from services.metadata.server import MetadataService, build_service, migrate
from services.metadata.settings import MetadataSettings
from services.metadata.store import MetadataStore
from tests.clock import ManualClock
from tests.conftest import POSTGRES_ADMIN_URL, _administer
from tests.orgs.conftest import (  # noqa: F401  (fixtures used by metadata_stack)
    Metadata,
    OrgsStack,
    User,
    orgs_stack,
    service_urls,
)

StubT = TypeVar("StubT")


def write_secret_file(path: Path, text: str) -> Path:
    """Writes `text` to a new 0600 file (what a credential file must be)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text)
    return path


@pytest.fixture
async def metadata_database_url(database_url: str, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh database for the metadata server on the parametrized backend (besides orgs' one)."""
    if database_url.startswith("sqlite"):
        yield f"sqlite+aiosqlite:///{tmp_path / 'metadata.db'}"
        return
    name = f"keel_test_{secrets.token_hex(6)}"
    await _administer(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        await _administer(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class MetadataStack:
    """A running control plane and workspace server, with helpers."""

    orgs: OrgsStack
    service: MetadataService
    settings: MetadataSettings
    clock: ManualClock
    channel: grpc.aio.Channel
    owner: User
    organization_id: str
    workspace_id: str
    credential_file: Path
    credential: str = field(repr=False)
    running: bool = True

    @property
    def address(self) -> str:
        """host:port of the metadata server."""
        return f"127.0.0.1:{self.service.port}"

    def stub(self, stub_class: type[StubT]) -> StubT:
        """A client stub of any metadata service on the workspace server's channel."""
        return stub_class(self.channel)  # type: ignore[call-arg]

    @property
    def registry(self) -> workspaces_pb2_grpc.WorkspaceRegistryServiceAsyncStub:
        """orgs' workspace registry (register, heartbeat) as the workspace server sees it."""
        return workspaces_pb2_grpc.WorkspaceRegistryServiceStub(self.orgs.channel)

    @property
    def workspaces(self) -> workspaces_pb2_grpc.WorkspaceServiceAsyncStub:
        """orgs' WorkspaceService."""
        return workspaces_pb2_grpc.WorkspaceServiceStub(self.orgs.channel)

    def scope(self, project_id: str = "") -> rbac_pb2.ResourceRef:
        """The RBAC scope of the workspace, or of one of its projects."""
        return rbac_pb2.ResourceRef(
            organization_id=self.organization_id, workspace_id=self.workspace_id, project_id=project_id
        )

    async def member(self) -> User:
        """A new member of the organization (organization_member: no workspace data)."""
        return await self.orgs.join(self.organization_id, self.owner)

    async def bind(self, user: User, role_id: str, project_id: str = "") -> None:
        """Binds `user` to `role_id` on the workspace (or on a project of it), as the organization admin."""
        await self.orgs.rbac_bindings.CreateRoleBinding(
            rbac_pb2.CreateRoleBindingRequest(
                organization_id=self.organization_id,
                role_binding=rbac_pb2.RoleBinding(
                    subject=rbac_pb2.Subject(kind=rbac_pb2.Subject.USER, id=user.id),
                    role_id=role_id,
                    scope=self.scope(project_id),
                ),
            ),
            metadata=self.owner.metadata,
        )

    async def user_with_role(self, role_id: str, project_id: str = "") -> User:
        """A new organization member bound to `role_id` on the workspace (or a project)."""
        user = await self.member()
        await self.bind(user, role_id, project_id)
        return user

    async def share(
        self, user: User, resource_type: str, resource_id: str, role_id: str, project_id: str = ""
    ) -> None:
        """Shares one resource with `user` (RBAC ShareResource, as the organization admin)."""
        await self.orgs.rbac_permissions.ShareResource(
            rbac_pb2.ShareResourceRequest(
                resource=rbac_pb2.ResourceRef(
                    organization_id=self.organization_id,
                    workspace_id=self.workspace_id,
                    project_id=project_id,
                    resource_type=resource_type,
                    resource_id=resource_id,
                ),
                subject=rbac_pb2.Subject(kind=rbac_pb2.Subject.USER, id=user.id),
                role_id=role_id,
            ),
            metadata=self.owner.metadata,
        )

    async def project(self, name: str | None = None, user: User | None = None) -> Any:
        """A new project (created by `user`, default the organization admin); the Project message."""
        from keel.metadata.v1 import projects_pb2, projects_pb2_grpc

        stub = projects_pb2_grpc.ProjectServiceStub(self.channel)
        return await stub.CreateProject(
            projects_pb2.CreateProjectRequest(
                workspace_id=self.workspace_id,
                project=projects_pb2.Project(name=name or f"project-{secrets.token_hex(3)}"),
            ),
            metadata=(user or self.owner).metadata,
        )

    async def stop_metadata(self) -> None:
        """Stops the workspace server (its heartbeats end)."""
        if self.running:
            self.running = False
            await self.channel.close(None)
            await self.service.stop()

    def restart_settings(self, **overrides: Any) -> MetadataSettings:
        """The server's settings with overrides (e.g. another orgs address for an outage)."""
        return self.settings.model_copy(update=overrides)


def metadata_settings(
    orgs: OrgsStack, database_url: str, credential_file: Path, data_dir: Path, **overrides: Any
) -> MetadataSettings:
    """Settings of a workspace server wired to the stack's control plane (overrides win)."""
    values: dict[str, Any] = {
        "database_url": database_url,
        "data_dir": data_dir,
        "listen_address": "127.0.0.1:0",
        "drain_seconds": 0,
        "authn_address": orgs.authn_address,
        "rbac_address": orgs.rbac_address,
        "orgs_address": orgs.orgs_address,
        "workspace_credential_file": credential_file,
        **overrides,
    }
    return MetadataSettings(**values)


async def create_workspace(orgs: OrgsStack, organization_id: str, admin: User) -> tuple[str, str]:
    """A new workspace of the organization (through orgs): its id and its server credential."""
    created = await workspaces_pb2_grpc.WorkspaceServiceStub(orgs.channel).CreateWorkspace(
        workspaces_pb2.CreateWorkspaceRequest(
            organization_id=organization_id,
            workspace=workspaces_pb2.Workspace(display_name=f"ws-{secrets.token_hex(3)}"),
        ),
        metadata=admin.metadata,
    )
    return created.workspace.id, created.credential


@pytest.fixture
async def metadata_stack(
    orgs_stack: OrgsStack,  # noqa: F811
    metadata_database_url: str,
    tmp_path: Path,
) -> AsyncIterator[MetadataStack]:
    """The control plane plus a registered workspace server on the parametrized backend."""
    owner = await orgs_stack.user()
    organization = await orgs_stack.organization(owner)
    workspace_id, credential = await create_workspace(orgs_stack, organization.id, owner)
    credential_file = write_secret_file(tmp_path / "workspace-credential", credential)
    settings = metadata_settings(orgs_stack, metadata_database_url, credential_file, tmp_path / "metadata")
    clock = ManualClock()
    service = build_service(settings, clock=clock)
    await service.start()
    stack = MetadataStack(
        orgs_stack,
        service,
        settings,
        clock,
        grpc.aio.insecure_channel(f"127.0.0.1:{service.port}"),
        owner,
        organization.id,
        workspace_id,
        credential_file,
        credential,
    )
    try:
        yield stack
    finally:
        await stack.stop_metadata()


@pytest.fixture
async def metadata_store(engine: AsyncEngine) -> MetadataStore:
    """A migrated metadata store on the parametrized backend (no servers)."""
    await migrate(engine, MetadataSettings())
    return MetadataStore(engine)


def field_of(error: grpc.aio.AioRpcError) -> str:
    """The field named by the first BadRequest violation of an INVALID_ARGUMENT answer."""
    status = rich_status_of(error)
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            return str(bad.field_violations[0].field)
    raise AssertionError("no BadRequest detail")
