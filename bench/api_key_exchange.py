"""API key -> access token over gRPC, against a real authn process.

Starts `python -m services.authn` on the embedded SQLite default (or a fresh
PostgreSQL database with --database postgresql), bootstraps an admin, creates
an API key, then measures in one run, at each concurrency level:

- exchange: TokenService.CreateToken with an api_key grant;
- ceiling: grpc.health.v1.Health/Check on the same server, an empty unary
  grpc.aio call through the same interceptors, so each exchange figure can be
  read as a fraction of it.

The load generator runs in this process (one asyncio loop), on the same
machine as the server.

    python bench/api_key_exchange.py --calls 2000 --concurrency 1 32
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import secrets
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from keel.authn.v1 import api_keys_pb2, api_keys_pb2_grpc, tokens_pb2, tokens_pb2_grpc

ADMIN = "bench-admin@keel.local"
POSTGRES = "postgresql+asyncpg://postgres@127.0.0.1:5432"
AUTHN = (sys.executable, "-m", "services.authn")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@asynccontextmanager
async def database(kind: str, data_dir: Path) -> AsyncIterator[str]:
    """The database URL for the run: '' (embedded SQLite) or a throwaway PostgreSQL database."""
    if kind == "sqlite":
        yield ""
        return
    name = f"keel_bench_{uuid.uuid4().hex[:10]}"
    admin = create_async_engine(f"{POSTGRES}/postgres", isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{POSTGRES}/{name}"
    finally:
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


def authn_env(data_dir: Path, port: int, database_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "KEEL_DATA_DIR": str(data_dir),
        "KEEL_LISTEN_ADDRESS": f"127.0.0.1:{port}",
        "KEEL_DATABASE_URL": database_url,
        "KEEL_AUTHN_MASTER_KEY": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
        "KEEL_LOG_LEVEL": "WARNING",
        "KEEL_DRAIN_SECONDS": "0",
    }


async def wait_serving(channel: grpc.aio.Channel, deadline_seconds: float = 60) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + deadline_seconds
    while True:
        try:
            reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.aio.AioRpcError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError("authn did not become SERVING")
        await asyncio.sleep(0.1)  # poll interval while the server starts


async def measure(call: Callable[[], Awaitable[object]], calls: int, concurrency: int) -> dict[str, float]:
    latencies: list[float] = []
    remaining = calls

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            start = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    cuts = statistics.quantiles(latencies, n=100)
    return {"p50_ms": cuts[49] * 1000, "p99_ms": cuts[98] * 1000, "per_s": len(latencies) / elapsed}


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=2000, help="calls per measurement")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32], help="concurrent callers")
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--rounds", type=int, default=3, help="repeat the measurements; report the median")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="keel-bench-") as folder:
        data_dir = Path(folder)
        port = free_port()
        async with database(args.database, data_dir) as database_url:
            env = authn_env(data_dir, port, database_url)
            bootstrap = await asyncio.create_subprocess_exec(
                *AUTHN, "bootstrap-admin", "--email", ADMIN, env=env, stdout=asyncio.subprocess.PIPE
            )
            output, _ = await bootstrap.communicate()
            password = output.decode().strip().removeprefix("admin password: ")
            server = await asyncio.create_subprocess_exec(*AUTHN, env=env)
            try:
                async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                    await wait_serving(channel)
                    await run(channel, password, args.calls, args.concurrency, args.database, args.rounds)
            finally:
                server.terminate()
                await asyncio.wait_for(server.wait(), timeout=30)


async def run(
    channel: grpc.aio.Channel, password: str, calls: int, levels: list[int], kind: str, rounds: int
) -> None:
    tokens = tokens_pb2_grpc.TokenServiceStub(channel)
    login = await tokens.CreateToken(
        tokens_pb2.CreateTokenRequest(password=tokens_pb2.PasswordGrant(email=ADMIN, password=password))
    )
    key = api_keys_pb2.ApiKey(display_name="bench")
    created = await api_keys_pb2_grpc.ApiKeyServiceStub(channel).CreateApiKey(
        api_keys_pb2.CreateApiKeyRequest(principal_id="me", api_key=key),
        metadata=(("authorization", f"Bearer {login.access_token}"),),
    )
    exchange_request = tokens_pb2.CreateTokenRequest(api_key=tokens_pb2.ApiKeyGrant(secret=created.secret))
    health = health_pb2_grpc.HealthStub(channel)
    check_request = health_pb2.HealthCheckRequest()

    async def exchange() -> object:
        return await tokens.CreateToken(exchange_request)

    async def ceiling() -> object:
        return await health.Check(check_request)

    await measure(exchange, 200, 4)  # warm-up: connections, caches, page cache
    await measure(ceiling, 200, 4)
    print(f"database: {kind}; calls per row: {calls}; rounds: {rounds} (the median row comes last)")
    header = f"{'call':<24} {'callers':>7} {'p50 ms':>8} {'p99 ms':>8} {'calls/s':>9}"
    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    for round_number in range(1, rounds + 1):
        print(f"round {round_number}\n{header}")
        for level in levels:
            # Ceiling and exchange back to back, so each pair shares the machine's state.
            for name, call in (("empty unary (ceiling)", ceiling), ("api key -> token", exchange)):
                figures = await measure(call, calls, level)
                results.setdefault((name, level), []).append(figures)
                print(row(name, level, figures))
    print(f"median of {rounds} rounds\n{header}")
    for (name, level), rows in results.items():
        median = {key: statistics.median(r[key] for r in rows) for key in rows[0]}
        print(row(name, level, median))


def row(name: str, level: int, figures: dict[str, float]) -> str:
    return (
        f"{name:<24} {level:>7} {figures['p50_ms']:>8.2f} {figures['p99_ms']:>8.2f} {figures['per_s']:>9.0f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
