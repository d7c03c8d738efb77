"""Server-Sent Events: WatchRun through the gateway against a real workspace server.

A watcher sees a run's transitions live; after a dropped connection it
resumes with Last-Event-ID and gets exactly the events it missed; the
dropped call is cancelled on the server; heartbeats flow while nothing
happens; errors before the first event are JSON, after it an `event: error`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import insert

from keel.metadata.v1 import pipelines_pb2 as pp
from keel.metadata.v1 import pipelines_pb2_grpc as pp_grpc
from keel.metadata.v1 import runs_pb2 as rp
from keel.metadata.v1 import runs_pb2_grpc as rp_grpc
from services.metadata.store import stacks
from tests.gateway.conftest import StartGateway
from tests.metadata.conftest import MetadataStack, metadata_database_url, metadata_stack  # noqa: F401
from tests.orgs.conftest import OrgsStack, User

HEARTBEAT_SECONDS = 0.3
StepStatus = rp.StepRun.Status


@dataclass
class Event:
    """One SSE event (or, with `comment`, one comment line)."""

    id: str = ""
    event: str = "message"
    data: str = ""
    comment: str = ""

    def json(self) -> Any:
        return json.loads(self.data)


@dataclass
class SseReader:
    """Parses an event stream line by line (text/event-stream, as a browser's EventSource does)."""

    lines: AsyncIterator[str]

    async def next(self, *, comments: bool = False, within: float = 5.0) -> Event:
        async with asyncio.timeout(within):
            event = Event()
            seen = False
            async for line in self.lines:
                if line.startswith(":"):
                    if comments:
                        return Event(comment=line[1:].strip())
                    continue
                if not line:
                    if seen:
                        return event
                    continue
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                seen = True
                if name == "id":
                    event.id = value
                elif name == "event":
                    event.event = value
                elif name == "data":
                    event.data = value
            raise EOFError("the stream ended")


async def workspace_gateway(orgs: OrgsStack, start_gateway: StartGateway) -> httpx.AsyncClient:
    return await start_gateway(
        {
            "keel.authn.v1": orgs.authn_address,
            "keel.rbac.v1": orgs.rbac_address,
            "keel.orgs.v1": orgs.orgs_address,
        },
        workspace_packages=("keel.metadata.v1",),
        gateway_sse_heartbeat_seconds=HEARTBEAT_SECONDS,
    )


async def new_run(stack: MetadataStack) -> tuple[str, str]:
    """A run of a diamond pipeline in a new project (over gRPC); (project id, run id)."""
    owner, ws = stack.owner.metadata, stack.workspace_id
    stack_id = str(uuid.uuid4())
    now = stack.clock.now()
    async with stack.service.domain.store.transaction() as tx:
        await tx.conn.execute(
            insert(stacks).values(
                id=stack_id, name=f"s-{secrets.token_hex(3)}", description="", create_time=now,
                update_time=now, version=1,
            )
        )  # fmt: skip
    project = await stack.project()
    pipelines = pp_grpc.PipelineServiceStub(stack.channel)
    pipeline = await pipelines.CreatePipeline(
        pp.CreatePipelineRequest(workspace_id=ws, project_id=project.id, pipeline=pp.Pipeline(name="p")),
        metadata=owner,
    )
    steps = [
        pp.StepSpec(name="load", image="python:3.11"),
        pp.StepSpec(name="train", image="python:3.11", upstream_steps=["load"]),
    ]
    snapshot = await pipelines.CreateSnapshot(
        pp.CreateSnapshotRequest(
            workspace_id=ws,
            project_id=project.id,
            pipeline_id=pipeline.id,
            snapshot=pp.Snapshot(stack_id=stack_id, steps=steps),
        ),
        metadata=owner,
    )
    run = await rp_grpc.RunServiceStub(stack.channel).CreateRun(
        rp.CreateRunRequest(workspace_id=ws, project_id=project.id, snapshot_id=snapshot.id), metadata=owner
    )
    return project.id, run.id


async def set_step(stack: MetadataStack, project_id: str, run_id: str, step: str, status: int) -> None:
    await rp_grpc.RunServiceStub(stack.channel).UpdateStepStatus(
        rp.UpdateStepStatusRequest(
            workspace_id=stack.workspace_id,
            project_id=project_id,
            run_id=run_id,
            step_name=step,
            status=status,  # type: ignore[arg-type]
            request_id=secrets.token_hex(4),
        ),
        metadata=stack.owner.metadata,
    )


def bearer(user: User, **extra: str) -> dict[str, str]:
    return {"authorization": f"Bearer {user.token}", **extra}


async def wait_for_watchers(stack: MetadataStack, count: int) -> None:
    deadline = time.monotonic() + 5
    while stack.service.hub.watchers != count:
        assert time.monotonic() < deadline, f"{stack.service.hub.watchers} watchers, expected {count}"
        await asyncio.sleep(0.02)


def step_change(event: Event) -> tuple[str, str, str]:
    body = event.json()
    return body["kind"], body.get("stepRun", {}).get("name", ""), body.get("stepRun", {}).get("status", "")


async def test_a_watcher_sees_transitions_live_and_resumes_without_losing_an_event(
    metadata_stack: MetadataStack,  # noqa: F811
    start_gateway: StartGateway,
) -> None:
    stack = metadata_stack
    client = await workspace_gateway(stack.orgs, start_gateway)
    project_id, run_id = await new_run(stack)
    path = f"/v1/workspaces/{stack.workspace_id}/projects/{project_id}/runs/{run_id}:watch"

    async with client.stream("GET", path, headers=bearer(stack.owner)) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        reader = SseReader(response.aiter_lines())
        first = await reader.next()
        assert (first.json()["kind"], first.json()["run"]["status"]) == ("SNAPSHOT", "INITIALIZING")
        assert first.id == first.json()["cursor"]
        await wait_for_watchers(stack, 1)
        await set_step(stack, project_id, run_id, "load", StepStatus.RUNNING)
        live = await reader.next()
        while live.json()["kind"] == "SNAPSHOT":
            live = await reader.next()
        assert step_change(live) == ("CHANGE", "load", "RUNNING")
        last_id = live.id
    # The client went away: the gateway cancelled its gRPC call, so the server has no watch left.
    await wait_for_watchers(stack, 0)

    # Changes while disconnected are delivered on reconnection, after the last event id, none repeated.
    await set_step(stack, project_id, run_id, "load", StepStatus.COMPLETED)
    resume = bearer(stack.owner, **{"last-event-id": last_id})
    async with client.stream("GET", path, headers=resume) as response:
        assert response.status_code == 200
        reader = SseReader(response.aiter_lines())
        missed = [await reader.next(), await reader.next()]
        assert [(e.json()["kind"], e.json()["run"]["status"]) for e in missed] == [
            ("CHANGE", "RUNNING"),
            ("CHANGE", "RUNNING"),
        ]
        assert step_change(missed[1]) == ("CHANGE", "load", "COMPLETED")
        ids = [int(last_id), *(int(e.id) for e in missed)]
        assert ids == sorted(set(ids))
        # Nothing happens now: heartbeats keep the connection alive.
        started = time.monotonic()
        beat = await reader.next(comments=True)
        assert beat.comment == "heartbeat"
        assert time.monotonic() - started < HEARTBEAT_SECONDS * 5
        # A failure after the first event: the server goes away mid-stream.
        await stack.stop_metadata()
        failed = await reader.next()
        assert failed.event == "error"
        assert failed.json()["error"]["status"] in ("UNAVAILABLE", "CANCELLED")
        with contextlib.suppress(EOFError):
            await reader.next()
            raise AssertionError("the stream went on after its error event")


async def test_errors_before_the_first_event_are_json(
    metadata_stack: MetadataStack,  # noqa: F811
    start_gateway: StartGateway,
) -> None:
    stack = metadata_stack
    client = await workspace_gateway(stack.orgs, start_gateway)
    project_id, run_id = await new_run(stack)
    base = f"/v1/workspaces/{stack.workspace_id}/projects/{project_id}/runs"
    outsider = await stack.member()  # no role on the workspace's data
    denied = await client.get(f"{base}/{run_id}:watch", headers=bearer(outsider))
    assert denied.status_code == 403, denied.text
    assert denied.headers["content-type"] == "application/json"
    unknown = await client.get(f"{base}/{uuid.uuid4()}:watch", headers=bearer(stack.owner))
    assert unknown.status_code in (403, 404), unknown.text
    assert unknown.json()["error"]["status"] in ("PERMISSION_DENIED", "NOT_FOUND")
    bad = await client.get(f"{base}/{run_id}:watch", headers=bearer(stack.owner, **{"last-event-id": "x"}))
    assert bad.status_code == 400, bad.text
    assert bad.json()["error"]["details"][1]["fieldViolations"][0]["field"] == "Last-Event-ID"
    # A cursor beyond the log is the server's OUT_OF_RANGE, before any event.
    beyond = await client.get(f"{base}:watch?afterCursor=999999999", headers=bearer(stack.owner))
    assert beyond.status_code == 400, beyond.text
    assert beyond.json()["error"]["status"] == "OUT_OF_RANGE"
    assert stack.service.hub.watchers == 0
