"""Hot-path statements: written once in SQLAlchemy Core, run on PostgreSQL straight through asyncpg.

Through SQLAlchemy a statement costs 0.2 to 0.4 ms of CPU (cache keys, an
execution context, result objects) against ~0.05 ms for asyncpg itself
(bench/statement_cost.py); on the paths that run many statements per request
(recording runs) that is most of the server's time. A `Prepared` statement is
built once, with bind parameters, and compiled once per dialect. On PostgreSQL
it runs on the open transaction's own asyncpg connection as an asyncpg
prepared statement, with SQLAlchemy's bind processors applied to the values
(so types such as UtcDateTime and JSON behave exactly as through SQLAlchemy),
its result processors to the rows, and driver errors raised as SQLAlchemy's
(IntegrityError and the rest), so callers see no difference. Elsewhere
(SQLite) it runs through SQLAlchemy as usual. Expanding IN parameters are
expanded as SQLAlchemy does, so each list length is its own prepared
statement. Each statement is announced to the engine's
`before_cursor_execute` listeners (with no cursor and no context), so what
counts or traces statements sees these too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, exc
from sqlalchemy.dialects.postgresql.base import PGDialect
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import ClauseElement, Executable
from sqlalchemy.sql.compiler import SQLCompiler

Row = Mapping[str, Any]


@dataclass(frozen=True)
class _Compiled:
    compiled: SQLCompiler
    columns: list[tuple[str, Any]]  # result key → result processor (or None)
    binder: _Binder | None  # the fast way to bind values, when the statement allows it


# A bind position: the parameter's name, the item index for an expanded list (else None), its processor.
_Position = tuple[str, int | None, Any]
# Expanded texts kept per statement (one per combination of list lengths); others are expanded per call.
_MAX_SHAPES = 128


class _Binder:
    """Named values → (SQL text, positional arguments), the same as `_bound` gives, at a fraction of
    the cost: the statement's own fixed values are taken once, and the text and argument positions
    of each combination of list lengths (expanding IN) are worked out once and kept."""

    def __init__(self, compiled: SQLCompiler) -> None:
        self._compiled = compiled
        self._fixed = compiled.construct_params({}, escape_names=False, _check=False)
        self._names = {bind.key: name for bind, name in compiled.bind_names.items()}
        self._required = frozenset(bind.key for bind in compiled.bind_names if bind.required)
        self._expanding = tuple(name for bind, name in compiled.bind_names.items() if bind.expanding)
        self._shapes: dict[tuple[int, ...], tuple[str, list[_Position]]] = {}

    @classmethod
    def of(cls, compiled: SQLCompiler) -> _Binder | None:
        """None for what it does not cover: callable values, literal-rendered values, tuple IN lists."""
        if compiled.literal_execute_params or compiled.positiontup is None:
            return None
        for bind in compiled.bind_names:
            if bind.callable is not None or (bind.expanding and bind.type._is_tuple_type):
                return None
        return cls(compiled)

    def bind(self, values: dict[str, Any]) -> tuple[str, list[Any]]:
        if not self._required <= values.keys():
            return _bound(self._compiled, values)  # raises SQLAlchemy's error naming what is missing
        params = dict(self._fixed)
        for key, value in values.items():
            params[self._names.get(key, key)] = value
        shape = tuple(len(params[name]) for name in self._expanding)
        found = self._shapes.get(shape)
        if found is None:
            found = self._learn(dict(params))  # expanding rewrites the dict it is given
            if len(self._shapes) < _MAX_SHAPES:
                self._shapes[shape] = found
        sql, positions = found
        args = []
        for name, index, process in positions:
            value = params[name] if index is None else params[name][index]
            args.append(value if process is None else process(value))
        return sql, args

    def _learn(self, params: dict[str, Any]) -> tuple[str, list[_Position]]:
        compiled = self._compiled
        processors: Mapping[str, Any] = compiled._bind_processors
        if not self._expanding:
            assert compiled.positiontup is not None
            return compiled.string, [(key, None, processors.get(key)) for key in compiled.positiontup]
        expanded = compiled._process_parameters_for_postcompile(params)
        processors = {**processors, **expanded.processors}
        items = {
            item: (name, index)
            for name, names in expanded.parameter_expansion.items()
            for index, item in enumerate(names)
        }
        assert expanded.positiontup is not None
        return expanded.statement, [
            (*items.get(key, (key, None)), processors.get(key)) for key in expanded.positiontup
        ]


class Prepared:
    """One statement with bind parameters, fast on PostgreSQL; see the module docstring."""

    def __init__(self, statement: Executable) -> None:
        self.statement = statement
        self._compiled: _Compiled | None = None

    async def rows(self, conn: AsyncConnection, values: Mapping[str, Any] | None = None) -> list[Row]:
        """Every row the statement returns (SELECT or RETURNING), as mappings by column name."""
        if conn.dialect.name != "postgresql":
            return [dict(row._mapping) for row in await conn.execute(self.statement, dict(values or {}))]
        compiled = self._for(conn.dialect)
        sql, args = _bind(compiled, dict(values or {}))
        adapted = await _in_transaction(conn)
        _announce(conn, sql, args, many=False)
        try:
            records = await adapted._connection.fetch(sql, *args)
        except Exception as error:
            raise _translated(adapted, conn.dialect, sql, args, error) from error
        return [
            {
                key: value if process is None else process(value)
                for (key, process), value in zip(compiled.columns, record.values(), strict=True)
            }
            for record in records
        ]

    async def first(self, conn: AsyncConnection, values: Mapping[str, Any] | None = None) -> Row | None:
        """The first row, or None."""
        found = await self.rows(conn, values)
        return found[0] if found else None

    async def execute(self, conn: AsyncConnection, values: Mapping[str, Any] | None = None) -> None:
        """Runs the statement once, for its effect."""
        await self.execute_many(conn, [values or {}])

    async def execute_many(self, conn: AsyncConnection, values: Sequence[Mapping[str, Any]]) -> None:
        """Runs the statement once per set of values (one pipelined executemany on PostgreSQL)."""
        if not values:
            return
        if conn.dialect.name != "postgresql":
            await conn.execute(self.statement, [dict(each) for each in values])
            return
        compiled = self._for(conn.dialect)
        bound = [_bind(compiled, dict(each)) for each in values]
        sql = bound[0][0]
        if any(other != sql for other, _ in bound):
            raise ValueError("execute_many takes values that expand to one statement")
        adapted = await _in_transaction(conn)
        _announce(conn, sql, [args for _, args in bound], many=True)
        try:
            await adapted._connection.executemany(sql, [args for _, args in bound])
        except Exception as error:
            raise _translated(adapted, conn.dialect, sql, bound[0][1], error) from error

    def _for(self, dialect: Dialect) -> _Compiled:
        if self._compiled is None:
            compiled = cast(ClauseElement, self.statement).compile(dialect=dialect)
            assert isinstance(compiled, SQLCompiler)
            columns = [
                (entry.keyname, entry.type._cached_result_processor(dialect, None))
                for entry in compiled._result_columns
            ]
            self._compiled = _Compiled(compiled, columns, _Binder.of(compiled))
        return self._compiled


def _bind(compiled: _Compiled, values: dict[str, Any]) -> tuple[str, list[Any]]:
    if compiled.binder is not None:
        return compiled.binder.bind(values)
    return _bound(compiled.compiled, values)


def _bound(compiled: SQLCompiler, values: dict[str, Any]) -> tuple[str, list[Any]]:
    """The SQL text and its positional arguments, processed as SQLAlchemy would."""
    params = compiled.construct_params(values, escape_names=False)
    processors: Mapping[str, Any] = compiled._bind_processors
    sql: str = compiled.string
    positions: Sequence[str] | None = compiled.positiontup
    if compiled.post_compile_params or compiled.literal_execute_params:
        expanded = compiled._process_parameters_for_postcompile(params)
        sql, positions = expanded.statement, expanded.positiontup
        processors = {**processors, **expanded.processors}
    assert positions is not None  # asyncpg's dialect is positional
    return sql, [processors[key](params[key]) if key in processors else params[key] for key in positions]


async def _in_transaction(conn: AsyncConnection) -> Any:
    """SQLAlchemy's adapter of the asyncpg connection under `conn`, in a begun transaction: SQLAlchemy
    begins one at a connection's first statement and sends BEGIN lazily, so both are done here."""
    if not conn.in_transaction():
        await conn.begin()  # SQLAlchemy's autobegin; the caller's commit or rollback ends it
    # The open connection's pooled DBAPI connection without get_raw_connection's greenlet switch
    # (a cost on every statement); that path only when it needs reconnecting.
    sync = conn.sync_connection
    pooled = None if sync is None else sync._dbapi_connection
    if pooled is None:
        pooled = await conn.get_raw_connection()
    adapted = pooled.dbapi_connection
    assert adapted is not None
    if adapted._transaction is None:
        await adapted._start_transaction()
    return adapted


def _announce(conn: AsyncConnection, sql: str, args: list[Any], *, many: bool) -> None:
    sync = conn.sync_connection
    if sync is not None and sync.dispatch.before_cursor_execute:
        sync.dispatch.before_cursor_execute(sync, None, sql, args, None, many)


def _translated(adapted: Any, dialect: Dialect, sql: str, args: list[Any], error: Exception) -> Exception:
    """A driver error as SQLAlchemy raises it (IntegrityError, OperationalError, …)."""
    try:
        adapted._handle_exception(error)  # raises the adapter's DBAPI error for it
    except Exception as dbapi_error:
        return exc.DBAPIError.instance(sql, args, dbapi_error, dialect.loaded_dbapi.Error)
    return error


@dataclass(frozen=True)
class Batch:
    """Rows bound as one array per column and read back with PostgreSQL's unnest, so one statement
    text (prepared once) serves a batch of any size, where a multi-row VALUES would be a new
    statement per size. `columns` maps each column to its PostgreSQL type; parameters are named
    `prefix + column`."""

    columns: Mapping[str, str]
    prefix: str = ""

    @classmethod
    def of(cls, table: Table, names: Sequence[str] = (), prefix: str = "") -> Batch:
        """The columns `names` (default: all) of `table`, typed as PostgreSQL declares them. A length
        is left out (an explicit cast to VARCHAR(n) would cut a longer value; the column refuses it)."""
        dialect = PGDialect()  # type: ignore[no-untyped-call]  # SQLAlchemy leaves its __init__ untyped
        return cls(
            {
                name: re.sub(r"\(\d+\)", "", table.c[name].type.compile(dialect=dialect))
                for name in (names or table.c.keys())
            },
            prefix,
        )

    def source(self, alias: str, *, ordinality: str = "") -> str:
        """`unnest(...) AS alias(columns)` (with a 1-based `ordinality` column when named)."""
        arrays = ", ".join(f"CAST(:{self.prefix}{name} AS {kind}[])" for name, kind in self.columns.items())
        names = [*self.columns, ordinality] if ordinality else list(self.columns)
        with_ordinality = " WITH ORDINALITY" if ordinality else ""
        return f"unnest({arrays}){with_ordinality} AS {alias}({', '.join(names)})"

    def names(self, alias: str = "") -> str:
        """The column names, comma separated (each qualified by `alias` when given)."""
        return ", ".join(f"{alias}.{name}" if alias else name for name in self.columns)

    def params(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
        """The arrays to bind for these rows."""
        return {f"{self.prefix}{name}": [row[name] for row in rows] for name in self.columns}
