"""Service accounts: non-human principals that authenticate with API keys."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from services.authn.auditing import authn_event
from services.authn.ids import new_id
from services.authn.store import AuthnStore, Conflict, ListQuery, Page, RequestKey, ServiceAccountRecord
from services.kit.clock import Clock
from services.kit.errors import Aborted, AlreadyExists, InvalidArgument, NotFound
from services.kit.fieldmask import check_etag

MAX_DISPLAY_NAME_LENGTH = 200
MAX_DESCRIPTION_LENGTH = 1000
UPDATABLE_SERVICE_ACCOUNT_FIELDS = ("display_name", "description")


def _display_name(value: str) -> str:
    name = value.strip()
    if not name:
        raise InvalidArgument("service_account.display_name", "is required")
    if len(name) > MAX_DISPLAY_NAME_LENGTH:
        raise InvalidArgument(
            "service_account.display_name", f"must be at most {MAX_DISPLAY_NAME_LENGTH} characters"
        )
    return name


def _description(value: str) -> str:
    if len(value) > MAX_DESCRIPTION_LENGTH:
        raise InvalidArgument(
            "service_account.description", f"must be at most {MAX_DESCRIPTION_LENGTH} characters"
        )
    return value


def _already_exists() -> AlreadyExists:
    return AlreadyExists("a service account with this display name exists", reason="DISPLAY_NAME_TAKEN")


class ServiceAccounts:
    """The service-account rules."""

    def __init__(self, store: AuthnStore, clock: Clock, *, revocation_lifetime: timedelta) -> None:
        self._store = store
        self._clock = clock
        self._revocation_lifetime = revocation_lifetime

    async def create(
        self, display_name: str, description: str, creator_id: str, *, request_key: RequestKey | None = None
    ) -> ServiceAccountRecord:
        """A new active service account; ALREADY_EXISTS when the display name is taken."""
        now = self._clock.now()
        record = ServiceAccountRecord(
            id=new_id(),
            display_name=_display_name(display_name),
            description=_description(description),
            state="active",
            creator_id=creator_id,
            create_time=now,
            update_time=now,
            version=1,
        )
        try:
            async with self._store.transaction() as tx:
                if request_key is not None:
                    earlier = await tx.recall(request_key)
                    if earlier is not None:
                        return self._require(await tx.get_service_account(earlier))
                await tx.insert_service_account(record)
                if request_key is not None:
                    await tx.remember(request_key, record.id, now)
                await tx.record_event(
                    authn_event(
                        "authn.service_account.create",
                        "service_account",
                        record.id,
                        now,
                        details={"display_name": record.display_name},
                    )
                )
        except Conflict as conflict:
            if conflict.constraint == "service_accounts.display_name":
                raise _already_exists() from None
            raise
        return record

    @staticmethod
    def _require(account: ServiceAccountRecord | None) -> ServiceAccountRecord:
        if account is None:
            raise NotFound("service account not found")
        return account

    async def get(self, account_id: str) -> ServiceAccountRecord:
        """The service account; NOT_FOUND otherwise."""
        async with self._store.transaction() as tx:
            return self._require(await tx.get_service_account(account_id))

    async def list(self, query: ListQuery) -> Page[ServiceAccountRecord]:
        """One page of service accounts."""
        async with self._store.transaction() as tx:
            return await tx.list_service_accounts(query)

    async def update(
        self, account_id: str, supplied_etag: str, changes: Mapping[str, Any]
    ) -> ServiceAccountRecord:
        """Applies changes (display_name, description); ABORTED when the version moved on."""
        values: dict[str, Any] = {}
        if "display_name" in changes:
            values["display_name"] = _display_name(str(changes["display_name"]))
        if "description" in changes:
            values["description"] = _description(str(changes["description"]))
        try:
            async with self._store.transaction() as tx:
                current = self._require(await tx.get_service_account(account_id))
                check_etag(supplied_etag, current.version)
                version = current.version
                if not values:
                    return current
                now = self._clock.now()
                updated = await tx.update_service_account(account_id, version, values, now)
                if updated is None:
                    raise Aborted("the service account changed since it was read", reason="ETAG_MISMATCH")
                await tx.record_event(
                    authn_event(
                        "authn.service_account.update",
                        "service_account",
                        account_id,
                        now,
                        details={"fields": sorted(values)},
                    )
                )
                return updated
        except Conflict as conflict:
            if conflict.constraint == "service_accounts.display_name":
                raise _already_exists() from None
            raise

    async def deactivate(self, account_id: str) -> ServiceAccountRecord:
        """DEACTIVATED, with its API keys revoked and the account on the revocation feed (one transaction)."""
        now = self._clock.now()
        async with self._store.transaction() as tx:
            account = self._require(await tx.deactivate_service_account(account_id, now))
            await tx.record_revocations(
                subject_ids=[account_id], revoke_time=now, expire_time=now + self._revocation_lifetime
            )
            await tx.record_event(
                authn_event("authn.service_account.deactivate", "service_account", account_id, now)
            )
            return account
