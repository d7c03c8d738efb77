"""The kit PermissionChecker of RBAC itself: its own management RPCs are decided locally.

The kit hands over (principal, resource_type, action, resource_id, scope_id);
every RBAC rule names the organization as its scope, so the question becomes
a Check of the principal on that resource (or collection) in the organization.
Workload tokens hold no RBAC permission. The control plane's own mesh service
accounts (KEEL_MESH_SERVICE_ACCOUNTS) may call every RBAC RPC: orgs writes the
bindings of organization creators and invitees on its own account.
"""

from __future__ import annotations

from services.kit.context import Principal
from services.rbac.decisions import Decisions
from services.rbac.evaluator import Ref

_KINDS = {"user": "user", "service_account": "service_account"}


class RbacChecker:
    """Answers the kit's authorization interceptor from RBAC's own decisions."""

    def __init__(self, decisions: Decisions, mesh_service_accounts: frozenset[str] = frozenset()) -> None:
        self._decisions = decisions
        self._mesh_service_accounts = mesh_service_accounts

    async def check(
        self, principal: Principal, resource_type: str, action: str, resource_id: str, scope_id: str
    ) -> bool:
        """Whether the principal holds (resource_type, action) on the resource in organization scope_id."""
        if principal.kind == "service_account" and principal.subject in self._mesh_service_accounts:
            return True
        kind = _KINDS.get(principal.kind)
        if kind is None or not scope_id:
            return False
        ref = Ref(
            scope_id,
            workspace_id=resource_id if resource_type == "workspace" else "",
            resource_type=resource_type if resource_id else "",
            resource_id=resource_id,
        )
        allowed, _ = await self._decisions.check((kind, principal.subject), (resource_type, action), ref)
        return allowed
