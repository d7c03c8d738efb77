"""The interim PermissionChecker of authn, until the RBAC service answers checks.

Policy: an active platform admin may do everything; every other principal is
denied every permission. Non-admins still reach their own resources through
the self rules of the contracts (`self_field`: GetUser/UpdateUser on "me" or
their own id, their own API keys, a service account reading itself), which
the kit's authorization interceptor grants before asking this checker, and
through `authenticated` RPCs (ChangePassword, IntrospectToken). Because the
answer never depends on the resource, a non-admin gets the same
PERMISSION_DENIED for an existing and a non-existing id.
"""

from __future__ import annotations

from services.authn.users import Users
from services.kit.context import Principal


class PlatformAdminChecker:
    """Grants everything to active platform admins and nothing to anyone else."""

    def __init__(self, users: Users) -> None:
        self._users = users

    async def check(
        self, principal: Principal, resource_type: str, action: str, resource_id: str, scope_id: str
    ) -> bool:
        """Whether the principal is an active platform admin (the permission itself is not consulted)."""
        if principal.kind != "user":
            return False
        return await self._users.is_platform_admin(principal.subject)
