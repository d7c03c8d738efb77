"""Artifacts, artifact versions, step inputs/outputs, models, versions, links, metadata, tags, log pointers.

Revision ID: 0003_artifacts_models
Revises: 0002_pipelines_runs
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_artifacts_models"
down_revision = "0002_pipelines_runs"
branch_labels = None
depends_on = None


def _time(name: str) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False)


def _text(name: str, length: int) -> sa.Column[object]:
    return sa.Column(name, sa.String(length), nullable=False)


def _big(name: str) -> sa.Column[object]:
    return sa.Column(name, sa.BigInteger, nullable=False)


def _artifacts() -> None:
    op.create_table(
        "metadata_artifacts",
        sa.Column("id", sa.String(36), primary_key=True),
        _text("project_id", 36),
        _text("name", 100),
        _text("type", 100),
        _text("description", 1000),
        _big("latest_version_number"),
        _time("create_time"),
        _time("update_time"),
        sa.Column("version", sa.Integer, nullable=False),
        sa.UniqueConstraint("project_id", "name", name="uq_metadata_artifacts_project_name"),
    )
    op.create_index(
        "ix_metadata_artifacts_project_create", "metadata_artifacts", ["project_id", "create_time", "id"]
    )
    op.create_table(
        "metadata_artifact_versions",
        sa.Column("id", sa.String(36), primary_key=True),
        _text("project_id", 36),
        _text("artifact_id", 36),
        _big("number"),
        _text("uri", 2048),
        _text("type", 100),
        _text("materializer", 512),
        _text("content_hash", 256),
        _big("size_bytes"),
        _text("producer_step_run_id", 36),
        _text("producer_run_id", 36),
        _time("create_time"),
        sa.UniqueConstraint("artifact_id", "number", name="uq_metadata_artifact_versions_number"),
    )
    op.create_index(
        "ix_metadata_artifact_versions_project_artifact",
        "metadata_artifact_versions",
        ["project_id", "artifact_id", "number"],
    )
    op.create_index(
        "ix_metadata_artifact_versions_producer_run", "metadata_artifact_versions", ["producer_run_id"]
    )
    op.create_table(
        "metadata_step_artifacts",
        _text("project_id", 36),
        _text("step_run_id", 36),
        _text("direction", 8),
        _text("name", 100),
        _text("artifact_version_id", 36),
        _text("artifact_id", 36),
        _text("run_id", 36),
        _time("create_time"),
        sa.PrimaryKeyConstraint("step_run_id", "direction", "name", name="pk_metadata_step_artifacts"),
    )
    op.create_index(
        "ix_metadata_step_artifacts_version",
        "metadata_step_artifacts",
        ["artifact_version_id", "direction", "step_run_id"],
    )
    op.create_index("ix_metadata_step_artifacts_run", "metadata_step_artifacts", ["run_id", "direction"])


def _models() -> None:
    op.create_table(
        "metadata_models",
        sa.Column("id", sa.String(36), primary_key=True),
        _text("project_id", 36),
        _text("name", 100),
        _text("description", 1000),
        _big("latest_version_number"),
        _time("create_time"),
        _time("update_time"),
        sa.Column("version", sa.Integer, nullable=False),
        sa.UniqueConstraint("project_id", "name", name="uq_metadata_models_project_name"),
    )
    op.create_index(
        "ix_metadata_models_project_create", "metadata_models", ["project_id", "create_time", "id"]
    )
    op.create_table(
        "metadata_model_versions",
        sa.Column("id", sa.String(36), primary_key=True),
        _text("project_id", 36),
        _text("model_id", 36),
        _big("number"),
        _text("description", 1000),
        _text("stage", 16),
        _time("stage_time"),
        _time("create_time"),
        _time("update_time"),
        sa.Column("version", sa.Integer, nullable=False),
        sa.UniqueConstraint("model_id", "number", name="uq_metadata_model_versions_number"),
    )
    op.create_index(
        "ix_metadata_model_versions_project_model",
        "metadata_model_versions",
        ["project_id", "model_id", "number"],
    )
    # At most one PRODUCTION version per model.
    op.create_index(
        "uq_metadata_model_versions_production",
        "metadata_model_versions",
        ["model_id"],
        unique=True,
        postgresql_where=sa.text("stage = 'production'"),
        sqlite_where=sa.text("stage = 'production'"),
    )
    op.create_table(
        "metadata_model_version_links",
        sa.Column("id", sa.String(36), primary_key=True),
        _text("project_id", 36),
        _text("model_id", 36),
        _text("model_version_id", 36),
        _text("target_kind", 16),
        _text("target_id", 36),
        _text("name", 100),
        _time("create_time"),
        sa.UniqueConstraint(
            "model_version_id",
            "target_kind",
            "target_id",
            "name",
            name="uq_metadata_model_version_links_target",
        ),
    )
    op.create_index(
        "ix_metadata_model_version_links_version",
        "metadata_model_version_links",
        ["model_version_id", "create_time", "id"],
    )
    op.create_index("ix_metadata_model_version_links_model", "metadata_model_version_links", ["model_id"])


def _annotations() -> None:
    op.create_table(
        "metadata_entries",
        _text("project_id", 36),
        _text("target_kind", 32),
        _text("target_id", 36),
        _text("key", 256),
        _text("value_kind", 8),
        sa.Column("value", sa.JSON, nullable=False),
        _time("update_time"),
        sa.PrimaryKeyConstraint("target_kind", "target_id", "key", name="pk_metadata_entries"),
    )
    op.create_index(
        "ix_metadata_entries_project_key", "metadata_entries", ["project_id", "target_kind", "key"]
    )
    op.create_table(
        "metadata_tags",
        _text("project_id", 36),
        _text("target_kind", 32),
        _text("target_id", 36),
        _text("tag", 100),
        _time("create_time"),
        sa.PrimaryKeyConstraint("target_kind", "target_id", "tag", name="pk_metadata_tags"),
    )
    op.create_index(
        "ix_metadata_tags_project_tag", "metadata_tags", ["project_id", "target_kind", "tag", "target_id"]
    )
    op.create_table(
        "metadata_log_pointers",
        sa.Column("id", sa.String(36), primary_key=True),
        _text("project_id", 36),
        _text("target_kind", 32),
        _text("target_id", 36),
        _text("uri", 2048),
        _text("label", 100),
        _time("create_time"),
        sa.UniqueConstraint(
            "target_kind", "target_id", "label", "uri", name="uq_metadata_log_pointers_target"
        ),
    )
    op.create_index(
        "ix_metadata_log_pointers_target",
        "metadata_log_pointers",
        ["target_kind", "target_id", "create_time", "id"],
    )


def upgrade() -> None:
    """Creates the artifact, model and annotation tables with their indexes."""
    _artifacts()
    _models()
    _annotations()


def downgrade() -> None:
    """Drops them."""
    for table in (
        "metadata_log_pointers",
        "metadata_tags",
        "metadata_entries",
        "metadata_model_version_links",
        "metadata_model_versions",
        "metadata_models",
        "metadata_step_artifacts",
        "metadata_artifact_versions",
        "metadata_artifacts",
    ):
        op.drop_table(table)
