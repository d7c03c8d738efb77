"""`python -m services.authn` commands as real processes: bootstrap-admin, migrate, bad configuration."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.authn.conftest import new_master_key


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.authn", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )


def test_bootstrap_admin_prints_password_once(tmp_path: Path) -> None:
    env = {
        "KEEL_DATA_DIR": str(tmp_path),
        "KEEL_AUTHN_MASTER_KEY": new_master_key(),
        "KEEL_AUTHN_PASSWORD_MEMORY_KIB": "8",
        "KEEL_AUTHN_PASSWORD_PARALLELISM": "1",
        "KEEL_AUTHN_PASSWORD_TIME_COST": "1",
    }
    first = run(["bootstrap-admin", "--email", "root@example.test"], env)
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("admin password: ")
    password = lines[0].removeprefix("admin password: ")
    assert len(password) >= 20
    assert password not in first.stderr
    second = run(["bootstrap-admin", "--email", "other@example.test"], env)
    assert second.returncode == 0, second.stderr
    assert second.stdout == "admin already exists: root@example.test\n"


def test_bad_master_key_is_a_clear_configuration_error(tmp_path: Path) -> None:
    result = run(["migrate"], {"KEEL_DATA_DIR": str(tmp_path), "KEEL_AUTHN_MASTER_KEY": "too-short"})
    assert result.returncode != 0
    assert "KEEL_AUTHN_MASTER_KEY" in result.stderr
    assert "32" in result.stderr
    assert "too-short" not in result.stderr
    assert "Traceback" not in result.stderr


def test_unsupported_signing_algorithm_is_a_clear_configuration_error(tmp_path: Path) -> None:
    env = {
        "KEEL_DATA_DIR": str(tmp_path),
        "KEEL_AUTHN_MASTER_KEY": new_master_key(),
        "KEEL_AUTHN_SIGNING_ALGORITHM": "HS256",
    }
    result = run(["migrate"], env)
    assert result.returncode != 0
    assert "KEEL_AUTHN_SIGNING_ALGORITHM" in result.stderr
    assert "Traceback" not in result.stderr


def test_bootstrap_service_account_writes_a_private_key_once(tmp_path: Path) -> None:
    env = {"KEEL_DATA_DIR": str(tmp_path), "KEEL_AUTHN_MASTER_KEY": new_master_key()}
    key_file = tmp_path / "keys" / "orgs.key"
    first = run(["bootstrap-service-account", "--name", "keel-orgs", "--key-file", str(key_file)], env)
    assert first.returncode == 0, first.stderr
    key = key_file.read_text().strip()
    second = run(["bootstrap-service-account", "--name", "keel-orgs", "--key-file", str(key_file)], env)
    assert second.returncode == 0, second.stderr

    account_id = first.stdout.strip()
    assert account_id
    assert "\n" not in account_id
    assert second.stdout.strip() == account_id
    assert key.startswith("keel_ak_")
    assert key_file.read_text().strip() == key  # kept, not replaced
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert key not in first.stdout + first.stderr + second.stdout + second.stderr
