"""Annotations: typed metadata, tags and log pointers on a project's resources; no gRPC, no SQL.

Metadata values are typed (number, string, bool, json, uri) and stored in
their JSON form with their kind. Metadata goes on runs, step runs, artifact
versions and model versions; tags on any project resource (and the project);
log pointers on runs and step runs. Permission on the target is the API's
job (it runs before these methods, so a target the caller may not see is
indistinguishable from a missing one); here the target must exist in the
project.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from services.kit.clock import Clock
from services.kit.errors import AlreadyExists, InvalidArgument, NotFound
from services.metadata import annotation_store as st
from services.metadata import validation
from services.metadata.annotation_store import Entry, LogPointerRecord
from services.metadata.artifacts import check_uri
from services.metadata.pipelines import check_id
from services.metadata.store import MetadataStore, RequestKey

METADATA_TARGETS = st.METADATA_KINDS
TAG_TARGETS = tuple(st.TARGET_TABLES)
LOG_TARGETS = ("run", "step")
VALUE_KINDS = ("number", "string", "bool", "json", "uri")
MAX_ENTRIES = 100
MAX_STRING = 4096
MAX_JSON_BYTES = 64 * 1024
_KEY = re.compile(r"[A-Za-z0-9_.:/\-]{1,256}")


@dataclass(frozen=True)
class Target:
    """What an annotation is on: a kind (an RBAC resource type) and an id in the project."""

    kind: str
    id: str


def check_target(target: Target, allowed: Sequence[str], field: str = "target") -> Target:
    """INVALID_ARGUMENT unless the kind is one of `allowed` and the id is given."""
    if target.kind not in allowed:
        raise InvalidArgument(f"{field}.kind", f"must be one of {', '.join(k.upper() for k in allowed)}")
    check_id(target.id, f"{field}.id")
    return target


def check_value(kind: str, value: Any, field: str) -> Any:
    """The value in its stored (JSON) form; INVALID_ARGUMENT naming `field` when it does not fit its kind."""
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise InvalidArgument(field, "must be a finite number")
        return float(value)
    if kind == "string":
        if not isinstance(value, str) or len(value) > MAX_STRING:
            raise InvalidArgument(field, f"must be a string of at most {MAX_STRING} characters")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise InvalidArgument(field, "must be true or false")
        return value
    if kind == "uri":
        if not isinstance(value, str):
            raise InvalidArgument(field, "must be a URI")
        return check_uri(value, field)
    if kind == "json":
        try:
            encoded = json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            raise InvalidArgument(field, "must be a JSON value") from None
        if len(encoded.encode()) > MAX_JSON_BYTES:
            raise InvalidArgument(field, f"must be at most {MAX_JSON_BYTES} bytes as JSON")
        return value
    raise InvalidArgument(field, f"must be one of {', '.join(VALUE_KINDS)}")


class Annotations:
    """Metadata, tags and log pointers of the projects of this workspace."""

    def __init__(self, store: MetadataStore, clock: Clock, new_id: Callable[[], str] | None = None) -> None:
        self._store = store
        self._clock = clock
        self._new_id = new_id or (lambda: str(uuid.uuid4()))

    async def put_metadata(
        self,
        project_id: str,
        target: Target,
        entries: Sequence[tuple[str, str, Any]],
        *,
        principal: str = "",
        request_id: str = "",
    ) -> list[Entry]:
        """Upserts (key, kind, value) entries on a target; a retry of `request_id` changes nothing."""
        check_id(project_id, "project_id")
        check_target(target, METADATA_TARGETS)
        if not entries or len(entries) > MAX_ENTRIES:
            raise InvalidArgument("entries", f"must hold 1 to {MAX_ENTRIES} entries")
        checked: list[tuple[str, str, Any]] = []
        for i, (key, kind, value) in enumerate(entries):
            if not _KEY.fullmatch(key):
                raise InvalidArgument(f"entries[{i}].key", "must be 1-256 of letters, digits and _.:/-")
            checked.append((key, kind, check_value(kind, value, f"entries[{i}].value")))
        if len({key for key, _, _ in checked}) != len(checked):
            raise InvalidArgument("entries", "keys must be distinct")
        method = f"PutMetadata/{project_id}/{target.kind}/{target.id}"
        async with self._store.transaction() as tx:
            request_key = RequestKey(method, principal, request_id)
            known = await request_key.recall(tx.conn)
            if known is not None:
                keys = set(json.loads(known))
                stored, _ = await st.list_entries(tx.conn, project_id, target.kind, target.id, 500, "")
                return [entry for entry in stored if entry.key in keys]
            await self._require(tx.conn, project_id, target)
            now = self._clock.now()
            written = await st.put_entries(tx.conn, project_id, target.kind, target.id, checked, now)
            await request_key.remember(tx.conn, json.dumps([key for key, _, _ in checked]).encode(), now)
        return written

    async def list_metadata(
        self, project_id: str, target: Target, size: int, page_token: str
    ) -> tuple[list[Entry], str]:
        """One page of a target's metadata, by key."""
        check_id(project_id, "project_id")
        check_target(target, METADATA_TARGETS)
        async with self._store.transaction() as tx:
            await self._require(tx.conn, project_id, target)
            return await st.list_entries(tx.conn, project_id, target.kind, target.id, size, page_token)

    async def add_tags(self, project_id: str, target: Target, names: Sequence[str]) -> None:
        """Attaches tags (already attached ones stay)."""
        self._check_tags(project_id, target, names)
        async with self._store.transaction() as tx:
            await self._require(tx.conn, project_id, target)
            await st.add_tags(tx.conn, project_id, target.kind, target.id, names, self._clock.now())

    async def remove_tags(self, project_id: str, target: Target, names: Sequence[str]) -> None:
        """Detaches tags (missing ones are ignored)."""
        self._check_tags(project_id, target, names)
        async with self._store.transaction() as tx:
            await self._require(tx.conn, project_id, target)
            await st.remove_tags(tx.conn, project_id, target.kind, target.id, names)

    async def list_tags(
        self, project_id: str, target: Target, size: int, page_token: str
    ) -> tuple[list[str], str]:
        """One page of a target's tags, alphabetically."""
        check_id(project_id, "project_id")
        check_target(target, TAG_TARGETS)
        async with self._store.transaction() as tx:
            await self._require(tx.conn, project_id, target)
            return await st.list_tags(tx.conn, project_id, target.kind, target.id, size, page_token)

    async def create_log_pointer(
        self,
        project_id: str,
        target: Target,
        uri: str,
        label: str,
        *,
        principal: str = "",
        request_id: str = "",
    ) -> LogPointerRecord:
        """Records where a run's or step run's logs are; the same label and URI again is ALREADY_EXISTS."""
        check_id(project_id, "project_id")
        check_target(target, LOG_TARGETS, "log_pointer.target")
        check_uri(uri, "log_pointer.uri")
        if len(label) > 100:
            raise InvalidArgument("log_pointer.label", "must be at most 100 characters")
        method = f"CreateLogPointer/{project_id}"
        async with self._store.transaction() as tx:
            key = RequestKey(method, principal, request_id)
            known = await key.recall(tx.conn)
            if known is not None:
                pointers, _ = await st.list_log_pointers(tx.conn, project_id, target.kind, target.id, 500, "")
                for pointer in pointers:
                    if pointer.id == known.decode():
                        return pointer
                raise NotFound("log pointer not found")
            await self._require(tx.conn, project_id, target)
            now = self._clock.now()
            record = LogPointerRecord(self._new_id(), project_id, target.kind, target.id, uri, label, now)
            try:
                await st.insert_log_pointer(tx.conn, record)
            except st.PointerTaken:
                raise AlreadyExists("the target already has this log pointer") from None
            await key.remember(tx.conn, record.id.encode(), now)
        return record

    async def list_log_pointers(
        self, project_id: str, target: Target, size: int, page_token: str
    ) -> tuple[list[LogPointerRecord], str]:
        """One page of a target's log pointers, oldest first."""
        check_id(project_id, "project_id")
        check_target(target, LOG_TARGETS)
        async with self._store.transaction() as tx:
            await self._require(tx.conn, project_id, target)
            return await st.list_log_pointers(tx.conn, project_id, target.kind, target.id, size, page_token)

    @staticmethod
    def _check_tags(project_id: str, target: Target, names: Sequence[str]) -> None:
        check_id(project_id, "project_id")
        check_target(target, TAG_TARGETS)
        validation.tags(names, "tags", at_least=1)

    @staticmethod
    async def _require(conn: Any, project_id: str, target: Target) -> None:
        if not await st.target_exists(conn, project_id, target.kind, target.id):
            raise NotFound(f"{target.kind.replace('_', ' ')} not found")
