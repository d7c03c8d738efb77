"""Which resources of a type a caller may read: RBAC's LookupResources, cached, as a SQL condition.

A List RPC first needs read on its scope (the rule), then filters its rows:

```python
lookup = RbacLookup(rbac_channel, clock, scope=workspace_scope(org, ws))
readable = await lookup.readable_ids(principal, "stack", "read", workspace_id)
stmt = stmt.where(lookup_condition(readable, stacks.c.id))
```

`Lookup.all` means every resource of the type in the scope (a role at the
scope or above); otherwise `ids` are the single resources (shares, ownership)
and `project_ids` the projects in which every resource of the type is
readable (a project-level role) — for the type `project` itself those project
ids are readable projects too, so they are folded into `ids`.

Answers are cached per (subject kind, subject, type, action, scope) for at
most 4 s, like the checker's, so a revoked share disappears from lists within
5 s. Calls carry the caller's own token: asking about oneself needs no grant.
RBAC unreachable → `errors.Unavailable` (fail closed; a fresh cached answer is
still served).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import grpc
from sqlalchemy import ColumnElement, false, or_, true

from keel.rbac.v1 import rbac_pb2, rbac_pb2_grpc
from services.kit import errors
from services.kit.clock import Clock
from services.kit.context import Principal
from services.kit.interceptors import AUTHORIZATION_KEY
from services.kit.rbac_client import MAX_CACHE_TTL_SECONDS, ScopeMapping, organization_scope

logger = logging.getLogger(__name__)

_SUBJECT_KINDS = {
    "user": rbac_pb2.Subject.USER,
    "service_account": rbac_pb2.Subject.SERVICE_ACCOUNT,
}
_TRANSIENT = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
)

# (principal kind, principal id, resource type, action, scope id)
LookupKey = tuple[str, str, str, str, str]


@dataclass(frozen=True)
class Lookup:
    """What a caller may act on: every resource (`all`), or these ids and the contents of these projects."""

    all: bool
    ids: frozenset[str] = frozenset()
    project_ids: frozenset[str] = frozenset()

    @property
    def none(self) -> bool:
        """Whether nothing at all is readable."""
        return not self.all and not self.ids and not self.project_ids


NOTHING = Lookup(all=False)
EVERYTHING = Lookup(all=True)


def lookup_condition(
    lookup: Lookup, id_column: Any, project_column: Any | None = None
) -> ColumnElement[bool]:
    """The SQL condition selecting the readable rows: true, id IN ids (OR project IN projects), or false."""
    if lookup.all:
        return true()
    terms: list[ColumnElement[bool]] = []
    if lookup.ids:
        terms.append(id_column.in_(sorted(lookup.ids)))
    if lookup.project_ids and project_column is not None:
        terms.append(project_column.in_(sorted(lookup.project_ids)))
    if not terms:
        return false()
    return or_(*terms)


@dataclass(frozen=True)
class _Cached:
    lookup: Lookup
    revision: int
    at: datetime


class RbacLookup:
    """`readable_ids` over RBAC's LookupResources, with a short bounded cache."""

    def __init__(
        self,
        rbac: grpc.aio.Channel | rbac_pb2_grpc.PermissionServiceStub | Any,
        clock: Clock,
        scope: ScopeMapping = organization_scope,
        *,
        cache_ttl_seconds: float = MAX_CACHE_TTL_SECONDS,
        max_entries: int = 10_000,
        timeout_seconds: float | None = None,
    ) -> None:
        """`scope` maps a scope id to the scope RBAC searches (the checker's mapping: workspace_scope)."""
        if not 0 <= cache_ttl_seconds <= MAX_CACHE_TTL_SECONDS:
            raise ValueError(f"cache_ttl_seconds must be between 0 and {MAX_CACHE_TTL_SECONDS}")
        if isinstance(rbac, grpc.aio.Channel):
            rbac = rbac_pb2_grpc.PermissionServiceStub(rbac)
        self._stub: Any = rbac
        self._clock = clock
        self._scope = scope
        self._ttl = timedelta(seconds=cache_ttl_seconds)
        self._max_entries = max(1, max_entries)
        self._timeout = timeout_seconds
        self._cache: OrderedDict[LookupKey, _Cached] = OrderedDict()
        self._min_revision = 0

    def note_revision(self, revision: int) -> None:
        """Later lookups see RBAC state at least this fresh (a write of this service)."""
        self._min_revision = max(self._min_revision, revision)

    def invalidate(self, principal_subject: str | None = None) -> None:
        """Drops cached answers: all, or those about one subject id."""
        if principal_subject is None:
            self._cache.clear()
            return
        for key in [k for k in self._cache if k[1] == principal_subject]:
            del self._cache[key]

    async def readable_ids(
        self, principal: Principal, resource_type: str, action: str, scope_id: str
    ) -> Lookup:
        """The resources of `resource_type` in `scope_id` on which `principal` holds `action`."""
        if principal.kind not in _SUBJECT_KINDS or not scope_id:
            return NOTHING
        key: LookupKey = (principal.kind, principal.subject, resource_type, action, scope_id)
        cached = self._cache.get(key)
        if cached is not None:
            age = self._clock.now() - cached.at
            if timedelta(0) <= age < self._ttl and cached.revision >= self._min_revision:
                self._cache.move_to_end(key)
                return cached.lookup
        lookup, revision = await self._ask(principal, resource_type, action, scope_id)
        if self._ttl > timedelta(0):
            self._cache[key] = _Cached(lookup, revision, self._clock.now())
            self._cache.move_to_end(key)
            while len(self._cache) > self._max_entries:
                self._cache.popitem(last=False)
        return lookup

    async def _ask(
        self, principal: Principal, resource_type: str, action: str, scope_id: str
    ) -> tuple[Lookup, int]:
        scope = self._scope("", "", scope_id)
        request = rbac_pb2.LookupResourcesRequest(
            subject=rbac_pb2.Subject(kind=_SUBJECT_KINDS[principal.kind], id=principal.subject),
            permission=rbac_pb2.Permission(resource_type=resource_type, action=action),
            scope=scope,
            at_least_revision=self._min_revision,
        )
        metadata = ((AUTHORIZATION_KEY, f"Bearer {principal.token}"),) if principal.token else None
        try:
            response = await self._stub.LookupResources(request, metadata=metadata, timeout=self._timeout)
        except grpc.aio.AioRpcError as error:
            if error.code() in _TRANSIENT:
                raise errors.Unavailable("the permission service is unavailable") from error
            logger.error("RBAC LookupResources failed with %s; nothing is readable", error.code().name)
            return NOTHING, 0
        return _lookup_of(response, scope, resource_type), response.revision


def _lookup_of(
    response: rbac_pb2.LookupResourcesResponse, scope: rbac_pb2.ResourceRef, resource_type: str
) -> Lookup:
    everything = (
        response.all
        or (bool(scope.workspace_id) and scope.workspace_id in response.workspace_ids)
        or (bool(scope.project_id) and scope.project_id in response.project_ids)
    )
    if everything:
        return EVERYTHING
    project_ids = frozenset(response.project_ids)
    ids = frozenset(response.resource_ids)
    if resource_type == "project":
        ids |= project_ids
    return Lookup(all=False, ids=ids, project_ids=project_ids)
