"""Ownership: creators own what they create, recorded as a relation; no gRPC, no SQL.

An ownership is one row per resource (organization, type, id → owner), not a
role binding: it never enters the in-memory index, so recording one moves no
revision and invalidates nothing; checks read it by primary key
(services/rbac/decisions.py), which is always current. The owner must be a
user or a service account holding `create` on the resource's type in the
resource's parent scope (nobody owns what they could not have created); the
same owner again gets the same answer, another owner is ALREADY_EXISTS.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from services.kit.audit import AuditEvent
from services.kit.clock import Clock
from services.kit.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from services.rbac.administration import rbac_event
from services.rbac.decisions import OWNER_KINDS, Decisions
from services.rbac.evaluator import Ref, SubjectKey
from services.rbac.store import OwnershipRecord, RbacStore

# Resources one BatchRecordOwnership call may name.
MAX_OWNERSHIP_BATCH = 1000
# Beyond this many encoded bytes a batch's audit event stops listing resources (details ≤ 4 KiB).
_MAX_LISTED_RESOURCES_BYTES = 3000


@dataclass(frozen=True)
class Recorded:
    """The ownerships of a record call, in request order, and the current global revision."""

    ownerships: list[OwnershipRecord]
    revision: int


class Ownerships:
    """RecordOwnership and BatchRecordOwnership."""

    def __init__(
        self,
        store: RbacStore,
        decisions: Decisions,
        clock: Clock,
        new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
    ) -> None:
        self._store = store
        self._decisions = decisions
        self._clock = clock
        self._new_id = new_id

    async def record(self, owner: SubjectKey, resource: Ref) -> Recorded:
        """Makes `owner` the owner of one resource (idempotent for the same owner)."""
        return await self._record(
            owner, resource.organization_id, [resource], lambda _: "resource", batch=False
        )

    async def record_many(
        self, owner: SubjectKey, organization_id: str, resources: Sequence[Ref]
    ) -> Recorded:
        """Makes `owner` the owner of up to 1,000 resources of one organization, all or nothing."""
        if not resources:
            raise InvalidArgument("resources", "name at least one resource")
        if len(resources) > MAX_OWNERSHIP_BATCH:
            raise InvalidArgument("resources", f"at most {MAX_OWNERSHIP_BATCH} resources per call")
        return await self._record(owner, organization_id, resources, lambda i: f"resources[{i}]", batch=True)

    async def _record(
        self,
        owner: SubjectKey,
        organization_id: str,
        resources: Sequence[Ref],
        field: Callable[[int], str],
        *,
        batch: bool,
    ) -> Recorded:
        if owner[0] not in OWNER_KINDS:
            raise InvalidArgument("owner.kind", "must be USER or SERVICE_ACCOUNT")
        first_of: dict[tuple[str, str], int] = {}
        for position, resource in enumerate(resources):
            if not resource.resource_type or not resource.resource_id:
                raise InvalidArgument(
                    f"{field(position)}.resource_id", "resource_type and resource_id are required"
                )
            key = (resource.resource_type, resource.resource_id)
            earlier = first_of.setdefault(key, position)
            if resources[earlier] != resource:
                raise InvalidArgument(
                    field(position), f"names the resource of {field(earlier)} with another scope chain"
                )
        await self._refuse_what_the_owner_cannot_create(owner, resources, field)
        distinct = [resources[position] for position in sorted(first_of.values())]
        written, revision = await self._write(owner, organization_id, distinct, batch=batch)
        return Recorded([written[(r.resource_type, r.resource_id)] for r in resources], revision)

    async def _refuse_what_the_owner_cannot_create(
        self, owner: SubjectKey, resources: Sequence[Ref], field: Callable[[int], str]
    ) -> None:
        """FAILED_PRECONDITION unless the owner holds create on each type in each parent scope (once each)."""
        checked: set[tuple[str, Ref]] = set()
        for position, resource in enumerate(resources):
            parent = replace(resource, resource_type="", resource_id="")
            if (resource.resource_type, parent) in checked:
                continue
            allowed, _ = await self._decisions.check(owner, (resource.resource_type, "create"), parent)
            if not allowed:
                raise FailedPrecondition(
                    f"the owner may not create this type of resource in the scope of {field(position)}",
                    reason="OWNER_CANNOT_CREATE",
                )
            checked.add((resource.resource_type, parent))

    async def _write(
        self, owner: SubjectKey, organization_id: str, resources: list[Ref], *, batch: bool
    ) -> tuple[dict[tuple[str, str], OwnershipRecord], int]:
        """One transaction: claim every resource, read the ones already owned, one audit event.

        Claiming first (insert unless owned) keeps the usual case, new resources, to
        one statement; a resource owned by another owner raises inside the
        transaction, so nothing of the call stays.
        """
        now = self._clock.now()
        claims = {
            (r.resource_type, r.resource_id): OwnershipRecord(
                id=self._new_id(),
                organization_id=organization_id,
                resource_type=r.resource_type,
                resource_id=r.resource_id,
                workspace_id=r.workspace_id,
                project_id=r.project_id,
                subject_kind=owner[0],
                subject_id=owner[1],
                create_time=now,
            )
            for r in resources
        }
        async with self._store.transaction() as tx:
            written = claims
            if await tx.claim_ownerships(list(claims.values())) < len(claims):
                written = await tx.ownerships_of(organization_id, list(claims))
                for key, record in written.items():
                    if (record.subject_kind, record.subject_id) != owner:
                        what = f"{key[0]} {key[1]}" if batch else "the resource"
                        raise AlreadyExists(f"{what} already has an owner")
            new = [record for key, record in claims.items() if written[key].id == record.id]
            revision = await tx.current_revision()
            if new:  # the same owner again changes nothing, so it is not an audited change
                event = _batch_event(owner, organization_id, new) if batch else _single_event(new[0])
                await tx.record_event(event)
        return written, revision


def _single_event(record: OwnershipRecord) -> AuditEvent:
    scope = {"workspace_id": record.workspace_id, "project_id": record.project_id}
    return rbac_event(
        "rbac.ownership.record",
        record.organization_id,
        record.resource_type,
        record.resource_id,
        record.create_time,
        details={
            "owner_kind": record.subject_kind,
            "owner_id": record.subject_id,
            "ownership_id": record.id,
            **{key: value for key, value in scope.items() if value},
        },
    )


def _batch_event(owner: SubjectKey, organization_id: str, records: list[OwnershipRecord]) -> AuditEvent:
    """One event about the owner, listing the resources it now owns while they fit the details' bound."""
    listed: list[str] = []
    size = 2
    for record in records:
        item = f"{record.resource_type}/{record.resource_id}"
        size += len(json.dumps(item)) + 1
        if size > _MAX_LISTED_RESOURCES_BYTES:
            break
        listed.append(item)
    return rbac_event(
        "rbac.ownership.batch_record",
        organization_id,
        owner[0],
        owner[1],
        records[0].create_time,
        details={"recorded": len(records), "resources": listed, "unlisted": len(records) - len(listed)},
    )
