"""Users: local accounts, profiles, password changes, deactivation and the bootstrap admin.

E-mail addresses are the login names of local accounts; they are stored lower
cased and unique. Deactivation is one transaction that also revokes every
refresh-token family and API key of the user and publishes the user on the
revocation feed; a password change publishes the sessions it ends.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from services.authn.auditing import authn_event
from services.authn.ids import new_id
from services.authn.passwords import Passwords, check_password_policy
from services.authn.store import AuthnStore, Conflict, ListQuery, Page, RequestKey, UserRecord
from services.authn.throttling import LoginThrottle
from services.kit.audit import AuditEvent
from services.kit.clock import Clock
from services.kit.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unauthenticated,
)
from services.kit.fieldmask import check_etag

# Deliberately loose (RFC 5321 is far richer): one @, no spaces, a dot in the domain.
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s.]+$")
MAX_EMAIL_LENGTH = 320
MAX_DISPLAY_NAME_LENGTH = 200
REASON_INVALID_CREDENTIALS = "INVALID_CREDENTIALS"
UPDATABLE_USER_FIELDS = ("display_name", "email")


def normalize_email(email: str, field_name: str) -> str:
    """The canonical (trimmed, lower-cased) e-mail; INVALID_ARGUMENT naming `field_name` when malformed."""
    value = email.strip().lower()
    if not value:
        raise InvalidArgument(field_name, "is required")
    if len(value) > MAX_EMAIL_LENGTH or not _EMAIL.fullmatch(value):
        raise InvalidArgument(field_name, "is not a valid e-mail address")
    return value


def check_display_name(name: str, field_name: str) -> str:
    """The trimmed display name; INVALID_ARGUMENT when too long."""
    value = name.strip()
    if len(value) > MAX_DISPLAY_NAME_LENGTH:
        raise InvalidArgument(field_name, f"must be at most {MAX_DISPLAY_NAME_LENGTH} characters")
    return value


@dataclass(frozen=True)
class BootstrapResult:
    """What bootstrap-admin did: the admin's e-mail and, only when just created, its password."""

    email: str
    password: str = field(default="", repr=False)

    @property
    def created(self) -> bool:
        """Whether a new admin was created."""
        return bool(self.password)


class Users:
    """The user rules."""

    def __init__(
        self,
        store: AuthnStore,
        passwords: Passwords,
        throttle: LoginThrottle,
        clock: Clock,
        *,
        revocation_lifetime: timedelta,
    ) -> None:
        self._store = store
        self._passwords = passwords
        self._throttle = throttle
        self._clock = clock
        self._revocation_lifetime = revocation_lifetime

    async def create(
        self,
        email: str,
        display_name: str,
        password: str,
        *,
        platform_admin: bool = False,
        request_key: RequestKey | None = None,
    ) -> UserRecord:
        """A new active local user; ALREADY_EXISTS when the e-mail is taken."""
        email = normalize_email(email, "user.email")
        display_name = check_display_name(display_name, "user.display_name")
        if password:
            check_password_policy(password, "password")
        async with self._store.transaction() as tx:
            if request_key is not None:
                earlier = await tx.recall(request_key)
                if earlier is not None:
                    return await self._require(await tx.get_user(earlier))
        password_hash = await self._passwords.hash(password) if password else None
        now = self._clock.now()
        record = UserRecord.new(
            new_id(),
            email=email,
            display_name=display_name,
            now=now,
            platform_admin=platform_admin,
            password_hash=password_hash,
        )
        try:
            async with self._store.transaction() as tx:
                await tx.insert_user(record)
                if request_key is not None:
                    await tx.remember(request_key, record.id, now)
                await tx.record_event(
                    authn_event(
                        "authn.user.create",
                        "user",
                        record.id,
                        now,
                        details={"email": email, "platform_admin": platform_admin},
                    )
                )
        except Conflict as conflict:
            if conflict.constraint == "users.email":
                raise AlreadyExists(
                    "a user with this e-mail exists", reason="EMAIL_ALREADY_REGISTERED"
                ) from None
            if request_key is not None:
                # A concurrent retry with the same request id won the race: answer with its result.
                async with self._store.transaction() as tx:
                    earlier = await tx.recall(request_key)
                    if earlier is not None:
                        return await self._require(await tx.get_user(earlier))
            raise
        return record

    @staticmethod
    async def _require(user: UserRecord | None) -> UserRecord:
        if user is None:
            raise NotFound("user not found")
        return user

    async def get(self, user_id: str) -> UserRecord:
        """The user; NOT_FOUND otherwise."""
        async with self._store.transaction() as tx:
            return await self._require(await tx.get_user(user_id))

    async def list(self, query: ListQuery) -> Page[UserRecord]:
        """One page of users."""
        async with self._store.transaction() as tx:
            return await tx.list_users(query)

    async def update(self, user_id: str, supplied_etag: str, changes: Mapping[str, Any]) -> UserRecord:
        """Applies profile changes (display_name, email); ABORTED when the version moved on."""
        values: dict[str, Any] = {}
        if "display_name" in changes:
            values["display_name"] = check_display_name(str(changes["display_name"]), "user.display_name")
        if "email" in changes:
            values["email"] = normalize_email(str(changes["email"]), "user.email")
        try:
            async with self._store.transaction() as tx:
                current = await self._require(await tx.get_user(user_id))
                check_etag(supplied_etag, current.version)
                version = current.version
                if not values:
                    return current
                now = self._clock.now()
                updated = await tx.update_user(user_id, version, values, now)
                if updated is None:
                    raise Aborted(
                        "the user changed since it was read; re-read and retry", reason="ETAG_MISMATCH"
                    )
                await tx.record_event(
                    authn_event("authn.user.update", "user", user_id, now, details={"fields": sorted(values)})
                )
                return updated
        except Conflict as conflict:
            if conflict.constraint == "users.email":
                raise AlreadyExists(
                    "a user with this e-mail exists", reason="EMAIL_ALREADY_REGISTERED"
                ) from None
            raise

    async def authenticate(self, email: str, password: str, source: str) -> UserRecord:
        """The active user with these credentials.

        "No such user", "wrong password", "no password (SSO only)" and
        "deactivated" are the same UNAUTHENTICATED answer after the same work;
        all count against the throttle.
        """
        await self._throttle.check(email, source)
        async with self._store.transaction() as tx:
            user = await tx.get_user_by_email(email)
        matches = await self._passwords.verify(user.password_hash if user else None, password)
        if user is None or not matches or user.state != "active":
            await self._throttle.record_failure(
                email, source, _failed_login(user, matches, self._clock.now())
            )
            raise Unauthenticated("invalid credentials", reason=REASON_INVALID_CREDENTIALS)
        await self._throttle.record_success(email)
        if user.password_hash is not None and self._passwords.needs_rehash(user.password_hash):
            await self._store_password(user.id, password)
        return user

    async def _store_password(self, user_id: str, password: str) -> None:
        password_hash = await self._passwords.hash(password)
        async with self._store.transaction() as tx:
            current = await self._require(await tx.get_user(user_id))
            await tx.update_user(
                user_id, current.version, {"password_hash": password_hash}, self._clock.now()
            )

    async def change_password(
        self, user_id: str, current_password: str, new_password: str, *, keep_session_id: str
    ) -> None:
        """Verifies the current password, stores the new one and ends every other session of the user."""
        if not current_password:
            raise InvalidArgument("current_password", "is required")
        check_password_policy(new_password, "new_password")
        user = await self.get(user_id)
        if user.state != "active" or not await self._passwords.verify(user.password_hash, current_password):
            # The caller is authenticated, so this is about the password, not about who they are.
            raise InvalidArgument("current_password", "does not match", reason="WRONG_PASSWORD")
        password_hash = await self._passwords.hash(new_password)
        now = self._clock.now()
        async with self._store.transaction() as tx:
            updated = await tx.update_user(user_id, user.version, {"password_hash": password_hash}, now)
            if updated is None:
                raise Aborted("the user changed meanwhile; retry", reason="CONCURRENT_UPDATE")
            ended = await tx.revoke_user_families(
                user_id, now, reason="password_changed", keep_family_id=keep_session_id
            )
            # Other services verify tokens locally: the ended sessions' access tokens go on the feed.
            await tx.record_revocations(
                session_ids=ended, revoke_time=now, expire_time=now + self._revocation_lifetime
            )
            # Never the password, old or new: the event only says that it changed.
            await tx.record_event(authn_event("authn.user.change_password", "user", user_id, now))

    async def deactivate(self, user_id: str) -> UserRecord:
        """DEACTIVATED, with every refresh family and API key revoked in the same transaction.

        The user goes on the revocation feed in that transaction too (one entry covers every
        session: all of its tokens were issued before now).
        """
        now = self._clock.now()
        async with self._store.transaction() as tx:
            # Locked first, so two admins deactivating each other cannot both succeed.
            admins = await tx.lock_active_platform_admin_ids()
            if admins == [user_id]:
                raise FailedPrecondition(
                    "the last active platform admin cannot be deactivated", reason="LAST_PLATFORM_ADMIN"
                )
            user = await self._require(await tx.deactivate_user(user_id, now))
            await tx.record_revocations(
                subject_ids=[user_id], revoke_time=now, expire_time=now + self._revocation_lifetime
            )
            await tx.record_event(authn_event("authn.user.deactivate", "user", user_id, now))
            return user

    async def is_active(self, user_id: str) -> bool:
        """Whether the user exists and is active."""
        async with self._store.transaction() as tx:
            user = await tx.get_user(user_id)
        return user is not None and user.state == "active"

    async def is_platform_admin(self, user_id: str) -> bool:
        """Whether the user is an active platform admin."""
        async with self._store.transaction() as tx:
            user = await tx.get_user(user_id)
        return user is not None and user.state == "active" and user.platform_admin

    async def bootstrap_admin(self, email: str) -> BootstrapResult:
        """Creates a platform admin with a random password unless an active one exists."""
        async with self._store.transaction() as tx:
            existing = await tx.find_platform_admin()
        if existing is not None:
            return BootstrapResult(existing.email or existing.id)
        password = secrets.token_urlsafe(18)
        user = await self.create(email, "Administrator", password, platform_admin=True)
        return BootstrapResult(user.email or email, password)


def _failed_login(user: UserRecord | None, password_matched: bool, now: datetime) -> AuditEvent:
    """The FAILED event of a password login: the user's id only when the account exists.

    The submitted e-mail of an unknown account is never recorded (it may be a
    password typed into the wrong field), nor logged as an action on someone.
    """
    if user is None:
        reason, user_id = "unknown_account", ""
    else:
        reason = "deactivated" if password_matched else "wrong_password"
        user_id = user.id
    return authn_event(
        "authn.token.create",
        "user",
        user_id,
        now,
        outcome="FAILED",
        details={"grant": "password", "reason": reason},
    )
