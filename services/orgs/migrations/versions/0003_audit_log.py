"""The audit log: hash-chained events per organization and each chain's head.

Revision ID: 0003_audit_log
Revises: 0002_workspaces
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_audit_log"
down_revision = "0002_workspaces"
branch_labels = None
depends_on = None


def _text(name: str, length: int) -> sa.Column[object]:
    return sa.Column(name, sa.String(length), nullable=False)


def _time(name: str) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False)


def upgrade() -> None:
    """Creates orgs_audit_events and orgs_audit_heads."""
    op.create_table(
        "orgs_audit_events",
        sa.Column("organization_id", sa.String(64), nullable=False),
        sa.Column("sequence", sa.BigInteger, nullable=False, autoincrement=False),
        sa.Column("event_id", sa.String(36), nullable=False),
        sa.Column("record", sa.Text, nullable=False),
        _text("actor_kind", 32),
        _text("actor_id", 512),
        _text("action", 512),
        _text("resource_type", 512),
        _text("resource_id", 512),
        _text("outcome", 16),
        _text("request_id", 512),
        _time("occur_time"),
        _text("previous_hash", 64),
        _text("hash", 64),
        _time("ingest_time"),
        sa.PrimaryKeyConstraint("organization_id", "sequence", name="pk_orgs_audit_events"),
        sa.UniqueConstraint("event_id", name="uq_orgs_audit_events_event_id"),
    )
    op.create_index(
        "ix_orgs_audit_events_resource",
        "orgs_audit_events",
        ["organization_id", "resource_type", "resource_id"],
    )
    op.create_index("ix_orgs_audit_events_actor", "orgs_audit_events", ["organization_id", "actor_id"])
    op.create_index("ix_orgs_audit_events_occur_time", "orgs_audit_events", ["organization_id", "occur_time"])
    op.create_table(
        "orgs_audit_heads",
        sa.Column("organization_id", sa.String(64), primary_key=True),
        sa.Column("last_sequence", sa.BigInteger, nullable=False),
        _text("last_hash", 64),
    )


def downgrade() -> None:
    """Drops the audit log."""
    op.drop_table("orgs_audit_heads")
    op.drop_table("orgs_audit_events")
