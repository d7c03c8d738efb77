"""Tests of the authn service."""
