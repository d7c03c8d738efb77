"""Permission decisions from a per-organization in-memory index, kept fresh by revision, and ownerships.

Each organization's index is loaded from the store on first use and
reloaded when the organization's stored revision moved. The stored revision
is read at most every `poll_seconds` per organization, in the background
while the index is younger than `max_staleness_seconds`, and before
answering when a caller asks for a revision newer than the last one verified.
Across replicas a change is seen within poll_seconds plus one reload (never
beyond max_staleness_seconds); the replica that wrote it invalidates its
index in the write path and sees it immediately.

Ownerships are not in the index: when the index does not allow a permission on
a resource of the permission's own type, one primary-key read asks the store
for the resource's owner (always current, so nothing to invalidate), and the
owner holds the owner role's permissions on it. LookupResources adds the ids
the subject owns in the scope, at most `max_owned_ids` (10,000 by default).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from services.kit.errors import Unavailable
from services.rbac.catalog import Perm
from services.rbac.evaluator import (
    NOT_HELD,
    ON_RESOURCE,
    SCOPE_WIDE,
    Lookup,
    OrganizationIndex,
    Ref,
    SubjectKey,
)
from services.rbac.store import RbacStore

DEFAULT_POLL_SECONDS = 0.1
# Owned ids one LookupResources answer carries at most (docs/rbac.md; the proto says it too).
MAX_OWNED_IDS = 10_000
# Subjects that can own: teams never create anything.
OWNER_KINDS = frozenset({"user", "service_account"})

logger = logging.getLogger(__name__)


@dataclass
class _Entry:
    index: OrganizationIndex
    # The organization's stored revision the index reflects (at least).
    loaded_revision: int
    # The global revision at which the index was last confirmed current.
    verified_revision: int
    # time.monotonic() of that confirmation.
    verified_at: float
    # The organization's local write generation when the load started; a later local write makes it stale.
    generation: int


@dataclass(frozen=True)
class Decision:
    """The answer of one check: allowed, whether scope-wide (see evaluator.Grant), and the revision."""

    allowed: bool
    scope_wide: bool
    revision: int


def _may_be_owned(subject: SubjectKey, permission: Perm, resource: Ref) -> bool:
    """Whether ownership could grant `permission` on `resource` (its own type, a named resource)."""
    return (
        bool(resource.resource_id) and permission[0] == resource.resource_type and subject[0] in OWNER_KINDS
    )


class Decisions:
    """Check, BatchCheck, LookupResources and effective permissions over cached indexes."""

    def __init__(
        self,
        store: RbacStore,
        *,
        poll_seconds: float = DEFAULT_POLL_SECONDS,
        max_staleness_seconds: float | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        max_owned_ids: int = MAX_OWNED_IDS,
    ) -> None:
        self._store = store
        self._max_owned_ids = max_owned_ids
        self._poll = poll_seconds
        # Beyond this age a check waits for the store instead of answering and refreshing behind.
        self._max_staleness = (
            max_staleness_seconds if max_staleness_seconds is not None else max(1.0, 4 * poll_seconds)
        )
        self._monotonic = monotonic
        self._entries: dict[str, _Entry] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._generations: dict[str, int] = {}
        self._refreshing: dict[str, asyncio.Task[_Entry]] = {}

    def invalidate(self, organization_id: str) -> None:
        """Forces a revision read (and a reload if it moved) before the next answer in the organization."""
        # A generation, not a flag on the entry: a load that started before this write and
        # finishes after it must not count as fresh.
        self._generations[organization_id] = self._generations.get(organization_id, 0) + 1

    def forget(self, organization_id: str) -> None:
        """Drops the organization's index from memory (it was purged); a later check reloads it.

        The generation moves on as for any local write, so a load already in flight is not kept.
        """
        self.invalidate(organization_id)
        self._entries.pop(organization_id, None)

    def cached_organizations(self) -> frozenset[str]:
        """The organizations whose index this replica holds (tests, diagnostics)."""
        return frozenset(self._entries)

    def _usable(self, organization_id: str, at_least_revision: int, max_age: float) -> _Entry | None:
        """The cached entry when it may answer (no local write since, fresh enough), else None."""
        entry = self._entries.get(organization_id)
        if (
            entry is not None
            and entry.generation == self._generations.get(organization_id, 0)
            and at_least_revision <= entry.verified_revision
            and self._monotonic() - entry.verified_at < max_age
        ):
            return entry
        return None

    async def index(self, organization_id: str, at_least_revision: int = 0) -> tuple[OrganizationIndex, int]:
        """The organization's index, fresh enough, and the global revision it is current at.

        Younger than the poll interval: answered from memory. Older, but within
        the staleness bound: answered from memory while a background task reads
        the revision (and reloads if it moved), keeping the database off the
        check path. Otherwise, or when `at_least_revision` is ahead: read first.
        """
        entry = self._usable(organization_id, at_least_revision, self._max_staleness)
        if entry is not None:
            if self._monotonic() - entry.verified_at >= self._poll:
                self._refresh_behind(organization_id)
            return entry.index, entry.verified_revision
        entry = await self._refresh(organization_id, at_least_revision)
        return entry.index, entry.verified_revision

    def _refresh_behind(self, organization_id: str) -> None:
        if organization_id in self._refreshing:
            return
        task = asyncio.create_task(self._refresh(organization_id, 0), name=f"rbac-refresh-{organization_id}")
        self._refreshing[organization_id] = task
        task.add_done_callback(lambda done: self._refreshed(organization_id, done))

    def _refreshed(self, organization_id: str, task: asyncio.Task[_Entry]) -> None:
        self._refreshing.pop(organization_id, None)
        if not task.cancelled() and task.exception() is not None:
            # The next check past the staleness bound reads synchronously and surfaces the error.
            logger.warning(
                "background refresh of organization %s failed", organization_id, exc_info=task.exception()
            )

    async def settle(self) -> None:
        """Waits for the background refreshes in flight (tests, shutdown)."""
        while self._refreshing:
            await asyncio.gather(*self._refreshing.values(), return_exceptions=True)

    async def _refresh(self, organization_id: str, at_least_revision: int) -> _Entry:
        lock = self._locks.setdefault(organization_id, asyncio.Lock())
        async with lock:
            fresh = self._usable(organization_id, at_least_revision, self._poll)
            if fresh is not None:
                return fresh
            entry = self._entries.get(organization_id)
            checked_at = self._monotonic()
            generation = self._generations.get(organization_id, 0)
            global_revision, organization_revision = await self._store.revisions(organization_id)
            if global_revision < at_least_revision:
                # UNAVAILABLE, not FAILED_PRECONDITION: the state will arrive, so callers retry.
                raise Unavailable(
                    f"revision {at_least_revision} is not reached yet (current {global_revision})",
                    reason="REVISION_NOT_REACHED",
                )
            if (
                entry is None
                or entry.generation != generation
                or organization_revision != entry.loaded_revision
            ):
                snapshot = await self._store.snapshot(organization_id)
                index = OrganizationIndex(snapshot.bindings, snapshot.memberships, snapshot.custom_roles)
                entry = _Entry(index, snapshot.organization_revision, global_revision, checked_at, generation)
                self._entries[organization_id] = entry
            else:
                entry.verified_revision = global_revision
                entry.verified_at = checked_at
            return entry

    async def decide(
        self, subject: SubjectKey, permission: Perm, resource: Ref, at_least_revision: int = 0
    ) -> Decision:
        """Whether the subject holds the permission on the resource, and whether scope-wide."""
        index, revision = await self.index(resource.organization_id, at_least_revision)
        grant = index.grant(subject, permission, resource)
        if (
            grant == NOT_HELD
            and _may_be_owned(subject, permission, resource)
            and permission in index.owner_permissions(resource.resource_type)
        ):
            owner = await self._store.owner(
                resource.organization_id, resource.resource_type, resource.resource_id
            )
            if owner == subject:
                grant = ON_RESOURCE
        return Decision(grant != NOT_HELD, grant == SCOPE_WIDE, revision)

    async def check(
        self, subject: SubjectKey, permission: Perm, resource: Ref, at_least_revision: int = 0
    ) -> tuple[bool, int]:
        """Whether the subject holds the permission on the resource; and the revision evaluated."""
        decision = await self.decide(subject, permission, resource, at_least_revision)
        return decision.allowed, decision.revision

    async def batch_check(
        self,
        subject: SubjectKey,
        organization_id: str,
        items: list[tuple[Perm, Ref]],
        at_least_revision: int = 0,
    ) -> tuple[list[bool], int]:
        """Check for many items of one organization, on one index (and one read of their owners)."""
        index, revision = await self.index(organization_id, at_least_revision)
        allowed = [index.check(subject, permission, ref) for permission, ref in items]
        unanswered = [
            position
            for position, (permission, ref) in enumerate(items)
            if not allowed[position]
            and _may_be_owned(subject, permission, ref)
            and permission in index.owner_permissions(ref.resource_type)
        ]
        if unanswered:
            owners = await self._store.owners(
                organization_id, [(items[p][1].resource_type, items[p][1].resource_id) for p in unanswered]
            )
            for position in unanswered:
                ref = items[position][1]
                allowed[position] = owners.get((ref.resource_type, ref.resource_id)) == subject
        return allowed, revision

    async def lookup(
        self, subject: SubjectKey, permission: Perm, scope: Ref, at_least_revision: int = 0
    ) -> tuple[Lookup, int]:
        """Where in `scope` the subject holds the permission (all, workspaces, projects, resource ids).

        Owned ids join the shared ones, bounded by `max_owned_ids` (`truncated` when cut); those in
        workspaces or projects the answer already names are left out rather than counted.
        """
        index, revision = await self.index(scope.organization_id, at_least_revision)
        found = index.lookup(subject, permission, scope)
        if (
            not found.all
            and subject[0] in OWNER_KINDS
            and permission in index.owner_permissions(permission[0])
        ):
            owned = await self._store.owned_ids(
                scope.organization_id,
                subject,
                permission[0],
                scope,
                limit=self._max_owned_ids,
                covered_workspaces=found.workspace_ids,
                covered_projects=found.project_ids,
            )
            found.resource_ids.update(owned.ids)
            found.truncated = owned.truncated
        return found, revision

    async def effective(
        self, subject: SubjectKey, scope: Ref, at_least_revision: int = 0
    ) -> tuple[list[Perm], int]:
        """Every permission the subject holds at the scope (its ownership included), sorted."""
        index, revision = await self.index(scope.organization_id, at_least_revision)
        held = index.effective(subject, scope)
        if scope.resource_id and scope.resource_type and subject[0] in OWNER_KINDS:
            owned = index.owner_permissions(scope.resource_type)
            if not owned <= held:
                owner = await self._store.owner(scope.organization_id, scope.resource_type, scope.resource_id)
                if owner == subject:
                    held |= owned
        return sorted(held), revision
