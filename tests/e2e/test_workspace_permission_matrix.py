"""The permission matrix of the workspace server (metadata), generated from the descriptors.

For every RPC of keel.metadata.v1 (walked from the generated contracts):
- no token → UNAUTHENTICATED;
- carol, a member of the organization whose only roles are elsewhere (project_editor on
  another project of this workspace, workspace_admin of another workspace) →
  PERMISSION_DENIED, identical for an existing and a missing resource; except the
  `workspace.read` rules, which every member holds: MEMBER_ANSWERS says what she sees;
- bob, the admin of another organization → PERMISSION_DENIED, identical for an existing
  and a missing resource (nothing learnt about existence);
- the holder's request (HOLDER_CASES, written by hand) naming another workspace →
  NOT_FOUND, naming none → INVALID_ARGUMENT;
- the holder's request moved to carol's own project while it still names a resource of
  project A → NOT_FOUND (a project role never reaches into another project);
- the holder of the right role (a project or workspace role, a share) → success.

The denial requests are built from each RPC's rule alone, so they cannot drift from the
contracts. An RPC without a holder case fails the test: adding an RPC means adding its row.

Everything is real: authn, RBAC, orgs and the metadata server on 127.0.0.1 (one SQLite
file each: the matrix is about authorization, not storage), tokens issued by authn.
"""

from __future__ import annotations

import importlib
import pkgutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor, field_mask_pb2, message_factory, struct_pb2
from google.protobuf.message import Message

import keel.metadata.v1
from keel.metadata.v1 import annotations_pb2 as an
from keel.metadata.v1 import artifacts_pb2 as ar
from keel.metadata.v1 import artifacts_pb2_grpc as ar_grpc
from keel.metadata.v1 import code_repositories_pb2 as cr
from keel.metadata.v1 import code_repositories_pb2_grpc as cr_grpc
from keel.metadata.v1 import models_pb2 as mo
from keel.metadata.v1 import models_pb2_grpc as mo_grpc
from keel.metadata.v1 import pipelines_pb2 as pp
from keel.metadata.v1 import pipelines_pb2_grpc as pp_grpc
from keel.metadata.v1 import projects_pb2 as pr
from keel.metadata.v1 import runs_pb2 as rp
from keel.metadata.v1 import runs_pb2_grpc as rp_grpc
from keel.metadata.v1 import stacks_pb2 as st
from keel.metadata.v1 import stacks_pb2_grpc as st_grpc
from keel.rbac.v1 import rbac_pb2
from services.kit.rules import rule_for
from services.metadata.flavors import CATALOGUE
from tests.metadata.conftest import (  # noqa: F401  (the fixture and the fixtures it needs)
    MetadataStack,
    create_workspace,
    metadata_database_url,
    metadata_stack,
)
from tests.orgs.conftest import User, orgs_stack, service_urls  # noqa: F401

OK = grpc.StatusCode.OK
DENIED = grpc.StatusCode.PERMISSION_DENIED
NOT_FOUND = grpc.StatusCode.NOT_FOUND
# A watch that is let in and has nothing to send yet must not hold the matrix up.
STREAM_SECONDS = 5.0


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite only: this overrides the backend parameter of tests/conftest.py."""
    return f"sqlite+aiosqlite:///{tmp_path / 'orgs.db'}"


def metadata_methods() -> list[descriptor.MethodDescriptor]:
    """Every RPC of every service in keel.metadata.v1."""
    methods: list[descriptor.MethodDescriptor] = []
    for module_info in pkgutil.iter_modules(keel.metadata.v1.__path__, prefix="keel.metadata.v1."):
        if not module_info.name.endswith("_pb2"):
            continue
        module = importlib.import_module(module_info.name)
        for service in module.DESCRIPTOR.services_by_name.values():
            methods.extend(service.methods)
    return methods


def full_name(method: descriptor.MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def set_path(request: Message, path: str, value: str) -> None:
    *parents, last = path.split(".")
    target = request
    for part in parents:
        target = getattr(target, part)
    setattr(target, last, value)


def strings_in(message: Message) -> set[str]:
    """Every string value anywhere in a message (the ids it names)."""
    found: set[str] = set()
    for field_descriptor, value in message.ListFields():
        values = value if field_descriptor.is_repeated else [value]
        for item in values:
            if isinstance(item, Message):
                found |= strings_in(item)
            elif isinstance(item, str):
                found.add(item)
    return found


def with_fields(request: Message, **values: str) -> Message:
    """A copy of `request` with some top-level string fields replaced."""
    copy = type(request)()
    copy.CopyFrom(request)
    for name, value in values.items():
        setattr(copy, name, value)
    return copy


@dataclass(frozen=True)
class Answer:
    """What one call answered: its code, its details, and the response (or first event)."""

    code: grpc.StatusCode
    details: str = ""
    response: Any = None


@dataclass
class World:
    """The running workspace server, its personas and the ids of what exists in it."""

    stack: MetadataStack
    users: dict[str, User] = field(default_factory=dict, repr=False)
    ids: dict[str, str] = field(default_factory=dict)

    @property
    def ws(self) -> str:
        return self.stack.workspace_id

    @property
    def project(self) -> str:
        """Project A, where every resource of the matrix lives."""
        return self.ids["project"]

    async def call(
        self, method: descriptor.MethodDescriptor, request: Message, persona: str | None
    ) -> Answer:
        """Calls the RPC as `persona` (None: no token); a stream answers with its first event."""
        output = message_factory.GetMessageClass(method.output_type)
        metadata = () if persona is None else self.users[persona].metadata
        serialize: Callable[[Message], bytes] = lambda m: m.SerializeToString()  # noqa: E731
        try:
            if method.server_streaming:
                stream = self.stack.channel.unary_stream(full_name(method), serialize, output.FromString)(
                    request, metadata=metadata, timeout=STREAM_SECONDS
                )
                try:
                    first = await stream.read()
                finally:
                    stream.cancel()
                return Answer(OK, "", None if first is grpc.aio.EOF else first)  # type: ignore[attr-defined]
            unary = self.stack.channel.unary_unary(full_name(method), serialize, output.FromString)
            return Answer(OK, "", await unary(request, metadata=metadata, timeout=30))
        except grpc.aio.AioRpcError as error:
            return Answer(error.code(), error.details() or "")


# Which existing resource a denial request names, by the rule's resource type.
EXISTING_ID_KEY = {
    "project": "project",
    "stack": "stack",
    "component": "orchestrator",
    "code_repository": "repository",
    "pipeline": "pipeline",
    "snapshot": "snapshot",
    "run": "run",
    "step": "step_train",
    "artifact": "artifact",
    "artifact_version": "version",
    "model": "model",
    "model_version": "model_version",
}
# The resources of project A (not the project, not the workspace-level stacks and components).
PROJECT_A_KEYS = (
    "repository",
    "spare_repository",
    "pipeline",
    "spare_pipeline",
    "snapshot",
    "spare_snapshot",
    "run",
    "spare_run",
    "step_load",
    "step_train",
    "artifact",
    "spare_artifact",
    "version",
    "spare_version",
    "model",
    "spare_model",
    "model_version",
    "spare_model_version",
    "link",
)


def denial_request(world: World, method: descriptor.MethodDescriptor, *, existing: bool) -> Message:
    """A request naming this workspace, project A and an existing (or random) resource, from the rule.

    Without a resource field the scope is the resource: the missing variant names a random scope.
    """
    rule = rule_for(full_name(method))
    assert rule is not None
    request = message_factory.GetMessageClass(method.input_type)()
    scopes = {"workspace_id": world.ws, "project_id": world.project}
    for name, value in scopes.items():
        if name in method.input_type.fields_by_name:
            setattr(request, name, value)
    if rule.resource_field:
        resource = world.ids[EXISTING_ID_KEY[rule.resource_type]] if existing else str(uuid.uuid4())
        set_path(request, rule.resource_field, resource)
    elif not existing:
        set_path(request, rule.scope_field, str(uuid.uuid4()))
    return request


Builder = Callable[[World], Message]
Check = Callable[[World, Any], bool]


@dataclass(frozen=True)
class Case:
    """One successful call: who, which request, and what the answer must show (beyond OK)."""

    persona: str
    request: Builder
    check: Check | None = None


def ids_of(items: Any) -> set[str]:
    return {item.id for item in items}


def lists(attribute: str, *keys: str) -> Check:
    """The listed items (response.<attribute>) include the resources named by `keys`."""
    return lambda w, r: {w.ids[k] for k in keys} <= ids_of(getattr(r, attribute))


def returns(key: str) -> Check:
    """The response is the resource named by `key`."""
    return lambda w, r: bool(r.id == w.ids[key])


def viewer(request: Builder, check: Check | None = None) -> Case:
    """project_viewer on project A."""
    return Case("viewer", request, check)


def editor(request: Builder, check: Check | None = None) -> Case:
    """project_editor on project A."""
    return Case("editor", request, check)


def ws_editor(request: Builder, check: Check | None = None) -> Case:
    """workspace_editor on this workspace."""
    return Case("ws_editor", request, check)


def mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


def run_target(w: World) -> an.AnnotationTarget:
    return an.AnnotationTarget(kind=an.AnnotationTarget.RUN, id=w.ids["run"])


# Rows run in this order after every denial: each delete names a spare resource nothing else needs.
HOLDER_CASES: dict[str, Case] = {
    # Projects: a workspace editor creates, project A's admin ("lead") changes and deletes.
    "/keel.metadata.v1.ProjectService/CreateProject": ws_editor(
        lambda w: pr.CreateProjectRequest(workspace_id=w.ws, project=pr.Project(name="created")),
        lambda w, r: bool(r.name == "created"),
    ),
    "/keel.metadata.v1.ProjectService/GetProject": viewer(
        lambda w: pr.GetProjectRequest(workspace_id=w.ws, project_id=w.project), returns("project")
    ),
    # A project role makes that one project visible, and only it.
    "/keel.metadata.v1.ProjectService/ListProjects": viewer(
        lambda w: pr.ListProjectsRequest(workspace_id=w.ws),
        lambda w, r: ids_of(r.projects) == {w.project},
    ),
    "/keel.metadata.v1.ProjectService/UpdateProject": Case(
        "lead",
        lambda w: pr.UpdateProjectRequest(
            workspace_id=w.ws,
            project=pr.Project(id=w.project, display_name="Main"),
            update_mask=mask("display_name"),
        ),
        lambda w, r: bool(r.display_name == "Main"),
    ),
    "/keel.metadata.v1.ProjectService/DeleteProject": Case(
        "lead", lambda w: pr.DeleteProjectRequest(workspace_id=w.ws, project_id=w.ids["spare_project"])
    ),
    # Stacks and components: workspace level, a workspace editor.
    "/keel.metadata.v1.StackService/CreateComponent": ws_editor(
        lambda w: st.CreateComponentRequest(
            workspace_id=w.ws,
            component=st.Component(
                name="tracker",
                type=st.Component.EXPERIMENT_TRACKER,
                flavor="mlflow",
                configuration=_struct({"tracking_uri": "http://mlflow.example.test"}),
            ),
        )
    ),
    "/keel.metadata.v1.StackService/CreateStack": ws_editor(
        lambda w: st.CreateStackRequest(
            workspace_id=w.ws,
            stack=st.Stack(name="created", component_ids=[w.ids["orchestrator"], w.ids["store"]]),
        )
    ),
    "/keel.metadata.v1.StackService/GetStack": ws_editor(
        lambda w: st.GetStackRequest(workspace_id=w.ws, stack_id=w.ids["stack"]), returns("stack")
    ),
    "/keel.metadata.v1.StackService/ListStacks": ws_editor(
        lambda w: st.ListStacksRequest(workspace_id=w.ws), lists("stacks", "stack", "spare_stack")
    ),
    "/keel.metadata.v1.StackService/UpdateStack": ws_editor(
        lambda w: st.UpdateStackRequest(
            workspace_id=w.ws,
            stack=st.Stack(id=w.ids["stack"], description="production"),
            update_mask=mask("description"),
        )
    ),
    "/keel.metadata.v1.StackService/DeleteStack": ws_editor(
        lambda w: st.DeleteStackRequest(workspace_id=w.ws, stack_id=w.ids["spare_stack"])
    ),
    "/keel.metadata.v1.StackService/GetComponent": ws_editor(
        lambda w: st.GetComponentRequest(workspace_id=w.ws, component_id=w.ids["orchestrator"]),
        returns("orchestrator"),
    ),
    "/keel.metadata.v1.StackService/ListComponents": ws_editor(
        lambda w: st.ListComponentsRequest(workspace_id=w.ws),
        lists("components", "orchestrator", "store", "spare_component"),
    ),
    "/keel.metadata.v1.StackService/UpdateComponent": ws_editor(
        lambda w: st.UpdateComponentRequest(
            workspace_id=w.ws,
            component=st.Component(id=w.ids["orchestrator"], description="local runs"),
            update_mask=mask("description"),
        )
    ),
    "/keel.metadata.v1.StackService/DeleteComponent": ws_editor(
        lambda w: st.DeleteComponentRequest(workspace_id=w.ws, component_id=w.ids["spare_component"])
    ),
    # Flavors: any member of the organization (workspace.read).
    "/keel.metadata.v1.StackService/ListFlavors": viewer(
        lambda w: st.ListFlavorsRequest(workspace_id=w.ws), lambda w, r: len(r.flavors) == len(CATALOGUE)
    ),
    "/keel.metadata.v1.StackService/GetFlavor": viewer(
        lambda w: st.GetFlavorRequest(workspace_id=w.ws, type=st.Component.ORCHESTRATOR, flavor="local"),
        lambda w, r: bool(r.name == "local"),
    ),
    # Project A's data: its editor writes, its viewer reads.
    "/keel.metadata.v1.CodeRepositoryService/CreateCodeRepository": editor(
        lambda w: cr.CreateCodeRepositoryRequest(
            workspace_id=w.ws,
            project_id=w.project,
            code_repository=cr.CodeRepository(
                name="created", type=cr.CodeRepository.GIT, url="https://git.example.test/created.git"
            ),
        )
    ),
    "/keel.metadata.v1.CodeRepositoryService/GetCodeRepository": viewer(
        lambda w: cr.GetCodeRepositoryRequest(
            workspace_id=w.ws, project_id=w.project, code_repository_id=w.ids["repository"]
        ),
        returns("repository"),
    ),
    "/keel.metadata.v1.CodeRepositoryService/ListCodeRepositories": viewer(
        lambda w: cr.ListCodeRepositoriesRequest(workspace_id=w.ws, project_id=w.project),
        lists("code_repositories", "repository"),
    ),
    "/keel.metadata.v1.CodeRepositoryService/UpdateCodeRepository": editor(
        lambda w: cr.UpdateCodeRepositoryRequest(
            workspace_id=w.ws,
            project_id=w.project,
            code_repository=cr.CodeRepository(id=w.ids["repository"], description="the tools"),
            update_mask=mask("description"),
        )
    ),
    "/keel.metadata.v1.CodeRepositoryService/DeleteCodeRepository": editor(
        lambda w: cr.DeleteCodeRepositoryRequest(
            workspace_id=w.ws, project_id=w.project, code_repository_id=w.ids["spare_repository"]
        )
    ),
    "/keel.metadata.v1.PipelineService/CreatePipeline": editor(
        lambda w: pp.CreatePipelineRequest(
            workspace_id=w.ws, project_id=w.project, pipeline=pp.Pipeline(name="created")
        )
    ),
    "/keel.metadata.v1.PipelineService/GetPipeline": viewer(
        lambda w: pp.GetPipelineRequest(
            workspace_id=w.ws, project_id=w.project, pipeline_id=w.ids["pipeline"]
        ),
        returns("pipeline"),
    ),
    "/keel.metadata.v1.PipelineService/ListPipelines": viewer(
        lambda w: pp.ListPipelinesRequest(workspace_id=w.ws, project_id=w.project),
        lists("pipelines", "pipeline", "spare_pipeline"),
    ),
    "/keel.metadata.v1.PipelineService/UpdatePipeline": editor(
        lambda w: pp.UpdatePipelineRequest(
            workspace_id=w.ws,
            project_id=w.project,
            pipeline=pp.Pipeline(id=w.ids["pipeline"], description="nightly training"),
            update_mask=mask("description"),
        )
    ),
    "/keel.metadata.v1.PipelineService/DeletePipeline": editor(
        lambda w: pp.DeletePipelineRequest(
            workspace_id=w.ws, project_id=w.project, pipeline_id=w.ids["spare_pipeline"]
        )
    ),
    "/keel.metadata.v1.PipelineService/CreateSnapshot": editor(
        lambda w: pp.CreateSnapshotRequest(
            workspace_id=w.ws, project_id=w.project, pipeline_id=w.ids["pipeline"], snapshot=_snapshot(w)
        )
    ),
    "/keel.metadata.v1.PipelineService/GetSnapshot": viewer(
        lambda w: pp.GetSnapshotRequest(
            workspace_id=w.ws,
            project_id=w.project,
            pipeline_id=w.ids["pipeline"],
            snapshot_id=w.ids["snapshot"],
        ),
        returns("snapshot"),
    ),
    "/keel.metadata.v1.PipelineService/ListSnapshots": viewer(
        lambda w: pp.ListSnapshotsRequest(
            workspace_id=w.ws, project_id=w.project, pipeline_id=w.ids["pipeline"]
        ),
        lists("snapshots", "snapshot", "spare_snapshot"),
    ),
    "/keel.metadata.v1.PipelineService/DeleteSnapshot": editor(
        lambda w: pp.DeleteSnapshotRequest(
            workspace_id=w.ws,
            project_id=w.project,
            pipeline_id=w.ids["pipeline"],
            snapshot_id=w.ids["spare_snapshot"],
        )
    ),
    "/keel.metadata.v1.RunService/CreateRun": editor(
        lambda w: rp.CreateRunRequest(
            workspace_id=w.ws,
            project_id=w.project,
            snapshot_id=w.ids["snapshot"],
            trigger=rp.RunTrigger(kind=rp.RunTrigger.USER),
        )
    ),
    # The run was shared with sharee alone (a share of one resource, no project role).
    "/keel.metadata.v1.RunService/GetRun": Case(
        "sharee",
        lambda w: rp.GetRunRequest(workspace_id=w.ws, project_id=w.project, run_id=w.ids["run"]),
        returns("run"),
    ),
    "/keel.metadata.v1.RunService/ListRuns": viewer(
        lambda w: rp.ListRunsRequest(workspace_id=w.ws, project_id=w.project),
        lists("runs", "run", "spare_run"),
    ),
    "/keel.metadata.v1.RunService/GetRunDag": viewer(
        lambda w: rp.GetRunDagRequest(workspace_id=w.ws, project_id=w.project, run_id=w.ids["run"]),
        lambda w, r: ids_of(r.steps) == {w.ids["step_load"], w.ids["step_train"]},
    ),
    "/keel.metadata.v1.RunService/ListStepRuns": viewer(
        lambda w: rp.ListStepRunsRequest(workspace_id=w.ws, project_id=w.project, run_id=w.ids["run"]),
        lists("step_runs", "step_load", "step_train"),
    ),
    "/keel.metadata.v1.RunService/GetStepRun": Case(
        "sharee",
        lambda w: rp.GetStepRunRequest(
            workspace_id=w.ws, project_id=w.project, run_id=w.ids["run"], step_run_id=w.ids["step_load"]
        ),
        returns("step_load"),
    ),
    "/keel.metadata.v1.RunService/UpdateRunStatus": editor(
        lambda w: rp.UpdateRunStatusRequest(
            workspace_id=w.ws,
            project_id=w.project,
            run_id=w.ids["run"],
            status=rp.Run.QUEUED,
            request_id="matrix-run-queued",
        ),
        lambda w, r: bool(r.applied),
    ),
    "/keel.metadata.v1.RunService/UpdateStepStatus": editor(
        lambda w: rp.UpdateStepStatusRequest(
            workspace_id=w.ws,
            project_id=w.project,
            run_id=w.ids["run"],
            step_name="load",
            status=rp.StepRun.RUNNING,
            request_id="matrix-load-running",
        ),
        lambda w, r: bool(r.applied),
    ),
    "/keel.metadata.v1.RunService/SendStepHeartbeat": editor(
        lambda w: rp.SendStepHeartbeatRequest(
            workspace_id=w.ws, project_id=w.project, run_id=w.ids["run"], step_name="load"
        ),
        lambda w, r: bool(r.applied),
    ),
    # Outputs in a batch also need artifact_version.create, which the editor holds.
    "/keel.metadata.v1.RunService/RecordRunCallbacks": editor(
        lambda w: rp.RecordRunCallbacksRequest(
            workspace_id=w.ws,
            project_id=w.project,
            run_id=w.ids["run"],
            callbacks=[
                rp.RunCallback(step_heartbeat=rp.RunCallback.StepHeartbeat(step_name="load")),
                rp.RunCallback(
                    step_outputs=rp.RunCallback.StepOutputs(
                        step_name="load",
                        outputs=[
                            ar.StepOutput(
                                name="report",
                                artifact_name="report",
                                artifact_version=ar.ArtifactVersion(uri="s3://bucket/report/1"),
                            )
                        ],
                    )
                ),
            ],
            request_id="matrix-callbacks",
        ),
        lambda w, r: [result.applied for result in r.results] == [True, True],
    ),
    "/keel.metadata.v1.RunService/WatchRun": Case(
        "sharee",
        lambda w: rp.WatchRunRequest(workspace_id=w.ws, project_id=w.project, run_id=w.ids["run"]),
        lambda w, r: r is not None and r.kind == rp.RunEvent.SNAPSHOT and r.run.id == w.ids["run"],
    ),
    # From the first change on: the log's second change is the second run of project A.
    "/keel.metadata.v1.RunService/WatchRuns": viewer(
        lambda w: rp.WatchRunsRequest(workspace_id=w.ws, project_id=w.project, after_cursor=1),
        lambda w, r: r is not None and r.kind == rp.RunEvent.CHANGE and r.run.project_id == w.project,
    ),
    "/keel.metadata.v1.RunService/DeleteRun": editor(
        lambda w: rp.DeleteRunRequest(workspace_id=w.ws, project_id=w.project, run_id=w.ids["spare_run"])
    ),
    "/keel.metadata.v1.ArtifactService/CreateArtifact": editor(
        lambda w: ar.CreateArtifactRequest(
            workspace_id=w.ws, project_id=w.project, artifact=ar.Artifact(name="created")
        )
    ),
    "/keel.metadata.v1.ArtifactService/GetArtifact": viewer(
        lambda w: ar.GetArtifactRequest(
            workspace_id=w.ws, project_id=w.project, artifact_id=w.ids["artifact"]
        ),
        returns("artifact"),
    ),
    "/keel.metadata.v1.ArtifactService/ListArtifacts": viewer(
        lambda w: ar.ListArtifactsRequest(workspace_id=w.ws, project_id=w.project),
        lists("artifacts", "artifact", "spare_artifact"),
    ),
    "/keel.metadata.v1.ArtifactService/UpdateArtifact": editor(
        lambda w: ar.UpdateArtifactRequest(
            workspace_id=w.ws,
            project_id=w.project,
            artifact=ar.Artifact(id=w.ids["artifact"], description="training data"),
            update_mask=mask("description"),
        )
    ),
    "/keel.metadata.v1.ArtifactService/DeleteArtifact": editor(
        lambda w: ar.DeleteArtifactRequest(
            workspace_id=w.ws, project_id=w.project, artifact_id=w.ids["spare_artifact"]
        )
    ),
    "/keel.metadata.v1.ArtifactService/CreateArtifactVersion": editor(
        lambda w: ar.CreateArtifactVersionRequest(
            workspace_id=w.ws,
            project_id=w.project,
            artifact_id=w.ids["artifact"],
            artifact_version=ar.ArtifactVersion(uri="s3://bucket/dataset/3"),
        )
    ),
    "/keel.metadata.v1.ArtifactService/GetArtifactVersion": viewer(
        lambda w: ar.GetArtifactVersionRequest(
            workspace_id=w.ws,
            project_id=w.project,
            artifact_id=w.ids["artifact"],
            artifact_version_id=w.ids["version"],
        ),
        returns("version"),
    ),
    "/keel.metadata.v1.ArtifactService/ListArtifactVersions": viewer(
        lambda w: ar.ListArtifactVersionsRequest(
            workspace_id=w.ws, project_id=w.project, artifact_id=w.ids["artifact"]
        ),
        lists("artifact_versions", "version", "spare_version"),
    ),
    "/keel.metadata.v1.ArtifactService/DeleteArtifactVersion": editor(
        lambda w: ar.DeleteArtifactVersionRequest(
            workspace_id=w.ws,
            project_id=w.project,
            artifact_id=w.ids["artifact"],
            artifact_version_id=w.ids["spare_version"],
        )
    ),
    "/keel.metadata.v1.ArtifactService/RecordStepInputs": editor(
        lambda w: ar.RecordStepInputsRequest(
            workspace_id=w.ws,
            project_id=w.project,
            step_run_id=w.ids["step_train"],
            inputs=[ar.StepInput(name="data", artifact_version_id=w.ids["version"])],
        )
    ),
    "/keel.metadata.v1.ArtifactService/RecordStepOutputs": editor(
        lambda w: ar.RecordStepOutputsRequest(
            workspace_id=w.ws,
            project_id=w.project,
            step_run_id=w.ids["step_load"],
            outputs=[
                ar.StepOutput(
                    name="features",
                    artifact_name="features",
                    artifact_version=ar.ArtifactVersion(uri="s3://bucket/features/1"),
                )
            ],
            request_id="matrix-load-outputs",
        )
    ),
    "/keel.metadata.v1.ArtifactService/ListStepArtifacts": viewer(
        lambda w: ar.ListStepArtifactsRequest(
            workspace_id=w.ws, project_id=w.project, step_run_id=w.ids["step_train"]
        ),
        lambda w, r: [link.artifact_version_id for link in r.links] == [w.ids["version"]],
    ),
    "/keel.metadata.v1.ArtifactService/GetLineage": viewer(
        lambda w: ar.GetLineageRequest(
            workspace_id=w.ws,
            project_id=w.project,
            artifact_version_id=w.ids["version"],
            direction=ar.GetLineageRequest.DOWNSTREAM,
        ),
        lambda w, r: {w.ids["version"], w.ids["step_train"]} <= ids_of(r.nodes),
    ),
    "/keel.metadata.v1.ModelService/CreateModel": editor(
        lambda w: mo.CreateModelRequest(
            workspace_id=w.ws, project_id=w.project, model=mo.Model(name="created")
        )
    ),
    "/keel.metadata.v1.ModelService/GetModel": viewer(
        lambda w: mo.GetModelRequest(workspace_id=w.ws, project_id=w.project, model_id=w.ids["model"]),
        returns("model"),
    ),
    "/keel.metadata.v1.ModelService/ListModels": viewer(
        lambda w: mo.ListModelsRequest(workspace_id=w.ws, project_id=w.project),
        lists("models", "model", "spare_model"),
    ),
    "/keel.metadata.v1.ModelService/UpdateModel": editor(
        lambda w: mo.UpdateModelRequest(
            workspace_id=w.ws,
            project_id=w.project,
            model=mo.Model(id=w.ids["model"], description="ranks"),
            update_mask=mask("description"),
        )
    ),
    "/keel.metadata.v1.ModelService/DeleteModel": editor(
        lambda w: mo.DeleteModelRequest(
            workspace_id=w.ws, project_id=w.project, model_id=w.ids["spare_model"]
        )
    ),
    "/keel.metadata.v1.ModelService/CreateModelVersion": editor(
        lambda w: mo.CreateModelVersionRequest(
            workspace_id=w.ws, project_id=w.project, model_id=w.ids["model"]
        )
    ),
    "/keel.metadata.v1.ModelService/GetModelVersion": viewer(
        lambda w: mo.GetModelVersionRequest(
            workspace_id=w.ws,
            project_id=w.project,
            model_id=w.ids["model"],
            model_version_id=w.ids["model_version"],
        ),
        returns("model_version"),
    ),
    "/keel.metadata.v1.ModelService/ListModelVersions": viewer(
        lambda w: mo.ListModelVersionsRequest(
            workspace_id=w.ws, project_id=w.project, model_id=w.ids["model"]
        ),
        lists("model_versions", "model_version", "spare_model_version"),
    ),
    "/keel.metadata.v1.ModelService/UpdateModelVersion": editor(
        lambda w: mo.UpdateModelVersionRequest(
            workspace_id=w.ws,
            project_id=w.project,
            model_id=w.ids["model"],
            model_version=mo.ModelVersion(id=w.ids["model_version"], description="candidate"),
            update_mask=mask("description"),
        ),
        lambda w, r: bool(r.description == "candidate"),
    ),
    "/keel.metadata.v1.ModelService/DeleteModelVersion": editor(
        lambda w: mo.DeleteModelVersionRequest(
            workspace_id=w.ws,
            project_id=w.project,
            model_id=w.ids["model"],
            model_version_id=w.ids["spare_model_version"],
        )
    ),
    "/keel.metadata.v1.ModelService/PromoteModelVersion": editor(
        lambda w: mo.PromoteModelVersionRequest(
            workspace_id=w.ws,
            project_id=w.project,
            model_id=w.ids["model"],
            model_version_id=w.ids["model_version"],
            stage=mo.ModelVersion.STAGING,
        ),
        lambda w, r: bool(r.model_version.stage == mo.ModelVersion.STAGING),
    ),
    "/keel.metadata.v1.ModelService/CreateModelVersionLink": editor(
        lambda w: mo.CreateModelVersionLinkRequest(
            workspace_id=w.ws,
            project_id=w.project,
            model_id=w.ids["model"],
            model_version_id=w.ids["model_version"],
            link=mo.ModelVersionLink(run_id=w.ids["run"], name="trained-by"),
        )
    ),
    "/keel.metadata.v1.ModelService/ListModelVersionLinks": viewer(
        lambda w: mo.ListModelVersionLinksRequest(
            workspace_id=w.ws,
            project_id=w.project,
            model_id=w.ids["model"],
            model_version_id=w.ids["model_version"],
        ),
        lists("links", "link"),
    ),
    "/keel.metadata.v1.ModelService/DeleteModelVersionLink": editor(
        lambda w: mo.DeleteModelVersionLinkRequest(
            workspace_id=w.ws,
            project_id=w.project,
            model_id=w.ids["model"],
            model_version_id=w.ids["model_version"],
            link_id=w.ids["link"],
        )
    ),
    # Annotations on run 1: the rule lets project readers in, the handler asks for the run's own right.
    "/keel.metadata.v1.AnnotationService/PutMetadata": editor(
        lambda w: an.PutMetadataRequest(
            workspace_id=w.ws,
            project_id=w.project,
            target=run_target(w),
            entries=[an.MetadataEntry(key="accuracy", value=an.MetadataValue(number_value=0.9))],
        )
    ),
    "/keel.metadata.v1.AnnotationService/ListMetadata": viewer(
        lambda w: an.ListMetadataRequest(workspace_id=w.ws, project_id=w.project, target=run_target(w)),
        lambda w, r: [entry.key for entry in r.entries] == ["accuracy"],
    ),
    "/keel.metadata.v1.AnnotationService/AddTags": editor(
        lambda w: an.AddTagsRequest(
            workspace_id=w.ws, project_id=w.project, target=run_target(w), tags=["nightly"]
        )
    ),
    "/keel.metadata.v1.AnnotationService/ListTags": viewer(
        lambda w: an.ListTagsRequest(workspace_id=w.ws, project_id=w.project, target=run_target(w)),
        lambda w, r: list(r.tags) == ["nightly"],
    ),
    "/keel.metadata.v1.AnnotationService/RemoveTags": editor(
        lambda w: an.RemoveTagsRequest(
            workspace_id=w.ws, project_id=w.project, target=run_target(w), tags=["nightly"]
        )
    ),
    "/keel.metadata.v1.AnnotationService/CreateLogPointer": editor(
        lambda w: an.CreateLogPointerRequest(
            workspace_id=w.ws,
            project_id=w.project,
            log_pointer=an.LogPointer(target=run_target(w), uri="s3://logs/run-1"),
        )
    ),
    "/keel.metadata.v1.AnnotationService/ListLogPointers": viewer(
        lambda w: an.ListLogPointersRequest(workspace_id=w.ws, project_id=w.project, target=run_target(w)),
        lambda w, r: [pointer.uri for pointer in r.log_pointers] == ["s3://logs/run-1"],
    ),
}

# What carol, a member with no role in this workspace, gets from the rules every member holds
# (workspace.read): what the workspace offers everyone, and no data but her own project's.
MEMBER_ANSWERS: dict[str, Case] = {
    "/keel.metadata.v1.ProjectService/ListProjects": Case(
        "carol",
        lambda w: pr.ListProjectsRequest(workspace_id=w.ws),
        lambda w, r: ids_of(r.projects) == {w.ids["carol_project"]},
    ),
    "/keel.metadata.v1.StackService/ListStacks": Case(
        "carol", lambda w: st.ListStacksRequest(workspace_id=w.ws), lambda w, r: len(r.stacks) == 0
    ),
    "/keel.metadata.v1.StackService/ListComponents": Case(
        "carol", lambda w: st.ListComponentsRequest(workspace_id=w.ws), lambda w, r: len(r.components) == 0
    ),
    "/keel.metadata.v1.StackService/ListFlavors": Case(
        "carol",
        lambda w: st.ListFlavorsRequest(workspace_id=w.ws),
        lambda w, r: len(r.flavors) == len(CATALOGUE),
    ),
    "/keel.metadata.v1.StackService/GetFlavor": Case(
        "carol",
        lambda w: st.GetFlavorRequest(workspace_id=w.ws, type=st.Component.ARTIFACT_STORE, flavor="s3"),
        lambda w, r: bool(r.name == "s3"),
    ),
}


def _struct(value: dict[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(value)
    return message


def _snapshot(w: World) -> pp.Snapshot:
    """load -> train on the world's stack."""
    return pp.Snapshot(
        stack_id=w.ids["stack"],
        steps=[
            pp.StepSpec(name="load", image="python:3.11"),
            pp.StepSpec(name="train", image="python:3.11", upstream_steps=["load"]),
        ],
    )


# ---------------------------------------------------------------------------------------------------
# The world: personas and the resources of project A, made through the server by their holders.


async def _personas(world: World) -> None:
    """Projects first (the project roles need them), then everyone's bindings."""
    stack, ids, users = world.stack, world.ids, world.users
    for key in ("project", "carol_project", "spare_project"):
        ids[key] = (await stack.project(key.replace("_", "-"))).id
    users["ws_editor"] = await stack.user_with_role("workspace_editor")
    users["editor"] = await stack.user_with_role("project_editor", world.project)
    users["viewer"] = await stack.user_with_role("project_viewer", world.project)
    users["lead"] = await stack.user_with_role("project_admin", world.project)
    await stack.bind(users["lead"], "project_admin", ids["spare_project"])
    users["sharee"] = await stack.member()
    # carol: roles only elsewhere (another project here, another workspace of the organization).
    users["carol"] = carol = await stack.user_with_role("project_editor", ids["carol_project"])
    other_workspace, _ = await create_workspace(stack.orgs, stack.organization_id, stack.owner)
    await stack.orgs.rbac_bindings.CreateRoleBinding(
        rbac_pb2.CreateRoleBindingRequest(
            organization_id=stack.organization_id,
            role_binding=rbac_pb2.RoleBinding(
                subject=rbac_pb2.Subject(kind=rbac_pb2.Subject.USER, id=carol.id),
                role_id="workspace_admin",
                scope=rbac_pb2.ResourceRef(
                    organization_id=stack.organization_id, workspace_id=other_workspace
                ),
            ),
        ),
        metadata=stack.owner.metadata,
    )
    # bob: the admin of another organization.
    users["bob"] = await stack.orgs.user()
    await stack.orgs.organization(users["bob"], "Bobcorp")


async def _stacks(world: World) -> None:
    stacks = st_grpc.StackServiceStub(world.stack.channel)
    who = world.users["ws_editor"].metadata

    async def component(type_: Any, flavor: str, configuration: dict[str, Any]) -> str:
        created = await stacks.CreateComponent(
            st.CreateComponentRequest(
                workspace_id=world.ws,
                component=st.Component(
                    name=f"c-{uuid.uuid4().hex[:8]}",
                    type=type_,
                    flavor=flavor,
                    configuration=_struct(configuration),
                ),
            ),
            metadata=who,
        )
        return created.id

    ids = world.ids
    ids["orchestrator"] = await component(st.Component.ORCHESTRATOR, "local", {})
    ids["store"] = await component(st.Component.ARTIFACT_STORE, "local", {"path": "/tmp/keel-artifacts"})
    ids["spare_component"] = await component(
        st.Component.CONTAINER_REGISTRY, "default", {"uri": "registry.example.test"}
    )
    for key in ("stack", "spare_stack"):
        made = await stacks.CreateStack(
            st.CreateStackRequest(
                workspace_id=world.ws,
                stack=st.Stack(name=key.replace("_", "-"), component_ids=[ids["orchestrator"], ids["store"]]),
            ),
            metadata=who,
        )
        ids[key] = made.id


async def _project_data(world: World) -> None:
    """Project A's repositories, pipelines, snapshots, runs, artifacts and models, made by its editor."""
    channel, ids, ws, p = world.stack.channel, world.ids, world.ws, world.project
    who = world.users["editor"].metadata
    repositories = cr_grpc.CodeRepositoryServiceStub(channel)
    pipelines = pp_grpc.PipelineServiceStub(channel)
    runs = rp_grpc.RunServiceStub(channel)
    artifacts = ar_grpc.ArtifactServiceStub(channel)
    models = mo_grpc.ModelServiceStub(channel)
    for key in ("repository", "spare_repository"):
        name = key.replace("_", "-")
        repository = cr.CodeRepository(
            name=name, type=cr.CodeRepository.GIT, url=f"https://git.example.test/{name}"
        )
        made_repository = await repositories.CreateCodeRepository(
            cr.CreateCodeRepositoryRequest(workspace_id=ws, project_id=p, code_repository=repository),
            metadata=who,
        )
        ids[key] = made_repository.id
    for key in ("pipeline", "spare_pipeline"):
        made_pipeline = await pipelines.CreatePipeline(
            pp.CreatePipelineRequest(
                workspace_id=ws, project_id=p, pipeline=pp.Pipeline(name=key.replace("_", "-"))
            ),
            metadata=who,
        )
        ids[key] = made_pipeline.id
    for key in ("snapshot", "spare_snapshot"):
        made_snapshot = await pipelines.CreateSnapshot(
            pp.CreateSnapshotRequest(
                workspace_id=ws, project_id=p, pipeline_id=ids["pipeline"], snapshot=_snapshot(world)
            ),
            metadata=who,
        )
        ids[key] = made_snapshot.id
    for key in ("run", "spare_run"):
        made_run = await runs.CreateRun(
            rp.CreateRunRequest(workspace_id=ws, project_id=p, snapshot_id=ids["snapshot"]), metadata=who
        )
        ids[key] = made_run.id
    steps = await runs.ListStepRuns(
        rp.ListStepRunsRequest(workspace_id=ws, project_id=p, run_id=ids["run"]), metadata=who
    )
    for step in steps.step_runs:
        ids[f"step_{step.name}"] = step.id
    for key in ("artifact", "spare_artifact"):
        made_artifact = await artifacts.CreateArtifact(
            ar.CreateArtifactRequest(
                workspace_id=ws, project_id=p, artifact=ar.Artifact(name=key.replace("_", "-"))
            ),
            metadata=who,
        )
        ids[key] = made_artifact.id
    for number, key in enumerate(("version", "spare_version"), start=1):
        made_version = await artifacts.CreateArtifactVersion(
            ar.CreateArtifactVersionRequest(
                workspace_id=ws,
                project_id=p,
                artifact_id=ids["artifact"],
                artifact_version=ar.ArtifactVersion(uri=f"s3://bucket/dataset/{number}"),
            ),
            metadata=who,
        )
        ids[key] = made_version.id
    for key in ("model", "spare_model"):
        made_model = await models.CreateModel(
            mo.CreateModelRequest(workspace_id=ws, project_id=p, model=mo.Model(name=key.replace("_", "-"))),
            metadata=who,
        )
        ids[key] = made_model.id
    for key in ("model_version", "spare_model_version"):
        made_model_version = await models.CreateModelVersion(
            mo.CreateModelVersionRequest(workspace_id=ws, project_id=p, model_id=ids["model"]), metadata=who
        )
        ids[key] = made_model_version.id
    link = await models.CreateModelVersionLink(
        mo.CreateModelVersionLinkRequest(
            workspace_id=ws,
            project_id=p,
            model_id=ids["model"],
            model_version_id=ids["model_version"],
            link=mo.ModelVersionLink(artifact_version_id=ids["version"], name="data"),
        ),
        metadata=who,
    )
    ids["link"] = link.id


async def _world(stack: MetadataStack) -> World:
    world = World(stack)
    await _personas(world)
    await _stacks(world)
    await _project_data(world)
    # The run is shared with sharee alone: a share of one resource, no project role.
    await stack.share(world.users["sharee"], "run", world.ids["run"], "project_viewer", world.project)
    return world


def test_every_metadata_rpc_is_in_the_matrix() -> None:
    names = {full_name(m) for m in metadata_methods()}
    assert len(names) >= 70, "the metadata services were not found"
    assert sorted(names - HOLDER_CASES.keys()) == [], "add these RPCs to HOLDER_CASES"
    assert sorted(HOLDER_CASES.keys() - names) == [], "these cases name RPCs that no longer exist"
    every_member_reads = {
        name
        for name in names
        if (r := rule_for(name)) and (r.resource_type, r.action) == ("workspace", "read")
    }
    assert sorted(every_member_reads ^ MEMBER_ANSWERS.keys()) == [], (
        "MEMBER_ANSWERS must match workspace.read"
    )


async def test_workspace_permission_matrix(metadata_stack: MetadataStack) -> None:  # noqa: F811
    world = await _world(metadata_stack)
    failures: list[str] = []

    def expect(name: str, who: str, got: Answer, want: grpc.StatusCode) -> None:
        if got.code != want:
            failures.append(f"{name} as {who}: {got.code.name} {got.details!r}, expected {want.name}")

    def verify(name: str, who: str, case: Case, got: Answer) -> None:
        expect(name, who, got, OK)
        if got.code == OK and case.check is not None and not case.check(world, got.response):
            failures.append(f"{name} as {who}: unexpected answer {got.response}")

    methods = sorted(metadata_methods(), key=full_name)
    project_a = {world.ids[key] for key in PROJECT_A_KEYS}
    # Denials and probes first (none may change anything), then every holder call.
    for method in methods:
        name = full_name(method)
        rule = rule_for(name)
        assert rule is not None
        assert rule.kind == "permission", f"{name}: the workspace server has no public or self-service RPC"
        existing = denial_request(world, method, existing=True)
        missing = denial_request(world, method, existing=False)
        expect(name, "anonymous", await world.call(method, existing, None), grpc.StatusCode.UNAUTHENTICATED)

        if name in MEMBER_ANSWERS:
            case = MEMBER_ANSWERS[name]
            verify(
                name,
                "member without a role here",
                case,
                await world.call(method, case.request(world), "carol"),
            )
        else:
            member = await world.call(method, existing, "carol")
            expect(name, "member without a role here", member, DENIED)
            member_missing = await world.call(method, missing, "carol")
            if (member.code, member.details) != (member_missing.code, member_missing.details):
                failures.append(f"{name}: a member tells existing {member} from missing {member_missing}")

        outsider = await world.call(method, existing, "bob")
        outsider_missing = await world.call(method, missing, "bob")
        expect(name, "other organization's admin", outsider, DENIED)
        if (outsider.code, outsider.details) != (outsider_missing.code, outsider_missing.details):
            failures.append(f"{name}: an outsider tells existing {outsider} from missing {outsider_missing}")

        holder = HOLDER_CASES.get(name)
        if holder is None:
            failures.append(f"{name}: no row in HOLDER_CASES")
            continue
        request = holder.request(world)
        other = await world.call(method, with_fields(request, workspace_id=str(uuid.uuid4())), holder.persona)
        expect(name, f"holder {holder.persona} naming another workspace", other, NOT_FOUND)
        empty = await world.call(method, with_fields(request, workspace_id=""), holder.persona)
        expect(name, f"holder {holder.persona} naming no workspace", empty, grpc.StatusCode.INVALID_ARGUMENT)

        # carol may do all this in her own project: never to project A's resources through it.
        if rule.scope_field == "project_id" and strings_in(request) & project_a:
            moved = with_fields(request, project_id=world.ids["carol_project"])
            expect(name, "editor of another project", await world.call(method, moved, "carol"), NOT_FOUND)

    by_name = {full_name(m): m for m in methods}
    for name, case in HOLDER_CASES.items():
        if name not in by_name:
            failures.append(f"{name}: no such RPC")
            continue
        answer = await world.call(by_name[name], case.request(world), case.persona)
        verify(name, f"holder {case.persona}", case, answer)
    assert not failures, "\n".join(failures)
