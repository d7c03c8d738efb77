"""The command line of RBAC: bootstrap-org-admin binds organization Admin once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from services.kit.db import create_engine
from services.rbac.__main__ import main
from services.rbac.evaluator import Ref
from services.rbac.server import build_domain
from services.rbac.settings import RbacSettings
from tests.clock import ManualClock


def test_bootstrap_org_admin_binds_admin_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KEEL_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("KEEL_LOG_LEVEL", "WARNING")

    assert main(["bootstrap-org-admin", "--organization-id", "org-1", "--user-id", "u-1"]) == 0
    first = capsys.readouterr().out
    assert main(["bootstrap-org-admin", "--organization-id", "org-1", "--user-id", "u-1"]) == 0
    second = capsys.readouterr().out

    assert first.startswith("organization admin binding: ")
    assert first == second

    async def admin_may_delete_the_organization() -> bool:
        engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'rbac.db'}")
        try:
            domain = build_domain(RbacSettings(), engine, ManualClock())
            allowed, _ = await domain.decisions.check(
                ("user", "u-1"), ("organization", "delete"), Ref("org-1")
            )
            return allowed
        finally:
            await engine.dispose()

    assert asyncio.run(admin_may_delete_the_organization())
