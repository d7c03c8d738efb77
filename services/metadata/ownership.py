"""Creators own what they create: RBAC ownership recorded on create, forgotten on delete.

Calls carry the caller's own token (BatchRecordOwnership's rule is a
self-check on the owner; ForgetResource needs delete on the resource, which
the caller just proved). The revision each write answers is noted on the
checker and the lookup, so the creator can read and list the new resource at
once.

Recording is group-committed per owner: while one BatchRecordOwnership of an
owner is in flight, that owner's further claims wait and then go together in
the next call (up to RBAC's 1,000 resources), so an orchestrator recording
many runs at once costs RBAC one transaction per round trip, not one per
request; an idle owner's claim goes at once, alone. RBAC answers a batch all
or nothing, so when a merged call is refused each of its claims is sent again
on its own: one request's refusal never fails another's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from keel.rbac.v1 import rbac_pb2, rbac_pb2_grpc
from services.kit import errors
from services.kit.context import Principal
from services.kit.interceptors import AUTHORIZATION_KEY
from services.kit.rbac_client import RbacPermissionChecker
from services.kit.rbac_lookup import RbacLookup
from services.metadata.identity import ServedWorkspace

# BatchRecordOwnership takes at most this many resources per call (RBAC's bound).
MAX_OWNERSHIP_BATCH = 1000

_SUBJECT_KINDS = {
    "user": rbac_pb2.Subject.USER,
    "service_account": rbac_pb2.Subject.SERVICE_ACCOUNT,
}


@dataclass
class _Claim:
    """Resources one request made, the caller who owns them, and the request's wait."""

    resources: list[rbac_pb2.ResourceRef]
    principal: Principal
    done: asyncio.Future[None]


@dataclass
class _OwnerQueue:
    """An owner's claims waiting for the next call, and the task sending them."""

    claims: list[_Claim] = field(default_factory=list)
    sender: asyncio.Task[None] | None = None


class Ownership:
    """Ownership records (group-committed per owner) and ForgetResource for this workspace's resources."""

    def __init__(
        self,
        rbac: grpc.aio.Channel | Any,
        served: ServedWorkspace,
        checker: RbacPermissionChecker,
        lookup: RbacLookup,
    ) -> None:
        self._stub: Any = (
            rbac_pb2_grpc.PermissionServiceStub(rbac) if isinstance(rbac, grpc.aio.Channel) else rbac
        )
        self._served = served
        self._checker = checker
        self._lookup = lookup
        self._queues: dict[tuple[str, str], _OwnerQueue] = {}

    def resource(self, resource_type: str, resource_id: str, project_id: str = "") -> rbac_pb2.ResourceRef:
        """The full chain of a resource of this workspace (a project is its own project)."""
        if resource_type == "project":
            project_id = resource_id
        return rbac_pb2.ResourceRef(
            organization_id=self._served.organization_id,
            workspace_id=self._served.workspace_id,
            project_id=project_id,
            resource_type=resource_type,
            resource_id=resource_id,
        )

    async def record(
        self, principal: Principal, resource_type: str, resource_id: str, project_id: str = ""
    ) -> bool:
        """Makes the caller the owner of a resource it just created; False when it holds no bindings."""
        return await self.record_many(principal, resource_type, [resource_id], project_id)

    async def record_many(
        self, principal: Principal, resource_type: str, ids: Sequence[str], project_id: str = ""
    ) -> bool:
        """Makes the caller the owner of many resources of one type it just created; False when it
        holds no bindings (a workload) or there is nothing to record.

        At most 1,000 resources per call, each call all or nothing (idempotent, so a retry after a
        failed later call is safe).
        """
        if principal.kind not in _SUBJECT_KINDS or not ids:
            return False  # a workload holds no bindings
        resources = [self.resource(resource_type, resource_id, project_id) for resource_id in ids]
        loop = asyncio.get_running_loop()
        claims = [
            _Claim(resources[start : start + MAX_OWNERSHIP_BATCH], principal, loop.create_future())
            for start in range(0, len(resources), MAX_OWNERSHIP_BATCH)
        ]
        owner = (principal.kind, principal.subject)
        queue = self._queues.setdefault(owner, _OwnerQueue())
        queue.claims.extend(claims)
        if queue.sender is None:
            queue.sender = asyncio.create_task(self._send_queued(owner, queue))
        await asyncio.gather(*(claim.done for claim in claims))
        return True

    async def _send_queued(self, owner: tuple[str, str], queue: _OwnerQueue) -> None:
        """Sends the owner's claims, as many per call as fit, until none wait (its own task, so a
        cancelled request never strands the others)."""
        try:
            while queue.claims:
                group, size = [], 0
                while queue.claims and size + len(queue.claims[0].resources) <= MAX_OWNERSHIP_BATCH:
                    size += len(queue.claims[0].resources)
                    group.append(queue.claims.pop(0))
                try:
                    await self._send(group)
                except Exception as error:  # every waiter gets the failure, none hangs
                    _settle(group, error)
        finally:
            queue.sender = None
            if queue.claims:  # this task was cancelled (shutdown): nothing will send them
                _settle(queue.claims, errors.Unavailable("the ownership of new resources was not recorded"))
            self._queues.pop(owner, None)

    async def _send(self, group: list[_Claim]) -> None:
        """One BatchRecordOwnership for the group; refused, each claim again alone (unless RBAC is down)."""
        principal = group[-1].principal  # the owner's newest token
        try:
            answer = await self._call(
                "BatchRecordOwnership",
                rbac_pb2.BatchRecordOwnershipRequest(
                    organization_id=self._served.organization_id,
                    owner=rbac_pb2.Subject(kind=_SUBJECT_KINDS[principal.kind], id=principal.subject),
                    resources=[resource for claim in group for resource in claim.resources],
                ),
                principal,
            )
        except errors.KeelError as error:
            if len(group) == 1 or isinstance(error, errors.Unavailable):
                raise
            for claim in group:
                try:
                    await self._send([claim])
                except errors.KeelError as alone:
                    _settle([claim], alone)
            return
        self._noted(answer.revision, principal)
        _settle(group, None)

    async def forget(
        self, principal: Principal, resource_type: str, resource_id: str, project_id: str = ""
    ) -> None:
        """Removes every share and ownership of a deleted resource."""
        answer = await self._call(
            "ForgetResource",
            rbac_pb2.ForgetResourceRequest(resource=self.resource(resource_type, resource_id, project_id)),
            principal,
        )
        self._noted(answer.revision)

    def _noted(self, revision: int, owner: Principal | None = None) -> None:
        self._checker.note_revision(revision)
        self._lookup.note_revision(revision)
        if owner is not None:
            # Ownership does not move RBAC's revision: drop the owner's cached lookups instead,
            # so the creator lists what it just created at once.
            self._lookup.invalidate(owner.subject)

    async def _call(self, method: str, request: Any, principal: Principal) -> Any:
        metadata = ((AUTHORIZATION_KEY, f"Bearer {principal.token}"),) if principal.token else None
        try:
            return await getattr(self._stub, method)(request, metadata=metadata)
        except grpc.aio.AioRpcError as error:
            if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise errors.Unavailable("the permission service is unavailable") from error
            raise errors.FailedPrecondition(
                f"the permission service refused {method}: {error.code().name}"
            ) from error


def _settle(claims: list[_Claim], error: BaseException | None) -> None:
    """Ends the claims' waits (those whose request has not gone away) with success or `error`."""
    for claim in claims:
        if not claim.done.done():
            if error is None:
                claim.done.set_result(None)
            else:
                claim.done.set_exception(error)
