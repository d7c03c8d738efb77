"""The authn service: users, service accounts, API keys, tokens and signing keys.

The only issuer of access tokens in Keel (see docs/authn.md for the design notes).
"""
