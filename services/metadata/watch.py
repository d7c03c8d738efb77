"""Live run updates: the wake-up hub and the watch loops of WatchRun / WatchRuns; no gRPC.

Every watcher reads the change log (run_changes) from its own cursor, so
ordering, resumption and replay are exact; notifications only wake it:
in-process from `Runs` after each commit (`ChangeHub.notify`, the only path on
SQLite), and on PostgreSQL from one dedicated asyncpg LISTEN connection per
process, so a change committed by another replica wakes this one's watchers.
A lost listener connection wakes everyone (they re-read) and reconnects.

A watcher reads the counter before the log in one transaction: every sequence
up to that counter value is committed (the counter's row lock orders commits),
so after a short page the cursor moves up to it even when nothing matched,
and quiet filtered watchers do not rescan. A watcher far behind reads pages
of 500 until it catches up. With nothing to send for `heartbeat_seconds` it
sends a HEARTBEAT (and WatchRuns re-asks LookupResources, so new shares show).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import grpc
from sqlalchemy.ext.asyncio import AsyncEngine

from services.kit.errors import InvalidArgument, KeelError, NotFound
from services.kit.filtering import parse_filter
from services.kit.rbac_lookup import Lookup
from services.metadata import run_changes as rc
from services.metadata import run_store as rs
from services.metadata.pipelines import check_id
from services.metadata.run_store import RunRecord, StepRunRecord
from services.metadata.store import MetadataStore

logger = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 15.0
RECONNECT_SECONDS = 1.0

CHANGE = "change"
DELETED = "deleted"
HEARTBEAT = "heartbeat"
SNAPSHOT = "snapshot"


class OutOfRange(KeelError):
    """A cursor the change log no longer (or never) held."""

    code = grpc.StatusCode.OUT_OF_RANGE
    default_reason = "CURSOR_OUT_OF_RANGE"


@dataclass(frozen=True)
class WatchEvent:
    """One event of a watch (run and step are None on HEARTBEAT)."""

    kind: str
    cursor: int
    run: RunRecord | None = None
    step: StepRunRecord | None = None
    change_time: datetime | None = None


class ChangeHub:
    """Wakes this process's watchers; on PostgreSQL also when another replica commits a change."""

    def __init__(self) -> None:
        self._events: set[asyncio.Event] = set()
        self._listener: asyncio.Task[None] | None = None

    @property
    def watchers(self) -> int:
        """How many watchers are subscribed (tests check that cancelled ones leave)."""
        return len(self._events)

    def notify(self, _sequence: int = 0) -> None:
        """Wakes every watcher (they re-read the log from their cursors)."""
        for event in self._events:
            event.set()

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[asyncio.Event]:
        """An event set on every change until the block ends."""
        event = asyncio.Event()
        self._events.add(event)
        try:
            yield event
        finally:
            self._events.discard(event)

    async def start(self, engine: AsyncEngine) -> None:
        """On PostgreSQL, LISTENs on a dedicated connection (first connection awaited)."""
        if engine.dialect.name != "postgresql":
            return
        dsn = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        connected = asyncio.get_running_loop().create_future()
        self._listener = asyncio.create_task(self._listen(dsn, connected), name="metadata-watch-listener")
        await connected

    async def stop(self) -> None:
        """Stops listening."""
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None

    async def _listen(self, dsn: str, connected: asyncio.Future[None]) -> None:
        while True:
            lost = asyncio.Event()
            try:
                conn = await asyncpg.connect(dsn)
            except (OSError, asyncpg.PostgresError) as error:
                if not connected.done():
                    connected.set_exception(error)
                    return
                logger.warning("watch listener cannot connect (%s); retrying", error)
                await asyncio.sleep(RECONNECT_SECONDS)
                continue
            try:
                conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
                await conn.add_listener(rc.NOTIFY_CHANNEL, lambda *_args: self.notify())
                if not connected.done():
                    connected.set_result(None)
                # Anything committed while not listening: watchers re-read.
                self.notify()
                await lost.wait()
                logger.warning("watch listener connection lost; reconnecting")
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.shield(conn.close(timeout=2))
            self.notify()
            await asyncio.sleep(RECONNECT_SECONDS)


class Watches:
    """The watch loops over the store and the hub."""

    def __init__(self, store: MetadataStore, hub: ChangeHub, heartbeat_seconds: float = HEARTBEAT_SECONDS):
        self._store = store
        self._hub = hub
        self._heartbeat = heartbeat_seconds

    async def _start(self, after: int) -> int:
        if after < 0:
            raise InvalidArgument("after_cursor", "must not be negative")
        async with self._store.transaction() as tx:
            purged, last = await rc.cursor_bounds(tx.conn)
        if after and (after < purged or after > last):
            raise OutOfRange(f"cursor {after} is outside the change log ({purged}..{last}); watch from 0")
        return after

    async def watch_run(self, project_id: str, run_id: str, after: int) -> AsyncIterator[WatchEvent]:
        """The run's and its steps' changes after `after` (0: the current state first), then live."""
        check_id(project_id, "project_id")
        check_id(run_id, "run_id")
        cursor = await self._start(after)
        with self._hub.subscribe() as wake:
            if not after:
                async with self._store.transaction() as tx:
                    # Counter first: a change committed after it is delivered, never lost.
                    _, cursor = await rc.cursor_bounds(tx.conn)
                    run = await rs.get_run(tx.conn, project_id, run_id)
                    if run is None:
                        raise NotFound("run not found")
                    steps = await rs.steps_of_run(tx.conn, run_id)
                yield WatchEvent(SNAPSHOT, cursor, run)
                for step in steps:
                    yield WatchEvent(SNAPSHOT, cursor, run, step)

            async def read(cursor: int) -> tuple[int, list[rc.Change]]:
                async with self._store.transaction() as tx:
                    _, last = await rc.cursor_bounds(tx.conn)
                    return last, await rc.changes_of_run(tx.conn, project_id, run_id, cursor)

            async for event in self._follow(wake, cursor, read, end_on_delete=True):
                yield event

    async def watch_runs(
        self,
        project_id: str,
        readable: Callable[[], Awaitable[Lookup]],
        after: int,
        filter_text: str = "",
    ) -> AsyncIterator[WatchEvent]:
        """The project's readable run changes after `after` matching the filter (0: from now), then live."""
        check_id(project_id, "project_id")
        cursor = await self._start(after)
        lookup = [await readable()]
        # Validates the filter before anything is sent (INVALID_ARGUMENT naming "filter").
        parse_filter(filter_text, rc.CHANGE_FILTER)
        with self._hub.subscribe() as wake:
            if not after:
                async with self._store.transaction() as tx:
                    _, cursor = await rc.cursor_bounds(tx.conn)

            async def read(cursor: int) -> tuple[int, list[rc.Change]]:
                async with self._store.transaction() as tx:
                    _, last = await rc.cursor_bounds(tx.conn)
                    found = await rc.changes_of_project(
                        tx.conn, project_id, lookup[0], cursor, filter_text=filter_text
                    )
                    return last, found

            async def refresh() -> None:
                lookup[0] = await readable()

            async for event in self._follow(wake, cursor, read, on_quiet=refresh):
                yield event

    async def _follow(
        self,
        wake: asyncio.Event,
        cursor: int,
        read: Callable[[int], Awaitable[tuple[int, list[rc.Change]]]],
        *,
        end_on_delete: bool = False,
        on_quiet: Callable[[], Awaitable[None]] | None = None,
    ) -> AsyncIterator[WatchEvent]:
        while True:
            wake.clear()
            last, page = await read(cursor)
            for change in page:
                cursor = change.sequence
                kind = DELETED if change.kind == rc.DELETED else CHANGE
                yield WatchEvent(kind, cursor, change.run, change.step, change.change_time)
                if end_on_delete and kind == DELETED:
                    return
            if len(page) >= rc.PAGE:
                continue
            # Everything up to `last` was committed before the read: nothing more below it will come.
            cursor = max(cursor, last)
            try:
                await asyncio.wait_for(wake.wait(), self._heartbeat)
            except TimeoutError:
                if on_quiet is not None:
                    await on_quiet()
                yield WatchEvent(HEARTBEAT, cursor)
