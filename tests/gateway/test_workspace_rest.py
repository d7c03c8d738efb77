"""Every annotated RPC of the workspace server (keel.metadata.v1), through the gateway's workspace routing.

The list comes from the descriptors: the test fails when an annotated
metadata RPC was not called, so a new one needs a case here. Calls go to a
real metadata server found through orgs' registry; each asserts its happy
path or the error it must answer. The streaming RPCs are read as SSE.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import httpx

from gateway.bindings import http_rule, keel_services
from tests.gateway.conftest import StartGateway
from tests.gateway.rest_client import RestApi
from tests.metadata.conftest import MetadataStack, metadata_database_url, metadata_stack  # noqa: F401

M = "keel.metadata.v1."


def annotated_rpcs() -> set[str]:
    """Full names of every metadata RPC with a google.api.http option."""
    return {
        method.full_name
        for service in keel_services(["keel.metadata.v1"])
        for method in service.methods
        if http_rule(method) is not None
    }


def name(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


async def first_event(client: httpx.AsyncClient, path: str, token: str) -> str:
    """The first thing an SSE stream sends (an event's data, or a comment), read within 5 s."""
    headers = {"authorization": f"Bearer {token}"}
    async with client.stream("GET", path, headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        async with asyncio.timeout(5):
            async for line in response.aiter_lines():
                if line.startswith(("data:", ":")):
                    return line
    raise AssertionError("the stream ended without an event")


async def test_every_annotated_metadata_rpc_is_reachable_through_rest(
    metadata_stack: MetadataStack,  # noqa: F811
    start_gateway: StartGateway,
) -> None:
    stack = metadata_stack
    orgs = stack.orgs
    client = await start_gateway(
        {
            "keel.authn.v1": orgs.authn_address,
            "keel.rbac.v1": orgs.rbac_address,
            "keel.orgs.v1": orgs.orgs_address,
        },
        workspace_packages=("keel.metadata.v1",),
        gateway_sse_heartbeat_seconds=0.2,
    )
    api = RestApi(client)
    token = stack.owner.token
    ws = {"workspaceId": stack.workspace_id}

    async def call(rpc: str, fields: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
        return await api.call(M + rpc, {**ws, **(fields or {})}, token=token, **kwargs)

    # --- projects ---------------------------------------------------------------------------------
    project = await call("ProjectService.CreateProject", {"project": {"name": name("p")}})
    p = {"projectId": project["id"]}
    assert (await call("ProjectService.GetProject", p))["name"] == project["name"]
    assert project["id"] in {x["id"] for x in (await call("ProjectService.ListProjects"))["projects"]}
    updated = await call(
        "ProjectService.UpdateProject", {"project": {"id": project["id"], "description": "d"}}
    )
    assert updated["description"] == "d"
    doomed = await call("ProjectService.CreateProject", {"project": {"name": name("p")}})
    await call("ProjectService.DeleteProject", {"projectId": doomed["id"]})

    # --- flavors, components, stacks --------------------------------------------------------------
    flavors = await call("StackService.ListFlavors", {"type": "ARTIFACT_STORE"})
    assert "s3" in {f["name"] for f in flavors["flavors"]}
    await call("StackService.GetFlavor", {"type": "ARTIFACT_STORE", "flavor": "s3"})

    async def component(kind: str, flavor: str, config: dict[str, Any]) -> dict[str, Any]:
        body = {"name": name("c"), "type": kind, "flavor": flavor, "configuration": config}
        return await call("StackService.CreateComponent", {"component": body})

    orchestrator = await component("ORCHESTRATOR", "kubernetes", {"namespace": "ml"})
    store = await component("ARTIFACT_STORE", "s3", {"path": "s3://bucket/keel"})
    await call("StackService.GetComponent", {"componentId": store["id"]})
    await call("StackService.ListComponents")
    await call("StackService.UpdateComponent", {"component": {"id": store["id"], "description": "d"}})
    spare = await component("ARTIFACT_STORE", "s3", {"path": "s3://bucket/spare"})
    await call("StackService.DeleteComponent", {"componentId": spare["id"]})
    ids = [store["id"], orchestrator["id"]]
    made = await call("StackService.CreateStack", {"stack": {"name": name("s"), "componentIds": ids}})
    await call("StackService.GetStack", {"stackId": made["id"]})
    await call("StackService.ListStacks")
    await call("StackService.UpdateStack", {"stack": {"id": made["id"], "description": "d"}})
    # The stack is in use by nothing yet; a second one is deleted.
    other = await call("StackService.CreateStack", {"stack": {"name": name("s"), "componentIds": ids}})
    await call("StackService.DeleteStack", {"stackId": other["id"]})

    # --- code repositories ------------------------------------------------------------------------
    repo_body = {"name": name("r"), "type": "GITHUB", "url": "https://github.com/acme/ml"}
    repo = await call("CodeRepositoryService.CreateCodeRepository", {**p, "codeRepository": repo_body})
    r = {**p, "codeRepositoryId": repo["id"]}
    await call("CodeRepositoryService.GetCodeRepository", r)
    await call("CodeRepositoryService.ListCodeRepositories", p)
    await call(
        "CodeRepositoryService.UpdateCodeRepository",
        {**p, "codeRepository": {"id": repo["id"], "description": "d"}},
    )
    await call("CodeRepositoryService.DeleteCodeRepository", r)

    # --- pipelines, snapshots, runs ---------------------------------------------------------------
    pipeline = await call("PipelineService.CreatePipeline", {**p, "pipeline": {"name": name("pl")}})
    pl = {**p, "pipelineId": pipeline["id"]}
    await call("PipelineService.GetPipeline", pl)
    await call("PipelineService.ListPipelines", p)
    await call(
        "PipelineService.UpdatePipeline", {**p, "pipeline": {"id": pipeline["id"], "description": "d"}}
    )
    steps = [
        {"name": "load", "image": "python:3.11"},
        {"name": "train", "image": "python:3.11", "upstreamSteps": ["load"]},
    ]
    snapshot = await call(
        "PipelineService.CreateSnapshot", {**pl, "snapshot": {"stackId": made["id"], "steps": steps}}
    )
    sn = {**pl, "snapshotId": snapshot["id"]}
    await call("PipelineService.GetSnapshot", sn)
    await call("PipelineService.ListSnapshots", pl)
    run = await call("RunService.CreateRun", {**p, "snapshotId": snapshot["id"]})
    rn = {**p, "runId": run["id"]}
    assert (await call("RunService.GetRun", rn))["status"] == "INITIALIZING"
    await call("RunService.ListRuns", p)
    await call("RunService.GetRunDag", rn)
    step_runs = (await call("RunService.ListStepRuns", rn))["stepRuns"]
    load = next(s for s in step_runs if s["name"] == "load")
    await call("RunService.GetStepRun", {**rn, "stepRunId": load["id"]})
    await call(
        "RunService.UpdateStepStatus", {**rn, "stepName": "load", "status": "RUNNING", "requestId": "s1"}
    )
    await call("RunService.SendStepHeartbeat", {**rn, "stepName": "load", "requestId": "h1"})
    await call(
        "RunService.RecordRunCallbacks",
        {**rn, "callbacks": [{"stepHeartbeat": {"stepName": "load"}}], "requestId": "cb1"},
    )
    await call("RunService.UpdateRunStatus", {**rn, "status": "RUNNING", "requestId": "r1"})
    # Streams, as SSE: WatchRun starts with the run's current state; WatchRuns from now on, so with
    # nothing happening its first line is the gateway's heartbeat.
    watch_path = f"/v1/workspaces/{stack.workspace_id}/projects/{project['id']}/runs"
    assert '"SNAPSHOT"' in await first_event(client, f"{watch_path}/{run['id']}:watch", token)
    api.exercised.setdefault(M + "RunService.WatchRun", []).append(200)
    assert await first_event(client, f"{watch_path}:watch", token) == ": heartbeat"
    api.exercised.setdefault(M + "RunService.WatchRuns", []).append(200)

    # --- artifacts and lineage --------------------------------------------------------------------
    artifact = await call("ArtifactService.CreateArtifact", {**p, "artifact": {"name": name("a")}})
    a = {**p, "artifactId": artifact["id"]}
    await call("ArtifactService.GetArtifact", a)
    await call("ArtifactService.ListArtifacts", p)
    await call(
        "ArtifactService.UpdateArtifact", {**p, "artifact": {"id": artifact["id"], "description": "d"}}
    )
    version = await call(
        "ArtifactService.CreateArtifactVersion", {**a, "artifactVersion": {"uri": "s3://bucket/a/1"}}
    )
    av = {**a, "artifactVersionId": version["id"]}
    await call("ArtifactService.GetArtifactVersion", av)
    await call("ArtifactService.ListArtifactVersions", a)
    await call(
        "ArtifactService.RecordStepOutputs",
        {
            **p,
            "stepRunId": load["id"],
            "outputs": [
                {"name": "data", "artifactName": name("out"), "artifactVersion": {"uri": "s3://b/o"}}
            ],
        },
    )
    train = next(s for s in step_runs if s["name"] == "train")
    await call(
        "ArtifactService.RecordStepInputs",
        {**p, "stepRunId": train["id"], "inputs": [{"name": "data", "artifactVersionId": version["id"]}]},
    )
    await call("ArtifactService.ListStepArtifacts", {**p, "stepRunId": load["id"]})
    await call("ArtifactService.GetLineage", {**p, "runId": run["id"], "direction": "UPSTREAM"})

    # --- models -----------------------------------------------------------------------------------
    model = await call("ModelService.CreateModel", {**p, "model": {"name": name("m")}})
    m = {**p, "modelId": model["id"]}
    await call("ModelService.GetModel", m)
    await call("ModelService.ListModels", p)
    await call("ModelService.UpdateModel", {**p, "model": {"id": model["id"], "description": "d"}})
    model_version = await call(
        "ModelService.CreateModelVersion", {**m, "modelVersion": {"description": "v1"}}
    )
    mv = {**m, "modelVersionId": model_version["id"]}
    await call("ModelService.GetModelVersion", mv)
    await call("ModelService.ListModelVersions", m)
    await call(
        "ModelService.UpdateModelVersion",
        {**m, "modelVersion": {"id": model_version["id"], "description": "d"}},
    )
    promoted = await call("ModelService.PromoteModelVersion", {**mv, "stage": "STAGING"})
    assert promoted["modelVersion"]["stage"] == "STAGING"
    link = await call(
        "ModelService.CreateModelVersionLink",
        {**mv, "link": {"artifactVersionId": version["id"], "name": "w"}},
    )
    await call("ModelService.ListModelVersionLinks", mv)
    await call("ModelService.DeleteModelVersionLink", {**mv, "linkId": link["id"]})
    await call("ModelService.DeleteModelVersion", mv)
    await call("ModelService.DeleteModel", m)

    # --- annotations ------------------------------------------------------------------------------
    target = {"kind": "RUN", "id": run["id"]}
    await call(
        "AnnotationService.PutMetadata",
        {**p, "target": target, "entries": [{"key": "lr", "value": {"numberValue": 0.1}}]},
    )
    await call("AnnotationService.ListMetadata", {**p, "target": target})
    await call("AnnotationService.AddTags", {**p, "target": target, "tags": ["best"]})
    assert (await call("AnnotationService.ListTags", {**p, "target": target}))["tags"]
    await call("AnnotationService.RemoveTags", {**p, "target": target, "tags": ["best"]})
    await call(
        "AnnotationService.CreateLogPointer",
        {**p, "logPointer": {"target": target, "uri": "s3://logs/run.txt"}},
    )
    await call("AnnotationService.ListLogPointers", {**p, "target": target})

    # --- deletions --------------------------------------------------------------------------------
    # A version a step read is kept (lineage); an unused one goes.
    await call("ArtifactService.DeleteArtifactVersion", av, expect=400, reason="ARTIFACT_VERSION_IN_USE")
    spare_artifact = await call("ArtifactService.CreateArtifact", {**p, "artifact": {"name": name("a")}})
    sa = {**p, "artifactId": spare_artifact["id"]}
    unused = await call(
        "ArtifactService.CreateArtifactVersion", {**sa, "artifactVersion": {"uri": "s3://b/u"}}
    )
    await call("ArtifactService.DeleteArtifactVersion", {**sa, "artifactVersionId": unused["id"]})
    await call("ArtifactService.DeleteArtifact", sa)
    await call("RunService.DeleteRun", rn)
    await call("PipelineService.DeleteSnapshot", sn)
    await call("PipelineService.DeletePipeline", pl)

    missing = annotated_rpcs() - set(api.exercised)
    assert not missing, f"annotated metadata RPCs without a REST case: {sorted(missing)}"
