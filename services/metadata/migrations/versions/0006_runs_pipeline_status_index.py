"""Runs by (project, pipeline, status) newest first, in the list's exact order.

ListRuns orders `create_time desc` with the id tie-breaker ascending (the kit's
keyset order). An index on (..., create_time, id) cannot yield that mixed order,
so PostgreSQL read every matching run and sorted it (seen at 10,000 runs in
bench/list_runs.py). This index has the mixed direction, so the newest 50 of a
pipeline's runs in one status come straight off it.

Revision ID: 0006_runs_pipeline_status_index
Revises: 0005_run_changes
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_runs_pipeline_status_index"
down_revision = "0005_run_changes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Adds the index."""
    op.create_index(
        "ix_metadata_runs_project_pipeline_status_create",
        "metadata_runs",
        ["project_id", "pipeline_id", "status", sa.text("create_time DESC"), "id"],
    )


def downgrade() -> None:
    """Drops the index."""
    op.drop_index("ix_metadata_runs_project_pipeline_status_create", table_name="metadata_runs")
