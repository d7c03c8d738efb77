"""Command line of authn: serve (default), `migrate`, `bootstrap-admin --email E`,
`bootstrap-service-account --name N --key-file F`.

bootstrap-admin prints the generated password once, on stdout only, and never logs it.
bootstrap-service-account creates a mesh service account (a control-plane service's own
identity) and writes its API key to a new 0600 file; when the file exists and its key
still works, it only prints the account id again. It prints the id, never the key.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from services.authn.api_keys import ApiKeyView
from services.authn.server import SERVICE_NAME, build_domain, build_service, migrate
from services.authn.settings import AuthnSettings
from services.kit.cli import serve, with_engine
from services.kit.clock import SystemClock
from services.kit.config import load_settings
from services.kit.logs import setup_logging
from services.kit.service_identity import read_api_key_file


async def _bootstrap_admin(settings: AuthnSettings, engine: AsyncEngine, email: str) -> str:
    await migrate(engine, settings)
    domain = build_domain(settings, engine, SystemClock())
    result = await domain.users.bootstrap_admin(email)
    if result.created:
        return f"admin password: {result.password}"
    return f"admin already exists: {result.email}"


async def _bootstrap_service_account(
    settings: AuthnSettings, engine: AsyncEngine, name: str, existing_key: str | None
) -> tuple[str, str | None]:
    """(account id, new API key or None when `existing_key` still works)."""
    await migrate(engine, settings)
    domain = build_domain(settings, engine, SystemClock())
    if existing_key is not None:
        key = await domain.api_keys.authenticate(existing_key)
        return key.principal_id, None
    account = await domain.service_accounts.create(name, "a Keel control-plane service", creator_id="")
    issued = await domain.api_keys.create(account.id, f"{name} service key", None)
    assert not isinstance(issued, ApiKeyView)  # no request key: always a fresh key with its secret
    return account.id, issued.secret


def _write_key_file(path: Path, secret: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL with 0600 from the start: the key is never readable by others, not even briefly.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(secret + "\n")


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m services.authn", description="Keel authn service")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="serve gRPC (the default)")
    commands.add_parser("migrate", help="apply database migrations and exit")
    bootstrap = commands.add_parser("bootstrap-admin", help="create the first platform admin if none exists")
    bootstrap.add_argument("--email", required=True, help="e-mail (login name) of the admin")
    service_account = commands.add_parser(
        "bootstrap-service-account", help="create a mesh service account and write its API key to a file"
    )
    service_account.add_argument("--name", required=True, help="display name, e.g. keel-orgs")
    service_account.add_argument("--key-file", required=True, type=Path, help="where the API key goes (0600)")
    args = parser.parse_args(argv)
    settings = load_settings(AuthnSettings)
    setup_logging(SERVICE_NAME, settings.log_level)
    if args.command == "migrate":
        asyncio.run(with_engine(settings, SERVICE_NAME, lambda engine: migrate(engine, settings)))
        return 0
    if args.command == "bootstrap-admin":
        line = asyncio.run(
            with_engine(settings, SERVICE_NAME, lambda engine: _bootstrap_admin(settings, engine, args.email))
        )
        # stdout only, once: the operator reads it; logs never see it.
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
        return 0
    if args.command == "bootstrap-service-account":
        existing = read_api_key_file(args.key_file) if args.key_file.exists() else None
        account_id, secret = asyncio.run(
            with_engine(
                settings,
                SERVICE_NAME,
                lambda engine: _bootstrap_service_account(settings, engine, args.name, existing),
            )
        )
        if secret is not None:
            _write_key_file(args.key_file, secret)
        sys.stdout.write(account_id + "\n")
        sys.stdout.flush()
        return 0
    return serve(SERVICE_NAME, settings, lambda: build_service(settings))


if __name__ == "__main__":
    sys.exit(main())
