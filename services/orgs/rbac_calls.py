"""Orgs' writes into RBAC (role bindings, team memberships, purges) and its permission questions.

RBAC owns who holds which role; orgs owns the memberships and teams. Admin
actions go with the caller's token (the kit client forwards it), so RBAC's
escalation guard judges the caller. Where orgs acts on its own account
(binding an organization's creator, an accepting invitee, a member who
leaves) it sends its mesh service account's token instead. After each write
the permission checker is told the new revision, so orgs' next check sees
its own write.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from keel.rbac.v1 import rbac_pb2, rbac_pb2_grpc
from services.kit import errors
from services.kit.context import Principal
from services.kit.rbac_client import RbacPermissionChecker
from services.kit.status import error_info_of

logger = logging.getLogger(__name__)

CallMetadata = Sequence[tuple[str, str]]
MetadataProvider = Callable[[], Awaitable[CallMetadata]]

# Errors RBAC returns for a caller's mistake: passed on with RBAC's own message and reason.
_PASSED_ON: dict[grpc.StatusCode, type[errors.KeelError]] = {
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDenied,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPrecondition,
    grpc.StatusCode.ALREADY_EXISTS: errors.AlreadyExists,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.ABORTED: errors.Aborted,
}
_TRANSIENT = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
)


@dataclass(frozen=True)
class Written:
    """A binding RBAC wrote: its id and the RBAC revision of the write."""

    binding_id: str
    revision: int


def request_id_for(*parts: str) -> str:
    """A deterministic RBAC request_id (so orgs' own retry of a write returns the first result)."""
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:48]


def _user(user_id: str) -> rbac_pb2.Subject:
    return rbac_pb2.Subject(kind=rbac_pb2.Subject.USER, id=user_id)


def _translated(error: grpc.aio.AioRpcError) -> errors.KeelError | None:
    code = error.code()
    if code in _TRANSIENT:
        return errors.Unavailable("the permission service is unavailable")
    kind = _PASSED_ON.get(code)
    if kind is None:
        return None
    info = error_info_of(error)
    return kind(error.details() or "refused by the permission service", reason=info.reason if info else None)


class RbacCalls:
    """The RBAC RPCs orgs makes, with errors turned into kit errors."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        checker: RbacPermissionChecker,
        own_metadata: MetadataProvider | None,
    ) -> None:
        self._bindings = rbac_pb2_grpc.RoleBindingServiceStub(channel)
        self._teams = rbac_pb2_grpc.TeamMembershipServiceStub(channel)
        self._checker = checker
        self._own_metadata = own_metadata

    async def _call(self, method: Any, request: Any, *, own_account: bool) -> Any:
        metadata: CallMetadata | None = None
        if own_account:
            if self._own_metadata is None:
                raise errors.FailedPrecondition(
                    "orgs has no service credential (KEEL_SERVICE_API_KEY_FILE) to write RBAC state with",
                    reason="NO_SERVICE_CREDENTIAL",
                )
            metadata = await self._own_metadata()
        try:
            response = await method(request, metadata=metadata)
        except grpc.aio.AioRpcError as error:
            translated = _translated(error)
            if translated is None:
                logger.error("RBAC %s failed with %s", type(request).__name__, error.code().name)
                raise RuntimeError("unexpected answer from the permission service") from error
            raise translated from error
        revision = int(getattr(response, "revision", 0))
        if revision:
            self._checker.note_revision(revision)
        return response

    async def bind_member(
        self, organization_id: str, user_id: str, role_id: str, *, request_id: str, own_account: bool
    ) -> Written:
        """Binds a user to an organization-level role."""
        request = rbac_pb2.CreateRoleBindingRequest(
            organization_id=organization_id,
            role_binding=rbac_pb2.RoleBinding(
                subject=_user(user_id),
                role_id=role_id,
                scope=rbac_pb2.ResourceRef(organization_id=organization_id),
            ),
            request_id=request_id,
        )
        binding = await self._call(self._bindings.CreateRoleBinding, request, own_account=own_account)
        return Written(binding.id, binding.revision)

    async def unbind(self, organization_id: str, binding_id: str) -> None:
        """Deletes a binding with the caller's token; an already missing one is fine (a retry)."""
        request = rbac_pb2.DeleteRoleBindingRequest(
            organization_id=organization_id, role_binding_id=binding_id
        )
        with contextlib.suppress(errors.NotFound):
            await self._call(self._bindings.DeleteRoleBinding, request, own_account=False)

    async def purge_user(self, organization_id: str, user_id: str, *, own_account: bool) -> None:
        """Removes every binding and team membership of a user in the organization."""
        request = rbac_pb2.PurgeSubjectRequest(organization_id=organization_id, subject=_user(user_id))
        await self._call(self._bindings.PurgeSubject, request, own_account=own_account)
        self._checker.invalidate(user_id)

    async def purge_team(self, organization_id: str, team_id: str) -> None:
        """Removes every binding and membership of a team (caller's token)."""
        request = rbac_pb2.PurgeSubjectRequest(
            organization_id=organization_id, subject=rbac_pb2.Subject(kind=rbac_pb2.Subject.TEAM, id=team_id)
        )
        await self._call(self._bindings.PurgeSubject, request, own_account=False)

    async def purge_organization(self, organization_id: str) -> None:
        """Removes everything RBAC holds for the organization (caller's token)."""
        request = rbac_pb2.PurgeOrganizationRequest(organization_id=organization_id)
        await self._call(self._bindings.PurgeOrganization, request, own_account=False)
        self._checker.invalidate()

    async def add_team_member(self, organization_id: str, team_id: str, user_id: str) -> None:
        """Records a team membership in RBAC (caller's token)."""
        request = rbac_pb2.AddTeamMemberRequest(
            organization_id=organization_id, team_id=team_id, member=_user(user_id)
        )
        await self._call(self._teams.AddTeamMember, request, own_account=False)

    async def remove_team_member(self, organization_id: str, team_id: str, user_id: str) -> None:
        """Removes a team membership from RBAC (caller's token)."""
        request = rbac_pb2.RemoveTeamMemberRequest(
            organization_id=organization_id, team_id=team_id, member=_user(user_id)
        )
        await self._call(self._teams.RemoveTeamMember, request, own_account=False)

    async def may(self, principal: Principal, resource_type: str, action: str, organization_id: str) -> bool:
        """Whether the caller holds a permission in the organization (RBAC Check of its own subject)."""
        return await self._checker.check(principal, resource_type, action, "", organization_id)
