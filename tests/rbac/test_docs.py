"""docs/rbac.md carries the built-in roles table exactly as the declarative table in code renders it."""

from __future__ import annotations

from pathlib import Path

from services.rbac.catalog import markdown_table

DOC = Path(__file__).resolve().parents[2] / "docs" / "rbac.md"


def test_docs_role_table_matches_the_catalogue() -> None:
    assert markdown_table() in DOC.read_text(encoding="utf-8"), (
        "docs/rbac.md is out of date: paste `python -m services.rbac roles-table` into it"
    )
