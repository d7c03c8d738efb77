"""The in-memory permission index of one organization and its evaluation; no gRPC, no SQL.

Built from the organization's bindings, team memberships and custom roles (a
snapshot the store loads); answers Check, LookupResources and
ListEffectivePermissions with dictionary lookups only. A binding grants at its
scope and below: organization → workspace → project → one resource. A binding
on one resource (a share) grants only permissions on that resource's own type.
Ownerships are not in the index (services/rbac/decisions.py reads them by key).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from services.rbac.catalog import BUILT_IN_ROLES, OWNER_ROLE, Perm

SubjectKey = tuple[str, str]  # (kind, id); kind: user | team | service_account
ScopeKey = tuple[str, str]  # (level letter o/w/p/r, id)

_ORG: ScopeKey = ("o", "")


@dataclass(frozen=True)
class Ref:
    """A resource or scope with its scope chain."""

    organization_id: str
    workspace_id: str = ""
    project_id: str = ""
    resource_type: str = ""
    resource_id: str = ""

    @property
    def level(self) -> str:
        """The most specific level named."""
        if self.resource_id:
            return "resource"
        if self.project_id:
            return "project"
        if self.workspace_id:
            return "workspace"
        return "organization"


@dataclass(frozen=True)
class Binding:
    """What the index needs of one role binding."""

    subject_kind: str
    subject_id: str
    role_id: str
    scope: Ref


@dataclass(frozen=True)
class Membership:
    """A member (user or service account) of a team."""

    team_id: str
    member_kind: str
    member_id: str


def scope_key(ref: Ref) -> ScopeKey:
    """The key of the most specific level of `ref`."""
    if ref.resource_id:
        return ("r", f"{ref.resource_type}\x00{ref.resource_id}")
    if ref.project_id:
        return ("p", ref.project_id)
    if ref.workspace_id:
        return ("w", ref.workspace_id)
    return _ORG


def chain(ref: Ref) -> list[ScopeKey]:
    """The keys of every level of `ref`, organization first."""
    keys = [_ORG]
    if ref.workspace_id:
        keys.append(("w", ref.workspace_id))
    if ref.project_id:
        keys.append(("p", ref.project_id))
    if ref.resource_id and ref.resource_type:
        keys.append(("r", f"{ref.resource_type}\x00{ref.resource_id}"))
    return keys


# How a subject holds a permission on a resource.
Grant = Literal["scope_wide", "on_resource", ""]
SCOPE_WIDE: Grant = "scope_wide"  # a binding at a level above the resource: every resource of the type there
ON_RESOURCE: Grant = "on_resource"  # a binding on the resource itself (a share), or its ownership
NOT_HELD: Grant = ""


def is_own_level(key: ScopeKey, ref: Ref) -> bool:
    """Whether the chain level `key` is `ref` itself (a share, or a workspace/project naming itself)."""
    level, key_id = key
    if level == "r":
        return True
    if level == "w":
        return ref.resource_type == "workspace" and ref.resource_id == key_id
    if level == "p":
        return ref.resource_type == "project" and ref.resource_id == key_id
    return False


@dataclass
class Lookup:
    """Answer of LookupResources."""

    all: bool = False
    workspace_ids: set[str] = field(default_factory=set)
    project_ids: set[str] = field(default_factory=set)
    resource_ids: set[str] = field(default_factory=set)
    # More owned ids exist than the answer carries (see Decisions' bound).
    truncated: bool = False


class OrganizationIndex:
    """Bindings by subject and scope, team memberships, and role permission sets of one organization."""

    def __init__(
        self,
        bindings: Iterable[Binding],
        memberships: Iterable[Membership],
        custom_roles: Mapping[str, frozenset[Perm]],
    ) -> None:
        self.roles: dict[str, frozenset[Perm]] = {
            role_id: role.permissions for role_id, role in BUILT_IN_ROLES.items()
        }
        self.roles.update(custom_roles)
        self._owner_permissions: dict[str, frozenset[Perm]] = {}
        self.by_subject: dict[SubjectKey, dict[ScopeKey, list[str]]] = {}
        # The chain of each bound project / resource, for filtering lookups by scope.
        self.chains: dict[ScopeKey, Ref] = {}
        for binding in bindings:
            key = scope_key(binding.scope)
            scopes = self.by_subject.setdefault((binding.subject_kind, binding.subject_id), {})
            scopes.setdefault(key, []).append(binding.role_id)
            if key[0] in ("p", "r"):
                self.chains[key] = binding.scope
        self.teams_of: dict[SubjectKey, list[SubjectKey]] = {}
        for membership in memberships:
            self.teams_of.setdefault((membership.member_kind, membership.member_id), []).append(
                ("team", membership.team_id)
            )

    def _subjects(self, subject: SubjectKey) -> list[SubjectKey]:
        return [subject, *self.teams_of.get(subject, ())]

    def _grants(self, role_ids: list[str], permission: Perm) -> bool:
        roles = self.roles
        for role_id in role_ids:
            permissions = roles.get(role_id)
            if permissions is not None and permission in permissions:
                return True
        return False

    def check(self, subject: SubjectKey, permission: Perm, ref: Ref) -> bool:
        """Whether the subject (directly or through a team) holds the permission on `ref`."""
        return self.grant(subject, permission, ref) != NOT_HELD

    def grant(self, subject: SubjectKey, permission: Perm, ref: Ref) -> Grant:
        """How the subject holds the permission on `ref`: SCOPE_WIDE, ON_RESOURCE or NOT_HELD.

        A grant at a level above `ref` wins over one on `ref` itself: it says more
        (the same holds for every resource of the type under those levels).
        """
        keys = chain(ref)
        found = NOT_HELD
        for holder in self._subjects(subject):
            scopes = self.by_subject.get(holder)
            if not scopes:
                continue
            for key in keys:
                role_ids = scopes.get(key)
                if role_ids is None:
                    continue
                if key[0] == "r" and permission[0] != ref.resource_type:
                    continue
                if self._grants(role_ids, permission):
                    if not is_own_level(key, ref):
                        return SCOPE_WIDE
                    found = ON_RESOURCE
        return found

    def owner_permissions(self, resource_type: str) -> frozenset[Perm]:
        """What ownership grants on a resource of the type: the owner role's permissions on that type."""
        granted = self._owner_permissions.get(resource_type)
        if granted is None:
            granted = frozenset(p for p in self.roles.get(OWNER_ROLE, frozenset()) if p[0] == resource_type)
            self._owner_permissions[resource_type] = granted
        return granted

    def lookup(self, subject: SubjectKey, permission: Perm, scope: Ref) -> Lookup:
        """Where inside `scope` the subject holds the permission on resources of its type."""
        found = Lookup()
        for holder in self._subjects(subject):
            for key, role_ids in self.by_subject.get(holder, {}).items():
                if not self._grants(role_ids, permission):
                    continue
                level, key_id = key
                if level == "o":
                    return Lookup(all=True)
                if level == "w":
                    if key_id == scope.workspace_id:
                        return Lookup(all=True)
                    if not scope.workspace_id:
                        found.workspace_ids.add(key_id)
                elif level == "p":
                    bound = self.chains[key]
                    if key_id == scope.project_id:
                        return Lookup(all=True)
                    if not scope.project_id and _inside(bound, scope):
                        found.project_ids.add(key_id)
                else:
                    bound = self.chains[key]
                    if bound.resource_type == permission[0] and _inside(bound, scope):
                        found.resource_ids.add(bound.resource_id)
        return found

    def effective(self, subject: SubjectKey, ref: Ref) -> set[Perm]:
        """Every permission the subject holds on `ref` (inherited from above included)."""
        held: set[Perm] = set()
        keys = chain(ref)
        for holder in self._subjects(subject):
            scopes = self.by_subject.get(holder)
            if not scopes:
                continue
            for key in keys:
                for role_id in scopes.get(key, ()):
                    permissions = self.roles.get(role_id, frozenset())
                    if key[0] == "r":
                        held.update(p for p in permissions if p[0] == ref.resource_type)
                    else:
                        held.update(permissions)
        return held


def _inside(bound: Ref, scope: Ref) -> bool:
    """Whether a bound project/resource can lie inside `scope` (an unknown level never excludes)."""
    if scope.workspace_id and bound.workspace_id and bound.workspace_id != scope.workspace_id:
        return False
    return not (scope.project_id and bound.project_id and bound.project_id != scope.project_id)
