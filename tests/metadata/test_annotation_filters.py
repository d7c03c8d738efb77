"""List filters on tags and metadata keys (`tags:"x"`, `metadata.KEY ...`), on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event, true

from services.kit.errors import InvalidArgument
from services.kit.rbac_lookup import EVERYTHING, Lookup
from services.metadata import code_repositories as cr
from services.metadata import model_store, rows
from services.metadata.annotation_store import annotation_filters
from services.metadata.annotations import Annotations, Target
from services.metadata.artifact_store import ListQuery, VersionInput
from services.metadata.artifacts import Artifacts, StepOutput
from services.metadata.models import Models
from services.metadata.pipelines import Pipelines
from services.metadata.runs import Runs
from services.metadata.store import (
    CODE_REPOSITORY_SORTABLE,
    PROJECT_FILTERS,
    PROJECT_SORTABLE,
    MetadataStore,
    code_repositories,
    projects,
)
from tests.clock import ManualClock
from tests.metadata.domain_fixtures import WORKLOAD, offline_domain
from tests.metadata.run_fixtures import add_project_and_stack, diamond, snapshot_in_new_project


@contextmanager
def selects(store: MetadataStore) -> Iterator[list[str]]:
    """The SELECT statements the store's engine runs inside the block."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            seen.append(statement)

    event.listen(store.engine.sync_engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(store.engine.sync_engine, "before_cursor_execute", record)


async def _versions(store: MetadataStore, clock: ManualClock) -> tuple[Models, str, str, dict[str, str]]:
    """A project with a model of five versions carrying metadata and tags: models, project, model, ids."""
    project_id, _ = await add_project_and_stack(store, clock)
    models = Models(offline_domain(store, clock))
    notes = Annotations(store, clock)
    model = await models.create_model(WORKLOAD, project_id, "churn", "")
    ids = {}
    for name in ("good", "best", "weak", "odd", "bare"):
        clock.advance(seconds=1)
        ids[name] = (await models.create_version(WORKLOAD, project_id, model.id, name)).id
    metadata: dict[str, list[tuple[str, str, Any]]] = {
        "good": [("accuracy", "number", 0.91), ("framework", "string", "torch"), ("tuned", "bool", True)],
        "best": [
            ("accuracy", "number", 0.97),
            ("framework", "string", "jax"),
            ("lr/schedule", "string", "cos"),
        ],
        "weak": [("accuracy", "number", 0.5), ("tuned", "bool", False), ("report", "uri", "s3://b/r")],
        # Same key, other kinds: a number comparison must skip them (and PostgreSQL must not cast them).
        "odd": [("accuracy", "string", "high"), ("framework", "json", {"name": "torch"})],
    }
    for name, entries in metadata.items():
        await notes.put_metadata(project_id, Target("model_version", ids[name]), entries)
    await notes.add_tags(project_id, Target("model_version", ids["best"]), ["prod", "reviewed"])
    await notes.add_tags(project_id, Target("model_version", ids["weak"]), ["reviewed"])
    # The same tag on the model (another kind) and on another project's version tags nothing here.
    await notes.add_tags(project_id, Target("model", model.id), ["prod"])
    return models, project_id, model.id, ids


VERSION_MATCHES: list[tuple[str, set[str]]] = [
    ('tags:"prod"', {"best"}),
    ('tags:"reviewed"', {"best", "weak"}),
    ('-tags:"reviewed"', {"good", "odd", "bare"}),
    ("tags:*", {"best", "weak"}),
    ("NOT tags:*", {"good", "odd", "bare"}),
    ('tags:"prod" OR tags:"missing"', {"best"}),
    ("metadata.accuracy:*", {"good", "best", "weak", "odd"}),
    ('metadata:"accuracy"', {"good", "best", "weak", "odd"}),
    ("NOT metadata.accuracy:*", {"bare"}),
    ("metadata.accuracy >= 0.9", {"good", "best"}),
    ("metadata.accuracy > 0.91", {"best"}),
    ("metadata.accuracy < 0.9", {"weak"}),
    ("metadata.accuracy = 0.5", {"weak"}),
    ("metadata.accuracy:0.5", {"weak"}),
    ("metadata.accuracy <= -1", set()),
    # Two-valued, as on columns: != also holds where the key is missing or of another kind.
    ("metadata.accuracy != 0.5", {"good", "best", "odd", "bare"}),
    ('metadata.accuracy = "high"', {"odd"}),
    ('metadata.framework = "torch"', {"good"}),
    ('metadata.framework != "torch"', {"best", "weak", "odd", "bare"}),
    ("metadata.tuned = true", {"good"}),
    ("metadata.tuned = false", {"weak"}),
    ('metadata.report = "s3://b/r"', {"weak"}),
    ('metadata."lr/schedule" = "cos"', {"best"}),
    ("metadata.framework:*", {"good", "best", "odd"}),
    ('metadata.accuracy > 0.9 AND tags:"prod"', {"best"}),
    ('metadata.accuracy > 0.9 AND stage = NONE AND NOT tags:"prod"', {"good"}),
    ('metadata.tuned = true OR tags:"prod"', {"good", "best"}),
]


async def test_model_versions_filter_by_tags_and_typed_metadata(metadata_store: MetadataStore) -> None:
    clock = ManualClock()
    models, project_id, model_id, ids = await _versions(metadata_store, clock)
    names = {version_id: name for name, version_id in ids.items()}
    wrong: dict[str, str] = {}
    for text, expected in VERSION_MATCHES:
        page, _ = await models.list_versions(project_id, model_id, EVERYTHING, ListQuery(filter=text))
        found = {names[version.id] for version in page}
        if found != expected:
            wrong[text] = f"expected {sorted(expected)}, got {sorted(found)}"
    assert wrong == {}


async def test_a_filtered_page_is_one_statement_and_pages_keep_the_filter(
    metadata_store: MetadataStore,
) -> None:
    clock = ManualClock()
    models, project_id, model_id, ids = await _versions(metadata_store, clock)
    query = 'metadata.accuracy:* AND NOT tags:"missing"'
    with selects(metadata_store) as seen:
        async with metadata_store.transaction() as tx:
            first, token = await model_store.list_versions(
                tx.conn, project_id, model_id, ListQuery(page_size=2, filter=query), EVERYTHING
            )
    assert len(seen) == 1, seen
    rest, last = await models.list_versions(
        project_id, model_id, EVERYTHING, ListQuery(page_size=2, page_token=token, filter=query)
    )
    assert [v.id for v in first + rest] == [ids["odd"], ids["weak"], ids["best"], ids["good"]]
    assert last == ""
    # The lookup still applies: a filter never widens what the caller may read.
    only, _ = await models.list_versions(
        project_id, model_id, Lookup(all=False, ids=frozenset({ids["good"]})), ListQuery(filter=query)
    )
    assert [v.id for v in only] == [ids["good"]]


async def test_models_pipelines_and_snapshots_filter_by_tags(metadata_store: MetadataStore) -> None:
    clock = ManualClock()
    project_id, stack_id = await add_project_and_stack(metadata_store, clock)
    other_project, _ = await add_project_and_stack(metadata_store, clock)
    domain = offline_domain(metadata_store, clock)
    models, pipelines, notes = Models(domain), Pipelines(domain), Annotations(metadata_store, clock)
    churn = await models.create_model(WORKLOAD, project_id, "churn", "")
    await models.create_model(WORKLOAD, project_id, "fraud", "")
    foreign = await models.create_model(WORKLOAD, other_project, "churn", "")
    nightly = await pipelines.create_pipeline(WORKLOAD, project_id, "nightly", "")
    await pipelines.create_pipeline(WORKLOAD, project_id, "adhoc", "")
    golden = await pipelines.create_snapshot(WORKLOAD, project_id, nightly.id, diamond(stack_id))
    await pipelines.create_snapshot(WORKLOAD, project_id, nightly.id, diamond(stack_id))
    await notes.add_tags(project_id, Target("model", churn.id), ["prod"])
    await notes.add_tags(other_project, Target("model", foreign.id), ["prod"])
    await notes.add_tags(project_id, Target("pipeline", nightly.id), ["scheduled"])
    await notes.add_tags(project_id, Target("snapshot", golden.id), ["golden"])

    listed, _ = await models.list_models(project_id, EVERYTHING, ListQuery(filter='tags:"prod"'))
    assert [m.id for m in listed] == [churn.id]
    listed, _ = await models.list_models(project_id, EVERYTHING, ListQuery(filter='-tags:"prod"'))
    assert [m.name for m in listed] == ["fraud"]
    found, _ = await pipelines.list_pipelines(
        project_id, EVERYTHING, filter_text="tags:*", order_by="", size=10, page_token=""
    )
    assert [p.id for p in found] == [nightly.id]
    shots, _ = await pipelines.list_snapshots(
        project_id, nightly.id, EVERYTHING, filter_text='tags:"golden"', order_by="", size=10, page_token=""
    )
    assert [s.id for s in shots] == [golden.id]


async def test_projects_and_code_repositories_filter_by_tags(metadata_store: MetadataStore) -> None:
    clock = ManualClock()
    tagged, _ = await add_project_and_stack(metadata_store, clock)
    plain, _ = await add_project_and_stack(metadata_store, clock)
    notes = Annotations(metadata_store, clock)
    await notes.add_tags(tagged, Target("project", tagged), ["team-a"])
    fields = {**PROJECT_FILTERS, **annotation_filters("project", projects.c.id, projects.c.id)}
    async with metadata_store.transaction() as tx:
        found, _ = await rows.list_rows(
            tx.conn,
            projects,
            rows.ListQuery(filter='tags:"team-a"'),
            method="ListProjects",
            filter_fields=fields,
            sortable=PROJECT_SORTABLE,
            visible=true(),
        )
        repositories, _ = await rows.list_rows(
            tx.conn,
            code_repositories,
            rows.ListQuery(filter='tags:"x"'),
            method="ListCodeRepositories",
            filter_fields=cr.FILTERS,
            sortable=CODE_REPOSITORY_SORTABLE,
            visible=true(),
            scope={"project_id": plain},
        )
    assert [row["id"] for row in found] == [tagged]
    assert repositories == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('tags = "prod"', 'takes tags:"TAG"'),
        ("tags:prod", "expects a quoted string"),
        ("metadata.accuracy:*x", "unknown field 'x' at position 20"),
        ('metadata.framework > "a"', "compares string values with =, :, != only"),
        ("metadata.tuned < true", "compares bool values with =, :, != only"),
        ("metadata:*", "name a key"),
        ("metadata. = 1", "expected a key after 'metadata.'"),
        ('metadata."' + "k" * 257 + '":*', "keys are at most 256 characters"),
        ("metadata.accuracy = 1e999", "finite number"),
        ("labels:*", "filterable fields: create_time, metadata.KEY, number, stage, stage_time, tags"),
    ],
)
async def test_a_bad_tag_or_metadata_filter_is_invalid_argument_on_filter(
    metadata_store: MetadataStore, text: str, message: str
) -> None:
    clock = ManualClock()
    project_id, _ = await add_project_and_stack(metadata_store, clock)
    models = Models(offline_domain(metadata_store, clock))
    model = await models.create_model(WORKLOAD, project_id, "churn", "")
    with pytest.raises(InvalidArgument) as bad:
        await models.list_versions(project_id, model.id, EVERYTHING, ListQuery(filter=text))
    assert bad.value.violations[0].field == "filter"
    assert message in bad.value.violations[0].description


async def test_metadata_is_not_a_field_of_types_without_metadata(metadata_store: MetadataStore) -> None:
    clock = ManualClock()
    project_id, _ = await add_project_and_stack(metadata_store, clock)
    models = Models(offline_domain(metadata_store, clock))
    with pytest.raises(InvalidArgument) as bad:
        await models.list_models(project_id, EVERYTHING, ListQuery(filter="metadata.accuracy:*"))
    assert "unknown field 'metadata.accuracy'" in bad.value.violations[0].description


async def test_runs_steps_and_artifact_versions_filter_by_tags_and_metadata(
    metadata_store: MetadataStore,
) -> None:
    clock = ManualClock()
    project_id, _, snapshot_id = await snapshot_in_new_project(metadata_store, clock)
    runs, notes, artifacts = (
        Runs(metadata_store, clock),
        Annotations(metadata_store, clock),
        Artifacts(metadata_store, clock),
    )
    made = [
        (await runs.create_run(project_id, snapshot_id, trigger="user", principal="u"))[0] for _ in range(3)
    ]
    await notes.add_tags(project_id, Target("run", made[0].id), ["nightly"])
    await notes.put_metadata(project_id, Target("run", made[1].id), [("loss", "number", 0.2)])
    await notes.put_metadata(project_id, Target("run", made[2].id), [("loss", "number", 0.9)])

    async def run_ids(text: str) -> set[str]:
        page, _ = await runs.list_runs(
            project_id, EVERYTHING, filter_text=text, order_by="", size=50, page_token=""
        )
        return {run.id for run in page}

    assert await run_ids('tags:"nightly"') == {made[0].id}
    assert await run_ids("metadata.loss < 0.5") == {made[1].id}
    assert await run_ids('metadata.loss:* AND status = "INITIALIZING"') == {made[1].id, made[2].id}

    dag = await runs.run_dag(project_id, made[0].id)
    await notes.add_tags(project_id, Target("step", dag.steps[1].id), ["slow"])
    steps, _ = await runs.list_step_runs(
        project_id, made[0].id, filter_text='tags:"slow"', size=50, page_token=""
    )
    assert [step.name for step in steps] == [dag.steps[1].name]

    recorded = await artifacts.record_outputs(
        project_id, dag.steps[0].id, [StepOutput("out", "data", VersionInput("s3://b/1"))], principal="u"
    )
    version = recorded.versions[0]
    await notes.put_metadata(project_id, Target("artifact_version", version.id), [("rows", "number", 10)])
    page, _ = await artifacts.list_versions(
        project_id, version.artifact_id, EVERYTHING, ListQuery(filter="metadata.rows >= 10")
    )
    assert [v.id for v in page] == [version.id]
    page, _ = await artifacts.list_versions(
        project_id, version.artifact_id, EVERYTHING, ListQuery(filter="metadata.rows > 10")
    )
    assert page == []
