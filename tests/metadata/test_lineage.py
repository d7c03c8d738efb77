"""Lineage on a hand-built graph, on SQLite and PostgreSQL: shape, direction, bounds, one query per level."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from services.kit.errors import InvalidArgument, NotFound
from services.kit.rbac_lookup import EVERYTHING, Lookup
from services.metadata import lineage as ln
from services.metadata.artifact_store import VersionInput
from services.metadata.artifacts import Artifacts, StepOutput
from services.metadata.store import MetadataStore
from tests.clock import ManualClock
from tests.metadata.artifact_fixtures import RunOfSteps, new_run, project_with_run
from tests.statements import counting_statements


async def _output(artifacts: Artifacts, run: RunOfSteps, step: str, artifact: str) -> str:
    made = await artifacts.record_outputs(
        run.project_id, run.steps[step], [StepOutput("out", artifact, VersionInput(uri=f"s3://b/{artifact}"))]
    )
    return made.versions[0].id


async def diamond_lineage(store: MetadataStore, clock: ManualClock) -> tuple[RunOfSteps, dict[str, str]]:
    """load -> raw; train(raw) -> model; features(raw) -> feats; evaluate(model, feats) -> report."""
    run = await project_with_run(store, clock)
    artifacts = Artifacts(store, clock)
    versions = {"raw": await _output(artifacts, run, "load", "raw")}
    await artifacts.record_inputs(run.project_id, run.steps["train"], [("data", versions["raw"])])
    await artifacts.record_inputs(run.project_id, run.steps["features"], [("data", versions["raw"])])
    versions["model"] = await _output(artifacts, run, "train", "model")
    versions["feats"] = await _output(artifacts, run, "features", "feats")
    await artifacts.record_inputs(
        run.project_id, run.steps["evaluate"], [("model", versions["model"]), ("feats", versions["feats"])]
    )
    versions["report"] = await _output(artifacts, run, "evaluate", "report")
    return run, versions


def _names(graph: ln.Graph, run: RunOfSteps, versions: dict[str, str]) -> set[tuple[str, int]]:
    by_id = {**{v: k for k, v in versions.items()}, **{v: k for k, v in run.steps.items()}}
    return {(by_id.get(node.id, node.id), node.depth) for node in graph.nodes}


@contextmanager
def counting(store: MetadataStore) -> Iterator[list[str]]:
    """The SELECTs the store runs inside the block."""
    with counting_statements(store.engine) as statements:
        selects: list[str] = []
        yield selects
    selects.extend(s for s in statements if s.lstrip().upper().startswith("SELECT"))


async def test_upstream_of_the_report_is_the_whole_diamond(metadata_store: MetadataStore) -> None:
    run, v = await diamond_lineage(metadata_store, ManualClock())
    lineages = ln.Lineages(metadata_store)
    graph = await lineages.lineage(
        run.project_id, artifact_version_id=v["report"], direction=ln.UPSTREAM, depth=3
    )
    assert _names(graph, run, v) == {
        ("report", 0),
        ("evaluate", 1),
        ("model", 1),
        ("feats", 1),
        ("train", 2),
        ("features", 2),
        ("raw", 2),
        ("load", 3),
    }
    assert not graph.truncated
    # The diamond's edges: 4 outputs and 4 inputs, each once.
    assert len(graph.edges) == 8
    assert {(e.direction, e.name) for e in graph.edges if e.step_run_id == run.steps["evaluate"]} == {
        ("input", "model"),
        ("input", "feats"),
        ("output", "out"),
    }
    assert next(n for n in graph.nodes if n.id == v["raw"]).run_id == run.run_id


async def test_downstream_fans_out_and_joins_once(metadata_store: MetadataStore) -> None:
    run, v = await diamond_lineage(metadata_store, ManualClock())
    graph = await ln.Lineages(metadata_store).lineage(
        run.project_id, artifact_version_id=v["raw"], direction=ln.DOWNSTREAM, depth=5
    )
    assert _names(graph, run, v) == {
        ("raw", 0),
        ("train", 1),
        ("features", 1),
        ("model", 1),
        ("feats", 1),
        ("evaluate", 2),
        ("report", 2),
    }
    assert not graph.truncated


async def test_depth_bounds_the_walk_and_says_so(metadata_store: MetadataStore) -> None:
    run, v = await diamond_lineage(metadata_store, ManualClock())
    lineages = ln.Lineages(metadata_store)
    graph = await lineages.lineage(
        run.project_id, artifact_version_id=v["report"], direction=ln.UPSTREAM, depth=1
    )
    assert _names(graph, run, v) == {("report", 0), ("evaluate", 1), ("model", 1), ("feats", 1)}
    assert graph.truncated
    ends = await lineages.lineage(
        run.project_id, artifact_version_id=v["raw"], direction=ln.UPSTREAM, depth=1
    )
    assert _names(ends, run, v) == {("raw", 0), ("load", 1)}
    assert not ends.truncated
    for bad in (-1, 11):
        with pytest.raises(InvalidArgument) as error:
            await lineages.lineage(
                run.project_id, artifact_version_id=v["raw"], direction=ln.UPSTREAM, depth=bad
            )
        assert error.value.violations[0].field == "depth"


async def test_node_bound_cuts_the_graph(metadata_store: MetadataStore) -> None:
    run, v = await diamond_lineage(metadata_store, ManualClock())
    async with metadata_store.transaction() as tx:
        graph = await ln.walk_from_version(tx.conn, run.project_id, v["report"], ln.UPSTREAM, 10, max_nodes=3)
    assert len(graph.nodes) == 3
    assert graph.truncated
    present = {n.id for n in graph.nodes}
    assert all(e.step_run_id in present and e.artifact_version_id in present for e in graph.edges)


async def test_one_query_per_level(metadata_store: MetadataStore) -> None:
    run, v = await diamond_lineage(metadata_store, ManualClock())
    with counting(metadata_store) as statements:
        async with metadata_store.transaction() as tx:
            await ln.walk_from_version(tx.conn, run.project_id, v["report"], ln.UPSTREAM, 10)
    # The start version, then one query per level (3 levels, the last one finds nothing onward: a 4th).
    assert len(statements) <= 5, statements


async def test_a_cycle_ends_by_the_visited_set(metadata_store: MetadataStore) -> None:
    clock = ManualClock()
    run, v = await diamond_lineage(metadata_store, clock)
    # Malformed on purpose: load also "consumed" the report it indirectly produced.
    await Artifacts(metadata_store, clock).record_inputs(
        run.project_id, run.steps["load"], [("late", v["report"])]
    )
    graph = await ln.Lineages(metadata_store).lineage(
        run.project_id, artifact_version_id=v["raw"], direction=ln.DOWNSTREAM, depth=10
    )
    ids = [n.id for n in graph.nodes]
    assert len(ids) == len(set(ids)) == 8


async def test_run_lineage_starts_from_its_steps(metadata_store: MetadataStore) -> None:
    clock = ManualClock()
    run, v = await diamond_lineage(metadata_store, clock)
    # A second run consumes the first run's report.
    second = await new_run(metadata_store, clock, run.project_id, run.snapshot_id)
    artifacts = Artifacts(metadata_store, clock)
    await artifacts.record_inputs(second.project_id, second.steps["load"], [("seed", v["report"])])
    lineages = ln.Lineages(metadata_store)
    upstream = await lineages.lineage(run.project_id, run_id=second.run_id, direction=ln.UPSTREAM, depth=1)
    assert {n.id for n in upstream.nodes} == {second.steps["load"], v["report"]}
    assert upstream.truncated
    further = await lineages.lineage(run.project_id, run_id=second.run_id, direction=ln.UPSTREAM, depth=2)
    assert {run.steps["evaluate"], v["model"], v["feats"]} <= {n.id for n in further.nodes}
    downstream = await lineages.lineage(run.project_id, run_id=run.run_id, direction=ln.DOWNSTREAM, depth=2)
    assert second.steps["load"] in {n.id for n in downstream.nodes}
    with pytest.raises(NotFound):
        await lineages.lineage(run.project_id, run_id="no-such-run", direction=ln.UPSTREAM, depth=1)
    other = await project_with_run(metadata_store, clock)
    with pytest.raises(NotFound):
        await lineages.lineage(other.project_id, artifact_version_id=v["raw"], direction=ln.UPSTREAM, depth=1)


def test_the_readable_part_stops_at_what_is_hidden() -> None:
    """raw --load--> clean --train--> model; the caller may read `clean` and runs r1 only."""
    nodes = [
        ln.Node(ln.ARTIFACT_VERSION, "model", "", "a3", 0),
        ln.Node(ln.STEP_RUN, "train", "r2", "", 1),
        ln.Node(ln.ARTIFACT_VERSION, "clean", "", "a2", 2),
        ln.Node(ln.STEP_RUN, "load", "r1", "", 3),
        ln.Node(ln.ARTIFACT_VERSION, "raw", "", "a1", 4),
    ]
    edges = [
        ln.Edge("train", "model", "output", "out"),
        ln.Edge("train", "clean", "input", "in"),
        ln.Edge("load", "clean", "output", "out"),
        ln.Edge("load", "raw", "input", "in"),
    ]
    graph = ln.Graph(nodes, edges)
    assert ln.readable_part(graph, "p", EVERYTHING, EVERYTHING) is graph
    # Everything but the `train` run: the walk from `model` cannot get past it.
    no_train = Lookup(all=False, ids=frozenset({"r1"}))
    with_start = ln.readable_part(graph, "p", EVERYTHING, no_train)
    assert [n.id for n in with_start.nodes] == ["model"]
    assert with_start.edges == []
    # Every run, but not the raw data: the rest stays connected.
    no_raw = Lookup(all=False, ids=frozenset({"model", "clean"}))
    part = ln.readable_part(graph, "p", no_raw, EVERYTHING)
    assert [n.id for n in part.nodes] == ["model", "train", "clean", "load"]
    assert {(e.step_run_id, e.artifact_version_id) for e in part.edges} == {
        ("train", "model"),
        ("train", "clean"),
        ("load", "clean"),
    }
    # A project-wide grant counts as readable; a start the caller may not read is NOT_FOUND.
    assert (
        ln.readable_part(graph, "p", Lookup(all=False, project_ids=frozenset({"p"})), EVERYTHING).nodes
        == nodes
    )
    with pytest.raises(NotFound):
        ln.readable_part(graph, "p", Lookup(all=False, ids=frozenset({"raw"})), EVERYTHING)
