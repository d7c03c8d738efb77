"""Tables and queries of RBAC (SQLAlchemy Core); no gRPC, no clock, no policy.

Every write of what the in-memory index holds (roles, bindings, memberships)
bumps one revision counter (a single row) in the same transaction and stamps
the organization's own revision, so readers can tell whether an organization
changed since they loaded it and callers can ask for answers at least as
fresh as a write they made. Ownerships are outside the index: read by primary
key when a check needs them, they move no revision.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    delete,
    func,
    insert,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.kit import audit as kit_audit
from services.kit import idempotency as kit_idempotency
from services.kit.db import UtcDateTime
from services.kit.filtering import FilterField, parse_filter
from services.kit.pagination import page_size, paginate, parse_order_by, query_fingerprint
from services.kit.prepared import Batch, Prepared
from services.rbac.evaluator import Binding, Membership, Ref, SubjectKey

metadata = MetaData()


# One row (id 1): the revision of the whole RBAC state.
revision = Table(
    "rbac_revision",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("revision", BigInteger, nullable=False),
)

# The global revision of the last write that touched each organization.
organization_revisions = Table(
    "rbac_organization_revisions",
    metadata,
    Column("organization_id", String(64), primary_key=True),
    Column("revision", BigInteger, nullable=False),
)

roles = Table(
    "rbac_roles",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("organization_id", String(64), nullable=False),
    Column("display_name", String(200), nullable=False),
    Column("description", String(1000), nullable=False),
    Column("level", String(16), nullable=False),
    # JSON list of "type.action", sorted.
    Column("permissions", Text, nullable=False),
    Column("create_time", UtcDateTime, nullable=False),
    Column("update_time", UtcDateTime, nullable=False),
    Column("version", Integer, nullable=False),
    UniqueConstraint("organization_id", "display_name", name="uq_rbac_roles_org_name"),
)

# Absent scope levels are '' (not NULL) so the unique constraint covers them.
role_bindings = Table(
    "rbac_role_bindings",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("organization_id", String(64), nullable=False),
    Column("subject_kind", String(16), nullable=False),
    Column("subject_id", String(64), nullable=False),
    Column("role_id", String(64), nullable=False),
    Column("workspace_id", String(64), nullable=False),
    Column("project_id", String(64), nullable=False),
    Column("resource_type", String(64), nullable=False),
    Column("resource_id", String(64), nullable=False),
    Column("level", String(16), nullable=False),
    Column("create_time", UtcDateTime, nullable=False),
    Column("revision", BigInteger, nullable=False),
    UniqueConstraint(
        "organization_id",
        "subject_kind",
        "subject_id",
        "role_id",
        "workspace_id",
        "project_id",
        "resource_type",
        "resource_id",
        name="uq_rbac_role_bindings_grant",
    ),
    Index("ix_rbac_role_bindings_role", "organization_id", "role_id"),
    Index("ix_rbac_role_bindings_resource", "organization_id", "resource_type", "resource_id"),
)

# Ownership ("creators own what they create") as a relation, not a role binding: one owner per
# resource, looked up by primary key on the check path, so writes never touch the cached index.
ownerships = Table(
    "rbac_ownerships",
    metadata,
    Column("organization_id", String(64), primary_key=True),
    Column("resource_type", String(64), primary_key=True),
    Column("resource_id", String(64), primary_key=True),
    # A stable id for the row (the RoleBinding-shaped answers' id; a migrated binding keeps its id).
    Column("id", String(36), nullable=False),
    Column("workspace_id", String(64), nullable=False),
    Column("project_id", String(64), nullable=False),
    Column("owner_kind", String(16), nullable=False),
    Column("owner_id", String(64), nullable=False),
    Column("create_time", UtcDateTime, nullable=False),
    # LookupResources: an owner's ids of one type, in scope order, so a bounded read stops early.
    Index(
        "ix_rbac_ownerships_owner",
        "organization_id",
        "owner_kind",
        "owner_id",
        "resource_type",
        "workspace_id",
        "project_id",
        "resource_id",
    ),
)

team_members = Table(
    "rbac_team_members",
    metadata,
    Column("organization_id", String(64), nullable=False, index=True),
    Column("team_id", String(64), primary_key=True),
    Column("member_kind", String(16), primary_key=True),
    Column("member_id", String(64), primary_key=True),
    Column("create_time", UtcDateTime, nullable=False),
)

idempotency = kit_idempotency.idempotency_table(metadata, "rbac_request_ids")

# Audit events, written in the transaction of the change they describe (kit transactional outbox).
audit_outbox = kit_audit.audit_outbox_table(metadata, "rbac_audit_outbox")

_SUBJECT_KINDS = {"USER": "user", "TEAM": "team", "SERVICE_ACCOUNT": "service_account"}
_LEVELS = {
    "ORGANIZATION": "organization",
    "WORKSPACE": "workspace",
    "PROJECT": "project",
    "RESOURCE": "resource",
}


@dataclasses.dataclass(frozen=True)
class RoleRecord:
    """A row of `rbac_roles` (permissions decoded)."""

    id: str
    organization_id: str
    display_name: str
    description: str
    level: str
    permissions: tuple[tuple[str, str], ...]
    create_time: datetime
    update_time: datetime
    version: int


@dataclasses.dataclass(frozen=True)
class BindingRecord:
    """A row of `rbac_role_bindings`."""

    id: str
    organization_id: str
    subject_kind: str
    subject_id: str
    role_id: str
    workspace_id: str
    project_id: str
    resource_type: str
    resource_id: str
    level: str
    create_time: datetime
    revision: int

    @property
    def scope(self) -> Ref:
        """The scope chain of the binding."""
        return Ref(
            self.organization_id, self.workspace_id, self.project_id, self.resource_type, self.resource_id
        )

    def as_binding(self) -> Binding:
        """The evaluator's view."""
        return Binding(self.subject_kind, self.subject_id, self.role_id, self.scope)


@dataclasses.dataclass(frozen=True)
class OwnershipRecord:
    """A row of `rbac_ownerships`: `subject_*` is the owner (a user or a service account)."""

    id: str
    organization_id: str
    resource_type: str
    resource_id: str
    workspace_id: str
    project_id: str
    subject_kind: str
    subject_id: str
    create_time: datetime

    @property
    def scope(self) -> Ref:
        """The owned resource with its scope chain."""
        return Ref(
            self.organization_id, self.workspace_id, self.project_id, self.resource_type, self.resource_id
        )


@dataclasses.dataclass(frozen=True)
class OwnedIds:
    """The ids of one type a subject owns in a scope, at most `limit` of them."""

    ids: list[str]
    truncated: bool


@dataclasses.dataclass(frozen=True)
class ListQuery:
    """The paging, filtering and ordering parameters of a List request, as sent."""

    page_size: int = 0
    page_token: str = ""
    filter: str = ""
    order_by: str = ""


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """Everything the evaluator needs of one organization, and the organization revision it reflects."""

    organization_revision: int
    bindings: list[Binding]
    memberships: list[Membership]
    custom_roles: dict[str, frozenset[tuple[str, str]]]


class Conflict(Exception):
    """A unique constraint refused a write."""


def encode_permissions(permissions: Iterable[tuple[str, str]]) -> str:
    """The stored JSON form of a permission set."""
    return json.dumps(sorted(f"{t}.{a}" for t, a in set(permissions)))


def decode_permissions(text: str) -> tuple[tuple[str, str], ...]:
    """The permission pairs of the stored JSON form."""
    pairs = []
    for item in json.loads(text):
        resource_type, _, action = str(item).partition(".")
        pairs.append((resource_type, action))
    return tuple(pairs)


def _role(row: Row[Any]) -> RoleRecord:
    values = row._asdict()
    values["permissions"] = decode_permissions(values["permissions"])
    return RoleRecord(**values)


def _binding(row: Row[Any]) -> BindingRecord:
    return BindingRecord(**row._asdict())


def _ownership(row: Row[Any]) -> OwnershipRecord:
    values = row._asdict()
    return OwnershipRecord(
        id=values["id"],
        organization_id=values["organization_id"],
        resource_type=values["resource_type"],
        resource_id=values["resource_id"],
        workspace_id=values["workspace_id"],
        project_id=values["project_id"],
        subject_kind=values["owner_kind"],
        subject_id=values["owner_id"],
        create_time=values["create_time"],
    )


def _ownership_row(record: OwnershipRecord) -> dict[str, Any]:
    return {
        "organization_id": record.organization_id,
        "resource_type": record.resource_type,
        "resource_id": record.resource_id,
        "id": record.id,
        "workspace_id": record.workspace_id,
        "project_id": record.project_id,
        "owner_kind": record.subject_kind,
        "owner_id": record.subject_id,
        "create_time": record.create_time,
    }


# Claims (every create in a workspace records one): one statement text for any batch on PostgreSQL.
_OWNERSHIP_ROWS = Batch(
    {
        "organization_id": "varchar",
        "resource_type": "varchar",
        "resource_id": "varchar",
        "id": "varchar",
        "workspace_id": "varchar",
        "project_id": "varchar",
        "owner_kind": "varchar",
        "owner_id": "varchar",
        "create_time": "timestamptz",
    }
)
_CLAIM_OWNERSHIPS = Prepared(
    text(
        f"INSERT INTO rbac_ownerships ({_OWNERSHIP_ROWS.names()})"  # noqa: S608 - fixed text, values bound
        f" SELECT {_OWNERSHIP_ROWS.names('claim')} FROM {_OWNERSHIP_ROWS.source('claim')}"
        " ON CONFLICT DO NOTHING RETURNING resource_id"
    ).columns(resource_id=String)
)


def _nothing() -> None:
    return None


class RbacStore:
    """Opens transactions on the RBAC database.

    `audit_recorded` is called after a transaction that recorded audit events
    has committed (the server wires it to the outbox shipper's notify()).
    """

    def __init__(self, engine: AsyncEngine, audit_recorded: Callable[[], None] = _nothing) -> None:
        self.engine = engine
        self.audit_recorded = audit_recorded

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[RbacTx]:
        """One transaction: committed when the block ends, rolled back on an exception."""
        try:
            async with self.engine.begin() as conn:
                tx = RbacTx(conn)
                yield tx
        except IntegrityError:
            raise Conflict("unique constraint violated") from None
        if tx.events_recorded:
            self.audit_recorded()

    async def revisions(self, organization_id: str) -> tuple[int, int]:
        """(global revision, the organization's revision) in one statement."""
        org = (
            select(organization_revisions.c.revision)
            .where(organization_revisions.c.organization_id == organization_id)
            .scalar_subquery()
        )
        statement = select(revision.c.revision, func.coalesce(org, 0)).where(revision.c.id == 1)
        async with self.engine.connect() as conn:
            row = (await conn.execute(statement)).one()
        return int(row[0]), int(row[1])

    async def owner(self, organization_id: str, resource_type: str, resource_id: str) -> SubjectKey | None:
        """The owner of one resource (a primary-key read on the check path), or None."""
        c = ownerships.c
        statement = select(c.owner_kind, c.owner_id).where(
            c.organization_id == organization_id,
            c.resource_type == resource_type,
            c.resource_id == resource_id,
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(statement)).first()
        return None if row is None else (str(row[0]), str(row[1]))

    async def owners(
        self, organization_id: str, resources: Iterable[tuple[str, str]]
    ) -> dict[tuple[str, str], SubjectKey]:
        """The owners of many (type, id) resources of one organization, in one query."""
        wanted = sorted(set(resources))
        if not wanted:
            return {}
        c = ownerships.c
        statement = select(c.resource_type, c.resource_id, c.owner_kind, c.owner_id).where(
            c.organization_id == organization_id, tuple_(c.resource_type, c.resource_id).in_(wanted)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(statement)).all()
        return {(str(t), str(i)): (str(kind), str(owner)) for t, i, kind, owner in rows}

    async def owned_ids(
        self,
        organization_id: str,
        owner: SubjectKey,
        resource_type: str,
        scope: Ref,
        *,
        limit: int,
        covered_workspaces: Iterable[str] = (),
        covered_projects: Iterable[str] = (),
    ) -> OwnedIds:
        """The ids of `resource_type` the owner owns inside `scope`, at most `limit`.

        Rows inside the covered workspaces / projects are left out (the caller's
        answer already grants them). Ordered as the owner index is, so the read
        stops after limit + 1 rows whatever the owner holds in total.
        """
        c = ownerships.c
        statement = select(c.resource_id).where(
            c.organization_id == organization_id,
            c.owner_kind == owner[0],
            c.owner_id == owner[1],
            c.resource_type == resource_type,
        )
        if scope.workspace_id:
            statement = statement.where(c.workspace_id == scope.workspace_id)
        if scope.project_id:
            statement = statement.where(c.project_id == scope.project_id)
        workspaces, projects = sorted(set(covered_workspaces)), sorted(set(covered_projects))
        if workspaces:
            statement = statement.where(c.workspace_id.not_in(workspaces))
        if projects:
            statement = statement.where(c.project_id.not_in(projects))
        statement = statement.order_by(c.workspace_id, c.project_id, c.resource_id).limit(limit + 1)
        async with self.engine.connect() as conn:
            ids = [str(value) for value in (await conn.execute(statement)).scalars()]
        return OwnedIds(ids[:limit], len(ids) > limit)

    async def snapshot(self, organization_id: str) -> Snapshot:
        """The organization's bindings, memberships and custom roles.

        Its revision is read first: rows written after it make the snapshot
        newer than it claims, never older, and the next poll reloads.
        """
        async with self.engine.connect() as conn:
            org_revision = (
                await conn.execute(
                    select(organization_revisions.c.revision).where(
                        organization_revisions.c.organization_id == organization_id
                    )
                )
            ).scalar_one_or_none() or 0
            binding_rows = await conn.execute(
                select(
                    role_bindings.c.subject_kind,
                    role_bindings.c.subject_id,
                    role_bindings.c.role_id,
                    role_bindings.c.workspace_id,
                    role_bindings.c.project_id,
                    role_bindings.c.resource_type,
                    role_bindings.c.resource_id,
                ).where(role_bindings.c.organization_id == organization_id)
            )
            bindings = [
                Binding(kind, subject, role_id, Ref(organization_id, ws, project, rtype, rid))
                for kind, subject, role_id, ws, project, rtype, rid in binding_rows
            ]
            member_rows = await conn.execute(
                select(team_members.c.team_id, team_members.c.member_kind, team_members.c.member_id).where(
                    team_members.c.organization_id == organization_id
                )
            )
            memberships = [Membership(team, kind, member) for team, kind, member in member_rows]
            role_rows = await conn.execute(
                select(roles.c.id, roles.c.permissions).where(roles.c.organization_id == organization_id)
            )
            custom = {role_id: frozenset(decode_permissions(text)) for role_id, text in role_rows}
        return Snapshot(int(org_revision), bindings, memberships, custom)


class RbacTx:
    """The queries of RBAC on one open transaction."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn
        self.events_recorded = 0

    async def record_event(self, event: kit_audit.AuditEvent) -> None:
        """Adds an audit event to the outbox; it exists iff this transaction commits."""
        await kit_audit.record(self.conn, audit_outbox, event)
        self.events_recorded += 1

    # revision -----------------------------------------------------------------------------------------

    async def bump_revision(self, organization_id: str) -> int:
        """Takes the next global revision and stamps it on the organization; the new revision.

        The UPDATE of the single counter row serializes RBAC writers, which
        also makes the organization row's insert-or-update race-free.
        """
        await self.conn.execute(
            update(revision).where(revision.c.id == 1).values(revision=revision.c.revision + 1)
        )
        current = int(
            (await self.conn.execute(select(revision.c.revision).where(revision.c.id == 1))).scalar_one()
        )
        changed = await self.conn.execute(
            update(organization_revisions)
            .where(organization_revisions.c.organization_id == organization_id)
            .values(revision=current)
        )
        if changed.rowcount == 0:
            await self.conn.execute(
                insert(organization_revisions).values(organization_id=organization_id, revision=current)
            )
        return current

    async def current_revision(self) -> int:
        """The global revision."""
        return int(
            (await self.conn.execute(select(revision.c.revision).where(revision.c.id == 1))).scalar_one()
        )

    # roles --------------------------------------------------------------------------------------------

    async def insert_role(self, record: RoleRecord) -> None:
        """Stores a new custom role."""
        values = dataclasses.asdict(record)
        values["permissions"] = encode_permissions(record.permissions)
        await self.conn.execute(insert(roles).values(**values))

    async def get_role(self, organization_id: str, role_id: str) -> RoleRecord | None:
        """A custom role of the organization, or None."""
        row = (
            await self.conn.execute(
                select(roles).where(roles.c.id == role_id, roles.c.organization_id == organization_id)
            )
        ).first()
        return None if row is None else _role(row)

    async def update_role(
        self, role_id: str, version: int, changes: Mapping[str, Any], now: datetime
    ) -> bool:
        """Applies changes when the row is still at `version`; whether it was."""
        values = dict(changes)
        if "permissions" in values:
            values["permissions"] = encode_permissions(values["permissions"])
        result = await self.conn.execute(
            update(roles)
            .where(roles.c.id == role_id, roles.c.version == version)
            .values(**values, update_time=now, version=version + 1)
        )
        return bool(result.rowcount)

    async def delete_role(self, role_id: str) -> None:
        """Deletes a custom role."""
        await self.conn.execute(delete(roles).where(roles.c.id == role_id))

    async def role_in_use(self, organization_id: str, role_id: str) -> bool:
        """Whether any binding uses the role."""
        statement = (
            select(role_bindings.c.id)
            .where(role_bindings.c.organization_id == organization_id, role_bindings.c.role_id == role_id)
            .limit(1)
        )
        return (await self.conn.execute(statement)).first() is not None

    async def list_roles(self, organization_id: str, query: ListQuery) -> tuple[list[RoleRecord], str]:
        """One page of the organization's custom roles."""
        order = parse_order_by(
            query.order_by,
            {"create_time": roles.c.create_time, "display_name": roles.c.display_name},
            tie_breaker=roles.c.id,
            default="create_time",
        )
        statement = select(roles).where(roles.c.organization_id == organization_id)
        condition = parse_filter(
            query.filter,
            {
                "display_name": FilterField(roles.c.display_name, "string"),
                "level": FilterField(roles.c.level, "enum", _LEVELS),
                "create_time": FilterField(roles.c.create_time, "timestamp"),
            },
        )
        if condition is not None:
            statement = statement.where(condition)
        rows, token = await paginate(
            self.conn,
            statement,
            order=order,
            page_size=page_size(query.page_size),
            page_token=query.page_token,
            fingerprint=query_fingerprint(
                "keel.rbac.v1.ListRoles", filter_text=query.filter, scope=organization_id
            ),
        )
        return [_role(row) for row in rows], token

    # bindings -----------------------------------------------------------------------------------------

    async def insert_binding(self, record: BindingRecord) -> None:
        """Stores a new binding (Conflict when the same grant exists)."""
        await self.conn.execute(insert(role_bindings).values(**dataclasses.asdict(record)))

    async def get_binding(self, organization_id: str, binding_id: str) -> BindingRecord | None:
        """A binding of the organization, or None."""
        row = (
            await self.conn.execute(
                select(role_bindings).where(
                    role_bindings.c.id == binding_id, role_bindings.c.organization_id == organization_id
                )
            )
        ).first()
        return None if row is None else _binding(row)

    async def find_binding(self, record: BindingRecord) -> BindingRecord | None:
        """The existing binding with the same grant as `record`, or None."""
        c = role_bindings.c
        row = (
            await self.conn.execute(
                select(role_bindings).where(
                    c.organization_id == record.organization_id,
                    c.subject_kind == record.subject_kind,
                    c.subject_id == record.subject_id,
                    c.role_id == record.role_id,
                    c.workspace_id == record.workspace_id,
                    c.project_id == record.project_id,
                    c.resource_type == record.resource_type,
                    c.resource_id == record.resource_id,
                )
            )
        ).first()
        return None if row is None else _binding(row)

    async def delete_binding(self, binding_id: str) -> None:
        """Deletes a binding."""
        await self.conn.execute(delete(role_bindings).where(role_bindings.c.id == binding_id))

    async def count_user_bindings(self, organization_id: str, role_id: str, level: str) -> int:
        """How many users hold the role at the level (for last-admin protection)."""
        c = role_bindings.c
        statement = select(func.count()).where(
            c.organization_id == organization_id,
            c.role_id == role_id,
            c.level == level,
            c.subject_kind == "user",
        )
        return int((await self.conn.execute(statement)).scalar_one())

    async def list_bindings(self, organization_id: str, query: ListQuery) -> tuple[list[BindingRecord], str]:
        """One page of the organization's bindings."""
        c = role_bindings.c
        order = parse_order_by(
            query.order_by, {"create_time": c.create_time}, tie_breaker=c.id, default="create_time"
        )
        statement = select(role_bindings).where(c.organization_id == organization_id)
        condition = parse_filter(
            query.filter,
            {
                "subject_kind": FilterField(c.subject_kind, "enum", _SUBJECT_KINDS),
                "subject_id": FilterField(c.subject_id, "string"),
                "role_id": FilterField(c.role_id, "string"),
                "workspace_id": FilterField(c.workspace_id, "string"),
                "project_id": FilterField(c.project_id, "string"),
                "resource_type": FilterField(c.resource_type, "string"),
                "resource_id": FilterField(c.resource_id, "string"),
                "level": FilterField(c.level, "enum", _LEVELS),
                "create_time": FilterField(c.create_time, "timestamp"),
            },
        )
        if condition is not None:
            statement = statement.where(condition)
        rows, token = await paginate(
            self.conn,
            statement,
            order=order,
            page_size=page_size(query.page_size),
            page_token=query.page_token,
            fingerprint=query_fingerprint(
                "keel.rbac.v1.ListRoleBindings", filter_text=query.filter, scope=organization_id
            ),
        )
        return [_binding(row) for row in rows], token

    async def subject_bindings(self, organization_id: str, kind: str, subject_id: str) -> list[BindingRecord]:
        """Every binding of a subject in the organization."""
        c = role_bindings.c
        rows = await self.conn.execute(
            select(role_bindings).where(
                c.organization_id == organization_id, c.subject_kind == kind, c.subject_id == subject_id
            )
        )
        return [_binding(row) for row in rows]

    async def delete_subject_bindings(self, organization_id: str, kind: str, subject_id: str) -> int:
        """Deletes every binding of a subject in the organization; how many."""
        c = role_bindings.c
        result = await self.conn.execute(
            delete(role_bindings).where(
                c.organization_id == organization_id, c.subject_kind == kind, c.subject_id == subject_id
            )
        )
        return int(result.rowcount)

    async def holds_binding(self, organization_id: str, kind: str, subject_id: str, role_id: str) -> bool:
        """Whether the subject holds the role anywhere in the organization."""
        c = role_bindings.c
        statement = (
            select(c.id)
            .where(
                c.organization_id == organization_id,
                c.subject_kind == kind,
                c.subject_id == subject_id,
                c.role_id == role_id,
            )
            .limit(1)
        )
        return (await self.conn.execute(statement)).first() is not None

    async def delete_resource_bindings(
        self, organization_id: str, resource_type: str, resource_id: str
    ) -> int:
        """Deletes every binding on one resource, and inside it when it is a scope; how many.

        A deleted workspace or project takes the bindings scoped to it (and to what it
        contained) along: they could never apply again.
        """
        c = role_bindings.c
        on_resource = (c.resource_type == resource_type) & (c.resource_id == resource_id)
        inside = {"workspace": c.workspace_id, "project": c.project_id}.get(resource_type)
        condition = on_resource if inside is None else on_resource | (inside == resource_id)
        result = await self.conn.execute(
            delete(role_bindings).where(c.organization_id == organization_id, condition)
        )
        return int(result.rowcount)

    # ownerships ---------------------------------------------------------------------------------------

    async def owner_of(
        self, organization_id: str, resource_type: str, resource_id: str
    ) -> OwnershipRecord | None:
        """The ownership of a resource, or None."""
        c = ownerships.c
        row = (
            await self.conn.execute(
                select(ownerships).where(
                    c.organization_id == organization_id,
                    c.resource_type == resource_type,
                    c.resource_id == resource_id,
                )
            )
        ).first()
        return None if row is None else _ownership(row)

    async def ownerships_of(
        self, organization_id: str, resources: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], OwnershipRecord]:
        """The ownerships of many (type, id) resources of one organization, by (type, id)."""
        if not resources:
            return {}
        c = ownerships.c
        rows = await self.conn.execute(
            select(ownerships).where(
                c.organization_id == organization_id,
                tuple_(c.resource_type, c.resource_id).in_(sorted(set(resources))),
            )
        )
        found = [_ownership(row) for row in rows]
        return {(record.resource_type, record.resource_id): record for record in found}

    async def insert_ownerships(self, records: Sequence[OwnershipRecord]) -> None:
        """Stores new ownerships with one executemany (Conflict when a resource already has an owner)."""
        if records:
            await self.conn.execute(insert(ownerships), [_ownership_row(r) for r in records])

    async def claim_ownerships(self, records: Sequence[OwnershipRecord]) -> int:
        """Inserts the ownerships of resources that have none (one statement); how many were inserted.

        A resource that already has an owner keeps it (ON CONFLICT DO NOTHING), so a
        concurrent claim never fails the transaction; the caller reads what it did
        not insert. Being the first statement, on SQLite it makes the transaction the
        writer before anything is read.
        """
        if not records:
            return 0
        rows = [_ownership_row(r) for r in records]
        if self.conn.dialect.name == "postgresql":
            return len(await _CLAIM_OWNERSHIPS.rows(self.conn, _OWNERSHIP_ROWS.params(rows)))
        statement = sqlite.insert(ownerships).values(rows).on_conflict_do_nothing()
        return int((await self.conn.execute(statement)).rowcount)

    async def delete_resource_ownerships(
        self, organization_id: str, resource_type: str, resource_id: str
    ) -> int:
        """Deletes the ownership of one resource, and those inside it when it is a scope; how many."""
        c = ownerships.c
        on_resource = (c.resource_type == resource_type) & (c.resource_id == resource_id)
        inside = {"workspace": c.workspace_id, "project": c.project_id}.get(resource_type)
        condition = on_resource if inside is None else on_resource | (inside == resource_id)
        result = await self.conn.execute(
            delete(ownerships).where(c.organization_id == organization_id, condition)
        )
        return int(result.rowcount)

    async def delete_subject_ownerships(self, organization_id: str, kind: str, subject_id: str) -> int:
        """Deletes every ownership of a subject in the organization; how many."""
        c = ownerships.c
        result = await self.conn.execute(
            delete(ownerships).where(
                c.organization_id == organization_id, c.owner_kind == kind, c.owner_id == subject_id
            )
        )
        return int(result.rowcount)

    # team memberships ---------------------------------------------------------------------------------

    async def add_member(
        self, organization_id: str, team_id: str, kind: str, member_id: str, now: datetime
    ) -> bool:
        """Records a membership; False when it already existed."""
        c = team_members.c
        exists = (
            await self.conn.execute(
                select(c.team_id).where(c.team_id == team_id, c.member_kind == kind, c.member_id == member_id)
            )
        ).first()
        if exists is not None:
            return False
        await self.conn.execute(
            insert(team_members).values(
                organization_id=organization_id,
                team_id=team_id,
                member_kind=kind,
                member_id=member_id,
                create_time=now,
            )
        )
        return True

    async def remove_member(self, organization_id: str, team_id: str, kind: str, member_id: str) -> bool:
        """Removes a membership; whether one was there."""
        c = team_members.c
        result = await self.conn.execute(
            delete(team_members).where(
                c.organization_id == organization_id,
                c.team_id == team_id,
                c.member_kind == kind,
                c.member_id == member_id,
            )
        )
        return bool(result.rowcount)

    async def delete_memberships_of(self, organization_id: str, kind: str, subject_id: str) -> int:
        """Deletes the subject's memberships (as a member; for a team, every membership of the team)."""
        c = team_members.c
        condition = (
            c.team_id == subject_id
            if kind == "team"
            else (c.member_kind == kind) & (c.member_id == subject_id)
        )
        result = await self.conn.execute(
            delete(team_members).where(c.organization_id == organization_id, condition)
        )
        return int(result.rowcount)

    # organizations ------------------------------------------------------------------------------------

    async def purge_organization(self, organization_id: str) -> tuple[int, int, int, int]:
        """Deletes every binding, custom role, team membership and ownership of the organization.

        Returns (bindings, roles, memberships, ownerships) deleted. Bindings go first: none may
        outlive its role.
        """
        bindings = await self.conn.execute(
            delete(role_bindings).where(role_bindings.c.organization_id == organization_id)
        )
        custom_roles = await self.conn.execute(
            delete(roles).where(roles.c.organization_id == organization_id)
        )
        memberships = await self.conn.execute(
            delete(team_members).where(team_members.c.organization_id == organization_id)
        )
        owned = await self.conn.execute(
            delete(ownerships).where(ownerships.c.organization_id == organization_id)
        )
        return (
            int(bindings.rowcount),
            int(custom_roles.rowcount),
            int(memberships.rowcount),
            int(owned.rowcount),
        )

    # idempotency --------------------------------------------------------------------------------------

    async def recall(self, method: str, principal: str, request_id: str) -> str | None:
        """The resource id a create with this key produced, or None."""
        payload = await kit_idempotency.recall(
            self.conn, idempotency, method=method, principal=principal, request_id=request_id
        )
        return None if payload is None else payload.decode()

    async def purge_request_ids(self, older_than: datetime) -> int:
        """Forgets request ids remembered before `older_than`; how many."""
        return await kit_idempotency.purge_older_than(self.conn, idempotency, older_than)

    async def remember(
        self, method: str, principal: str, request_id: str, resource_id: str, now: datetime
    ) -> None:
        """Records the id a create produced, in the create's transaction."""
        await kit_idempotency.remember(
            self.conn,
            idempotency,
            method=method,
            principal=principal,
            request_id=request_id,
            response=resource_id.encode(),
            now=now,
        )

    # bulk ---------------------------------------------------------------------------------------------

    async def bulk_load(
        self,
        organization_id: str,
        role_records: Sequence[RoleRecord],
        binding_records: Sequence[BindingRecord],
        memberships: Sequence[Membership],
        now: datetime,
        ownership_records: Sequence[OwnershipRecord] = (),
    ) -> int:
        """Inserts many rows with executemany (seeding, imports, the bench); one revision bump."""
        await self.insert_ownerships(ownership_records)
        if role_records:
            await self.conn.execute(
                insert(roles),
                [
                    {**dataclasses.asdict(r), "permissions": encode_permissions(r.permissions)}
                    for r in role_records
                ],
            )
        if binding_records:
            await self.conn.execute(insert(role_bindings), [dataclasses.asdict(b) for b in binding_records])
        if memberships:
            await self.conn.execute(
                insert(team_members),
                [
                    {
                        "organization_id": organization_id,
                        "team_id": m.team_id,
                        "member_kind": m.member_kind,
                        "member_id": m.member_id,
                        "create_time": now,
                    }
                    for m in memberships
                ],
            )
        return await self.bump_revision(organization_id)
