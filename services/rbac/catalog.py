"""The permission catalogue and the built-in roles: the ONE declarative table docs/rbac.md describes.

Resource types, the actions valid on each, and exactly which (type, action)
pairs every built-in role grants. No gRPC, no SQL.
"""

from __future__ import annotations

from dataclasses import dataclass

BASIC_ACTIONS = ("create", "read", "update", "delete", "share")

# Workspace-server types bound at the workspace level (outside projects).
WORKSPACE_TYPES = ("project", "stack", "component", "secret", "service_connector")
# Workspace-server types that live inside a project.
PROJECT_TYPES = (
    "pipeline",
    "snapshot",
    "run",
    "step",
    "artifact",
    "artifact_version",
    "model",
    "model_version",
    "code_repository",
)
# Control-plane types of an organization.
ORGANIZATION_TYPES = (
    "organization",
    "member",
    "invitation",
    "team",
    "workspace",
    "role",
    "role_binding",
    "api_key",
    "service_account",
    "audit_log",
)
# Platform-wide types (authn); no organization role grants them, authn's platform admin does.
PLATFORM_TYPES = ("user", "signing_key")

SPECIAL_ACTIONS: dict[str, tuple[str, ...]] = {
    "secret": ("read_secret_value",),
    "service_connector": ("read_secret_value",),
    "pipeline": ("run",),
    "snapshot": ("run",),
    "model_version": ("promote",),
}

RESOURCE_TYPES = WORKSPACE_TYPES + PROJECT_TYPES + ORGANIZATION_TYPES + PLATFORM_TYPES

Perm = tuple[str, str]


# Types whose actions are restricted: the audit log is append-only, written by the services themselves.
RESTRICTED_ACTIONS: dict[str, tuple[str, ...]] = {"audit_log": ("read",)}


def actions_of(resource_type: str) -> tuple[str, ...]:
    """Every action valid on a resource type."""
    restricted = RESTRICTED_ACTIONS.get(resource_type)
    if restricted is not None:
        return restricted
    return BASIC_ACTIONS + SPECIAL_ACTIONS.get(resource_type, ())


ALL_PERMISSIONS: frozenset[Perm] = frozenset(
    (resource_type, action) for resource_type in RESOURCE_TYPES for action in actions_of(resource_type)
)


def is_permission(resource_type: str, action: str) -> bool:
    """Whether (type, action) is in the catalogue."""
    return (resource_type, action) in ALL_PERMISSIONS


def _grant(types: tuple[str, ...], actions: tuple[str, ...] | None = None) -> frozenset[Perm]:
    """(type, action) for each type and each of `actions` valid on it (None: every valid action)."""
    return frozenset(
        (resource_type, action)
        for resource_type in types
        for action in actions_of(resource_type)
        if actions is None or action in actions
    )


_DATA_TYPES = WORKSPACE_TYPES + PROJECT_TYPES
_EDIT = ("create", "read", "update", "delete", "run", "promote")


@dataclass(frozen=True)
class BuiltInRole:
    """A built-in role: fixed id, the level it is bound at, its permissions."""

    id: str
    display_name: str
    level: str  # organization | workspace | project | resource
    description: str
    permissions: frozenset[Perm]


BUILT_IN_ROLES: dict[str, BuiltInRole] = {
    role.id: role
    for role in (
        BuiltInRole(
            "organization_admin",
            "Organization Admin",
            "organization",
            "Everything in the organization, its workspaces and their data.",
            _grant(ORGANIZATION_TYPES + _DATA_TYPES),
        ),
        BuiltInRole(
            "organization_manager",
            "Organization Manager",
            "organization",
            "Runs the organization day to day: workspaces, members, teams, bindings, all data; "
            "not the organization itself, custom roles or the audit log.",
            _grant((*_DATA_TYPES, "workspace", "member", "invitation", "team", "service_account", "api_key"))
            | _grant(("role_binding",), ("create", "read", "delete"))
            | _grant(("organization", "role"), ("read",)),
        ),
        BuiltInRole(
            "organization_viewer",
            "Organization Viewer",
            "organization",
            "Reads everything except secret values and the audit log.",
            _grant(tuple(t for t in ORGANIZATION_TYPES + _DATA_TYPES if t != "audit_log"), ("read",)),
        ),
        BuiltInRole(
            "organization_member",
            "Organization Member",
            "organization",
            "Belongs to the organization: sees it, its members, teams, workspaces and roles.",
            _grant(("organization", "member", "team", "workspace", "role"), ("read",)),
        ),
        BuiltInRole(
            "workspace_admin",
            "Workspace Admin",
            "workspace",
            "Everything on the workspace's data, and the workspace's settings.",
            _grant(_DATA_TYPES) | _grant(("workspace",), ("read", "update", "share")),
        ),
        BuiltInRole(
            "workspace_editor",
            "Workspace Editor",
            "workspace",
            "Creates, changes, runs and promotes the workspace's data; no sharing, no secret values.",
            _grant(_DATA_TYPES, _EDIT) | _grant(("workspace",), ("read",)),
        ),
        BuiltInRole(
            "workspace_viewer",
            "Workspace Viewer",
            "workspace",
            "Reads the workspace's data.",
            _grant((*_DATA_TYPES, "workspace"), ("read",)),
        ),
        BuiltInRole(
            "project_admin",
            "Project Admin",
            "project",
            "Everything on the project's data, and the project itself (not creating projects).",
            _grant(PROJECT_TYPES) | _grant(("project",), ("read", "update", "delete", "share")),
        ),
        BuiltInRole(
            "project_editor",
            "Project Editor",
            "project",
            "Creates, changes, runs and promotes the project's data; no sharing.",
            _grant(PROJECT_TYPES, _EDIT) | _grant(("project",), ("read",)),
        ),
        BuiltInRole(
            "project_viewer",
            "Project Viewer",
            "project",
            "Reads the project's data.",
            _grant((*PROJECT_TYPES, "project"), ("read",)),
        ),
        BuiltInRole(
            "owner",
            "Owner",
            "resource",
            "Implicit on what a subject creates: every action on that one resource.",
            ALL_PERMISSIONS,
        ),
    )
}

OWNER_ROLE = "owner"
ORGANIZATION_ADMIN = "organization_admin"
LEVELS = ("organization", "workspace", "project", "resource")

_LETTERS = {"create": "C", "read": "R", "update": "U", "delete": "D", "share": "S"}
_SPECIAL_LETTERS = {"read_secret_value": "V", "run": "X", "promote": "P"}


def markdown_table() -> str:
    """The built-in roles table of docs/rbac.md, rendered from BUILT_IN_ROLES (test_docs keeps them equal)."""
    roles = [role for role in BUILT_IN_ROLES.values() if role.id != OWNER_ROLE]
    lines = [
        "| resource type | " + " | ".join(role.id for role in roles) + " |",
        "|---|" + "---|" * len(roles),
    ]
    for resource_type in RESOURCE_TYPES:
        cells = []
        for role in roles:
            held = [a for a in actions_of(resource_type) if (resource_type, a) in role.permissions]
            cells.append("".join(_LETTERS.get(a, "") + _SPECIAL_LETTERS.get(a, "") for a in held) or "-")
        lines.append(f"| {resource_type} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
