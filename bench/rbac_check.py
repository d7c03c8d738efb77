"""Permission checks over gRPC against a real RBAC process: 10,000 bindings, 1,000 teams, 100 custom roles.

Starts `python -m services.authn` (embedded SQLite; it issues the caller's
access token and serves the JWKS) and `python -m services.rbac` on SQLite (or
a fresh PostgreSQL database with --database postgresql). Before RBAC starts,
the organization is seeded through the store's bulk path
(`RbacTx.bulk_load`: executemany inserts and one revision bump):

- 100 custom project-level roles of 20 permissions each;
- 1,000 teams of 10 members (10,000 memberships); the caller is in 5 of them;
- 10,000 bindings: 1,000 team bindings (custom role at a project), 9,000
  user bindings at the organization, workspaces and projects;
- 1,000 ownerships of runs held by the caller and ~2,260 of pipelines held by
  other users (rows of `rbac_ownerships`, outside the in-memory index since
  ownership became a relation: docs/decisions/ownership-relation.md).

Then measures, at each concurrency level, in one run:

- ceiling: grpc.health.v1.Health/Check on the RBAC server (empty unary call,
  same interceptors);
- check allowed: Check granted through a team's custom role on a project;
- check denied: Check that no binding grants (every candidate is looked at);
- batch check 100: BatchCheck of 100 runs the caller owns in one call (the
  index says no, then one query reads their owners);
- lookup resources: LookupResources of runs in the organization (answer:
  the caller's 1,000 owned run ids, read from the owner index, plus projects).

The caller asks about itself (the token's subject), as services do when they
forward the caller's token. The load generator runs in this process.

    python bench/rbac_check.py --calls 2000 --concurrency 1 32 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import grpc
from api_key_exchange import ADMIN, AUTHN, authn_env, database, free_port, measure, row, wait_serving
from grpc_health.v1 import health_pb2, health_pb2_grpc

from keel.authn.v1 import tokens_pb2, tokens_pb2_grpc
from keel.rbac.v1 import rbac_pb2, rbac_pb2_grpc
from services.kit.db import create_engine
from services.rbac.catalog import BUILT_IN_ROLES, PROJECT_TYPES, actions_of
from services.rbac.evaluator import Membership, OrganizationIndex, Ref
from services.rbac.server import migrate
from services.rbac.settings import RbacSettings
from services.rbac.store import BindingRecord, OwnershipRecord, RbacStore, RoleRecord

RBAC = (sys.executable, "-m", "services.rbac")
ORG = "bench-org"
WORKSPACES = 50
PROJECTS = 500
USERS = 2_000
TEAMS = 1_000
CUSTOM_ROLES = 100
BINDINGS = 10_000
OWNED_RUNS = 1_000
NOW = datetime(2026, 1, 1, tzinfo=UTC)
# The team binding that grants the "check allowed" question: caller's team 0 → role 0 on project 0.
ALLOWED_PERMISSION = ("pipeline", "run")


def _project(index: int) -> tuple[str, str]:
    return f"ws-{index % WORKSPACES}", f"proj-{index}"


def seed_rows(
    caller: str,
) -> tuple[list[RoleRecord], list[BindingRecord], list[Membership], list[OwnershipRecord]]:
    """The roles, bindings, memberships and ownerships of the benchmark organization (deterministic)."""
    rng = random.Random(7)
    project_permissions = sorted((t, a) for t in PROJECT_TYPES for a in actions_of(t))
    roles = []
    for index in range(CUSTOM_ROLES):
        chosen = set(rng.sample(project_permissions, 20))
        if index == 0:
            chosen.add(ALLOWED_PERMISSION)
        else:
            chosen.discard(ALLOWED_PERMISSION)
        roles.append(
            RoleRecord(
                f"role-{index:03}", ORG, f"Custom {index}", "", "project", tuple(sorted(chosen)), NOW, NOW, 1
            )
        )
    members = [
        Membership(f"team-{t:04}", "user", f"user-{rng.randrange(USERS):04}")
        for t in range(TEAMS)
        for _ in range(10)
    ]
    members = list({(m.team_id, m.member_id): m for m in members}.values())
    members += [Membership(f"team-{t:04}", "user", caller) for t in range(5)]
    bindings: list[BindingRecord] = []
    seen: set[tuple[str, ...]] = set()

    def bind(
        kind: str, subject: str, role: str, ws: str = "", proj: str = "", rtype: str = "", rid: str = ""
    ) -> None:
        level = "resource" if rid else "project" if proj else "workspace" if ws else "organization"
        key = (kind, subject, role, ws, proj, rtype, rid)
        if key in seen:
            return
        seen.add(key)
        bindings.append(
            BindingRecord(
                f"b-{len(bindings):05}", ORG, kind, subject, role, ws, proj, rtype, rid, level, NOW, 1
            )
        )

    for team in range(TEAMS):
        ws, proj = _project(team % PROJECTS)
        # Team 0 holds role 0 on project 0; others get roles 1..99 (never granting the allowed permission).
        role = "role-000" if team == 0 else f"role-{1 + rng.randrange(CUSTOM_ROLES - 1):03}"
        bind("team", f"team-{team:04}", role, ws, proj)
    owned: dict[tuple[str, str], OwnershipRecord] = {}

    def own(subject: str, ws: str, proj: str, rtype: str, rid: str) -> None:
        record = OwnershipRecord(f"o-{len(owned):05}", ORG, rtype, rid, ws, proj, "user", subject, NOW)
        owned.setdefault((rtype, rid), record)

    for run in range(OWNED_RUNS):
        ws, proj = _project(rng.randrange(PROJECTS))
        own(caller, ws, proj, "run", f"run-{run:05}")
    by_level = {
        level: [r.id for r in BUILT_IN_ROLES.values() if r.level == level]
        for level in ("organization", "workspace", "project")
    }
    while len(bindings) < BINDINGS:
        user = f"user-{rng.randrange(USERS):04}"
        ws, proj = _project(rng.randrange(PROJECTS))
        kind = rng.random()
        if kind < 0.05:
            bind("user", user, rng.choice(by_level["organization"]))
        elif kind < 0.35:
            bind("user", user, rng.choice(by_level["workspace"]), ws)
        elif kind < 0.8:
            bind("user", user, rng.choice(by_level["project"]), ws, proj)
        else:
            own(user, ws, proj, "pipeline", f"pl-{rng.randrange(100_000):06}")
    return roles, bindings, members, list(owned.values())


def evaluator_figures(caller: str) -> str:
    """In-process cost of the evaluator on the same organization: index build and one check."""
    roles, bindings, members, _ = seed_rows(caller)
    started = time.perf_counter()
    index = OrganizationIndex(
        [b.as_binding() for b in bindings], members, {r.id: frozenset(r.permissions) for r in roles}
    )
    build_ms = (time.perf_counter() - started) * 1000
    ws, proj = _project(0)
    allowed = Ref(ORG, ws, proj, ALLOWED_PERMISSION[0], "x-1")
    denied = Ref(ORG, ws, "proj-499", "model_version", "x-1")
    figures = []
    for permission, ref in ((ALLOWED_PERMISSION, allowed), (("model_version", "promote"), denied)):
        started = time.perf_counter()
        for _ in range(10_000):
            index.check(("user", caller), permission, ref)
        figures.append((time.perf_counter() - started) / 10_000 * 1e6)
    return (
        f"evaluator in-process: index build {build_ms:.1f} ms; check allowed {figures[0]:.2f} us, "
        f"denied {figures[1]:.2f} us"
    )


async def seed(database_url: str, caller: str) -> int:
    """Migrates the RBAC database and bulk-loads the organization; the revision."""
    engine = create_engine(database_url)
    try:
        await migrate(engine, RbacSettings())
        roles, bindings, members, owned = seed_rows(caller)
        async with RbacStore(engine).transaction() as tx:
            return await tx.bulk_load(ORG, roles, bindings, members, NOW, owned)
    finally:
        await engine.dispose()


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=2000, help="calls per measurement")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32], help="concurrent callers")
    parser.add_argument(
        "--database", choices=["sqlite", "postgresql"], default="sqlite", help="RBAC's database"
    )
    parser.add_argument("--rounds", type=int, default=3, help="repeat the measurements; report the median")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="keel-bench-") as folder:
        data_dir = Path(folder)
        async with (
            authn_with_admin(data_dir) as (authn_port, login),
            database(args.database, data_dir) as url,
        ):
            rbac_url = url or f"sqlite+aiosqlite:///{data_dir / 'rbac.db'}"
            revision = await seed(rbac_url, login.subject)
            print(evaluator_figures(login.subject))
            async with rbac_process(data_dir, rbac_url, authn_port) as channel:
                await run(channel, login.access_token, login.subject, revision, args)


@asynccontextmanager
async def authn_with_admin(data_dir: Path) -> AsyncIterator[tuple[int, tokens_pb2.CreateTokenResponse]]:
    """authn as its own process with a bootstrapped admin, signed in: (its port, the admin's tokens)."""
    authn_port = free_port()
    env = authn_env(data_dir, authn_port, "")
    bootstrap = await asyncio.create_subprocess_exec(
        *AUTHN, "bootstrap-admin", "--email", ADMIN, env=env, stdout=asyncio.subprocess.PIPE
    )
    output, _ = await bootstrap.communicate()
    password = output.decode().strip().removeprefix("admin password: ")
    authn = await asyncio.create_subprocess_exec(*AUTHN, env=env)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{authn_port}") as authn_channel:
            await wait_serving(authn_channel)
            login = await tokens_pb2_grpc.TokenServiceStub(authn_channel).CreateToken(
                tokens_pb2.CreateTokenRequest(
                    password=tokens_pb2.PasswordGrant(email=ADMIN, password=password)
                )
            )
        yield authn_port, login
    finally:
        authn.terminate()
        await asyncio.wait_for(authn.wait(), timeout=30)


@asynccontextmanager
async def rbac_process(
    data_dir: Path, rbac_url: str, authn_port: int, cwd: Path | None = None
) -> AsyncIterator[grpc.aio.Channel]:
    """RBAC as its own process (from the checkout `cwd`, default this one), serving: a channel to it."""
    rbac_port = free_port()
    rbac_env = {
        **os.environ,
        "KEEL_DATA_DIR": str(data_dir),
        "KEEL_LISTEN_ADDRESS": f"127.0.0.1:{rbac_port}",
        "KEEL_DATABASE_URL": rbac_url,
        "KEEL_AUTHN_ADDRESS": f"127.0.0.1:{authn_port}",
        "KEEL_LOG_LEVEL": "WARNING",
        "KEEL_DRAIN_SECONDS": "0",
    }
    rbac = await asyncio.create_subprocess_exec(*RBAC, env=rbac_env, cwd=cwd)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{rbac_port}") as channel:
            await wait_serving(channel)
            yield channel
    finally:
        rbac.terminate()
        await asyncio.wait_for(rbac.wait(), timeout=30)


async def run(
    channel: grpc.aio.Channel, token: str, caller: str, revision: int, args: argparse.Namespace
) -> None:
    metadata = (("authorization", f"Bearer {token}"),)
    permissions = rbac_pb2_grpc.PermissionServiceStub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    subject = rbac_pb2.Subject(kind=rbac_pb2.Subject.USER, id=caller)
    ws, proj = _project(0)

    def check_request(resource_type: str, action: str, project: str) -> rbac_pb2.CheckRequest:
        return rbac_pb2.CheckRequest(
            principal=subject,
            permission=rbac_pb2.Permission(resource_type=resource_type, action=action),
            resource=rbac_pb2.ResourceRef(
                organization_id=ORG,
                workspace_id=ws,
                project_id=project,
                resource_type=resource_type,
                resource_id="x-1",
            ),
        )

    allowed_request = check_request(*ALLOWED_PERMISSION, proj)
    denied_request = check_request("model_version", "promote", "proj-499")
    batch_request = rbac_pb2.BatchCheckRequest(
        principal=subject,
        organization_id=ORG,
        items=[
            rbac_pb2.BatchCheckItem(
                permission=rbac_pb2.Permission(resource_type="run", action="read"),
                resource=rbac_pb2.ResourceRef(
                    workspace_id=_project(i)[0],
                    project_id=_project(i)[1],
                    resource_type="run",
                    resource_id=f"run-{i:05}",
                ),
            )
            for i in range(100)
        ],
    )
    lookup_request = rbac_pb2.LookupResourcesRequest(
        subject=subject,
        permission=rbac_pb2.Permission(resource_type="run", action="read"),
        scope=rbac_pb2.ResourceRef(organization_id=ORG),
    )
    first = await permissions.Check(allowed_request, metadata=metadata)
    denied = await permissions.Check(denied_request, metadata=metadata)
    found = await permissions.LookupResources(lookup_request, metadata=metadata)
    if not first.allowed or denied.allowed or first.revision < revision:
        raise SystemExit("the seeded organization does not answer as designed")

    calls: list[tuple[str, Callable[[], Awaitable[object]]]] = [
        ("empty unary (ceiling)", lambda: health.Check(health_pb2.HealthCheckRequest())),
        ("check allowed", lambda: permissions.Check(allowed_request, metadata=metadata)),
        ("check denied", lambda: permissions.Check(denied_request, metadata=metadata)),
        ("batch check 100", lambda: permissions.BatchCheck(batch_request, metadata=metadata)),
        ("lookup resources", lambda: permissions.LookupResources(lookup_request, metadata=metadata)),
    ]
    for _, call in calls:
        await measure(call, 200, 4)  # warm-up
    print(
        f"database: {args.database}; calls per row: {args.calls}; rounds: {args.rounds}; "
        f"lookup answer: {len(found.resource_ids)} run ids, {len(found.project_ids)} projects "
        "(the median table comes last)"
    )
    header = f"{'call':<24} {'callers':>7} {'p50 ms':>8} {'p99 ms':>8} {'calls/s':>9}"
    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    for round_number in range(1, args.rounds + 1):
        print(f"round {round_number}\n{header}")
        for level in args.concurrency:
            for name, call in calls:
                figures = await measure(call, args.calls, level)
                results.setdefault((name, level), []).append(figures)
                print(row(name, level, figures))
    print(f"median of {args.rounds} rounds\n{header}")
    for (name, level), rows in results.items():
        print(row(name, level, {key: statistics.median(r[key] for r in rows) for key in rows[0]}))


if __name__ == "__main__":
    asyncio.run(main())
