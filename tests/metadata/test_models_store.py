"""Models, versions, stages, promotion races and links over the store, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from services.kit.errors import Aborted, AlreadyExists, InvalidArgument, NotFound
from services.kit.rbac_lookup import EVERYTHING
from services.metadata import model_store as st
from services.metadata.artifact_store import ListQuery, VersionInput
from services.metadata.artifacts import Artifacts
from services.metadata.models import Models
from services.metadata.store import MetadataStore
from tests.clock import ManualClock
from tests.metadata.artifact_fixtures import project_with_run
from tests.metadata.domain_fixtures import WORKLOAD, offline_domain


async def _stages(store: MetadataStore, model_id: str) -> dict[int, str]:
    async with store.transaction() as tx:
        rows = await tx.conn.execute(
            select(st.model_versions.c.number, st.model_versions.c.stage).where(
                st.model_versions.c.model_id == model_id
            )
        )
        return {row.number: row.stage for row in rows}


async def test_versions_are_numbered_atomically_under_concurrency(metadata_store: MetadataStore) -> None:
    clock = ManualClock()
    run = await project_with_run(metadata_store, clock)
    models = Models(offline_domain(metadata_store, clock))
    model = await models.create_model(WORKLOAD, run.project_id, "churn", "")
    made = await asyncio.gather(
        *(models.create_version(WORKLOAD, run.project_id, model.id, "") for _ in range(10))
    )
    assert sorted(v.number for v in made) == list(range(1, 11))
    assert {v.stage for v in made} == {st.NONE}
    page, _ = await models.list_versions(
        run.project_id, model.id, EVERYTHING, ListQuery(filter="number <= 3")
    )
    assert [v.number for v in page] == [3, 2, 1]


async def test_promotion_archives_the_previous_production_version(metadata_store: MetadataStore) -> None:
    clock = ManualClock()
    run = await project_with_run(metadata_store, clock)
    models = Models(offline_domain(metadata_store, clock))
    model = await models.create_model(WORKLOAD, run.project_id, "churn", "")
    one = await models.create_version(WORKLOAD, run.project_id, model.id, "")
    two = await models.create_version(WORKLOAD, run.project_id, model.id, "")
    first = await models.promote(run.project_id, model.id, one.id, st.PRODUCTION)
    assert first.version.stage == st.PRODUCTION
    assert first.demoted is None
    assert (await models.get_model(run.project_id, model.id)).production_version_id == one.id
    staged = await models.promote(run.project_id, model.id, two.id, st.STAGING)
    assert staged.version.stage == st.STAGING
    assert staged.demoted is None
    second = await models.promote(run.project_id, model.id, two.id, st.PRODUCTION)
    assert second.demoted is not None
    assert second.demoted.id == one.id
    assert second.demoted.stage == st.ARCHIVED
    assert await _stages(metadata_store, model.id) == {1: st.ARCHIVED, 2: st.PRODUCTION}
    assert (await models.get_model(run.project_id, model.id)).production_version_id == two.id
    # Promoting to the stage a version is in changes nothing.
    same = await models.promote(run.project_id, model.id, two.id, st.PRODUCTION)
    assert same.demoted is None
    assert same.version.version == second.version.version
    with pytest.raises(InvalidArgument) as bad:
        await models.promote(run.project_id, model.id, two.id, "gold")
    assert bad.value.violations[0].field == "stage"
    with pytest.raises(Aborted):
        await models.promote(run.project_id, model.id, one.id, st.STAGING, '"1"')


async def test_concurrent_promotions_leave_exactly_one_production_version(
    metadata_store: MetadataStore,
) -> None:
    clock = ManualClock()
    run = await project_with_run(metadata_store, clock)
    models = Models(offline_domain(metadata_store, clock))
    model = await models.create_model(WORKLOAD, run.project_id, "churn", "")
    versions = [await models.create_version(WORKLOAD, run.project_id, model.id, "") for _ in range(6)]
    for _ in range(3):
        results = await asyncio.gather(
            *(models.promote(run.project_id, model.id, v.id, st.PRODUCTION) for v in versions)
        )
        stages = await _stages(metadata_store, model.id)
        assert list(stages.values()).count(st.PRODUCTION) == 1
        winner = next(n for n, s in stages.items() if s == st.PRODUCTION)
        # Every promotion saw itself through: the last one applied is the one in production.
        assert winner in {r.version.number for r in results}
        for v in versions:
            await models.promote(run.project_id, model.id, v.id, st.NONE)


async def test_the_database_refuses_a_second_production_version(metadata_store: MetadataStore) -> None:
    clock = ManualClock()
    run = await project_with_run(metadata_store, clock)
    models = Models(offline_domain(metadata_store, clock))
    model = await models.create_model(WORKLOAD, run.project_id, "churn", "")
    one = await models.create_version(WORKLOAD, run.project_id, model.id, "")
    two = await models.create_version(WORKLOAD, run.project_id, model.id, "")
    await models.promote(run.project_id, model.id, one.id, st.PRODUCTION)
    with pytest.raises(IntegrityError):
        async with metadata_store.transaction() as tx:
            await st.set_stage(tx.conn, run.project_id, model.id, two.id, st.PRODUCTION, clock.now())


async def test_links_point_at_artifact_versions_and_runs_of_the_project(
    metadata_store: MetadataStore,
) -> None:
    clock = ManualClock()
    run = await project_with_run(metadata_store, clock)
    other = await project_with_run(metadata_store, clock)
    models = Models(offline_domain(metadata_store, clock))
    artifacts = Artifacts(metadata_store, clock)
    weights, _ = await artifacts.create_artifact(run.project_id, "weights", "", "")
    av, _ = await artifacts.create_version(run.project_id, weights.id, VersionInput(uri="s3://b/w"))
    model = await models.create_model(WORKLOAD, run.project_id, "churn", "")
    mv = await models.create_version(WORKLOAD, run.project_id, model.id, "")
    first = await models.create_link(
        run.project_id, model.id, mv.id, "artifact_version", av.id, "weights", request_id="l-1"
    )
    replay = await models.create_link(
        run.project_id, model.id, mv.id, "artifact_version", av.id, "weights", request_id="l-1"
    )
    assert replay.id == first.id
    clock.advance(seconds=1)
    await models.create_link(run.project_id, model.id, mv.id, "run", run.run_id, "training")
    with pytest.raises(AlreadyExists):
        await models.create_link(run.project_id, model.id, mv.id, "artifact_version", av.id, "weights")
    with pytest.raises(NotFound):
        await models.create_link(run.project_id, model.id, mv.id, "run", other.run_id, "training")
    links, token = await models.list_links(run.project_id, model.id, mv.id, 1, "")
    assert [link.target_kind for link in links] == ["artifact_version"]
    assert token
    rest, last = await models.list_links(run.project_id, model.id, mv.id, 1, token)
    assert [link.target_id for link in rest] == [run.run_id]
    assert last == ""
    await models.delete_link(run.project_id, model.id, mv.id, first.id)
    with pytest.raises(NotFound):
        await models.delete_link(run.project_id, model.id, mv.id, first.id)


async def test_deleting_a_model_deletes_versions_and_links(metadata_store: MetadataStore) -> None:
    clock = ManualClock()
    run = await project_with_run(metadata_store, clock)
    models = Models(offline_domain(metadata_store, clock))
    model = await models.create_model(WORKLOAD, run.project_id, "churn", "")
    for _ in range(3):
        mv = await models.create_version(WORKLOAD, run.project_id, model.id, "")
        await models.create_link(run.project_id, model.id, mv.id, "run", run.run_id, "training")
    await models.promote(run.project_id, model.id, mv.id, st.PRODUCTION)
    assert await models.delete_model(run.project_id, model.id, "") == 3
    with pytest.raises(NotFound):
        await models.get_model(run.project_id, model.id)
    async with metadata_store.transaction() as tx:
        left = (await tx.conn.execute(select(st.model_version_links.c.id))).all()
    assert left == []
    # The name is free again.
    await models.create_model(WORKLOAD, run.project_id, "churn", "")


async def test_update_version_writes_the_description_and_checks_the_etag(
    metadata_store: MetadataStore,
) -> None:
    clock = ManualClock()
    run = await project_with_run(metadata_store, clock)
    models = Models(offline_domain(metadata_store, clock))
    model = await models.create_model(WORKLOAD, run.project_id, "churn", "")
    other = await models.create_model(WORKLOAD, run.project_id, "fraud", "")
    version = await models.create_version(WORKLOAD, run.project_id, model.id, "first cut")
    clock.advance(seconds=5)
    updated = await models.update_version(
        run.project_id, model.id, version.id, '"1"', {"description": "retrained"}
    )
    assert (updated.description, updated.version, updated.update_time) == ("retrained", 2, clock.now())
    assert (updated.number, updated.stage, updated.stage_time) == (1, st.NONE, version.stage_time)
    assert await models.get_version(run.project_id, model.id, version.id) == updated
    with pytest.raises(Aborted):
        await models.update_version(run.project_id, model.id, version.id, '"1"', {"description": "x"})
    # A promotion changes the etag too; an empty etag skips the check.
    await models.promote(run.project_id, model.id, version.id, st.STAGING)
    with pytest.raises(Aborted):
        await models.update_version(run.project_id, model.id, version.id, '"2"', {"description": "x"})
    last = await models.update_version(run.project_id, model.id, version.id, "", {"description": "final"})
    assert (last.description, last.stage, last.version) == ("final", st.STAGING, 4)
    with pytest.raises(InvalidArgument) as long:
        await models.update_version(run.project_id, model.id, version.id, "", {"description": "x" * 1001})
    assert long.value.violations[0].field == "model_version.description"
    with pytest.raises(NotFound):
        await models.update_version(run.project_id, other.id, version.id, "", {"description": "x"})
    with pytest.raises(NotFound):
        await models.update_version(run.project_id, model.id, "missing", "", {"description": "x"})


async def test_a_model_update_is_conditional_on_the_version_read(metadata_store: MetadataStore) -> None:
    """The write itself checks the version the etag named: a change landing in between is not overwritten."""
    clock = ManualClock()
    run = await project_with_run(metadata_store, clock)
    models = Models(offline_domain(metadata_store, clock))
    model = await models.create_model(WORKLOAD, run.project_id, "churn", "")
    async with metadata_store.transaction() as tx:
        first = await st.update_model(
            tx.conn,
            run.project_id,
            model.id,
            {"description": "a"},
            clock.now(),
            expected_version=model.version,
        )
        stale = await st.update_model(
            tx.conn,
            run.project_id,
            model.id,
            {"description": "b"},
            clock.now(),
            expected_version=model.version,
        )
    assert (first, stale) == (True, False)
    assert (await models.get_model(run.project_id, model.id)).description == "a"
