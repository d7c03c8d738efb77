"""A partial index of open runs, for the sweeper's repair of runs behind their steps.

Revision ID: 0004_open_runs_index
Revises: 0003_artifacts_models
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_open_runs_index"
down_revision = "0003_artifacts_models"
branch_labels = None
depends_on = None

# Frozen here (a migration must not follow later code): the statuses a run can still leave.
_OPEN = ("initializing", "provisioning", "queued", "running", "stopping")


def upgrade() -> None:
    """Indexes the ids of runs in an open status."""
    where = sa.column("status").in_(_OPEN)
    op.create_index(
        "ix_metadata_runs_open", "metadata_runs", ["id"], postgresql_where=where, sqlite_where=where
    )


def downgrade() -> None:
    """Drops the index."""
    op.drop_index("ix_metadata_runs_open", table_name="metadata_runs")
