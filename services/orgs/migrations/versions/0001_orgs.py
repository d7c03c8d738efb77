"""Orgs core schema: organizations, members, invitations, teams, team members, request ids, audit outbox.

Revision ID: 0001_orgs
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_orgs"
down_revision = None
branch_labels = None
depends_on = None


def _time(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _text(name: str, length: int = 64) -> sa.Column[object]:
    return sa.Column(name, sa.String(length), nullable=False)


def upgrade() -> None:
    """Creates the core orgs tables and the audit outbox."""
    op.create_table(
        "orgs_organizations",
        sa.Column("id", sa.String(36), primary_key=True),
        _text("display_name", 100),
        _text("description", 1000),
        _text("state", 16),
        _time("create_time"),
        _time("update_time"),
        sa.Column("version", sa.Integer, nullable=False),
    )
    op.create_table(
        "orgs_members",
        sa.Column("organization_id", sa.String(36), primary_key=True),
        sa.Column("user_id", sa.String(64), primary_key=True),
        _text("email", 320),
        _text("role_id"),
        _text("binding_id"),
        _time("create_time"),
        _time("update_time"),
        sa.Column("version", sa.Integer, nullable=False),
    )
    op.create_index("ix_orgs_members_user_id", "orgs_members", ["user_id"])
    op.create_table(
        "orgs_invitations",
        sa.Column("id", sa.String(36), primary_key=True),
        _text("organization_id", 36),
        _text("email", 320),
        _text("role_id"),
        _text("state", 16),
        _text("inviter_id"),
        _text("secret_hash"),
        _text("accepted_by"),
        _time("create_time"),
        _time("expire_time"),
        _time("update_time"),
    )
    op.create_index("ix_orgs_invitations_organization_id", "orgs_invitations", ["organization_id"])
    op.create_table(
        "orgs_teams",
        sa.Column("id", sa.String(36), primary_key=True),
        _text("organization_id", 36),
        _text("display_name", 100),
        _text("description", 1000),
        _time("create_time"),
        _time("update_time"),
        sa.Column("version", sa.Integer, nullable=False),
        sa.UniqueConstraint("organization_id", "display_name", name="uq_orgs_teams_org_name"),
    )
    op.create_table(
        "orgs_team_members",
        _text("organization_id", 36),
        sa.Column("team_id", sa.String(36), primary_key=True),
        sa.Column("user_id", sa.String(64), primary_key=True),
        _time("create_time"),
    )
    op.create_index("ix_orgs_team_members_org_user", "orgs_team_members", ["organization_id", "user_id"])
    op.create_table(
        "orgs_request_ids",
        sa.Column("method", sa.String(200), nullable=False),
        sa.Column("principal", sa.String(255), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("response", sa.LargeBinary, nullable=False),
        _time("create_time"),
        sa.PrimaryKeyConstraint("method", "principal", "request_id", name="pk_orgs_request_ids"),
    )
    op.create_index("ix_orgs_request_ids_create_time", "orgs_request_ids", ["create_time"])
    # Same shape as services.kit.audit.audit_outbox_table (frozen here, as migrations are).
    op.create_table(
        "orgs_audit_outbox",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer, "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("event_id", sa.String(36), nullable=False, unique=True),
        _text("organization_id"),
        sa.Column("payload", sa.Text, nullable=False),
        _time("occur_time"),
        _time("sent_time", nullable=True),
    )
    op.create_index(
        "ix_orgs_audit_outbox_unsent",
        "orgs_audit_outbox",
        ["seq"],
        postgresql_where=sa.text("sent_time IS NULL"),
        sqlite_where=sa.text("sent_time IS NULL"),
    )
    op.create_index("ix_orgs_audit_outbox_sent_time", "orgs_audit_outbox", ["sent_time"])


def downgrade() -> None:
    """Drops the core orgs tables and the audit outbox."""
    for table in (
        "orgs_audit_outbox",
        "orgs_request_ids",
        "orgs_team_members",
        "orgs_teams",
        "orgs_invitations",
        "orgs_members",
        "orgs_organizations",
    ):
        op.drop_table(table)
