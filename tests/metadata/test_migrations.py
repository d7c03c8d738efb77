"""The metadata service's Alembic chain builds exactly the tables its store modules define."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

# Every store module, so that each defines its tables on the shared MetaData.
from services.metadata import (  # noqa: F401
    annotation_store,
    artifact_store,
    model_store,
    pipeline_store,
    run_store,
)
from services.metadata.store import MetadataStore, metadata


def _differences(connection: Any) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return [d for d in compare_metadata(context, metadata) if "alembic_version" not in repr(d)]


async def test_the_migrations_match_every_store_table(metadata_store: MetadataStore) -> None:
    async with metadata_store.engine.connect() as conn:
        differences = await conn.run_sync(_differences)
    assert differences == []
