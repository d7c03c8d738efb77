"""Creators own what they create: RBAC ownership recorded on create, forgotten on delete.

Calls carry the caller's own token (RecordOwnership's rule is a self-check on
the owner; ForgetResource needs delete on the resource, which the caller just
proved). The revision each write answers is noted on the checker and the
lookup, so the creator can read and list the new resource at once.
"""

from __future__ import annotations

from collections.abc import Sequence
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


class Ownership:
    """RecordOwnership / ForgetResource for resources of this workspace."""

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
        if principal.kind not in _SUBJECT_KINDS:
            return False  # a workload holds no bindings
        binding = await self._call(
            "RecordOwnership",
            rbac_pb2.RecordOwnershipRequest(
                owner=rbac_pb2.Subject(kind=_SUBJECT_KINDS[principal.kind], id=principal.subject),
                resource=self.resource(resource_type, resource_id, project_id),
            ),
            principal,
        )
        self._noted(binding.revision, principal)
        return True

    async def record_many(
        self, principal: Principal, resource_type: str, ids: Sequence[str], project_id: str = ""
    ) -> bool:
        """Makes the caller the owner of many resources of one type it just created; False when it
        holds no bindings (a workload) or there is nothing to record.

        One BatchRecordOwnership per 1,000 ids, each all or nothing (idempotent, so a retry after
        a failed later call is safe).
        """
        if principal.kind not in _SUBJECT_KINDS or not ids:
            return False  # a workload holds no bindings
        owner = rbac_pb2.Subject(kind=_SUBJECT_KINDS[principal.kind], id=principal.subject)
        for start in range(0, len(ids), MAX_OWNERSHIP_BATCH):
            answer = await self._call(
                "BatchRecordOwnership",
                rbac_pb2.BatchRecordOwnershipRequest(
                    organization_id=self._served.organization_id,
                    owner=owner,
                    resources=[
                        self.resource(resource_type, resource_id, project_id)
                        for resource_id in ids[start : start + MAX_OWNERSHIP_BATCH]
                    ],
                ),
                principal,
            )
            self._noted(answer.revision, principal)
        return True

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
