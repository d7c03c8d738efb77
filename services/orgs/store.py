"""Tables and queries of orgs' core (SQLAlchemy Core): organizations, members, invitations, teams.

`metadata` is the one MetaData of the orgs service: the workspace registry
(workspace_store.py) and the audit log define their tables on it too, and
their query functions take the `AsyncConnection` of `OrgsStore.transaction()`
so one transaction can span them. No gRPC, no clock, no policy here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    Index,
    Integer,
    MetaData,
    Select,
    String,
    Table,
    UniqueConstraint,
    and_,
    case,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.kit import audit as kit_audit
from services.kit import idempotency as kit_idempotency
from services.kit.db import UtcDateTime
from services.kit.filtering import FilterField, parse_filter
from services.kit.pagination import page_size, paginate, parse_order_by, query_fingerprint

metadata = MetaData()

organizations = Table(
    "orgs_organizations",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("display_name", String(100), nullable=False),
    Column("description", String(1000), nullable=False),
    # ACTIVE or DELETING.
    Column("state", String(16), nullable=False),
    Column("create_time", UtcDateTime, nullable=False),
    Column("update_time", UtcDateTime, nullable=False),
    Column("version", Integer, nullable=False),
)

# The membership itself; the role is also an RBAC binding at the organization (binding_id).
members = Table(
    "orgs_members",
    metadata,
    Column("organization_id", String(36), primary_key=True),
    Column("user_id", String(64), primary_key=True),
    Column("email", String(320), nullable=False),
    Column("role_id", String(64), nullable=False),
    # RBAC's id of the organization-level binding that carries role_id ('' until written).
    Column("binding_id", String(64), nullable=False),
    Column("create_time", UtcDateTime, nullable=False),
    Column("update_time", UtcDateTime, nullable=False),
    Column("version", Integer, nullable=False),
    # ListOrganizations joins on the caller's memberships.
    Index("ix_orgs_members_user_id", "user_id"),
)

invitations = Table(
    "orgs_invitations",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("organization_id", String(36), nullable=False),
    # Lower-cased: acceptance compares case-insensitively.
    Column("email", String(320), nullable=False),
    Column("role_id", String(64), nullable=False),
    # PENDING, ACCEPTED or REVOKED; EXPIRED is PENDING past expire_time (computed on read).
    Column("state", String(16), nullable=False),
    Column("inviter_id", String(64), nullable=False),
    # Hex SHA-256 of the token's secret part; the token itself is never stored.
    Column("secret_hash", String(64), nullable=False),
    Column("accepted_by", String(64), nullable=False),
    Column("create_time", UtcDateTime, nullable=False),
    Column("expire_time", UtcDateTime, nullable=False),
    Column("update_time", UtcDateTime, nullable=False),
    Index("ix_orgs_invitations_organization_id", "organization_id"),
)

teams = Table(
    "orgs_teams",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("organization_id", String(36), nullable=False),
    Column("display_name", String(100), nullable=False),
    Column("description", String(1000), nullable=False),
    Column("create_time", UtcDateTime, nullable=False),
    Column("update_time", UtcDateTime, nullable=False),
    Column("version", Integer, nullable=False),
    UniqueConstraint("organization_id", "display_name", name="uq_orgs_teams_org_name"),
)

team_members = Table(
    "orgs_team_members",
    metadata,
    Column("organization_id", String(36), nullable=False),
    Column("team_id", String(36), primary_key=True),
    Column("user_id", String(64), primary_key=True),
    Column("create_time", UtcDateTime, nullable=False),
    # Removing a member from the organization removes their team memberships.
    Index("ix_orgs_team_members_org_user", "organization_id", "user_id"),
)

idempotency = kit_idempotency.idempotency_table(metadata, "orgs_request_ids")

# The kit audit outbox: every orgs mutation records its event here in its own transaction.
OUTBOX = kit_audit.audit_outbox_table(metadata, "orgs_audit_outbox")


ACTIVE = "ACTIVE"
DELETING = "DELETING"
PENDING = "PENDING"
ACCEPTED = "ACCEPTED"
REVOKED = "REVOKED"
EXPIRED = "EXPIRED"
ORGANIZATION_ADMIN = "organization_admin"


@dataclasses.dataclass(frozen=True)
class OrganizationRecord:
    """A row of `orgs_organizations`."""

    id: str
    display_name: str
    description: str
    state: str
    create_time: datetime
    update_time: datetime
    version: int


@dataclasses.dataclass(frozen=True)
class MemberRecord:
    """A row of `orgs_members`."""

    organization_id: str
    user_id: str
    email: str
    role_id: str
    binding_id: str
    create_time: datetime
    update_time: datetime
    version: int


@dataclasses.dataclass(frozen=True)
class InvitationRecord:
    """A row of `orgs_invitations`; `state` is EXPIRED when read past expire_time while PENDING."""

    id: str
    organization_id: str
    email: str
    role_id: str
    state: str
    inviter_id: str
    secret_hash: str
    accepted_by: str
    create_time: datetime
    expire_time: datetime
    update_time: datetime


@dataclasses.dataclass(frozen=True)
class TeamRecord:
    """A row of `orgs_teams` with its member count."""

    id: str
    organization_id: str
    display_name: str
    description: str
    create_time: datetime
    update_time: datetime
    version: int
    member_count: int = 0


@dataclasses.dataclass(frozen=True)
class TeamMemberRecord:
    """A row of `orgs_team_members`."""

    organization_id: str
    team_id: str
    user_id: str
    create_time: datetime


@dataclasses.dataclass(frozen=True)
class ListQuery:
    """The paging, filtering and ordering parameters of a List request, as sent."""

    page_size: int = 0
    page_token: str = ""
    filter: str = ""
    order_by: str = ""


class Conflict(Exception):
    """A unique constraint refused a write."""


def _fields(row: Row[Any], cls: type[Any]) -> dict[str, Any]:
    mapping = row._mapping
    return {f.name: mapping[f.name] for f in dataclasses.fields(cls) if f.name in mapping}


def _organization(row: Row[Any]) -> OrganizationRecord:
    return OrganizationRecord(**_fields(row, OrganizationRecord))


def _member(row: Row[Any]) -> MemberRecord:
    return MemberRecord(**_fields(row, MemberRecord))


def _invitation(row: Row[Any]) -> InvitationRecord:
    return InvitationRecord(**_fields(row, InvitationRecord))


def _team(row: Row[Any]) -> TeamRecord:
    return TeamRecord(**_fields(row, TeamRecord))


def _team_member(row: Row[Any]) -> TeamMemberRecord:
    return TeamMemberRecord(**_fields(row, TeamMemberRecord))


def _row_values(record: Any) -> dict[str, Any]:
    return dataclasses.asdict(record)


def invitation_state(now: datetime) -> ColumnElement[str]:
    """The state as the API shows it: a PENDING invitation past its expire_time is EXPIRED."""
    return case(
        (and_(invitations.c.state == PENDING, invitations.c.expire_time <= now), EXPIRED),
        else_=invitations.c.state,
    ).label("state")


_MEMBER_COUNT = (
    select(func.count())
    .where(team_members.c.team_id == teams.c.id)
    .correlate(teams)
    .scalar_subquery()
    .label("member_count")
)


class OrgsTx:
    """The queries of orgs' core on one open transaction; `conn` is shared with the other orgs modules.

    Every read that serves a request names the organization, so a row of
    another organization is indistinguishable from a missing one.
    """

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    # organizations ------------------------------------------------------------------------------------

    async def insert_organization(self, record: OrganizationRecord) -> None:
        """Inserts a new organization."""
        await self.conn.execute(insert(organizations).values(**_row_values(record)))

    async def get_organization(self, organization_id: str) -> OrganizationRecord | None:
        """An organization, or None."""
        row = (
            await self.conn.execute(select(organizations).where(organizations.c.id == organization_id))
        ).first()
        return None if row is None else _organization(row)

    async def lock_organization(self, organization_id: str) -> OrganizationRecord | None:
        """The organization, write-locked until the transaction ends; None when missing.

        A no-op UPDATE rather than SELECT ... FOR UPDATE: it also takes SQLite's
        write lock at once (a read first would turn a concurrent writer into
        SQLITE_BUSY instead of a wait), so membership changes of one
        organization run one at a time on both backends and the last-admin
        count they read cannot go stale.
        """
        result = await self.conn.execute(
            update(organizations)
            .where(organizations.c.id == organization_id)
            .values(state=organizations.c.state)
        )
        if result.rowcount == 0:
            return None
        return await self.get_organization(organization_id)

    async def update_organization(
        self, organization_id: str, version: int, values: Mapping[str, Any], now: datetime
    ) -> bool:
        """Applies `values` if the row is still at `version` (bumping it); whether it was."""
        result = await self.conn.execute(
            update(organizations)
            .where(organizations.c.id == organization_id, organizations.c.version == version)
            .values(**values, update_time=now, version=version + 1)
        )
        return bool(result.rowcount)

    async def delete_organization(self, organization_id: str) -> None:
        """Deletes the organization row (its contents are deleted first)."""
        await self.conn.execute(delete(organizations).where(organizations.c.id == organization_id))

    async def list_organizations_of(
        self, user_id: str, query: ListQuery
    ) -> tuple[list[OrganizationRecord], str]:
        """One page of the organizations `user_id` is a member of (a join, never a filter in Python)."""
        fields = {
            "display_name": FilterField(organizations.c.display_name, "string"),
            "state": FilterField(organizations.c.state, "enum", {ACTIVE: ACTIVE, DELETING: DELETING}),
            "create_time": FilterField(organizations.c.create_time, "timestamp"),
        }
        stmt = select(organizations).join(
            members,
            and_(members.c.organization_id == organizations.c.id, members.c.user_id == user_id),
        )
        return await self._page(
            stmt,
            query,
            fields,
            {"create_time": organizations.c.create_time, "display_name": organizations.c.display_name},
            organizations.c.id,
            "ListOrganizations",
            user_id,
            _organization,
        )

    # members ------------------------------------------------------------------------------------------

    async def insert_member(self, record: MemberRecord) -> None:
        """Inserts a membership (Conflict when the user is already a member, at commit or here)."""
        await self.conn.execute(insert(members).values(**_row_values(record)))

    async def get_member(self, organization_id: str, user_id: str) -> MemberRecord | None:
        """A membership, or None."""
        row = (
            await self.conn.execute(
                select(members).where(
                    members.c.organization_id == organization_id, members.c.user_id == user_id
                )
            )
        ).first()
        return None if row is None else _member(row)

    async def member_with_email(self, organization_id: str, email: str) -> bool:
        """Whether a member of the organization has this (lower-cased) e-mail."""
        result = await self.conn.execute(
            select(members.c.user_id).where(
                members.c.organization_id == organization_id, func.lower(members.c.email) == email
            )
        )
        return result.first() is not None

    async def count_admins(self, organization_id: str) -> int:
        """How many members hold organization_admin."""
        result = await self.conn.execute(
            select(func.count())
            .select_from(members)
            .where(members.c.organization_id == organization_id, members.c.role_id == ORGANIZATION_ADMIN)
        )
        return int(result.scalar_one())

    async def update_member_role(
        self, member: MemberRecord, role_id: str, binding_id: str, now: datetime
    ) -> bool:
        """Changes the role if the row is still at the member's version; whether it was."""
        result = await self.conn.execute(
            update(members)
            .where(
                members.c.organization_id == member.organization_id,
                members.c.user_id == member.user_id,
                members.c.version == member.version,
            )
            .values(role_id=role_id, binding_id=binding_id, update_time=now, version=member.version + 1)
        )
        return bool(result.rowcount)

    async def delete_member(self, organization_id: str, user_id: str) -> list[str]:
        """Deletes a membership and the user's team memberships there; the ids of those teams."""
        team_ids = list(
            (
                await self.conn.execute(
                    delete(team_members)
                    .where(
                        team_members.c.organization_id == organization_id, team_members.c.user_id == user_id
                    )
                    .returning(team_members.c.team_id)
                )
            ).scalars()
        )
        await self.conn.execute(
            delete(members).where(members.c.organization_id == organization_id, members.c.user_id == user_id)
        )
        return team_ids

    async def list_members(self, organization_id: str, query: ListQuery) -> tuple[list[MemberRecord], str]:
        """One page of an organization's members."""
        fields = {
            "email": FilterField(members.c.email, "string"),
            "role_id": FilterField(members.c.role_id, "string"),
            "create_time": FilterField(members.c.create_time, "timestamp"),
        }
        return await self._page(
            select(members).where(members.c.organization_id == organization_id),
            query,
            fields,
            {"create_time": members.c.create_time, "email": members.c.email},
            members.c.user_id,
            "ListMembers",
            organization_id,
            _member,
            tie_breaker_name="user_id",
        )

    # invitations --------------------------------------------------------------------------------------

    async def insert_invitation(self, record: InvitationRecord) -> None:
        """Inserts a new invitation."""
        await self.conn.execute(insert(invitations).values(**_row_values(record)))

    def _invitations(self, now: datetime) -> Select[Any]:
        columns = [c for c in invitations.c if c.name != "state"]
        return select(*columns, invitation_state(now))

    async def get_invitation(
        self, invitation_id: str, now: datetime, organization_id: str | None = None
    ) -> InvitationRecord | None:
        """An invitation (of the organization, when given), with its state as of `now`."""
        stmt = self._invitations(now).where(invitations.c.id == invitation_id)
        if organization_id is not None:
            stmt = stmt.where(invitations.c.organization_id == organization_id)
        row = (await self.conn.execute(stmt)).first()
        return None if row is None else _invitation(row)

    async def close_invitation(self, invitation_id: str, state: str, accepted_by: str, now: datetime) -> bool:
        """PENDING (and unexpired) → `state`; False when it was not pending any more (single use)."""
        result = await self.conn.execute(
            update(invitations)
            .where(
                invitations.c.id == invitation_id,
                invitations.c.state == PENDING,
                invitations.c.expire_time > now,
            )
            .values(state=state, accepted_by=accepted_by, update_time=now)
        )
        return bool(result.rowcount)

    async def list_invitations(
        self, organization_id: str, query: ListQuery, now: datetime
    ) -> tuple[list[InvitationRecord], str]:
        """One page of an organization's invitations, states as of `now`."""
        state = case(
            (and_(invitations.c.state == PENDING, invitations.c.expire_time <= now), EXPIRED),
            else_=invitations.c.state,
        )
        states = {name: name for name in (PENDING, ACCEPTED, REVOKED, EXPIRED)}
        fields = {
            "email": FilterField(invitations.c.email, "string"),
            "state": FilterField(state, "enum", states),
            "create_time": FilterField(invitations.c.create_time, "timestamp"),
        }
        return await self._page(
            self._invitations(now).where(invitations.c.organization_id == organization_id),
            query,
            fields,
            {"create_time": invitations.c.create_time},
            invitations.c.id,
            "ListInvitations",
            organization_id,
            _invitation,
        )

    # teams --------------------------------------------------------------------------------------------

    async def insert_team(self, record: TeamRecord) -> None:
        """Inserts a new team (Conflict on a taken name, when the transaction ends)."""
        values = _row_values(record)
        del values["member_count"]
        await self.conn.execute(insert(teams).values(**values))

    async def get_team(self, organization_id: str, team_id: str) -> TeamRecord | None:
        """A team of the organization with its member count, or None."""
        row = (
            await self.conn.execute(
                select(teams, _MEMBER_COUNT).where(
                    teams.c.organization_id == organization_id, teams.c.id == team_id
                )
            )
        ).first()
        return None if row is None else _team(row)

    async def team_name_taken(self, organization_id: str, display_name: str, except_id: str = "") -> bool:
        """Whether another team of the organization has this name."""
        result = await self.conn.execute(
            select(teams.c.id).where(
                teams.c.organization_id == organization_id,
                teams.c.display_name == display_name,
                teams.c.id != except_id,
            )
        )
        return result.first() is not None

    async def update_team(
        self, organization_id: str, team_id: str, version: int, values: Mapping[str, Any], now: datetime
    ) -> bool:
        """Applies `values` if the team is still at `version` (bumping it); whether it was."""
        result = await self.conn.execute(
            update(teams)
            .where(
                teams.c.organization_id == organization_id, teams.c.id == team_id, teams.c.version == version
            )
            .values(**values, update_time=now, version=version + 1)
        )
        return bool(result.rowcount)

    async def delete_team(self, organization_id: str, team_id: str) -> None:
        """Deletes a team and its memberships."""
        await self.conn.execute(
            delete(team_members).where(
                team_members.c.organization_id == organization_id, team_members.c.team_id == team_id
            )
        )
        await self.conn.execute(
            delete(teams).where(teams.c.organization_id == organization_id, teams.c.id == team_id)
        )

    async def list_teams(self, organization_id: str, query: ListQuery) -> tuple[list[TeamRecord], str]:
        """One page of an organization's teams."""
        fields = {
            "display_name": FilterField(teams.c.display_name, "string"),
            "create_time": FilterField(teams.c.create_time, "timestamp"),
        }
        return await self._page(
            select(teams, _MEMBER_COUNT).where(teams.c.organization_id == organization_id),
            query,
            fields,
            {"create_time": teams.c.create_time, "display_name": teams.c.display_name},
            teams.c.id,
            "ListTeams",
            organization_id,
            _team,
        )

    async def insert_team_member(self, record: TeamMemberRecord) -> bool:
        """Adds a user to a team; False when already there."""
        if await self.get_team_member(record.organization_id, record.team_id, record.user_id) is not None:
            return False
        await self.conn.execute(insert(team_members).values(**_row_values(record)))
        return True

    async def get_team_member(
        self, organization_id: str, team_id: str, user_id: str
    ) -> TeamMemberRecord | None:
        """A team membership, or None."""
        row = (
            await self.conn.execute(
                select(team_members).where(
                    team_members.c.organization_id == organization_id,
                    team_members.c.team_id == team_id,
                    team_members.c.user_id == user_id,
                )
            )
        ).first()
        return None if row is None else _team_member(row)

    async def delete_team_member(self, organization_id: str, team_id: str, user_id: str) -> bool:
        """Removes a user from a team; whether they were in it."""
        result = await self.conn.execute(
            delete(team_members).where(
                team_members.c.organization_id == organization_id,
                team_members.c.team_id == team_id,
                team_members.c.user_id == user_id,
            )
        )
        return bool(result.rowcount)

    async def list_team_members(
        self, organization_id: str, team_id: str, query: ListQuery
    ) -> tuple[list[TeamMemberRecord], str]:
        """One page of a team's members, oldest first."""
        return await self._page(
            select(team_members).where(
                team_members.c.organization_id == organization_id, team_members.c.team_id == team_id
            ),
            query,
            {},
            {"create_time": team_members.c.create_time},
            team_members.c.user_id,
            "ListTeamMembers",
            f"{organization_id}/{team_id}",
            _team_member,
            tie_breaker_name="user_id",
            default_order="create_time",
        )

    # the whole organization ---------------------------------------------------------------------------

    async def delete_organization_contents(self, organization_id: str) -> dict[str, int]:
        """Deletes the members, invitations, teams and team memberships of an organization; counts."""
        counts: dict[str, int] = {}
        for name, table in (
            ("team_members", team_members),
            ("teams", teams),
            ("invitations", invitations),
            ("members", members),
        ):
            result = await self.conn.execute(delete(table).where(table.c.organization_id == organization_id))
            counts[name] = int(result.rowcount)
        return counts

    # idempotency and audit ----------------------------------------------------------------------------

    async def recall(self, method: str, principal: str, request_id: str) -> bytes | None:
        """The response remembered for a create's request_id, or None."""
        return await kit_idempotency.recall(
            self.conn, idempotency, method=method, principal=principal, request_id=request_id
        )

    async def remember(
        self, method: str, principal: str, request_id: str, response: bytes, now: datetime
    ) -> None:
        """Remembers a create's response in its transaction."""
        await kit_idempotency.remember(
            self.conn,
            idempotency,
            method=method,
            principal=principal,
            request_id=request_id,
            response=response,
            now=now,
        )

    async def purge_request_ids(self, older_than: datetime) -> int:
        """Forgets create responses remembered before `older_than` (housekeeping); how many."""
        return await kit_idempotency.purge_older_than(self.conn, idempotency, older_than)

    async def record(self, event: kit_audit.AuditEvent) -> None:
        """Records an audit event in this transaction."""
        await kit_audit.record(self.conn, OUTBOX, event)

    # ---------------------------------------------------------------------------------------------------

    async def _page(
        self,
        stmt: Select[Any],
        query: ListQuery,
        fields: Mapping[str, FilterField],
        sortable: Mapping[str, ColumnElement[Any]],
        tie_breaker: ColumnElement[Any],
        method: str,
        scope: str,
        convert: Any,
        *,
        tie_breaker_name: str = "id",
        default_order: str = "create_time",
    ) -> tuple[list[Any], str]:
        where = parse_filter(query.filter, fields)
        if where is not None:
            stmt = stmt.where(where)
        order = parse_order_by(
            query.order_by,
            sortable,
            tie_breaker=tie_breaker,
            tie_breaker_name=tie_breaker_name,
            default=default_order,
        )
        page = await paginate(
            self.conn,
            stmt,
            order=order,
            page_size=page_size(query.page_size),
            page_token=query.page_token,
            fingerprint=query_fingerprint(method, filter_text=query.filter, scope=scope),
        )
        return [convert(row) for row in page.rows], page.next_page_token


class OrgsStore:
    """Opens transactions on the orgs database."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[OrgsTx]:
        """One transaction: committed when the block ends, rolled back on an exception."""
        try:
            async with self.engine.begin() as conn:
                yield OrgsTx(conn)
        except IntegrityError:
            raise Conflict("unique constraint violated") from None
