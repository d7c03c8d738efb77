"""Alembic environment of the sample migrations used by the kit's migration tests."""

from services.kit.migrations import run_env

run_env(None)
