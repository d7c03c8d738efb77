"""GetRun over REST (through the gateway) against the same call over gRPC directly, in one run.

Processes (so that the client, the gateway and the servers do not share one event loop):
- this process: authn, RBAC, orgs and a registered metadata server on PostgreSQL (the tests'
  fixtures, as bench/list_runs.py starts them); a project seeded with 10 runs;
- the gateway: `python -m gateway serve` in front of that control plane (the metadata server is
  found through orgs' workspace registry), rate limits off, logging at the default level
  (access logs included);
- the client: this script with `client`, a separate process measuring
  1. latency: --calls sequential GetRun over gRPC (grpc.aio, C core) and over REST (keep-alive)
     from three clients: "lean" (prepared request bytes, answers parsed by httptools: what wrk
     does, so the figure is the gateway's and not a client library's), aiohttp (C parser) and
     httpx (pure Python). One call of each in turn, so that all meet the same moments of a noisy
     machine; p50/p99 of each and the REST/gRPC p50 ratio per client (target ≤ 1.5); then the
     REST p50 from `wrk` on one connection;
  2. REST throughput for --duration seconds with --connections keep-alive connections: `wrk`
     when installed (the token in a 0600 Lua script, never on a command line), else a bounded
     httpx loop; target ≥ 2,000 requests/s. The gateway's and the backend's CPU time per request
     during it (from /proc) tell what each would need of a core of its own.
The client and this process run on uvloop, as the gateway does.
The caller is the organization owner (real RBAC, cached permission answers).

    python bench/gateway_rest.py --calls 2000 --rounds 3 --connections 32 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiohttp
import grpc
import httptools
import httpx
import uvloop

from keel.metadata.v1 import runs_pb2, runs_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
# The REST clients of the latency step, each timed in turn with the gRPC call (see _LeanHttpClient).
REST_CLIENTS = ("lean", "aiohttp", "httpx")


def _quantiles(latencies: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(latencies, n=100)
    return {"p50": cuts[49] * 1000, "p99": cuts[98] * 1000}


async def _interleaved_latency(
    calls: Mapping[str, Callable[[], Awaitable[None]]], count: int
) -> dict[str, Any]:
    """`count` sequential rounds of one call of each client in turn, each call timed: every client
    sees the same moments of a noisy machine, so their ratio is measured in one run."""
    latencies: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(count):
        for name, call in calls.items():
            start = time.perf_counter()
            await call()
            latencies[name].append(time.perf_counter() - start)
    return {name: _quantiles(measured) for name, measured in latencies.items()}


class _LeanHttpClient(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection that sends prepared GET bytes and parses each answer with
    httptools (llhttp, the parser family wrk uses): what wrk does, in-process, so that REST calls can
    be interleaved with gRPC calls without a Python HTTP library's own cost in the REST figure."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._answer: asyncio.Future[int] | None = None

    @classmethod
    async def open(cls, host: str, port: int) -> _LeanHttpClient:
        _, client = await asyncio.get_running_loop().create_connection(cls, host, port)
        return client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not an asyncio.Transport subclass

    def data_received(self, data: bytes) -> None:
        self._parser.feed_data(data)

    def on_message_complete(self) -> None:
        if self._answer is not None and not self._answer.done():
            self._answer.set_result(self._parser.get_status_code())

    async def get(self, request: bytes) -> int:
        """Sends one prepared request and waits for its whole answer; its HTTP status."""
        assert self._transport is not None
        self._answer = asyncio.get_running_loop().create_future()
        self._transport.write(request)
        return await self._answer

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


def _expect_ok(status: int) -> None:
    if status != 200:
        raise RuntimeError(f"REST GetRun answered {status}")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _with_cpu(pids: dict[str, int], measuring: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    """Awaits a load (which answers requests_per_second and seconds) and adds each process's CPU
    milliseconds per request during it."""
    before = {name: _cpu_seconds(pid) for name, pid in pids.items()}
    measured = await measuring
    requests = measured["requests_per_second"] * measured["seconds"]
    measured["cpu_ms_per_request"] = {
        name: (_cpu_seconds(pid) - before[name]) * 1000 / max(requests, 1) for name, pid in pids.items()
    }
    return measured


def _wrk(url: str, token: str, connections: int, duration: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as directory:
        script = Path(directory) / "auth.lua"
        descriptor = os.open(script, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(f'wrk.headers["authorization"] = "Bearer {token}"\n')
        threads = min(connections, 2)
        command = [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{duration}s",
            "--latency",
            "-s",
            str(script),
            url,
        ]
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    rate = re.search(r"Requests/sec:\s+([0-9.]+)", output)
    errors = re.search(r"Non-2xx or 3xx responses:\s+([0-9]+)", output)
    p50 = re.search(r"50%\s+([0-9.]+)(us|ms|s)", output)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    return {
        "tool": f"wrk -t{threads} -c{connections} -d{duration}s",
        "requests_per_second": float(rate.group(1)) if rate else 0.0,
        "non_2xx": int(errors.group(1)) if errors else 0,
        "p50_ms": float(p50.group(1)) * scale[p50.group(2)] if p50 else None,
        "seconds": duration,
    }


async def _httpx_load(
    base_url: str, path: str, token: str, connections: int, duration: int
) -> dict[str, Any]:
    done = 0
    failed = 0
    stop_at = time.monotonic() + duration
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    headers = {"authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, limits=limits) as client:

        async def worker() -> None:
            nonlocal done, failed
            while time.monotonic() < stop_at:
                answer = await client.get(path)
                done += 1
                failed += answer.status_code != 200

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.monotonic() - started
    return {
        "tool": f"httpx, {connections} concurrent clients, {duration} s",
        "requests_per_second": done / elapsed,
        "non_2xx": failed,
        "p50_ms": None,
        "seconds": elapsed,
    }


async def _grpc_load(
    stub: runs_pb2_grpc.RunServiceAsyncStub,
    request: runs_pb2.GetRunRequest,
    token: str,
    connections: int,
    duration: int,
) -> dict[str, Any]:
    """The backend's own ceiling for reference: concurrent GetRun over gRPC from one Python process."""
    metadata = (("authorization", f"Bearer {token}"),)
    done = 0
    stop_at = time.monotonic() + duration

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < stop_at:
            await stub.GetRun(request, metadata=metadata)
            done += 1

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = time.monotonic() - started
    return {"requests_per_second": done / elapsed, "seconds": elapsed}


async def client_main(args: argparse.Namespace) -> None:
    """The measuring process: reads its target from a JSON file, prints the results as JSON."""
    target = json.loads(await asyncio.to_thread(Path(args.target).read_text))
    token = target["token"]
    request = runs_pb2.GetRunRequest(
        workspace_id=target["workspace_id"], project_id=target["project_id"], run_id=target["run_id"]
    )
    path = f"/v1/workspaces/{request.workspace_id}/projects/{request.project_id}/runs/{request.run_id}"
    channel = grpc.aio.insecure_channel(target["grpc_address"])
    stub = runs_pb2_grpc.RunServiceStub(channel)
    headers = {"authorization": f"Bearer {token}"}
    metadata = (("authorization", f"Bearer {token}"),)
    address = target["rest_url"].removeprefix("http://")
    host, port = address.rsplit(":", 1)
    lean = await _LeanHttpClient.open(host, int(port))
    prepared = f"GET {path} HTTP/1.1\r\nhost: {address}\r\nauthorization: Bearer {token}\r\n\r\n".encode()
    async with (
        httpx.AsyncClient(base_url=target["rest_url"], headers=headers) as rest,
        aiohttp.ClientSession(base_url=target["rest_url"], headers=headers) as session,
    ):

        async def with_lean() -> None:
            _expect_ok(await lean.get(prepared))

        async def with_aiohttp() -> None:
            async with session.get(path) as answer:
                await answer.read()
                _expect_ok(answer.status)

        async def with_httpx() -> None:
            _expect_ok((await rest.get(path)).status_code)

        async def with_grpc() -> None:
            await stub.GetRun(request, metadata=metadata)

        calls = {"grpc": with_grpc, "lean": with_lean, "aiohttp": with_aiohttp, "httpx": with_httpx}
        # Warm-up: connections, the gateway's workspace cache, RBAC's and the verifier's caches.
        await _interleaved_latency(calls, 200)
        rounds = [await _interleaved_latency(calls, args.calls) for _ in range(args.rounds)]
    lean.close()
    sequential = None
    if shutil.which("wrk"):
        # The same sequential REST calls from a C client: the gateway without httpx's own cost.
        sequential = _wrk(target["rest_url"] + path, token, 1, args.duration)
        loading = asyncio.to_thread(_wrk, target["rest_url"] + path, token, args.connections, args.duration)
    else:
        loading = _httpx_load(target["rest_url"], path, token, args.connections, args.duration)
    # The servers' CPU per request under load: what each would need of a core for the target.
    pids = {"gateway": target["gateway_pid"], "backend": target["backend_pid"]}
    load = await _with_cpu(pids, loading)
    direct = await _with_cpu(pids, _grpc_load(stub, request, token, args.connections, args.duration))
    await channel.close(None)
    print(json.dumps({"rounds": rounds, "load": load, "grpc_load": direct, "sequential": sequential}))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(300):
            if process.poll() is not None:
                raise RuntimeError("the gateway exited at start-up")
            try:
                if (await client.get(url + "/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("the gateway did not become ready")


async def main(args: argparse.Namespace) -> None:
    from list_runs import fresh_token, running_stack

    from services.metadata import seeding

    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} (1 min) at start")
    with tempfile.TemporaryDirectory() as directory:
        async with running_stack(Path(directory)) as stack:
            project = await stack.project()
            start = stack.clock.now() - timedelta(hours=1)
            await seeding.seed_project(
                stack.service.domain.engine, project.id, "bench-stack", runs_count=10, start=start
            )
            owner = await fresh_token(stack, stack.owner)
            runs = runs_pb2_grpc.RunServiceStub(stack.channel)
            listed = await runs.ListRuns(
                runs_pb2.ListRunsRequest(workspace_id=stack.workspace_id, project_id=project.id, page_size=1),
                metadata=owner.metadata,
            )
            port = _free_port()
            env = {
                **os.environ,
                "KEEL_LISTEN_ADDRESS": f"127.0.0.1:{port}",
                "KEEL_AUTHN_ADDRESS": stack.orgs.authn_address,
                "KEEL_RBAC_ADDRESS": stack.orgs.rbac_address,
                "KEEL_ORGS_ADDRESS": stack.orgs.orgs_address,
                "KEEL_GATEWAY_RATE_LIMIT_ADDRESS_PER_SECOND": "0",
                "KEEL_GATEWAY_RATE_LIMIT_PRINCIPAL_PER_SECOND": "0",
                "KEEL_LOG_LEVEL": args.gateway_log_level,
            }
            log = Path(directory) / "gateway.log"
            with log.open("wb") as gateway_log:
                gateway = subprocess.Popen(  # noqa: ASYNC220  (started once, before anything is measured)
                    [sys.executable, "-m", "gateway", "serve"], cwd=ROOT, env=env, stderr=gateway_log
                )
                try:
                    await _wait_ready(f"http://127.0.0.1:{port}", gateway)
                    target = Path(directory) / "target.json"
                    descriptor = os.open(target, os.O_WRONLY | os.O_CREAT, 0o600)
                    with os.fdopen(descriptor, "w") as handle:
                        json.dump(
                            {
                                "token": owner.token,
                                "workspace_id": stack.workspace_id,
                                "project_id": project.id,
                                "run_id": listed.runs[0].id,
                                "grpc_address": stack.address,
                                "rest_url": f"http://127.0.0.1:{port}",
                                "gateway_pid": gateway.pid,
                                "backend_pid": os.getpid(),
                            },
                            handle,
                        )
                    command = [
                        sys.executable,
                        __file__,
                        "client",
                        "--target",
                        str(target),
                        f"--calls={args.calls}",
                        f"--rounds={args.rounds}",
                        f"--connections={args.connections}",
                        f"--duration={args.duration}",
                    ]
                    measured = await asyncio.to_thread(
                        subprocess.run, command, capture_output=True, text=True
                    )
                    if measured.returncode != 0:
                        raise RuntimeError(f"the client failed:\n{measured.stderr}")
                finally:
                    gateway.terminate()
                    gateway.wait(timeout=30)
    results = json.loads(measured.stdout)
    _report(results, args)


def _report(results: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"\nGetRun, {args.calls} sequential calls per round, {args.rounds} rounds, the clients in turn")
    print(
        "| round | gRPC p50 / p99 (grpc.aio) | "
        + " | ".join(f"REST p50 / p99, ratio ({name})" for name in REST_CLIENTS)
        + " |"
    )
    print("|---|---|" + "---|" * len(REST_CLIENTS))
    ratios: dict[str, list[float]] = {name: [] for name in REST_CLIENTS}
    for number, measured in enumerate(results["rounds"], 1):
        direct = measured["grpc"]
        cells = [f"{direct['p50']:.2f} / {direct['p99']:.2f} ms"]
        for name in REST_CLIENTS:
            ratios[name].append(measured[name]["p50"] / direct["p50"])
            cells.append(
                f"{measured[name]['p50']:.2f} / {measured[name]['p99']:.2f} ms, {ratios[name][-1]:.2f}"
            )
        print(f"| {number} | " + " | ".join(cells) + " |")
    medians = ", ".join(f"{statistics.median(ratios[name]):.2f} ({name})" for name in REST_CLIENTS)
    print(f"median p50 ratio REST / gRPC: {medians} (target ≤ 1.5)")
    sequential = results.get("sequential")
    if sequential is not None:
        grpc_p50 = statistics.median(measured["grpc"]["p50"] for measured in results["rounds"])
        print(
            f"REST p50 from a C client ({sequential['tool']}): {sequential['p50_ms']:.2f} ms, "
            f"{sequential['requests_per_second']:,.0f} requests/s; ratio to the gRPC p50: "
            f"{sequential['p50_ms'] / grpc_p50:.2f}"
        )
    load = results["load"]
    p50 = f", p50 {load['p50_ms']:.2f} ms" if load["p50_ms"] is not None else ""
    print(
        f"REST throughput ({load['tool']}): {load['requests_per_second']:,.0f} requests/s{p50}, "
        f"{load['non_2xx']} non-2xx (target ≥ 2,000/s)"
    )
    direct = results["grpc_load"]
    print(
        f"gRPC throughput (direct, {args.connections} concurrent calls from Python): "
        f"{direct['requests_per_second']:,.0f} requests/s"
    )
    rest_cpu, direct_cpu = load["cpu_ms_per_request"], direct["cpu_ms_per_request"]
    print(
        f"CPU per request under the REST load: gateway {rest_cpu['gateway']:.3f} ms, backend "
        f"{rest_cpu['backend']:.3f} ms (one core serves {1000 / max(rest_cpu['gateway'], 1e-9):,.0f} "
        "gateway requests/s at that cost)"
    )
    print(f"CPU per request under the gRPC load: backend {direct_cpu['backend']:.3f} ms")
    print(f"load average {os.getloadavg()[0]:.2f} (1 min) at the end")


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", nargs="?", choices=["run", "client"], default="run")
    parser.add_argument("--target", help="(client) the JSON file naming what to call")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument(
        "--gateway-log-level", default="INFO", help="INFO writes an access log line per request"
    )
    return parser.parse_args()


if __name__ == "__main__":
    arguments = _arguments()
    # uvloop in both processes, as in the gateway: the clients' own loop is not what is measured.
    uvloop.run(client_main(arguments) if arguments.mode == "client" else main(arguments))
