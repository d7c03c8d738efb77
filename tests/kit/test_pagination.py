"""Keyset pagination: walking whole result sets on both backends, tokens bound to their query."""

from __future__ import annotations

import base64
import datetime as dt
import json
import random
from typing import Any

import pytest
from sqlalchemy import Column, DateTime, Float, Integer, MetaData, String, Table, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.kit.errors import InvalidArgument
from services.kit.pagination import (
    OrderBy,
    keyset_after,
    page_size,
    paginate,
    parse_order_by,
    query_fingerprint,
)

metadata = MetaData()
items = Table(
    "items",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("name", String(20), nullable=False),
    Column("rank", Integer, nullable=False),
    Column("created", DateTime(timezone=True), nullable=False),
    Column("label", String(20), nullable=True),
    Column("score", Float, nullable=False),
)
SORTABLE = {
    "id": items.c.id,
    "name": items.c.name,
    "rank": items.c.rank,
    "created": items.c.created,
    "label": items.c.label,
    "score": items.c.score,
}
ROW_COUNT = 230
FINGERPRINT = query_fingerprint("ListItems", filter_text="", scope="ws-1")


def sample_rows() -> list[dict[str, Any]]:
    # Few distinct values per column, so most sort keys repeat and the tie-breaker matters.
    rng = random.Random(158)
    base = dt.datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=dt.UTC)
    return [
        {
            "id": number,
            "name": rng.choice(["alpha", "bravo", "charlie", "delta"]),
            "rank": rng.randrange(-3, 4),
            "created": base + dt.timedelta(seconds=rng.randrange(6), microseconds=rng.randrange(3)),
            "label": rng.choice([None, "blue", "green"]),
            "score": rng.choice([0.1, 2.5, 1e-7]),
        }
        for number in rng.sample(range(1, 10_000), ROW_COUNT)
    ]


ROWS = sample_rows()


@pytest.fixture
async def items_engine(engine: AsyncEngine) -> AsyncEngine:
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
        await conn.execute(insert(items), ROWS)
    return engine


def expected_ids(order: OrderBy, rows: list[dict[str, Any]]) -> list[int]:
    """The order the database must produce, computed independently (NULL sorts largest)."""
    ordered = list(rows)
    # Stable sorts from the least to the most significant key compose into the full ordering.
    for key in reversed(order.keys):
        name = key.name
        ordered.sort(key=lambda row: (1,) if row[name] is None else (0, row[name]), reverse=key.descending)
    return [row["id"] for row in ordered]


async def walk(engine: AsyncEngine, order: OrderBy, size: int, fingerprint: str = FINGERPRINT) -> list[int]:
    seen: list[int] = []
    token = ""
    pages = 0
    while True:
        async with engine.connect() as conn:
            rows, token = await paginate(
                conn, select(items), order=order, page_size=size, page_token=token, fingerprint=fingerprint
            )
        assert len(rows) <= size
        seen.extend(row.id for row in rows)
        pages += 1
        assert pages <= ROW_COUNT + 1, "pagination does not terminate"
        if not token:
            return seen


@pytest.mark.parametrize(
    "order_by",
    [
        "",
        "rank",
        "rank desc",
        "rank desc, name",
        "name, created desc",
        "created",
        "label",
        "label desc, rank",
        "score desc, label, name desc",
        "id desc",
    ],
)
async def test_walking_all_pages_yields_every_row_once_in_order(
    items_engine: AsyncEngine, order_by: str
) -> None:
    order = parse_order_by(order_by, SORTABLE, tie_breaker=items.c.id)

    seen = await walk(items_engine, order, size=7)

    assert seen == expected_ids(order, ROWS)
    assert len(set(seen)) == ROW_COUNT


async def test_exactly_full_last_page_has_no_next_token(items_engine: AsyncEngine) -> None:
    order = parse_order_by("", SORTABLE, tie_breaker=items.c.id)
    async with items_engine.connect() as conn:
        rows, token = await paginate(
            conn, select(items), order=order, page_size=ROW_COUNT, page_token="", fingerprint=FINGERPRINT
        )
    assert len(rows) == ROW_COUNT
    assert token == ""


async def test_rows_inserted_before_the_cursor_do_not_shift_later_pages(items_engine: AsyncEngine) -> None:
    order = parse_order_by("", SORTABLE, tie_breaker=items.c.id)
    async with items_engine.connect() as conn:
        first, token = await paginate(
            conn, select(items), order=order, page_size=10, page_token="", fingerprint=FINGERPRINT
        )
    async with items_engine.begin() as conn:
        await conn.execute(insert(items), [{**ROWS[0], "id": 0}])
    async with items_engine.connect() as conn:
        second, _ = await paginate(
            conn, select(items), order=order, page_size=10, page_token=token, fingerprint=FINGERPRINT
        )
    everything = sorted(row["id"] for row in ROWS)
    assert [row.id for row in first] == everything[:10]
    assert [row.id for row in second] == everything[10:20]


async def test_token_is_rejected_with_another_filter_or_scope_or_order(items_engine: AsyncEngine) -> None:
    order = parse_order_by("rank", SORTABLE, tie_breaker=items.c.id)
    async with items_engine.connect() as conn:
        _, token = await paginate(
            conn, select(items), order=order, page_size=5, page_token="", fingerprint=FINGERPRINT
        )
        other_queries = [
            (order, query_fingerprint("ListItems", filter_text='name = "alpha"', scope="ws-1")),
            (order, query_fingerprint("ListItems", filter_text="", scope="ws-2")),
            (order, query_fingerprint("ListOtherThings", filter_text="", scope="ws-1")),
            (parse_order_by("rank desc", SORTABLE, tie_breaker=items.c.id), FINGERPRINT),
        ]
        for other_order, fingerprint in other_queries:
            with pytest.raises(InvalidArgument, match="different query") as caught:
                await paginate(
                    conn,
                    select(items),
                    order=other_order,
                    page_size=5,
                    page_token=token,
                    fingerprint=fingerprint,
                )
            assert caught.value.violations[0].field == "page_token"


def raw_token(payload: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


async def real_binding(engine: AsyncEngine, order: OrderBy) -> str:
    """The query binding inside a genuine token, so forged tokens differ only where intended."""
    async with engine.connect() as conn:
        _, token = await paginate(
            conn, select(items), order=order, page_size=1, page_token="", fingerprint=FINGERPRINT
        )
    payload = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    return str(payload["q"])


@pytest.mark.parametrize(
    "make_token",
    [
        lambda binding: "garbage",
        lambda binding: "!!!not base64!!!",
        lambda binding: "x" * 5000,
        lambda binding: raw_token(["not", "an", "object"]),
        lambda binding: raw_token({"v": 99, "q": binding, "k": [["i", "1"], ["i", "1"]]}),
        lambda binding: raw_token({"v": 1, "q": binding, "k": [["i", "1"]]}),
        lambda binding: raw_token({"v": 1, "q": binding, "k": [["s", "1"], ["i", "1"]]}),
        lambda binding: raw_token({"v": 1, "q": binding, "k": [["b", True], ["i", "1"]]}),
        lambda binding: raw_token({"v": 1, "q": binding, "k": [["i", "one"], ["i", "1"]]}),
        lambda binding: raw_token({"v": 1, "q": binding, "k": [["z", "1"], ["i", "1"]]}),
        lambda binding: raw_token({"v": 1, "k": [["i", "1"], ["i", "1"]]}),
    ],
    ids=[
        "not-a-token",
        "not-base64",
        "too-long",
        "json-not-object",
        "unknown-version",
        "too-few-keys",
        "string-for-int-column",
        "bool-for-int-column",
        "unparsable-int",
        "unknown-type-tag",
        "no-query-binding",
    ],
)
async def test_damaged_or_forged_token_is_invalid_argument(
    items_engine: AsyncEngine, make_token: Any
) -> None:
    order = parse_order_by("rank", SORTABLE, tie_breaker=items.c.id)
    token = make_token(await real_binding(items_engine, order))
    async with items_engine.connect() as conn:
        with pytest.raises(InvalidArgument) as caught:
            await paginate(
                conn, select(items), order=order, page_size=5, page_token=token, fingerprint=FINGERPRINT
            )
    assert caught.value.violations[0].field == "page_token"


async def test_well_formed_forged_token_seeks_like_a_real_one(items_engine: AsyncEngine) -> None:
    # The control for the forged-token cases above: the same shape with valid values is accepted.
    order = parse_order_by("rank", SORTABLE, tie_breaker=items.c.id)
    token = raw_token({"v": 1, "q": await real_binding(items_engine, order), "k": [["i", "3"], ["i", "0"]]})
    async with items_engine.connect() as conn:
        rows, _ = await paginate(
            conn, select(items), order=order, page_size=500, page_token=token, fingerprint=FINGERPRINT
        )
    # After rank 3 / id 0 come the other rank-3 rows (ids are positive), the top rank.
    assert [row.id for row in rows] == sorted(item["id"] for item in ROWS if item["rank"] == 3)


def test_page_size_zero_means_default_and_large_is_capped() -> None:
    assert page_size(0) == 50
    assert page_size(0, default=20) == 20
    assert page_size(1) == 1
    assert page_size(500) == 500
    assert page_size(501) == 500
    assert page_size(10_000, maximum=100) == 100


def test_negative_page_size_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument) as caught:
        page_size(-1)
    assert caught.value.violations[0].field == "page_size"


def test_order_by_appends_the_tie_breaker_and_normalizes() -> None:
    order = parse_order_by("  rank   DESC ,name", SORTABLE, tie_breaker=items.c.id)
    assert order.canonical == "rank desc, name, id"
    assert parse_order_by("id desc", SORTABLE, tie_breaker=items.c.id).canonical == "id desc"
    assert parse_order_by("", SORTABLE, tie_breaker=items.c.id, default="created desc").canonical == (
        "created desc, id"
    )
    assert parse_order_by("name asc", SORTABLE, tie_breaker=items.c.id).canonical == "name, id"


@pytest.mark.parametrize(
    ("order_by", "message"),
    [
        ("secret", "cannot sort by 'secret'"),
        ("rank descending", "cannot parse"),
        ("rank desc desc", "cannot parse"),
        ("rank,", "cannot parse"),
        ("rank; DROP TABLE items", "cannot parse"),
        ("rank, rank desc", "more than once"),
    ],
)
def test_bad_order_by_is_invalid_argument(order_by: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message) as caught:
        parse_order_by(order_by, SORTABLE, tie_breaker=items.c.id)
    assert caught.value.violations[0].field == "order_by"


def _sql(condition: Any) -> str:
    return str(condition.compile(compile_kwargs={"literal_binds": True}))


def test_keyset_condition_leads_with_a_range_an_index_scan_can_start_from() -> None:
    descending = parse_order_by("rank desc", SORTABLE, tie_breaker=items.c.id)
    ascending = parse_order_by("rank", SORTABLE, tie_breaker=items.c.id)
    nullable = parse_order_by("label", SORTABLE, tie_breaker=items.c.id)

    after_descending = _sql(keyset_after(descending, [3, 17]))
    after_ascending = _sql(keyset_after(ascending, [3, 17]))
    after_nullable = _sql(keyset_after(nullable, ["blue", 17]))

    assert after_descending.startswith("items.rank <= 3 AND (")
    assert after_ascending.startswith("items.rank >= 3 AND (")
    # A nullable ascending key has NULLs after every value (PostgreSQL): no bound can be implied.
    assert not after_nullable.startswith("items.label >=")
