"""Wiring of orgs: settings → engine → migrations → store → domain → servicers → KeelServer.

Orgs authorizes its RPCs through RBAC (`RbacPermissionChecker`), verifies
tokens against authn's JWKS, calls RBAC to write bindings and team
memberships (the caller's token, or its own mesh service account's), and
authn to read the caller's e-mail. Its own audit events (mutations and
denials) go through its outbox like every service's, shipped in process to
the audit log it owns. With its own credential it follows authn's revocation
feed and refuses revoked tokens.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import grpc
from sqlalchemy.ext.asyncio import AsyncEngine

from keel.orgs.v1 import audit_pb2_grpc, organizations_pb2_grpc
from services.kit.audit import AuditOutbox
from services.kit.clients import connect
from services.kit.clock import Clock, SystemClock
from services.kit.db import create_engine_from_settings
from services.kit.migrations import upgrade_to_head
from services.kit.periodic import PeriodicTask
from services.kit.rbac_client import RbacPermissionChecker
from services.kit.revocations import RevocationFeed, feed_for_service
from services.kit.server import KeelServer, Registration
from services.kit.service_identity import ServiceCredential
from services.kit.tokens import JwksCache, TokenVerifier, jwks_from_authn
from services.orgs.api_audit import AuditLogApi
from services.orgs.api_members import MemberApi
from services.orgs.api_organizations import OrganizationApi
from services.orgs.api_teams import TeamApi
from services.orgs.audit_log import AuditLog
from services.orgs.authn_calls import AuthnCalls
from services.orgs.domain import Deps
from services.orgs.invitations import Invitations
from services.orgs.members import Members
from services.orgs.organizations import Organizations
from services.orgs.rbac_calls import RbacCalls
from services.orgs.settings import OrgsSettings
from services.orgs.store import OUTBOX, OrgsStore
from services.orgs.teams import Teams
from services.orgs.workspace_service import WorkspaceParts, build_workspace_parts

logger = logging.getLogger(__name__)

SERVICE_NAME = "orgs"
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = "orgs_alembic_version"
HOUSEKEEPING_SECONDS = 3600.0


async def migrate(engine: AsyncEngine, settings: OrgsSettings) -> None:
    """Brings the orgs schema to head."""
    await upgrade_to_head(engine, MIGRATIONS, version_table=VERSION_TABLE, schema=settings.database_schema)


@dataclass
class OrgsDomain:
    """The domain objects of orgs over one engine, and the channels they hold."""

    settings: OrgsSettings
    engine: AsyncEngine
    deps: Deps
    organizations: Organizations
    members: Members
    invitations: Invitations
    teams: Teams
    checker: RbacPermissionChecker
    workspace: WorkspaceParts
    audit_log: AuditLog
    outbox: AuditOutbox
    # One channel to authn (the caller's e-mail, JWKS, the revocation feed); all channels are closed on stop.
    authn_channel: grpc.aio.Channel | None = None
    channels: list[grpc.aio.Channel] = field(default_factory=list)
    credential: ServiceCredential | None = None


def build_domain(
    settings: OrgsSettings,
    engine: AsyncEngine,
    clock: Clock,
    *,
    audit_recorded: Callable[[], None] | None = None,
) -> OrgsDomain:
    """The domain objects over one engine, with channels to authn and RBAC."""
    authn_channel = connect(settings.authn_address)
    rbac_channel = connect(settings.rbac_address)
    # The checker's cache ages on real time: tests move the domain clock by days (invitation expiry).
    checker = RbacPermissionChecker(rbac_channel, SystemClock())
    credential = ServiceCredential.from_settings(settings, SystemClock())
    deps = Deps(
        store=OrgsStore(engine),
        rbac=RbacCalls(rbac_channel, checker, credential.metadata if credential else None),
        authn=AuthnCalls(authn_channel),
        clock=clock,
    )
    audit_log = AuditLog(deps.store, clock, audit_recorded=lambda: deps.audit_recorded())
    # orgs owns the log: its outbox ships in process, straight into it.
    outbox = AuditOutbox(engine, OUTBOX, clock, sink=audit_log, service_name=SERVICE_NAME)
    deps.audit_recorded = outbox.notify if audit_recorded is None else audit_recorded
    return OrgsDomain(
        settings=settings,
        engine=engine,
        deps=deps,
        organizations=Organizations(deps),
        members=Members(deps),
        invitations=Invitations(deps, settings.orgs_invitation_ttl_seconds),
        teams=Teams(deps),
        checker=checker,
        # Through deps: whatever audit_recorded is wired to later reaches the workspace part too.
        workspace=build_workspace_parts(
            settings, deps.store, clock, rbac_channel, checker, audit_recorded=lambda: deps.audit_recorded()
        ),
        audit_log=audit_log,
        outbox=outbox,
        authn_channel=authn_channel,
        channels=[authn_channel, rbac_channel],
        credential=credential,
    )


def core_registrations(domain: OrgsDomain) -> list[Registration]:
    """The servicers of organizations, members/invitations, teams, workspaces and the audit log."""
    return [
        Registration(
            "keel.orgs.v1.OrganizationService",
            organizations_pb2_grpc.add_OrganizationServiceServicer_to_server,
            OrganizationApi(domain.organizations),
        ),
        Registration(
            "keel.orgs.v1.MemberService",
            organizations_pb2_grpc.add_MemberServiceServicer_to_server,
            MemberApi(domain.members, domain.invitations),
        ),
        Registration(
            "keel.orgs.v1.TeamService",
            organizations_pb2_grpc.add_TeamServiceServicer_to_server,
            TeamApi(domain.teams),
        ),
        *domain.workspace.registrations(),
        Registration(
            "keel.orgs.v1.AuditLogService",
            audit_pb2_grpc.add_AuditLogServiceServicer_to_server,
            AuditLogApi(domain.audit_log, domain.deps.clock, domain.settings.mesh_service_account_ids),
        ),
    ]


@dataclass
class OrgsService:
    """A runnable orgs: its domain and its gRPC server."""

    domain: OrgsDomain
    server: KeelServer
    jwks: JwksCache
    # authn's revocation feed, followed when orgs has its own credential (None otherwise).
    revocations: RevocationFeed | None = None
    housekeeping: PeriodicTask = field(init=False)

    def __post_init__(self) -> None:
        self.housekeeping = PeriodicTask(
            "orgs-housekeeping", self.forget_old_request_ids, HOUSEKEEPING_SECONDS
        )

    async def forget_old_request_ids(self) -> int:
        """Deletes remembered request ids past their retention (the housekeeping task's step)."""
        retention = timedelta(seconds=self.domain.settings.orgs_request_id_retention_seconds)
        async with self.domain.deps.store.transaction() as tx:
            return await tx.purge_request_ids(self.domain.deps.clock.now() - retention)

    @property
    def port(self) -> int:
        """The bound port (after start)."""
        return self.server.port

    async def start(self) -> int:
        """Migrates and starts serving, the registry sweeper and the audit shipper; the bound port."""
        await migrate(self.domain.engine, self.domain.settings)
        if self.revocations is not None:
            await self.revocations.start()
        else:
            logger.warning(
                "orgs has no service credential (KEEL_SERVICE_API_KEY_FILE): no revocation feed, so a "
                "deactivated user's or ended session's access token is accepted until it expires"
            )
        port = await self.server.start()
        self.domain.workspace.sweeping.start()
        self.housekeeping.start()
        self.domain.outbox.start()
        return port

    async def stop(self) -> None:
        """Stops serving (with the configured drain), closes channels and disposes of the engine."""
        await self.domain.workspace.sweeping.stop()
        await self.housekeeping.stop()
        await self.server.stop()
        await self.domain.outbox.stop()
        if self.revocations is not None:
            await self.revocations.stop()
        if self.domain.credential is not None:
            await self.domain.credential.close()
        for channel in self.domain.channels:
            await channel.close(None)
        await self.domain.engine.dispose()


def build_service(
    settings: OrgsSettings,
    *,
    clock: Clock | None = None,
    engine: AsyncEngine | None = None,
    jwks: JwksCache | None = None,
) -> OrgsService:
    """A complete orgs service, not yet started; `jwks` defaults to authn's over gRPC."""
    clock = clock or SystemClock()
    engine = engine or create_engine_from_settings(settings, SERVICE_NAME)
    domain = build_domain(settings, engine, clock)
    authn_channel = domain.authn_channel
    assert authn_channel is not None  # build_domain always opens it
    if jwks is None:
        jwks = JwksCache(jwks_from_authn(authn_channel))
    # The credential of build_domain: one exchange of orgs' API key serves every call on its account.
    revocations = feed_for_service(authn_channel, domain.credential)
    verifier = TokenVerifier(
        jwks,
        issuer=settings.token_issuer,
        audience=settings.token_audience,
        principal_check=None if revocations is None else revocations.principal_check,
    )
    server = KeelServer(
        SERVICE_NAME,
        settings,
        core_registrations(domain),
        verifier,
        domain.checker,
        denial_recorder=domain.outbox.denial_recorder,
    )
    return OrgsService(domain, server, jwks, revocations)
