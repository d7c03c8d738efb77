"""Command line of authn: serve (default), `migrate`, `bootstrap-admin --email E`.

bootstrap-admin prints the generated password once, on stdout only, and never logs it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from sqlalchemy.ext.asyncio import AsyncEngine

from services.authn.server import SERVICE_NAME, build_domain, build_service, migrate
from services.authn.settings import AuthnSettings
from services.kit.cli import serve, with_engine
from services.kit.clock import SystemClock
from services.kit.config import load_settings
from services.kit.logs import setup_logging


async def _bootstrap_admin(settings: AuthnSettings, engine: AsyncEngine, email: str) -> str:
    await migrate(engine, settings)
    domain = build_domain(settings, engine, SystemClock())
    result = await domain.users.bootstrap_admin(email)
    if result.created:
        return f"admin password: {result.password}"
    return f"admin already exists: {result.email}"


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m services.authn", description="Keel authn service")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="serve gRPC (the default)")
    commands.add_parser("migrate", help="apply database migrations and exit")
    bootstrap = commands.add_parser("bootstrap-admin", help="create the first platform admin if none exists")
    bootstrap.add_argument("--email", required=True, help="e-mail (login name) of the admin")
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
    return serve(SERVICE_NAME, settings, lambda: build_service(settings))


if __name__ == "__main__":
    sys.exit(main())
