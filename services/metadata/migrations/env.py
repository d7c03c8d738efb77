"""Alembic environment of metadata: everything is in the kit."""

from services.kit.migrations import run_env
from services.metadata.store import metadata

run_env(metadata)
