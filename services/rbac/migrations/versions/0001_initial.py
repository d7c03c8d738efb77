"""Initial RBAC schema: revision counter, roles, role bindings, team memberships, request ids.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _time(name: str) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False)


def _id(name: str, length: int = 64) -> sa.Column[object]:
    return sa.Column(name, sa.String(length), nullable=False)


def upgrade() -> None:
    """Creates every RBAC table and the revision row."""
    counter = op.create_table(
        "rbac_revision",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("revision", sa.BigInteger, nullable=False),
    )
    op.bulk_insert(counter, [{"id": 1, "revision": 0}])
    op.create_table(
        "rbac_organization_revisions",
        sa.Column("organization_id", sa.String(64), primary_key=True),
        sa.Column("revision", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "rbac_roles",
        sa.Column("id", sa.String(36), primary_key=True),
        _id("organization_id"),
        _id("display_name", 200),
        _id("description", 1000),
        _id("level", 16),
        sa.Column("permissions", sa.Text, nullable=False),
        _time("create_time"),
        _time("update_time"),
        sa.Column("version", sa.Integer, nullable=False),
        sa.UniqueConstraint("organization_id", "display_name", name="uq_rbac_roles_org_name"),
    )
    op.create_table(
        "rbac_role_bindings",
        sa.Column("id", sa.String(36), primary_key=True),
        _id("organization_id"),
        _id("subject_kind", 16),
        _id("subject_id"),
        _id("role_id"),
        _id("workspace_id"),
        _id("project_id"),
        _id("resource_type"),
        _id("resource_id"),
        _id("level", 16),
        _time("create_time"),
        sa.Column("revision", sa.BigInteger, nullable=False),
        sa.UniqueConstraint(
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
    )
    op.create_index("ix_rbac_role_bindings_role", "rbac_role_bindings", ["organization_id", "role_id"])
    op.create_index(
        "ix_rbac_role_bindings_resource",
        "rbac_role_bindings",
        ["organization_id", "resource_type", "resource_id"],
    )
    op.create_table(
        "rbac_team_members",
        _id("organization_id"),
        sa.Column("team_id", sa.String(64), primary_key=True),
        sa.Column("member_kind", sa.String(16), primary_key=True),
        sa.Column("member_id", sa.String(64), primary_key=True),
        _time("create_time"),
    )
    op.create_index("ix_rbac_team_members_organization_id", "rbac_team_members", ["organization_id"])
    op.create_table(
        "rbac_request_ids",
        sa.Column("method", sa.String(200), nullable=False),
        sa.Column("principal", sa.String(255), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("response", sa.LargeBinary, nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("method", "principal", "request_id", name="pk_rbac_request_ids"),
    )
    op.create_index("ix_rbac_request_ids_create_time", "rbac_request_ids", ["create_time"])


def downgrade() -> None:
    """Drops every RBAC table."""
    for table in (
        "rbac_request_ids",
        "rbac_team_members",
        "rbac_role_bindings",
        "rbac_roles",
        "rbac_organization_revisions",
        "rbac_revision",
    ):
        op.drop_table(table)
