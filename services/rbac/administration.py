"""Writes of RBAC: custom roles, role bindings, team memberships, forgetting and purges; no gRPC, no SQL.

Every write of what the index holds bumps the revision in its own transaction
and returns it, then drops the organization's cached index on this replica, so
a check on this replica after the write sees it (other replicas within the
poll bound). Ownerships (recorded by services/rbac/ownership.py) are read by
key on the check path: removing only ownerships moves no revision.
Every write also records an audit event ("rbac.<resource>.<verb>", with the
organization) in that transaction; a refusal by the escalation guard records
a DENIED event in a transaction of its own.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from services.kit.audit import AuditEvent, Outcome, service_event
from services.kit.clock import Clock
from services.kit.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from services.kit.fieldmask import check_etag
from services.rbac.catalog import BUILT_IN_ROLES, LEVELS, ORGANIZATION_ADMIN, OWNER_ROLE, PLATFORM_TYPES
from services.rbac.catalog import is_permission as in_catalogue
from services.rbac.decisions import Decisions
from services.rbac.evaluator import Ref
from services.rbac.store import (
    BindingRecord,
    Conflict,
    ListQuery,
    RbacStore,
    RbacTx,
    RoleRecord,
    encode_permissions,
)

_EPOCH = datetime(2025, 1, 1, tzinfo=UTC)

SUBJECT_KINDS = ("user", "team", "service_account")
MEMBER_KINDS = ("user", "service_account")
UPDATABLE_ROLE_FIELDS = ("display_name", "description", "permissions")
MAX_NAME = 200
MAX_DESCRIPTION = 1000


@dataclass(frozen=True)
class RequestKey:
    """Idempotency key of a create: method, caller, request_id."""

    method: str
    principal: str
    request_id: str


@dataclass(frozen=True)
class RoleView:
    """A role as the API shows it: a custom role's record, or a built-in role."""

    record: RoleRecord
    built_in: bool


def built_in_view(role_id: str) -> RoleView | None:
    """The view of a built-in role, or None."""
    role = BUILT_IN_ROLES.get(role_id)
    if role is None:
        return None
    record = RoleRecord(
        id=role.id,
        organization_id="",
        display_name=role.display_name,
        description=role.description,
        level=role.level,
        permissions=tuple(sorted(role.permissions)),
        create_time=_EPOCH,
        update_time=_EPOCH,
        version=1,
    )
    return RoleView(record, True)


def _check_permissions(permissions: Iterable[tuple[str, str]], field: str) -> tuple[tuple[str, str], ...]:
    checked = set()
    for index, (resource_type, action) in enumerate(permissions):
        if not in_catalogue(resource_type, action) or resource_type in PLATFORM_TYPES:
            raise InvalidArgument(
                f"{field}[{index}]", f"{resource_type}.{action} is not a grantable permission"
            )
        checked.add((resource_type, action))
    return tuple(sorted(checked))


def _check_name(value: str, field: str) -> str:
    value = value.strip()
    if not value:
        raise InvalidArgument(field, "is required")
    if len(value) > MAX_NAME:
        raise InvalidArgument(field, f"must be at most {MAX_NAME} characters")
    return value


def _check_description(value: str, field: str) -> str:
    if len(value) > MAX_DESCRIPTION:
        raise InvalidArgument(field, f"must be at most {MAX_DESCRIPTION} characters")
    return value


# Beyond this many encoded bytes a role's event carries the count of its permissions, not the list.
_MAX_LISTED_PERMISSIONS_BYTES = 3000


def rbac_event(
    action: str,
    organization_id: str,
    resource_type: str,
    resource_id: str,
    occur_time: datetime,
    *,
    outcome: Outcome = "SUCCESS",
    details: Mapping[str, Any] | None = None,
) -> AuditEvent:
    """An event of the request being served, or of SYSTEM outside one (start-up, the command line).

    Ids and names come from callers, so credential-shaped ones are redacted rather than refused.
    """
    return service_event(
        action=action,
        resource_type=resource_type,
        resource_id=resource_id,
        organization_id=organization_id,
        occur_time=occur_time,
        outcome=outcome,
        details=details,
    )


def _permissions_details(permissions: Iterable[tuple[str, str]]) -> dict[str, Any]:
    encoded = encode_permissions(permissions)
    if len(encoded) > _MAX_LISTED_PERMISSIONS_BYTES:
        return {"permission_count": len(set(permissions))}
    return {"permissions": sorted(f"{t}.{a}" for t, a in set(permissions))}


def _scope_details(scope: Ref) -> dict[str, str]:
    named = {
        "workspace_id": scope.workspace_id,
        "project_id": scope.project_id,
        "scope_resource_type": scope.resource_type,
        "scope_resource_id": scope.resource_id,
    }
    return {key: value for key, value in named.items() if value}


def _binding_details(record: BindingRecord) -> dict[str, Any]:
    return {
        "subject_kind": record.subject_kind,
        "subject_id": record.subject_id,
        "role_id": record.role_id,
        "level": record.level,
        **_scope_details(record.scope),
    }


class Administration:
    """Role, binding and membership writes, forgetting and purges, and the reads that go with them."""

    def __init__(
        self,
        store: RbacStore,
        decisions: Decisions,
        clock: Clock,
        new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
        mesh_service_accounts: frozenset[str] = frozenset(),
    ) -> None:
        self._store = store
        self._decisions = decisions
        self._clock = clock
        self._new_id = new_id
        # The control plane's own accounts write bindings for others (creators, invitees): no guard.
        self._mesh_service_accounts = mesh_service_accounts

    # roles --------------------------------------------------------------------------------------------

    async def create_role(
        self,
        organization_id: str,
        display_name: str,
        description: str,
        level: str,
        permissions: Iterable[tuple[str, str]],
        *,
        request_key: RequestKey | None = None,
    ) -> RoleView:
        """Creates a custom role (a retry with the same key returns the first one)."""
        name = _check_name(display_name, "role.display_name")
        description = _check_description(description, "role.description")
        if level not in LEVELS:
            raise InvalidArgument("role.level", "is required")
        checked = _check_permissions(permissions, "role.permissions")
        now = self._clock.now()
        try:
            async with self._store.transaction() as tx:
                if request_key is not None:
                    known = await tx.recall(request_key.method, request_key.principal, request_key.request_id)
                    if known is not None:
                        return await self._role_in(tx, organization_id, known)
                record = RoleRecord(
                    self._new_id(), organization_id, name, description, level, checked, now, now, 1
                )
                await tx.insert_role(record)
                if request_key is not None:
                    await tx.remember(
                        request_key.method, request_key.principal, request_key.request_id, record.id, now
                    )
                await tx.bump_revision(organization_id)
                await tx.record_event(
                    rbac_event(
                        "rbac.role.create",
                        organization_id,
                        "role",
                        record.id,
                        now,
                        details={"display_name": name, "level": level, **_permissions_details(checked)},
                    )
                )
        except Conflict:
            raise AlreadyExists(f"a role named {name!r} exists in the organization") from None
        self._decisions.invalidate(organization_id)
        return RoleView(record, False)

    async def _role_in(self, tx: RbacTx, organization_id: str, role_id: str) -> RoleView:
        record = await tx.get_role(organization_id, role_id)
        if record is None:
            raise NotFound("role not found")
        return RoleView(record, False)

    async def get_role(self, organization_id: str, role_id: str) -> RoleView:
        """A built-in role by id, or a custom role of the organization."""
        view = built_in_view(role_id)
        if view is not None:
            return view
        async with self._store.transaction() as tx:
            return await self._role_in(tx, organization_id, role_id)

    async def list_roles(self, organization_id: str, query: ListQuery) -> tuple[list[RoleView], str]:
        """One page of custom roles."""
        async with self._store.transaction() as tx:
            records, token = await tx.list_roles(organization_id, query)
        return [RoleView(record, False) for record in records], token

    async def update_role(
        self, organization_id: str, role_id: str, etag: str, changes: Mapping[str, Any]
    ) -> RoleView:
        """Changes a custom role (ABORTED on a stale etag)."""
        if role_id in BUILT_IN_ROLES:
            raise FailedPrecondition("built-in roles cannot be changed", reason="BUILT_IN_ROLE")
        values: dict[str, Any] = {}
        if "display_name" in changes:
            values["display_name"] = _check_name(changes["display_name"], "role.display_name")
        if "description" in changes:
            values["description"] = _check_description(changes["description"], "role.description")
        if "permissions" in changes:
            values["permissions"] = _check_permissions(changes["permissions"], "role.permissions")
        try:
            async with self._store.transaction() as tx:
                current = (await self._role_in(tx, organization_id, role_id)).record
                check_etag(etag, current.version)
                now = self._clock.now()
                if not await tx.update_role(role_id, current.version, values, now):
                    raise Aborted(
                        "the role changed concurrently; read it again and retry", reason="ETAG_MISMATCH"
                    )
                await tx.bump_revision(organization_id)
                details: dict[str, Any] = {"fields": sorted(values)}
                if "permissions" in values:
                    details.update(_permissions_details(values["permissions"]))
                await tx.record_event(
                    rbac_event("rbac.role.update", organization_id, "role", role_id, now, details=details)
                )
                updated = await self._role_in(tx, organization_id, role_id)
        except Conflict:
            raise AlreadyExists("a role with that name exists in the organization") from None
        self._decisions.invalidate(organization_id)
        return updated

    async def delete_role(self, organization_id: str, role_id: str, etag: str) -> int:
        """Deletes a custom role that no binding uses; the revision."""
        if role_id in BUILT_IN_ROLES:
            raise FailedPrecondition("built-in roles cannot be deleted", reason="BUILT_IN_ROLE")
        async with self._store.transaction() as tx:
            current = (await self._role_in(tx, organization_id, role_id)).record
            check_etag(etag, current.version)
            if await tx.role_in_use(organization_id, role_id):
                raise FailedPrecondition(
                    "the role is still bound; delete its bindings first", reason="ROLE_IN_USE"
                )
            await tx.delete_role(role_id)
            revision = await tx.bump_revision(organization_id)
            await tx.record_event(
                rbac_event(
                    "rbac.role.delete",
                    organization_id,
                    "role",
                    role_id,
                    self._clock.now(),
                    details={"display_name": current.display_name},
                )
            )
        self._decisions.invalidate(organization_id)
        return revision

    # bindings -----------------------------------------------------------------------------------------

    async def create_binding(
        self,
        organization_id: str,
        subject: tuple[str, str],
        role_id: str,
        scope: Ref,
        *,
        request_key: RequestKey | None = None,
        granter: tuple[str, str] | None = None,
        action: str = "rbac.role_binding.create",
    ) -> BindingRecord:
        """Binds a subject to a role at a scope or on one resource; an identical grant is ALREADY_EXISTS.

        With a `granter` (the caller of CreateRoleBinding), the granter must
        hold every permission the role grants there: nobody hands out more
        than they have (an organization Manager cannot make anyone Admin).
        """
        kind, subject_id = subject
        if kind not in SUBJECT_KINDS:
            raise InvalidArgument("role_binding.subject.kind", "is required")
        if scope.resource_id and not scope.resource_type:
            raise InvalidArgument("role_binding.scope.resource_type", "is required with resource_id")
        if scope.resource_type and not scope.resource_id:
            raise InvalidArgument("role_binding.scope.resource_id", "is required with resource_type")
        level = scope.level
        if granter is not None:
            await self._refuse_escalation(granter, role_id, scope, action)
        now = self._clock.now()
        async with self._store.transaction() as tx:
            if request_key is not None:
                known = await tx.recall(request_key.method, request_key.principal, request_key.request_id)
                if known is not None:
                    found = await tx.get_binding(organization_id, known)
                    if found is None:
                        raise NotFound("role binding not found")
                    return found
            role_level = await self._role_level(tx, organization_id, role_id)
            if role_id == OWNER_ROLE and level != "resource":
                raise InvalidArgument("role_binding.role_id", "owner is bound on a single resource only")
            if level != "resource" and role_level != level:
                raise InvalidArgument(
                    "role_binding.role_id", f"is a {role_level}-level role and cannot be bound at a {level}"
                )
            record = BindingRecord(
                id=self._new_id(),
                organization_id=organization_id,
                subject_kind=kind,
                subject_id=subject_id,
                role_id=role_id,
                workspace_id=scope.workspace_id,
                project_id=scope.project_id,
                resource_type=scope.resource_type,
                resource_id=scope.resource_id,
                level=level,
                create_time=now,
                revision=0,
            )
            if await tx.find_binding(record) is not None:
                raise AlreadyExists("the subject already holds this role at this scope")
            record = replace(record, revision=await tx.bump_revision(organization_id))
            await tx.insert_binding(record)
            if request_key is not None:
                await tx.remember(
                    request_key.method, request_key.principal, request_key.request_id, record.id, now
                )
            await tx.record_event(
                rbac_event(
                    action, organization_id, "role_binding", record.id, now, details=_binding_details(record)
                )
            )
        self._decisions.invalidate(organization_id)
        return record

    async def _role_level(self, tx: RbacTx, organization_id: str, role_id: str) -> str:
        built_in = BUILT_IN_ROLES.get(role_id)
        if built_in is not None:
            return built_in.level
        custom = await tx.get_role(organization_id, role_id)
        if custom is None:
            raise InvalidArgument("role_binding.role_id", "names no role of the organization")
        return custom.level

    async def get_binding(self, organization_id: str, binding_id: str) -> BindingRecord:
        """A binding of the organization."""
        async with self._store.transaction() as tx:
            found = await tx.get_binding(organization_id, binding_id)
        if found is None:
            raise NotFound("role binding not found")
        return found

    async def list_bindings(self, organization_id: str, query: ListQuery) -> tuple[list[BindingRecord], str]:
        """One page of bindings."""
        async with self._store.transaction() as tx:
            return await tx.list_bindings(organization_id, query)

    async def delete_binding(
        self, organization_id: str, binding_id: str, *, remover: tuple[str, str] | None = None
    ) -> int:
        """Deletes a binding; the last organization Admin user binding is refused. The revision.

        With a `remover`, the remover must hold every permission the role grants
        there (a Manager cannot unseat an Admin).
        """
        if remover is not None:
            async with self._store.transaction() as tx:
                bound = await tx.get_binding(organization_id, binding_id)
            if bound is None:
                raise NotFound("role binding not found")
            await self._refuse_escalation(remover, bound.role_id, bound.scope, "rbac.role_binding.delete")
        async with self._store.transaction() as tx:
            found = await tx.get_binding(organization_id, binding_id)
            if found is None:
                raise NotFound("role binding not found")
            if (
                found.role_id == ORGANIZATION_ADMIN
                and found.subject_kind == "user"
                and await tx.count_user_bindings(organization_id, ORGANIZATION_ADMIN, "organization") <= 1
            ):
                raise FailedPrecondition("the last organization admin cannot be removed", reason="LAST_ADMIN")
            await tx.delete_binding(binding_id)
            revision = await tx.bump_revision(organization_id)
            await tx.record_event(
                rbac_event(
                    "rbac.role_binding.delete",
                    organization_id,
                    "role_binding",
                    binding_id,
                    self._clock.now(),
                    details=_binding_details(found),
                )
            )
        self._decisions.invalidate(organization_id)
        return revision

    async def share_resource(
        self, sharer: tuple[str, str], resource: Ref, subject: tuple[str, str], role_id: str
    ) -> BindingRecord:
        """Binds `subject` to `role_id` on one resource on behalf of `sharer`.

        The sharer must hold `share` on the resource and every permission the
        role grants on the resource's type: a share never grants more than
        the sharer has. Checked against fresh state (the organization's
        current revision).
        """
        if not resource.resource_type or not resource.resource_id:
            raise InvalidArgument("resource.resource_id", "resource_type and resource_id are required")
        if role_id == OWNER_ROLE:
            raise InvalidArgument("role_id", "ownership is recorded by RecordOwnership, not shared")
        held, _ = await self._decisions.effective(sharer, resource, await self._current_revision())
        if (resource.resource_type, "share") not in held:
            await self.record_denial("rbac.resource.share", resource, f"{resource.resource_type}.share")
            raise PermissionDenied(
                "permission denied", metadata={"permission": f"{resource.resource_type}.share"}
            )
        return await self.create_binding(
            resource.organization_id, subject, role_id, resource, granter=sharer, action="rbac.resource.share"
        )

    async def _refuse_escalation(
        self, caller: tuple[str, str], role_id: str, scope: Ref, action: str
    ) -> None:
        """PERMISSION_DENIED (ESCALATION) unless the caller holds, at `scope`, all the role grants there."""
        if caller[0] == "service_account" and caller[1] in self._mesh_service_accounts:
            return
        revision = await self._current_revision()
        index, _ = await self._decisions.index(scope.organization_id, revision)
        granted = index.roles.get(role_id, frozenset())
        if scope.resource_id:
            granted = frozenset(p for p in granted if p[0] == scope.resource_type)
        # Effective permissions include the caller's ownership of the resource: an owner shares.
        held, _ = await self._decisions.effective(caller, scope, revision)
        if not granted <= set(held):
            await self.record_denial(action, scope, "", reason="ESCALATION", role_id=role_id)
            raise PermissionDenied(
                "the role grants more than the caller holds at this scope", reason="ESCALATION"
            )

    async def record_denial(
        self, action: str, resource: Ref, permission: str, *, reason: str = "", role_id: str = ""
    ) -> None:
        """Records a DENIED event for a refusal decided past the interceptor, in its own transaction."""
        details: dict[str, Any] = _scope_details(resource)
        for key, value in (("permission", permission), ("reason", reason), ("role_id", role_id)):
            if value:
                details[key] = value
        async with self._store.transaction() as tx:
            await tx.record_event(
                rbac_event(
                    action,
                    resource.organization_id,
                    resource.resource_type or "organization",
                    resource.resource_id or resource.organization_id,
                    self._clock.now(),
                    outcome="DENIED",
                    details=details,
                )
            )

    async def _current_revision(self) -> int:
        async with self._store.transaction() as tx:
            return await tx.current_revision()

    async def forget_resource(self, resource: Ref) -> tuple[int, int, int]:
        """Deletes every share and ownership of a deleted resource; (bindings, ownerships, revision).

        For a workspace or project, also the bindings and ownerships inside it. The revision moves
        (and the index is dropped) only when a binding went: ownerships are not in the index.
        """
        async with self._store.transaction() as tx:
            deleted = await tx.delete_resource_bindings(
                resource.organization_id, resource.resource_type, resource.resource_id
            )
            owned = await tx.delete_resource_ownerships(
                resource.organization_id, resource.resource_type, resource.resource_id
            )
            if deleted:
                revision = await tx.bump_revision(resource.organization_id)
            else:
                revision = await tx.current_revision()
            await tx.record_event(
                rbac_event(
                    "rbac.resource.forget",
                    resource.organization_id,
                    resource.resource_type,
                    resource.resource_id,
                    self._clock.now(),
                    details={
                        "deleted_bindings": deleted,
                        "deleted_ownerships": owned,
                        **_scope_details(replace(resource, resource_type="", resource_id="")),
                    },
                )
            )
        if deleted:
            self._decisions.invalidate(resource.organization_id)
        return deleted, owned, revision

    async def purge_subject(
        self, organization_id: str, subject: tuple[str, str], *, remover: tuple[str, str] | None = None
    ) -> tuple[int, int, int, int]:
        """Deletes every binding, membership and ownership of a subject.

        Returns (bindings, memberships, ownerships, revision). Refused for the
        last user holding organization Admin, and, with a `remover`, unless the
        remover holds every role the subject holds (ownerships are nobody's
        grant, so they do not enter that comparison).
        """
        kind, subject_id = subject
        if remover is not None:
            async with self._store.transaction() as tx:
                held = await tx.subject_bindings(organization_id, kind, subject_id)
            for binding in held:
                await self._refuse_escalation(remover, binding.role_id, binding.scope, "rbac.subject.purge")
        async with self._store.transaction() as tx:
            if (
                kind == "user"
                and await tx.holds_binding(organization_id, kind, subject_id, ORGANIZATION_ADMIN)
                and await tx.count_user_bindings(organization_id, ORGANIZATION_ADMIN, "organization") <= 1
            ):
                raise FailedPrecondition("the last organization admin cannot be removed", reason="LAST_ADMIN")
            bindings = await tx.delete_subject_bindings(organization_id, kind, subject_id)
            memberships = await tx.delete_memberships_of(organization_id, kind, subject_id)
            owned = await tx.delete_subject_ownerships(organization_id, kind, subject_id)
            revision = await tx.bump_revision(organization_id)
            await tx.record_event(
                rbac_event(
                    "rbac.subject.purge",
                    organization_id,
                    kind,
                    subject_id,
                    self._clock.now(),
                    details={
                        "deleted_bindings": bindings,
                        "deleted_memberships": memberships,
                        "deleted_ownerships": owned,
                    },
                )
            )
        self._decisions.invalidate(organization_id)
        return bindings, memberships, owned, revision

    # team memberships ---------------------------------------------------------------------------------

    async def add_team_member(self, organization_id: str, team_id: str, member: tuple[str, str]) -> int:
        """Records a membership (idempotent); the revision."""
        if member[0] not in MEMBER_KINDS:
            raise InvalidArgument("member.kind", "must be USER or SERVICE_ACCOUNT")
        now = self._clock.now()
        async with self._store.transaction() as tx:
            added = await tx.add_member(organization_id, team_id, member[0], member[1], now)
            revision = await tx.bump_revision(organization_id)
            if added:  # a repeated add changes nothing, so it is not an audited change
                await tx.record_event(
                    rbac_event(
                        "rbac.team_member.add",
                        organization_id,
                        "team",
                        team_id,
                        now,
                        details={"member_kind": member[0], "member_id": member[1]},
                    )
                )
        self._decisions.invalidate(organization_id)
        return revision

    async def remove_team_member(self, organization_id: str, team_id: str, member: tuple[str, str]) -> int:
        """Removes a membership (idempotent); the revision."""
        if member[0] not in MEMBER_KINDS:
            raise InvalidArgument("member.kind", "must be USER or SERVICE_ACCOUNT")
        async with self._store.transaction() as tx:
            removed = await tx.remove_member(organization_id, team_id, member[0], member[1])
            revision = await tx.bump_revision(organization_id)
            if removed:
                await tx.record_event(
                    rbac_event(
                        "rbac.team_member.remove",
                        organization_id,
                        "team",
                        team_id,
                        self._clock.now(),
                        details={"member_kind": member[0], "member_id": member[1]},
                    )
                )
        self._decisions.invalidate(organization_id)
        return revision

    # organizations ------------------------------------------------------------------------------------

    async def purge_organization(self, organization_id: str) -> tuple[int, int, int, int, int]:
        """Deletes every custom role, binding, team membership and ownership of a deleted organization.

        One transaction; returns (bindings, roles, memberships, ownerships, revision).
        The organization's index leaves this replica's memory; other replicas see
        the change within the poll bound like any write (ownerships at once).
        """
        async with self._store.transaction() as tx:
            bindings, roles, memberships, owned = await tx.purge_organization(organization_id)
            revision = await tx.bump_revision(organization_id)
            await tx.record_event(
                rbac_event(
                    "rbac.organization.purge",
                    organization_id,
                    "organization",
                    organization_id,
                    self._clock.now(),
                    details={
                        "deleted_bindings": bindings,
                        "deleted_roles": roles,
                        "deleted_memberships": memberships,
                        "deleted_ownerships": owned,
                    },
                )
            )
        self._decisions.forget(organization_id)
        return bindings, roles, memberships, owned, revision

    async def bootstrap_organization_admin(self, organization_id: str, user_id: str) -> BindingRecord:
        """Binds organization Admin to a user unless the user holds it already."""
        try:
            return await self.create_binding(
                organization_id, ("user", user_id), ORGANIZATION_ADMIN, Ref(organization_id)
            )
        except AlreadyExists:
            async with self._store.transaction() as tx:
                probe = BindingRecord(
                    "",
                    organization_id,
                    "user",
                    user_id,
                    ORGANIZATION_ADMIN,
                    "",
                    "",
                    "",
                    "",
                    "organization",
                    self._clock.now(),
                    0,
                )
                found = await tx.find_binding(probe)
            if found is None:
                raise
            return found
