"""The RBAC service: roles, role bindings, team relations, ownership, and permission checks."""
