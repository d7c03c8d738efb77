"""The orgs service: organizations, members, invitations, teams, workspaces, and the audit log."""
