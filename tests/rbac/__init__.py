"""Tests of the RBAC service."""
