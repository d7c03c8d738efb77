"""Wiring of the metadata service: settings → engine → migrations → identity → servicers → KeelServer.

A workspace server serves one workspace, named by its credential and
registered with the control plane at start (identity.py). Authorization goes
through RBAC with the workspace scope mapping (the server's own organization
and workspace complete every chain); lists filter with RBAC's LookupResources
(services/kit/rbac_lookup.py); creators become owners (ownership.py). Tokens
are verified against authn's JWKS. A workspace server has no mesh service
account, so normally no revocation feed: a revoked token is accepted until it
expires (minutes); with KEEL_SERVICE_API_KEY_FILE set it follows the feed like orgs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from keel.metadata.v1 import (
    code_repositories_pb2_grpc,
    pipelines_pb2_grpc,
    projects_pb2_grpc,
    runs_pb2_grpc,
    stacks_pb2_grpc,
)
from services.kit import idempotency as kit_idempotency
from services.kit.clients import connect
from services.kit.clock import Clock, SystemClock
from services.kit.db import create_engine_from_settings
from services.kit.migrations import upgrade_to_head
from services.kit.periodic import PeriodicTask
from services.kit.rbac_client import RbacPermissionChecker, workspace_scope
from services.kit.rbac_lookup import RbacLookup
from services.kit.revocations import RevocationFeed, feed_for_service
from services.kit.server import KeelServer, Registration
from services.kit.service_identity import ServiceCredential
from services.kit.tokens import JwksCache, TokenVerifier, jwks_from_authn
from services.metadata import run_changes
from services.metadata.api_code_repositories import CodeRepositoryApi
from services.metadata.api_pipelines import PipelineServicer
from services.metadata.api_projects import ProjectApi
from services.metadata.api_runs import RunServicer
from services.metadata.api_stacks import StackApi
from services.metadata.artifact_model_services import artifact_model_registrations
from services.metadata.domain import MetadataDomain
from services.metadata.identity import (
    IdentityError,
    ServedWorkspace,
    WorkspaceIdentity,
    WorkspaceRegistration,
    read_credential_file,
)
from services.metadata.ownership import Ownership
from services.metadata.run_sweeper import RunSweeper
from services.metadata.runs import Runs
from services.metadata.settings import MetadataSettings
from services.metadata.store import MetadataStore, idempotency
from services.metadata.watch import ChangeHub

logger = logging.getLogger(__name__)

SERVICE_NAME = "metadata"
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = "metadata_alembic_version"
HOUSEKEEPING_SECONDS = 3600.0


async def migrate(engine: AsyncEngine, settings: MetadataSettings) -> None:
    """Brings the metadata schema to head."""
    await upgrade_to_head(engine, MIGRATIONS, version_table=VERSION_TABLE, schema=settings.database_schema)


def build_domain(
    settings: MetadataSettings, engine: AsyncEngine, clock: Clock, served: ServedWorkspace
) -> MetadataDomain:
    """The domain over one engine, with a channel to RBAC."""
    rbac_channel = connect(settings.rbac_address)

    # The identity is learnt at start: the mapping reads it on every check.
    def scope(resource_type: str, resource_id: str, scope_id: str):  # type: ignore[no-untyped-def]
        identity = served.identity
        return workspace_scope(identity.organization_id, identity.workspace_id)(
            resource_type, resource_id, scope_id
        )

    # The caches age on real time: tests move the domain clock freely.
    checker = RbacPermissionChecker(rbac_channel, SystemClock(), scope=scope)
    lookup = RbacLookup(rbac_channel, SystemClock(), scope)
    return MetadataDomain(
        settings=settings,
        engine=engine,
        store=MetadataStore(engine),
        clock=clock,
        workspace=served,
        checker=checker,
        lookup=lookup,
        ownership=Ownership(rbac_channel, served, checker, lookup),
        channels=[rbac_channel],
    )


def registrations(domain: MetadataDomain, hub: ChangeHub | None = None) -> list[Registration]:
    """Every servicer of the workspace server (other metadata modules add theirs here)."""
    return [
        Registration(
            "keel.metadata.v1.ProjectService",
            projects_pb2_grpc.add_ProjectServiceServicer_to_server,
            ProjectApi(domain),
        ),
        Registration(
            "keel.metadata.v1.StackService",
            stacks_pb2_grpc.add_StackServiceServicer_to_server,
            StackApi(domain),
        ),
        Registration(
            "keel.metadata.v1.CodeRepositoryService",
            code_repositories_pb2_grpc.add_CodeRepositoryServiceServicer_to_server,
            CodeRepositoryApi(domain),
        ),
        Registration(
            "keel.metadata.v1.PipelineService",
            pipelines_pb2_grpc.add_PipelineServiceServicer_to_server,
            PipelineServicer(domain),
        ),
        Registration(
            "keel.metadata.v1.RunService",
            runs_pb2_grpc.add_RunServiceServicer_to_server,
            RunServicer(domain, hub=hub),
        ),
        *artifact_model_registrations(domain),
    ]


@dataclass
class MetadataService:
    """A runnable workspace server: its domain, gRPC server and registration with the control plane."""

    domain: MetadataDomain
    server: KeelServer
    jwks: JwksCache
    registration: WorkspaceRegistration | None
    revocations: RevocationFeed | None = None
    credential: ServiceCredential | None = None
    # Wakes WatchRun / WatchRuns watchers (in-process, and LISTEN on PostgreSQL).
    hub: ChangeHub = field(default_factory=ChangeHub)
    housekeeping: PeriodicTask = field(init=False)
    run_sweeper: RunSweeper = field(init=False)

    def __post_init__(self) -> None:
        self.housekeeping = PeriodicTask(
            "metadata-housekeeping", self.forget_old_request_ids, HOUSEKEEPING_SECONDS
        )
        # Fails RUNNING steps whose heartbeats stopped (safe with several replicas).
        self.run_sweeper = RunSweeper(Runs(self.domain.store, self.domain.clock, notify=self.hub.notify))

    async def forget_old_request_ids(self) -> int:
        """Deletes remembered request ids and run changes past their retention (the housekeeping step)."""
        retention = timedelta(seconds=self.domain.settings.metadata_request_id_retention_seconds)
        async with self.domain.store.transaction() as tx:
            forgotten = await kit_idempotency.purge_older_than(
                tx.conn, idempotency, self.domain.clock.now() - retention
            )
        async with self.domain.store.transaction() as tx:
            await run_changes.purge_before(tx.conn, self.domain.clock.now() - run_changes.RETENTION)
        return forgotten

    @property
    def port(self) -> int:
        """The bound port (after start)."""
        return self.server.port

    @property
    def workspace(self) -> WorkspaceIdentity:
        """The organization and workspace served (after start)."""
        return self.domain.workspace.identity

    async def start(self) -> int:
        """Migrates, binds, establishes the workspace identity (or refuses to start); the bound port."""
        await migrate(self.domain.engine, self.domain.settings)
        await self.hub.start(self.domain.engine)
        if self.revocations is not None:
            await self.revocations.start()
        port = await self.server.start()
        try:
            if self.registration is not None:
                await self.registration.establish()
            elif not self.domain.workspace.known:
                raise IdentityError(
                    "no workspace credential (KEEL_WORKSPACE_CREDENTIAL_FILE): the server cannot know "
                    "which workspace it serves"
                )
        except BaseException:
            await self.stop()
            raise
        self.housekeeping.start()
        self.run_sweeper.start()
        logger.info("serving workspace %s", self.domain.workspace.workspace_id)
        return port

    async def stop(self) -> None:
        """Stops heartbeats and serving, closes channels and disposes of the engine."""
        if self.registration is not None:
            await self.registration.close()
        await self.housekeeping.stop()
        await self.run_sweeper.stop()
        await self.server.stop()
        await self.hub.stop()
        if self.revocations is not None:
            await self.revocations.stop()
        if self.credential is not None:
            await self.credential.close()
        for channel in self.domain.channels:
            await channel.close(None)
        await self.domain.engine.dispose()


def build_service(
    settings: MetadataSettings,
    *,
    clock: Clock | None = None,
    engine: AsyncEngine | None = None,
    jwks: JwksCache | None = None,
    identity: WorkspaceIdentity | None = None,
) -> MetadataService:
    """A complete workspace server, not yet started.

    `identity` presets the workspace served and skips registration (tests and
    embedded use); otherwise the credential file is required and read here, so
    a missing or unreadable file stops the process before anything starts.
    """
    clock = clock or SystemClock()
    engine = engine or create_engine_from_settings(settings, SERVICE_NAME)
    served = ServedWorkspace(identity)
    domain = build_domain(settings, engine, clock, served)
    authn_channel = connect(settings.authn_address)
    domain.channels.append(authn_channel)
    if jwks is None:
        jwks = JwksCache(jwks_from_authn(authn_channel))
    credential = ServiceCredential.from_settings(settings, SystemClock())
    revocations = feed_for_service(authn_channel, credential)
    verifier = TokenVerifier(
        jwks,
        issuer=settings.token_issuer,
        audience=settings.token_audience,
        principal_check=None if revocations is None else revocations.principal_check,
    )
    hub = ChangeHub()
    server = KeelServer(SERVICE_NAME, settings, registrations(domain, hub), verifier, domain.checker)
    registration: WorkspaceRegistration | None = None
    if identity is None:
        if settings.workspace_credential_file is None:
            raise IdentityError(
                "KEEL_WORKSPACE_CREDENTIAL_FILE is not set: a workspace server needs its credential"
            )
        registration = WorkspaceRegistration(
            read_credential_file(settings.workspace_credential_file),
            domain.store,
            lambda: connect(settings.orgs_address),
            clock,
            served,
            endpoint=lambda: settings.advertised_endpoint(server.port or None),
            server_version=settings.server_version(),
            retry_seconds=settings.metadata_register_retry_seconds,
        )
    return MetadataService(domain, server, jwks, registration, revocations, credential, hub)
