"""Workspaces and their registry: endpoint, server version, health, hashed server credential.

Revision ID: 0002_workspaces
Revises: 0001_orgs
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_workspaces"
down_revision = "0001_orgs"
branch_labels = None
depends_on = None


def _time(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _text(name: str, length: int) -> sa.Column[object]:
    return sa.Column(name, sa.String(length), nullable=False)


def upgrade() -> None:
    """Creates orgs_workspaces and its indexes."""
    op.create_table(
        "orgs_workspaces",
        sa.Column("id", sa.String(36), primary_key=True),
        _text("organization_id", 64),
        _text("display_name", 100),
        _text("description", 1000),
        _text("endpoint", 512),
        _text("state", 16),
        _text("server_version", 128),
        _time("register_time", nullable=True),
        _time("last_heartbeat_time", nullable=True),
        sa.Column("credential_hash", sa.String(64), nullable=True),
        _time("create_time"),
        _time("update_time"),
        _time("delete_time", nullable=True),
        sa.Column("version", sa.Integer, nullable=False),
    )
    # Names are unique among live workspaces only: a DELETING one frees its name.
    op.create_index(
        "uq_orgs_workspaces_live_name",
        "orgs_workspaces",
        ["organization_id", "display_name"],
        unique=True,
        postgresql_where=sa.text("state <> 'deleting'"),
        sqlite_where=sa.text("state <> 'deleting'"),
    )
    op.create_index("ix_orgs_workspaces_org_create", "orgs_workspaces", ["organization_id", "create_time"])
    op.create_index("ix_orgs_workspaces_state_heartbeat", "orgs_workspaces", ["state", "last_heartbeat_time"])
    op.create_index("ix_orgs_workspaces_state_delete", "orgs_workspaces", ["state", "delete_time"])


def downgrade() -> None:
    """Drops orgs_workspaces."""
    op.drop_table("orgs_workspaces")
