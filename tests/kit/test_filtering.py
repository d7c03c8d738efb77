"""AIP-160 filters: which rows come back on both backends, and what is rejected and why."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import (
    Boolean,
    Column,
    ColumnElement,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    exists,
    insert,
    select,
)
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from services.kit.errors import InvalidArgument
from services.kit.filtering import FilterField, FilterValue, PredicateField, parse_filter

metadata = MetaData()
things = Table(
    "things",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("name", String(40), nullable=False),
    Column("owner", String(40), nullable=True),
    Column("size", Integer, nullable=False),
    Column("score", Float, nullable=False),
    Column("active", Boolean, nullable=False),
    Column("state", Integer, nullable=False),
    Column("created", DateTime(timezone=True), nullable=False),
)
STATES = {"QUEUED": 1, "RUNNING": 2, "SUCCEEDED": 3, "FAILED": 4}
FIELDS = {
    "name": FilterField(things.c.name, "string"),
    "owner": FilterField(things.c.owner, "string"),
    "size": FilterField(things.c.size, "int"),
    "score": FilterField(things.c.score, "float"),
    "active": FilterField(things.c.active, "bool"),
    "state": FilterField(things.c.state, "enum", STATES),
    "created": FilterField(things.c.created, "timestamp"),
}


def at(day: int, hour: int, microsecond: int = 0) -> dt.datetime:
    return dt.datetime(2024, 5, day, hour, 0, 0, microsecond, tzinfo=dt.UTC)


ROWS = [
    (1, "alpha", "ann", 10, 1.5, True, 2, at(1, 10)),
    (2, "bravo", None, 20, 2.5, False, 3, at(2, 10)),
    (3, "charlie", "bob", 30, -1.0, True, 4, at(3, 10)),
    (4, 'quote"d', "ann", -5, 0.0, False, 2, at(4, 10)),
    (5, "o'brien", "ann", 0, 1e3, True, 1, at(5, 10, 500_000)),
    (6, "Alpha", None, 10, 1.5, False, 3, at(1, 9)),
]
ALL_IDS = {row[0] for row in ROWS}


@pytest.fixture
async def things_engine(engine: AsyncEngine) -> AsyncEngine:
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
        await conn.execute(insert(things), [dict(zip(things.c.keys(), row, strict=True)) for row in ROWS])
    return engine


async def matching_ids(engine: AsyncEngine, text: str) -> set[int]:
    condition = parse_filter(text, FIELDS)
    stmt = select(things.c.id)
    if condition is not None:
        stmt = stmt.where(condition)
    async with engine.connect() as conn:
        return set((await conn.execute(stmt)).scalars())


MATCHES: list[tuple[str, set[int]]] = [
    ('name = "alpha"', {1}),
    ('name:"alpha"', {1}),
    ('name = "ALPHA"', set()),
    ('name != "alpha"', ALL_IDS - {1}),
    ('name > "b"', {2, 3, 4, 5}),
    ("size >= 10", {1, 2, 3, 6}),
    ("size < 0", {4}),
    ("size = -5", {4}),
    ("size:10", {1, 6}),
    ("score > 1.5", {2, 5}),
    ("score <= 0", {3, 4}),
    ("score = 1e3", {5}),
    ("score = .5e1", set()),
    ("active = true", {1, 3, 5}),
    ("active != true", {2, 4, 6}),
    ("state = RUNNING", {1, 4}),
    ('state = "RUNNING"', {1, 4}),
    ("state != RUNNING", {2, 3, 5, 6}),
    ('created > "2024-05-02T00:00:00Z"', {2, 3, 4, 5}),
    ('created >= "2024-05-01T12:00:00+02:00"', {1, 2, 3, 4, 5}),
    ('created > "2024-05-05T10:00:00.499999Z"', {5}),
    ('created > "2024-05-05T10:00:00.500000Z"', set()),
    ('owner = "ann"', {1, 4, 5}),
    ('owner != "ann"', {2, 3, 6}),
    ('NOT owner = "ann"', {2, 3, 6}),
    ('-owner = "ann"', {2, 3, 6}),
    ("owner:*", {1, 3, 4, 5}),
    ("NOT owner:*", {2, 6}),
    ('name = "alpha" OR name = "bravo"', {1, 2}),
    # AIP-160: OR binds tighter than AND, so these are active AND (...) and (...) AND active.
    ("active = true AND size > 5 OR size < 0", {1, 3}),
    ("size < 0 OR size > 25 AND active = true", {3}),
    ("(active = true AND size > 5) OR size < 0", {1, 3, 4}),
    ("active = true size > 5", {1, 3}),
    ("NOT (state = RUNNING OR state = FAILED)", {2, 5, 6}),
    ('size = 10 AND (name = "Alpha")', {6}),
    ('((size = 10)) AND NOT (-(name = "Alpha"))', {6}),
    (r'name = "quote\"d"', {4}),
    ("name = 'quote\"d'", {4}),
    ('name = "o\'brien"', {5}),
    (r"name = 'o\'brien'", {5}),
    # Injection attempts are just string literals that match nothing.
    ('name = "x\' OR 1=1 --"', set()),
    (r'name = "alpha\" OR \"1\"=\"1"', set()),
    ('name = "alpha; DROP TABLE things"', set()),
    ("   ", ALL_IDS),
    ("", ALL_IDS),
]


async def test_filters_select_exactly_the_matching_rows(things_engine: AsyncEngine) -> None:
    # One database per backend for all cases (creating a PostgreSQL database per case is slow);
    # every mismatch is reported, not just the first.
    wrong: dict[str, str] = {}
    for text, expected in MATCHES:
        found = await matching_ids(things_engine, text)
        if found != expected:
            wrong[text] = f"expected {sorted(expected)}, got {sorted(found)}"
    assert wrong == {}


async def test_injection_attempt_leaves_the_table_intact(things_engine: AsyncEngine) -> None:
    await matching_ids(things_engine, 'name = "x\'); DROP TABLE things; --"')
    assert await matching_ids(things_engine, "") == ALL_IDS


def test_empty_filter_is_none() -> None:
    assert parse_filter("", FIELDS) is None
    assert parse_filter(" \t ", FIELDS) is None


@pytest.mark.parametrize(
    "url", ["sqlite+aiosqlite://", "postgresql+asyncpg://"], ids=["sqlite", "postgresql"]
)
def test_literals_are_bound_parameters_never_sql_text(url: str) -> None:
    dialect = make_url(url).get_dialect()()
    condition = parse_filter('name = "x\' OR 1=1 --" AND state = FAILED AND size > 12345', FIELDS)
    assert condition is not None
    compiled = condition.compile(dialect=dialect)
    assert "1=1" not in str(compiled)
    assert "12345" not in str(compiled)
    assert set(compiled.params.values()) >= {"x' OR 1=1 --", 4, 12345}


REJECTED: list[tuple[str, str]] = [
    ('colour = "red"', "unknown field 'colour' at position 1; filterable fields: active, created"),
    ('size = "ten"', "field 'size' expects an integer at position 8, found the string 'ten'"),
    ("size = 1.5", "expects an integer"),
    ("size = 99999999999999999999", "64-bit integer"),
    ("size = 1x", "expects an integer"),
    ("score = 1e999", "finite number"),
    ('score = "1"', "expects a number"),
    ("active = 1", "expects true or false"),
    ("active = True", "expects true or false"),
    ("state = EXPLODED", "expects one of FAILED, QUEUED, RUNNING, SUCCEEDED"),
    ("state > RUNNING", "supports only =, != and :"),
    ("active < true", "supports only"),
    ('created > "yesterday"', "RFC 3339"),
    ('created > "2024-05-01T10:00:00"', "with an offset"),
    ("created > 2024", "quoted RFC 3339"),
    ('name = "abc', "unterminated string starting at position 8"),
    (r'name = "a\q"', "unknown escape"),
    ("name = abc", "expects a quoted string"),
    ("name", "expected a comparison operator"),
    ("name =", "found the end of the filter"),
    ("size = - 5", "expects an integer"),
    ('(name = "a"', "expected ')'"),
    ('name = "a")', "unexpected ')' at position 11"),
    ('AND name = "a"', "expected a field name at position 1"),
    ('name = "a" AND', "expected a field name"),
    ('name = "a" OR', "expected a field name"),
    ('name ~ "a"', "unexpected character '~' at position 6"),
    ("name == 1", "expects a quoted string"),
    ('"alpha"', "expected a field name"),
    ("x" * 2001, "longer than 2000 characters"),
    ("(" * 17 + "size = 1" + ")" * 17, "nests deeper than 16 levels"),
    ("NOT (" * 9 + "size = 1" + ")" * 9, "nests deeper than 16 levels"),
    ("NOT NOT size = 1", "expected a field name at position 5, found 'NOT'"),
    (" OR ".join(["size = 1"] * 51), "more than 50 comparisons"),
    ('name = "a") OR (1=1', "unexpected ')'"),
]


@pytest.mark.parametrize(("text", "message"), REJECTED, ids=[case[0][:40] for case in REJECTED])
def test_bad_filter_is_invalid_argument_that_says_why(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_filter(text, FIELDS)
    violation = caught.value.violations[0]
    assert violation.field == "filter"
    assert message in violation.description


def test_deepest_allowed_nesting_and_most_comparisons_are_accepted() -> None:
    assert parse_filter("(" * 16 + "size = 1" + ")" * 16, FIELDS) is not None
    assert parse_filter(" OR ".join(["size = 1"] * 50), FIELDS) is not None


def test_enum_field_without_values_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="enum_values"):
        FilterField(things.c.state, "enum")


def test_naive_timestamp_column_compares_in_utc() -> None:
    naive = Table("n", MetaData(), Column("at", DateTime(timezone=False)))
    condition = parse_filter('at > "2024-05-01T12:00:00+02:00"', {"at": FilterField(naive.c.at, "timestamp")})
    assert condition is not None
    assert list(condition.compile().params.values()) == [dt.datetime(2024, 5, 1, 10, 0)]


# Predicate fields: a repeated field (labels) and a map (props) kept in their own tables, as EXISTS.
labels = Table(
    "thing_labels",
    metadata,
    Column("thing_id", Integer, nullable=False),
    Column("label", String(40), nullable=False),
)
props = Table(
    "thing_props",
    metadata,
    Column("thing_id", Integer, nullable=False),
    Column("key", String(40), nullable=False),
    Column("number", Float, nullable=True),
)
LABELS = [(1, "red"), (1, "big"), (3, "red"), (5, "blue")]
PROPS = [(1, "weight", 2.5), (2, "weight", 10.0), (3, "odd-key", 1.0), (4, "weight", None)]


def label_restriction(key: str, op: str, value: FilterValue) -> ColumnElement[bool]:
    if op != ":" or value.kind not in ("string", "present"):
        raise ValueError('takes labels:"LABEL" or labels:*')
    found = exists().where(labels.c.thing_id == things.c.id)
    return found.where(labels.c.label == value.value) if value.kind == "string" else found


def prop_restriction(key: str, op: str, value: FilterValue) -> ColumnElement[bool]:
    if not key:
        if op == ":" and value.kind == "string":
            return exists().where(props.c.thing_id == things.c.id, props.c.key == value.value)
        raise ValueError('name a key: props.KEY or props:"KEY"')
    having = exists().where(props.c.thing_id == things.c.id, props.c.key == key)
    if value.kind == "present":
        return having
    if value.kind != "number":
        raise ValueError("compares numbers only")
    comparisons = {"=": props.c.number == value.value, ">": props.c.number > value.value}
    if op not in comparisons:
        raise ValueError("takes = and > only")
    return having.where(comparisons[op])


PREDICATES: dict[str, FilterField | PredicateField] = {
    **FIELDS,
    "labels": PredicateField(label_restriction),
    "props": PredicateField(prop_restriction, keyed=True),
}


@pytest.fixture
async def labelled_engine(things_engine: AsyncEngine) -> AsyncEngine:
    async with things_engine.begin() as conn:
        await conn.execute(insert(labels), [{"thing_id": t, "label": label} for t, label in LABELS])
        await conn.execute(insert(props), [{"thing_id": t, "key": k, "number": n} for t, k, n in PROPS])
    return things_engine


PREDICATE_MATCHES: list[tuple[str, set[int]]] = [
    ('labels:"red"', {1, 3}),
    ('-labels:"red"', ALL_IDS - {1, 3}),
    ('labels:"red" labels:"big"', {1}),
    ('labels:"red" OR labels:"blue"', {1, 3, 5}),
    ("labels:*", {1, 3, 5}),
    ("NOT labels:*", {2, 4, 6}),
    ('labels:"red" AND size > 10', {3}),
    ("props.weight:*", {1, 2, 4}),
    ("props.weight > 2", {1, 2}),
    ("props.weight = 2.5", {1}),
    ("props.weight > -1", {1, 2}),
    ('props."odd-key" = 1', {3}),
    ('props:"odd-key"', {3}),
    ("props.missing:*", set()),
]


async def test_predicate_fields_select_exactly_the_matching_rows(labelled_engine: AsyncEngine) -> None:
    wrong: dict[str, str] = {}
    for text, expected in PREDICATE_MATCHES:
        condition = parse_filter(text, PREDICATES)
        assert condition is not None
        async with labelled_engine.connect() as conn:
            found = set((await conn.execute(select(things.c.id).where(condition))).scalars())
        if found != expected:
            wrong[text] = f"expected {sorted(expected)}, got {sorted(found)}"
    assert wrong == {}


def test_a_predicate_field_receives_the_key_operator_and_literal_as_written() -> None:
    seen: list[tuple[str, str, FilterValue]] = []

    def record(key: str, op: str, value: FilterValue) -> ColumnElement[bool]:
        seen.append((key, op, value))
        return things.c.id == 1

    fields = {"m": PredicateField(record, keyed=True), "t": PredicateField(record)}
    parse_filter(
        't:"x" t:* m.a.b != -2 m."a b\\"c" <= 1e2 m:"k" m.flag = true m.s > \'v\'',
        fields,
    )
    assert seen == [
        ("", ":", FilterValue("string", "x")),
        ("", ":", FilterValue("present", None)),
        ("a.b", "!=", FilterValue("number", -2.0)),
        ('a b"c', "<=", FilterValue("number", 100.0)),
        ("", ":", FilterValue("string", "k")),
        ("flag", "=", FilterValue("bool", True)),
        ("s", ">", FilterValue("string", "v")),
    ]


PREDICATE_REJECTED: list[tuple[str, str]] = [
    ('labels = "red"', "field 'labels' at position 8: takes labels:\"LABEL\" or labels:*"),
    ("labels:red", "field 'labels' expects a quoted string, a number, true or false at position 8"),
    ("labels = *", "expects a quoted string, a number, true or false"),
    ('props = "x"', "name a key: props.KEY"),
    ('props.weight = "heavy"', "field 'props.weight' at position 14: compares numbers only"),
    ('props."odd-key" < 1', "field 'props.\"odd-key\"' at position 17: takes = and > only"),
    ("props.weight > 1e999", "expects a finite number at position 16"),
    ("props. = 1", "expected a key after 'props.' at position 8"),
    ('props. "k" = 1', "expected a key after 'props.'"),
    ("props.odd-key = 1", "expected a comparison operator after 'props.odd'"),
    ("colour = 1", "filterable fields: active, created, labels, name, owner, props.KEY, score"),
    ("labels.x:*", "unknown field 'labels.x'"),
]


@pytest.mark.parametrize(
    ("text", "message"), PREDICATE_REJECTED, ids=[case[0][:40] for case in PREDICATE_REJECTED]
)
def test_a_bad_predicate_restriction_is_invalid_argument_on_filter(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_filter(text, PREDICATES)
    violation = caught.value.violations[0]
    assert violation.field == "filter"
    assert message in violation.description
