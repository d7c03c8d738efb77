"""Fixtures of the orgs tests: a real authn + RBAC + orgs trio on ephemeral ports, and a migrated store.

`orgs_stack` runs on the parametrized backend (each service on its own SQLite
file, or its own fresh PostgreSQL database). authn runs with a platform admin;
a mesh service account with an API key in a 0600 file is created there and
given to RBAC (trusted via `mesh_service_accounts`) and to orgs (its own
credential). `stack.user(email)` creates a user and signs it in. The orgs
domain clock is a ManualClock (`stack.clock`); token verification and the
permission cache age on real time, so moving the clock by days (invitation
expiry) leaves every token valid.

Helpers E and B reuse these fixtures; keep them general.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from keel.orgs.v1 import organizations_pb2 as pb
from keel.orgs.v1 import organizations_pb2_grpc as pb_grpc
from keel.rbac.v1 import rbac_pb2_grpc
from services.orgs.server import OrgsService, build_service, migrate
from services.orgs.settings import OrgsSettings
from services.orgs.store import OrgsStore
from services.rbac.server import RbacService
from services.rbac.server import build_service as build_rbac
from services.rbac.settings import RbacSettings
from tests.authn.conftest import Authn, bearer, start_authn, stop_authn
from tests.clock import ManualClock
from tests.conftest import POSTGRES_ADMIN_URL, _administer

Metadata = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class User:
    """A signed-in authn user: id, e-mail and call metadata carrying a fresh access token."""

    id: str
    email: str
    token: str = field(repr=False)

    @property
    def metadata(self) -> Metadata:
        """`authorization: Bearer <token>` for a call as this user."""
        return bearer(self.token)


@dataclass
class OrgsStack:
    """A running authn, RBAC and orgs, with stubs and helpers."""

    authn: Authn
    rbac: RbacService
    orgs: OrgsService
    clock: ManualClock
    channel: grpc.aio.Channel
    rbac_channel: grpc.aio.Channel
    mesh_service_account_id: str
    api_key_file: Path
    urls: dict[str, str]
    rbac_settings: RbacSettings
    rbac_running: bool = True

    @property
    def authn_address(self) -> str:
        return f"127.0.0.1:{self.authn.service.port}"

    @property
    def rbac_address(self) -> str:
        return f"127.0.0.1:{self.rbac.port}"

    @property
    def orgs_address(self) -> str:
        return f"127.0.0.1:{self.orgs.port}"

    @property
    def admin(self) -> Metadata:
        """Metadata of authn's platform admin (no organization role of its own)."""
        return self.authn.admin

    @property
    def organizations(self) -> pb_grpc.OrganizationServiceAsyncStub:
        return pb_grpc.OrganizationServiceStub(self.channel)

    @property
    def members(self) -> pb_grpc.MemberServiceAsyncStub:
        return pb_grpc.MemberServiceStub(self.channel)

    @property
    def teams(self) -> pb_grpc.TeamServiceAsyncStub:
        return pb_grpc.TeamServiceStub(self.channel)

    @property
    def rbac_permissions(self) -> rbac_pb2_grpc.PermissionServiceAsyncStub:
        return rbac_pb2_grpc.PermissionServiceStub(self.rbac_channel)

    @property
    def rbac_bindings(self) -> rbac_pb2_grpc.RoleBindingServiceAsyncStub:
        return rbac_pb2_grpc.RoleBindingServiceStub(self.rbac_channel)

    async def stop_rbac(self) -> None:
        """Stops RBAC (an outage as orgs sees it)."""
        await self.rbac.stop()
        self.rbac_running = False

    async def start_rbac(self) -> None:
        """Starts RBAC again on the same port and database after `stop_rbac`."""
        settings = self.rbac_settings.model_copy(update={"listen_address": self.rbac_address})
        self.rbac = build_rbac(settings, clock=ManualClock())
        await self.rbac.start()
        self.rbac_running = True

    async def user(self, email: str | None = None, password: str = "correct horse battery") -> User:
        """A new authn user (a random e-mail unless given), signed in."""
        address = email or f"user-{secrets.token_hex(4)}@example.test"
        created = await self.authn.create_user(address, password)
        signed_in = await self.authn.login(address, password)
        return User(created.id, created.email, signed_in.access_token)

    async def organization(self, owner: User, display_name: str = "Acme") -> pb.Organization:
        """A new organization whose Admin is `owner`."""
        return await self.organizations.CreateOrganization(
            pb.CreateOrganizationRequest(organization=pb.Organization(display_name=display_name)),
            metadata=owner.metadata,
        )

    async def join(self, organization_id: str, admin: User, role_id: str = "organization_member") -> User:
        """A new user who joined the organization with `role_id` through an invitation from `admin`."""
        invitee = await self.user()
        created = await self.members.CreateInvitation(
            pb.CreateInvitationRequest(
                organization_id=organization_id,
                invitation=pb.Invitation(email=invitee.email, role_id=role_id),
            ),
            metadata=admin.metadata,
        )
        await self.members.AcceptInvitation(
            pb.AcceptInvitationRequest(token=created.token), metadata=invitee.metadata
        )
        return invitee


@pytest.fixture
async def service_urls(database_url: str, tmp_path: Path) -> AsyncIterator[dict[str, str]]:
    """A database URL per service on the parametrized backend (orgs gets `database_url` itself)."""
    if database_url.startswith("sqlite"):
        yield {name: f"sqlite+aiosqlite:///{tmp_path / f'{name}.db'}" for name in ("authn", "rbac", "orgs")}
        return
    names = {service: f"keel_test_{secrets.token_hex(6)}" for service in ("authn", "rbac")}
    # Created side by side: PostgreSQL copies both templates at once (~0.2 s each on the CI machine).
    await asyncio.gather(*(_administer(f'CREATE DATABASE "{name}"') for name in names.values()))
    try:
        urls = {
            service: make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
            for service, name in names.items()
        }
        yield {**urls, "orgs": database_url}
    finally:
        await asyncio.gather(
            *(_administer(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)') for name in names.values())
        )


async def _mesh_account(authn: Authn, key_file: Path) -> str:
    account_id, secret = await authn.service_account_key("orgs-mesh")
    descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(secret)
    return account_id


def orgs_settings(stack_urls: dict[str, str], data_dir: Path, **overrides: Any) -> OrgsSettings:
    """Orgs settings for a test (overrides win)."""
    values: dict[str, Any] = {
        "database_url": stack_urls["orgs"],
        "data_dir": data_dir,
        "listen_address": "127.0.0.1:0",
        "drain_seconds": 0,
        **overrides,
    }
    return OrgsSettings(**values)


@pytest.fixture
async def orgs_stack(service_urls: dict[str, str], tmp_path: Path) -> AsyncIterator[OrgsStack]:
    """authn, RBAC and orgs running on the parametrized backend, wired with a mesh service account."""
    authn = await start_authn(service_urls["authn"], tmp_path / "authn", ManualClock())
    stack: OrgsStack | None = None
    rbac: RbacService | None = None
    orgs: OrgsService | None = None
    try:
        key_file = tmp_path / "orgs-api-key"
        mesh_id = await _mesh_account(authn, key_file)
        authn_address = f"127.0.0.1:{authn.service.port}"
        rbac_settings = RbacSettings(
            database_url=service_urls["rbac"],
            data_dir=tmp_path / "rbac",
            listen_address="127.0.0.1:0",
            drain_seconds=0,
            authn_address=authn_address,
            mesh_service_accounts=mesh_id,
        )
        rbac = build_rbac(rbac_settings, clock=ManualClock())
        await rbac.start()
        clock = ManualClock()
        orgs = build_service(
            orgs_settings(
                service_urls,
                tmp_path / "orgs",
                authn_address=authn_address,
                rbac_address=f"127.0.0.1:{rbac.port}",
                mesh_service_accounts=mesh_id,
                service_api_key_file=key_file,
            ),
            clock=clock,
        )
        await orgs.start()
        stack = OrgsStack(
            authn,
            rbac,
            orgs,
            clock,
            grpc.aio.insecure_channel(f"127.0.0.1:{orgs.port}"),
            grpc.aio.insecure_channel(f"127.0.0.1:{rbac.port}"),
            mesh_id,
            key_file,
            service_urls,
            rbac_settings,
        )
        yield stack
    finally:
        if stack is not None:
            await stack.channel.close(None)
            await stack.rbac_channel.close(None)
            rbac = stack.rbac if stack.rbac_running else None
        if orgs is not None:
            await orgs.stop()
        if rbac is not None:
            await rbac.stop()
        await stop_authn(authn)


@pytest.fixture
async def orgs_store(engine: AsyncEngine) -> OrgsStore:
    """A migrated orgs store on the parametrized backend."""
    await migrate(engine, OrgsSettings())
    return OrgsStore(engine)
