"""Pipelines, snapshots, runs and step runs.

Revision ID: 0002_pipelines_runs
Revises: 0001_metadata
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_pipelines_runs"
down_revision = "0001_metadata"
branch_labels = None
depends_on = None


def _time(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _text(name: str, length: int) -> sa.Column[object]:
    return sa.Column(name, sa.String(length), nullable=False)


def upgrade() -> None:
    """Creates the pipeline and run tables with the indexes their lists use."""
    op.create_table(
        "metadata_pipelines",
        _text("id", 36),
        _text("project_id", 36),
        _text("name", 100),
        _text("description", 1000),
        _time("create_time"),
        _time("update_time"),
        sa.Column("version", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("project_id", "name", name="uq_metadata_pipelines_project_name"),
    )
    op.create_index(
        "ix_metadata_pipelines_project_create", "metadata_pipelines", ["project_id", "create_time", "id"]
    )
    op.create_table(
        "metadata_snapshots",
        _text("id", 36),
        _text("project_id", 36),
        _text("pipeline_id", 36),
        _text("description", 1000),
        _text("stack_id", 36),
        _text("code_repository_id", 36),
        _text("code_commit", 64),
        _text("code_subdirectory", 1024),
        sa.Column("steps", sa.JSON, nullable=False),
        sa.Column("step_count", sa.Integer, nullable=False),
        _time("create_time"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_metadata_snapshots_pipeline_create", "metadata_snapshots", ["pipeline_id", "create_time", "id"]
    )
    op.create_index("ix_metadata_snapshots_stack", "metadata_snapshots", ["stack_id"])
    op.create_index("ix_metadata_snapshots_code_repository", "metadata_snapshots", ["code_repository_id"])
    op.create_table(
        "metadata_runs",
        _text("id", 36),
        _text("project_id", 36),
        _text("pipeline_id", 36),
        _text("snapshot_id", 36),
        _text("status", 16),
        _text("status_reason", 1000),
        _text("orchestrator_run_id", 256),
        _text("trigger", 16),
        _text("trigger_principal_id", 255),
        sa.Column("step_count", sa.Integer, nullable=False),
        _time("create_time"),
        _time("update_time"),
        _time("start_time", nullable=True),
        _time("end_time", nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    for name, columns in (
        ("ix_metadata_runs_project_create", ["project_id", "create_time", "id"]),
        ("ix_metadata_runs_pipeline_create", ["pipeline_id", "create_time", "id"]),
        ("ix_metadata_runs_project_start", ["project_id", "start_time", "id"]),
        ("ix_metadata_runs_project_status_create", ["project_id", "status", "create_time", "id"]),
        ("ix_metadata_runs_snapshot", ["snapshot_id"]),
    ):
        op.create_index(name, "metadata_runs", columns)
    op.create_table(
        "metadata_step_runs",
        _text("id", 36),
        _text("run_id", 36),
        _text("project_id", 36),
        _text("name", 100),
        sa.Column("position", sa.Integer, nullable=False),
        _text("status", 16),
        _text("status_reason", 1000),
        sa.Column("attempt_count", sa.Integer, nullable=False),
        _text("cache_key", 256),
        sa.Column("parents", sa.JSON, nullable=False),
        _time("create_time"),
        _time("update_time"),
        _time("start_time", nullable=True),
        _time("end_time", nullable=True),
        _time("last_heartbeat_time", nullable=True),
        sa.Column("heartbeat_timeout_seconds", sa.Integer, nullable=False),
        _time("heartbeat_deadline", nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run_id", "name", name="uq_metadata_step_runs_run_name"),
        sa.UniqueConstraint("run_id", "position", name="uq_metadata_step_runs_run_position"),
    )
    op.create_index(
        "ix_metadata_step_runs_status_deadline", "metadata_step_runs", ["status", "heartbeat_deadline"]
    )


def downgrade() -> None:
    """Drops the pipeline and run tables."""
    for table in ("metadata_step_runs", "metadata_runs", "metadata_snapshots", "metadata_pipelines"):
        op.drop_table(table)
