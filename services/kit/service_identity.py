"""A service's own identity for calls it makes on its own account (not for a caller).

Control-plane services sometimes act for themselves: shipping audit events to
orgs, orgs binding the creator of an organization as its Admin in RBAC. They
do so as a *mesh service account*: an authn service account whose id is
listed in KEEL_MESH_SERVICE_ACCOUNTS, holding an API key in a 0600 file
(KEEL_SERVICE_API_KEY_FILE). `ServiceCredential` exchanges that key for a
short-lived access token at authn (the only token issuer), caches it until
shortly before it expires, and hands out call metadata:

```python
credential = ServiceCredential.from_settings(settings, clock)
await stub.CreateRoleBinding(request, metadata=await credential.metadata())
```

Explicit metadata wins over the kit client's propagation of the caller's token.
"""

from __future__ import annotations

import asyncio
import stat
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc

from keel.authn.v1 import tokens_pb2, tokens_pb2_grpc
from services.kit.clients import connect
from services.kit.clock import Clock
from services.kit.config import ServiceSettings
from services.kit.interceptors import AUTHORIZATION_KEY

# Metadata for one call, as grpc.aio takes it.
CallMetadata = Sequence[tuple[str, str]]
# What a component that calls as its service needs: something that yields call metadata.
MetadataProvider = Callable[[], Awaitable[CallMetadata]]

# Renew this long before the token's expiry, so a call never leaves with a token about to lapse.
RENEW_BEFORE = timedelta(seconds=60)


def read_api_key_file(path: Path) -> str:
    """The API key stored in `path`; refuses a file readable by group or others."""
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise PermissionError(f"{path} must not be readable by group or others (chmod 600)")
    key = path.read_text(encoding="utf-8").strip()
    if not key:
        raise ValueError(f"{path} is empty")
    return key


class ServiceCredential:
    """Access tokens of this service's own service account, exchanged from its API key and cached."""

    def __init__(self, tokens: tokens_pb2_grpc.TokenServiceAsyncStub, api_key: str, clock: Clock) -> None:
        self._tokens = tokens
        self._api_key = api_key
        self._clock = clock
        self._token = ""
        self._renew_at: datetime | None = None
        self._lock = asyncio.Lock()
        self._channel: grpc.aio.Channel | None = None

    @classmethod
    def from_settings(cls, settings: ServiceSettings, clock: Clock) -> ServiceCredential | None:
        """The credential configured by KEEL_SERVICE_API_KEY_FILE and KEEL_AUTHN_ADDRESS; None when unset."""
        if settings.service_api_key_file is None:
            return None
        channel = connect(settings.authn_address)
        api_key = read_api_key_file(settings.service_api_key_file)
        credential = cls(tokens_pb2_grpc.TokenServiceStub(channel), api_key, clock)
        credential._channel = channel
        return credential

    async def token(self) -> str:
        """A valid access token, exchanged anew when the cached one is near its expiry."""
        if self._fresh():
            return self._token
        async with self._lock:
            if self._fresh():
                return self._token
            response = await self._tokens.CreateToken(
                tokens_pb2.CreateTokenRequest(api_key=tokens_pb2.ApiKeyGrant(secret=self._api_key))
            )
            self._token = response.access_token
            expires = response.access_token_expire_time.ToDatetime(tzinfo=UTC)
            self._renew_at = expires - RENEW_BEFORE
            return self._token

    def _fresh(self) -> bool:
        return self._renew_at is not None and self._clock.now() < self._renew_at

    async def metadata(self) -> CallMetadata:
        """Call metadata carrying this service's token."""
        return ((AUTHORIZATION_KEY, f"Bearer {await self.token()}"),)

    async def close(self) -> None:
        """Closes the channel opened by from_settings."""
        if self._channel is not None:
            await self._channel.close(None)
