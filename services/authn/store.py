"""Tables and queries of authn (SQLAlchemy Core); no gRPC, no clock, no policy.

Every method of `AuthnTx` runs inside the transaction its `AuthnStore`
opened, so a domain operation that must be atomic (deactivating a user with
all of its credentials, spending a refresh token and issuing the next) is one
`async with store.transaction()` block. Times are always passed in by the
caller, which owns the clock. Secrets never reach this module in clear: only
keyed hashes, argon2id hashes and AES-GCM ciphertexts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.kit import audit as kit_audit
from services.kit import idempotency as kit_idempotency
from services.kit.db import UtcDateTime
from services.kit.filtering import FilterField, parse_filter
from services.kit.pagination import page_size, paginate, parse_order_by, query_fingerprint

metadata = MetaData()


users = Table(
    "users",
    metadata,
    Column("id", String(36), primary_key=True),
    # Lower-cased; NULL for single-sign-on users whose provider gave none.
    Column("email", String(320), nullable=True, unique=True),
    Column("display_name", String(200), nullable=False, default=""),
    Column("state", String(16), nullable=False),
    Column("platform_admin", Boolean, nullable=False, default=False),
    # argon2id encoded hash; NULL for single-sign-on-only users.
    Column("password_hash", Text, nullable=True),
    Column("create_time", UtcDateTime, nullable=False),
    Column("update_time", UtcDateTime, nullable=False),
    Column("version", Integer, nullable=False, default=1),
)

external_identities = Table(
    "external_identities",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("user_id", String(36), ForeignKey("users.id"), nullable=False, index=True),
    Column("issuer", String(500), nullable=False),
    Column("subject", String(255), nullable=False),
    Column("email", String(320), nullable=True),
    Column("create_time", UtcDateTime, nullable=False),
    UniqueConstraint("issuer", "subject", name="uq_external_identities_issuer_subject"),
)

service_accounts = Table(
    "service_accounts",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("display_name", String(200), nullable=False, unique=True),
    Column("description", String(1000), nullable=False, default=""),
    Column("state", String(16), nullable=False),
    Column("creator_id", String(36), nullable=False),
    Column("create_time", UtcDateTime, nullable=False),
    Column("update_time", UtcDateTime, nullable=False),
    Column("version", Integer, nullable=False, default=1),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(36), primary_key=True),
    # A user id or a service-account id (no foreign key: either table).
    Column("principal_id", String(36), nullable=False, index=True),
    Column("principal_kind", String(16), nullable=False),
    Column("display_name", String(200), nullable=False, default=""),
    Column("state", String(16), nullable=False),
    # The public id of the newest secret, shown as the key's prefix.
    Column("public_id", String(16), nullable=False),
    Column("expire_time", UtcDateTime, nullable=True),
    Column("last_use_time", UtcDateTime, nullable=True),
    Column("create_time", UtcDateTime, nullable=False),
    Column("rotate_time", UtcDateTime, nullable=True),
    Column("revoke_time", UtcDateTime, nullable=True),
)

# One row per issued secret: rotation adds a row and gives the old one an expiry.
api_key_secrets = Table(
    "api_key_secrets",
    metadata,
    Column("public_id", String(16), primary_key=True),
    Column("api_key_id", String(36), ForeignKey("api_keys.id"), nullable=False, index=True),
    Column("secret_hash", String(64), nullable=False),
    Column("create_time", UtcDateTime, nullable=False),
    # NULL while it is the key's current secret; set when rotated away or revoked.
    Column("expire_time", UtcDateTime, nullable=True),
)

refresh_families = Table(
    "refresh_families",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("user_id", String(36), ForeignKey("users.id"), nullable=False, index=True),
    Column("create_time", UtcDateTime, nullable=False),
    Column("revoke_time", UtcDateTime, nullable=True),
    Column("revoke_reason", String(32), nullable=True),
)

refresh_tokens = Table(
    "refresh_tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("family_id", String(36), ForeignKey("refresh_families.id"), nullable=False, index=True),
    Column("create_time", UtcDateTime, nullable=False),
    Column("expire_time", UtcDateTime, nullable=False),
    Column("spent_time", UtcDateTime, nullable=True),
)

signing_keys = Table(
    "signing_keys",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("algorithm", String(16), nullable=False),
    Column("state", String(16), nullable=False),
    # PKCS#8 PEM sealed with AES-256-GCM; emptied once the key has expired.
    Column("private_key_sealed", LargeBinary, nullable=False),
    # The JWK "x" (base64url): the raw Ed25519 key, or the x coordinate of a P-256 key.
    Column("public_x", String(128), nullable=False),
    # The JWK "y" (base64url) of a P-256 key; empty for Ed25519.
    Column("public_y", String(128), nullable=False, server_default=""),
    Column("create_time", UtcDateTime, nullable=False),
    Column("retire_time", UtcDateTime, nullable=True),
    Column("expire_time", UtcDateTime, nullable=True),
)
# At most one current key, whatever the number of replicas rotating at once.
Index(
    "uq_signing_keys_one_current",
    signing_keys.c.state,
    unique=True,
    sqlite_where=signing_keys.c.state == "current",
    postgresql_where=signing_keys.c.state == "current",
)

login_throttle = Table(
    "login_throttle",
    metadata,
    # Keyed hash of "account:<email>" or "source:<address>", so typos that are
    # really passwords typed into the e-mail field never rest in clear.
    Column("throttle_key", String(64), primary_key=True),
    Column("failures", Integer, nullable=False),
    Column("last_failure_time", UtcDateTime, nullable=False),
    Column("locked_until", UtcDateTime, nullable=True),
)

oidc_logins = Table(
    "oidc_logins",
    metadata,
    Column("state_hash", String(64), primary_key=True),
    Column("code_verifier_sealed", LargeBinary, nullable=False),
    Column("nonce_sealed", LargeBinary, nullable=False),
    Column("redirect_uri", String(2000), nullable=False),
    Column("create_time", UtcDateTime, nullable=False),
    Column("expire_time", UtcDateTime, nullable=False, index=True),
)

# The revocation feed: subjects (deactivated) and sessions (logout, reuse, password change) whose
# access tokens other services must refuse until `expire_time`, after which none can be valid.
# `sequence` is assigned from `revocation_counter` (not an autoincrement): see record_revocations.
revocations = Table(
    "authn_revocations",
    metadata,
    Column("sequence", BigInteger, primary_key=True, autoincrement=False),
    # Exactly one of subject_id and session_id is set; the other is empty.
    Column("subject_id", String(36), nullable=False),
    Column("session_id", String(64), nullable=False),
    Column("revoke_time", UtcDateTime, nullable=False),
    # The feed reads "sequence > x AND expire_time > now" (the primary key serves a poller's
    # recent high-water mark, this index a first poll from 0) and the purge "expire_time <= now".
    Column("expire_time", UtcDateTime, nullable=False, index=True),
)

# One row (id 1): the last sequence handed out. Its row lock orders revocations by commit.
revocation_counter = Table(
    "authn_revocation_counter",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("last_sequence", BigInteger, nullable=False),
)
REVOCATION_COUNTER_ID = 1

idempotency = kit_idempotency.idempotency_table(metadata)

# Audit events, written in the transaction of the change they describe (kit transactional outbox).
audit_outbox = kit_audit.audit_outbox_table(metadata)


# --- records -----------------------------------------------------------------------------------------


# The API-key exchange reads the secret, its key and the principal's state in one statement,
# built once: constructing a SELECT costs more than running it on SQLite.
_API_KEY_LOOKUP = (
    select(
        *(column.label(f"secret_{column.name}") for column in api_key_secrets.c),
        *(column.label(f"key_{column.name}") for column in api_keys.c),
        func.coalesce(users.c.state, service_accounts.c.state).label("principal_state"),
    )
    .select_from(
        api_key_secrets.join(api_keys, api_keys.c.id == api_key_secrets.c.api_key_id)
        .outerjoin(users, users.c.id == api_keys.c.principal_id)
        .outerjoin(service_accounts, service_accounts.c.id == api_keys.c.principal_id)
    )
    .where(api_key_secrets.c.public_id == bindparam("public_id"))
)


@dataclasses.dataclass(frozen=True)
class UserRecord:
    """A row of `users`."""

    id: str
    email: str | None
    display_name: str
    state: str
    platform_admin: bool
    password_hash: str | None = dataclasses.field(repr=False)
    create_time: datetime
    update_time: datetime
    version: int

    @classmethod
    def new(
        cls,
        user_id: str,
        *,
        email: str | None,
        display_name: str,
        now: datetime,
        platform_admin: bool = False,
        password_hash: str | None = None,
    ) -> UserRecord:
        """A new active user at version 1."""
        return cls(
            id=user_id,
            email=email,
            display_name=display_name,
            state="active",
            platform_admin=platform_admin,
            password_hash=password_hash,
            create_time=now,
            update_time=now,
            version=1,
        )


@dataclasses.dataclass(frozen=True)
class ServiceAccountRecord:
    """A row of `service_accounts`."""

    id: str
    display_name: str
    description: str
    state: str
    creator_id: str
    create_time: datetime
    update_time: datetime
    version: int


@dataclasses.dataclass(frozen=True)
class ApiKeyRecord:
    """A row of `api_keys`."""

    id: str
    principal_id: str
    principal_kind: str
    display_name: str
    state: str
    public_id: str
    expire_time: datetime | None
    last_use_time: datetime | None
    create_time: datetime
    rotate_time: datetime | None
    revoke_time: datetime | None


@dataclasses.dataclass(frozen=True)
class ApiKeySecretRecord:
    """A row of `api_key_secrets`."""

    public_id: str
    api_key_id: str
    secret_hash: str = dataclasses.field(repr=False)
    create_time: datetime
    expire_time: datetime | None


@dataclasses.dataclass(frozen=True)
class ApiKeyLookup:
    """What an API-key exchange needs in one read: the secret, its key, the principal's state."""

    secret: ApiKeySecretRecord
    key: ApiKeyRecord
    # None when the principal no longer exists.
    principal_state: str | None


@dataclasses.dataclass(frozen=True)
class RefreshFamilyRecord:
    """A row of `refresh_families`."""

    id: str
    user_id: str
    create_time: datetime
    revoke_time: datetime | None
    revoke_reason: str | None


@dataclasses.dataclass(frozen=True)
class RefreshTokenRecord:
    """A row of `refresh_tokens`."""

    token_hash: str = dataclasses.field(repr=False)
    family_id: str
    create_time: datetime
    expire_time: datetime
    spent_time: datetime | None


@dataclasses.dataclass(frozen=True)
class SigningKeyRecord:
    """A row of `signing_keys`."""

    id: str
    algorithm: str
    state: str
    private_key_sealed: bytes = dataclasses.field(repr=False)
    public_x: str
    public_y: str
    create_time: datetime
    retire_time: datetime | None
    expire_time: datetime | None


@dataclasses.dataclass(frozen=True)
class ThrottleRecord:
    """A row of `login_throttle`."""

    throttle_key: str
    failures: int
    last_failure_time: datetime
    locked_until: datetime | None


@dataclasses.dataclass(frozen=True)
class OidcLoginRecord:
    """A row of `oidc_logins`."""

    state_hash: str
    code_verifier_sealed: bytes = dataclasses.field(repr=False)
    nonce_sealed: bytes = dataclasses.field(repr=False)
    redirect_uri: str
    create_time: datetime
    expire_time: datetime


@dataclasses.dataclass(frozen=True)
class RevocationRecord:
    """A row of `authn_revocations`: a subject or a session whose access tokens are refused."""

    sequence: int
    subject_id: str
    session_id: str
    revoke_time: datetime
    expire_time: datetime


RecordT = TypeVar("RecordT")


def _record(cls: type[RecordT], row: Row[Any] | None) -> RecordT | None:
    if row is None:
        return None
    return cls(**row._asdict())


def _records(cls: type[RecordT], rows: Sequence[Row[Any]]) -> list[RecordT]:
    return [cls(**row._asdict()) for row in rows]


def _values(record: Any) -> dict[str, Any]:
    return dataclasses.asdict(record)


@dataclasses.dataclass(frozen=True)
class RequestKey:
    """The idempotency key of a Create: method (with its scope), caller and request_id."""

    method: str
    principal: str
    request_id: str


@dataclasses.dataclass(frozen=True)
class ListQuery:
    """The paging, filtering and ordering parameters of a List request, as sent."""

    page_size: int = 0
    page_token: str = ""
    filter: str = ""
    order_by: str = ""


@dataclasses.dataclass(frozen=True)
class Page(Generic[RecordT]):
    """One page of records and the token of the next one ('' on the last page)."""

    items: list[RecordT]
    next_page_token: str


_USER_STATES = {"ACTIVE": "active", "DEACTIVATED": "deactivated"}
_API_KEY_STATES = {"ACTIVE": "active", "REVOKED": "revoked", "EXPIRED": "expired"}


class Conflict(Exception):
    """A unique constraint refused a write; `constraint` names which one when known."""

    def __init__(self, constraint: str) -> None:
        super().__init__(f"unique constraint violated: {constraint}")
        self.constraint = constraint


# Substrings of SQLite ("UNIQUE constraint failed: users.email") and PostgreSQL
# ('... constraint "users_email_key"') messages, mapped to one stable name.
_CONSTRAINTS = (
    (("users.email", "users_email_key"), "users.email"),
    (("service_accounts.display_name", "service_accounts_display_name_key"), "service_accounts.display_name"),
    (("signing_keys.state", "uq_signing_keys_one_current"), "signing_keys.current"),
    (("external_identities.", "uq_external_identities_issuer_subject"), "external_identities.issuer_subject"),
    (("api_key_secrets.", "api_key_secrets_pkey"), "api_key_secrets.public_id"),
)


def _conflict(error: IntegrityError) -> Conflict:
    text = str(error.orig)
    for needles, name in _CONSTRAINTS:
        if any(needle in text for needle in needles):
            return Conflict(name)
    return Conflict("unknown")


# --- the store ----------------------------------------------------------------------------------------


def _nothing() -> None:
    return None


class AuthnStore:
    """Opens transactions on the authn database.

    `audit_recorded` is called after a transaction that recorded audit events
    has committed (the server wires it to the outbox shipper's notify()).
    """

    def __init__(self, engine: AsyncEngine, audit_recorded: Callable[[], None] = _nothing) -> None:
        self.engine = engine
        self.audit_recorded = audit_recorded

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AuthnTx]:
        """One transaction: committed when the block ends, rolled back on an exception.

        A unique-constraint violation surfaces as `Conflict` so callers need no
        SQLAlchemy knowledge.
        """
        try:
            async with self.engine.begin() as conn:
                tx = AuthnTx(conn)
                yield tx
        except IntegrityError as error:
            raise _conflict(error) from None
        if tx.events_recorded:
            self.audit_recorded()


class AuthnTx:
    """The queries of authn on one open transaction."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn
        self.events_recorded = 0

    async def record_event(self, event: kit_audit.AuditEvent) -> None:
        """Adds an audit event to the outbox; it exists iff this transaction commits."""
        await kit_audit.record(self.conn, audit_outbox, event)
        self.events_recorded += 1

    async def _one(self, cls: type[RecordT], statement: Any) -> RecordT | None:
        return _record(cls, (await self.conn.execute(statement)).first())

    async def _all(self, cls: type[RecordT], statement: Any) -> list[RecordT]:
        return _records(cls, (await self.conn.execute(statement)).all())

    async def _page(
        self,
        cls: type[RecordT],
        method: str,
        table: Table,
        query: ListQuery,
        *,
        filters: Mapping[str, FilterField],
        sortable: Mapping[str, Any],
        default_order: str,
        scope: str = "",
        where: Any = None,
    ) -> Page[RecordT]:
        size = page_size(query.page_size)
        order = parse_order_by(query.order_by, sortable, tie_breaker=table.c.id, default=default_order)
        statement = select(table)
        if where is not None:
            statement = statement.where(where)
        condition = parse_filter(query.filter, filters)
        if condition is not None:
            statement = statement.where(condition)
        fingerprint = query_fingerprint(method, filter_text=query.filter, scope=scope)
        rows, token = await paginate(
            self.conn,
            statement,
            order=order,
            page_size=size,
            page_token=query.page_token,
            fingerprint=fingerprint,
        )
        return Page(_records(cls, rows), token)

    # idempotency --------------------------------------------------------------------------------------

    async def recall(self, key: RequestKey) -> str | None:
        """The resource id a create with this idempotency key produced, or None."""
        payload = await kit_idempotency.recall(
            self.conn, idempotency, method=key.method, principal=key.principal, request_id=key.request_id
        )
        return None if payload is None else payload.decode()

    async def remember(self, key: RequestKey, resource_id: str, now: datetime) -> None:
        """Records the id a create produced, in the create's transaction.

        Only the id: a retry re-reads the resource, and for API keys can never see the secret again.
        """
        await kit_idempotency.remember(
            self.conn,
            idempotency,
            method=key.method,
            principal=key.principal,
            request_id=key.request_id,
            response=resource_id.encode(),
            now=now,
        )

    async def purge_housekeeping(self, request_ids_before: datetime) -> None:
        """Forgets idempotency records older than the cut-off."""
        await kit_idempotency.purge_older_than(self.conn, idempotency, request_ids_before)

    # users ------------------------------------------------------------------------------------------

    async def list_users(self, query: ListQuery) -> Page[UserRecord]:
        """One page of users."""
        return await self._page(
            UserRecord,
            "ListUsers",
            users,
            query,
            filters={
                "email": FilterField(users.c.email, "string"),
                "display_name": FilterField(users.c.display_name, "string"),
                "state": FilterField(users.c.state, "enum", _USER_STATES),
                "create_time": FilterField(users.c.create_time, "timestamp"),
            },
            sortable={"create_time": users.c.create_time, "email": users.c.email},
            default_order="create_time",
        )

    async def insert_user(self, user: UserRecord) -> None:
        """Adds a user; `Conflict` when the e-mail is taken."""
        await self.conn.execute(insert(users).values(**_values(user)))

    async def get_user(self, user_id: str) -> UserRecord | None:
        """The user, or None."""
        return await self._one(UserRecord, select(users).where(users.c.id == user_id))

    async def get_user_by_email(self, email: str) -> UserRecord | None:
        """The user with this (lower-cased) e-mail, or None."""
        return await self._one(UserRecord, select(users).where(users.c.email == email))

    async def find_platform_admin(self) -> UserRecord | None:
        """Any active platform admin, or None."""
        statement = (
            select(users)
            .where(users.c.platform_admin.is_(True), users.c.state == "active")
            .order_by(users.c.create_time)
            .limit(1)
        )
        return await self._one(UserRecord, statement)

    async def lock_active_platform_admin_ids(self) -> list[str]:
        """Ids of the active platform admins, row-locked for the transaction (PostgreSQL)."""
        statement = (
            select(users.c.id)
            .where(users.c.platform_admin.is_(True), users.c.state == "active")
            .order_by(users.c.id)
            .with_for_update()
        )
        return [row.id for row in await self.conn.execute(statement)]

    async def update_user(
        self, user_id: str, expected_version: int, changes: Mapping[str, Any], now: datetime
    ) -> UserRecord | None:
        """Applies `changes` if the row still has `expected_version`; None otherwise."""
        if not await self._update_versioned(users, user_id, changes, now, expected_version):
            return None
        return await self.get_user(user_id)

    async def _update_versioned(
        self,
        table: Table,
        row_id: str,
        changes: Mapping[str, Any],
        now: datetime,
        expected_version: int | None = None,
    ) -> bool:
        """Updates one row of a versioned table (bumping version and update_time); whether it matched.

        With `expected_version` the update applies only to that version (optimistic concurrency).
        """
        condition = table.c.id == row_id
        if expected_version is not None:
            condition = and_(condition, table.c.version == expected_version)
        result = await self.conn.execute(
            update(table).where(condition).values(**changes, update_time=now, version=table.c.version + 1)
        )
        return bool(result.rowcount == 1)

    async def deactivate_user(self, user_id: str, now: datetime) -> UserRecord | None:
        """Sets DEACTIVATED and revokes every refresh family and API key of the user, in this transaction."""
        if not await self._update_versioned(users, user_id, {"state": "deactivated"}, now):
            return None
        await self.revoke_user_families(user_id, now, reason="deactivated")
        await self.revoke_principal_api_keys(user_id, now)
        return await self.get_user(user_id)

    # external identities ----------------------------------------------------------------------------

    async def find_identity_user(self, issuer: str, subject: str) -> UserRecord | None:
        """The user linked to (issuer, subject), or None."""
        statement = (
            select(users)
            .join(external_identities, external_identities.c.user_id == users.c.id)
            .where(external_identities.c.issuer == issuer, external_identities.c.subject == subject)
        )
        return await self._one(UserRecord, statement)

    async def insert_identity(
        self, identity_id: str, user_id: str, issuer: str, subject: str, email: str | None, now: datetime
    ) -> None:
        """Links (issuer, subject) to a user; `Conflict` when it is linked already."""
        await self.conn.execute(
            insert(external_identities).values(
                id=identity_id, user_id=user_id, issuer=issuer, subject=subject, email=email, create_time=now
            )
        )

    # service accounts -------------------------------------------------------------------------------

    async def insert_service_account(self, account: ServiceAccountRecord) -> None:
        """Adds a service account; `Conflict` when the display name is taken."""
        await self.conn.execute(insert(service_accounts).values(**_values(account)))

    async def get_service_account(self, account_id: str) -> ServiceAccountRecord | None:
        """The service account, or None."""
        statement = select(service_accounts).where(service_accounts.c.id == account_id)
        return await self._one(ServiceAccountRecord, statement)

    async def list_service_accounts(self, query: ListQuery) -> Page[ServiceAccountRecord]:
        """One page of service accounts."""
        return await self._page(
            ServiceAccountRecord,
            "ListServiceAccounts",
            service_accounts,
            query,
            filters={
                "display_name": FilterField(service_accounts.c.display_name, "string"),
                "state": FilterField(service_accounts.c.state, "enum", _USER_STATES),
                "create_time": FilterField(service_accounts.c.create_time, "timestamp"),
            },
            sortable={
                "create_time": service_accounts.c.create_time,
                "display_name": service_accounts.c.display_name,
            },
            default_order="create_time",
        )

    async def update_service_account(
        self, account_id: str, expected_version: int, changes: Mapping[str, Any], now: datetime
    ) -> ServiceAccountRecord | None:
        """Applies `changes` if the row still has `expected_version`; None otherwise."""
        if not await self._update_versioned(service_accounts, account_id, changes, now, expected_version):
            return None
        return await self.get_service_account(account_id)

    async def deactivate_service_account(self, account_id: str, now: datetime) -> ServiceAccountRecord | None:
        """Sets DEACTIVATED and revokes every API key of the account, in this transaction."""
        if not await self._update_versioned(service_accounts, account_id, {"state": "deactivated"}, now):
            return None
        await self.revoke_principal_api_keys(account_id, now)
        return await self.get_service_account(account_id)

    async def principal_state(self, principal_id: str) -> tuple[str, str] | None:
        """(kind, state) of a user or service account id, or None when neither exists."""
        user = (await self.conn.execute(select(users.c.state).where(users.c.id == principal_id))).first()
        if user is not None:
            return "user", str(user.state)
        account = (
            await self.conn.execute(
                select(service_accounts.c.state).where(service_accounts.c.id == principal_id)
            )
        ).first()
        if account is not None:
            return "service_account", str(account.state)
        return None

    # API keys ---------------------------------------------------------------------------------------

    async def insert_api_key(self, key: ApiKeyRecord, secret: ApiKeySecretRecord) -> None:
        """Adds a key with its first secret; `Conflict` when the public id is taken."""
        await self.conn.execute(insert(api_keys).values(**_values(key)))
        await self.conn.execute(insert(api_key_secrets).values(**_values(secret)))

    async def get_api_key(self, principal_id: str, key_id: str) -> ApiKeyRecord | None:
        """The key of this principal, or None."""
        statement = select(api_keys).where(api_keys.c.id == key_id, api_keys.c.principal_id == principal_id)
        return await self._one(ApiKeyRecord, statement)

    async def list_api_keys(self, principal_id: str, query: ListQuery, now: datetime) -> Page[ApiKeyRecord]:
        """One page of a principal's keys; `now` decides which active keys filter as EXPIRED."""
        state = case(
            (and_(api_keys.c.state == "active", api_keys.c.expire_time <= now), literal("expired")),
            else_=api_keys.c.state,
        )
        return await self._page(
            ApiKeyRecord,
            "ListApiKeys",
            api_keys,
            query,
            filters={
                "display_name": FilterField(api_keys.c.display_name, "string"),
                "state": FilterField(state, "enum", _API_KEY_STATES),
                "create_time": FilterField(api_keys.c.create_time, "timestamp"),
                "expire_time": FilterField(api_keys.c.expire_time, "timestamp"),
            },
            sortable={"create_time": api_keys.c.create_time, "display_name": api_keys.c.display_name},
            default_order="create_time",
            scope=principal_id,
            where=api_keys.c.principal_id == principal_id,
        )

    async def find_api_key_secret(self, public_id: str) -> ApiKeyLookup | None:
        """The secret with this public id, its key and the state of the key's principal, or None.

        One prebuilt statement: this is the hot path of every API-key exchange.
        """
        row = (await self.conn.execute(_API_KEY_LOOKUP, {"public_id": public_id})).first()
        if row is None:
            return None
        values = row._asdict()
        return ApiKeyLookup(
            secret=ApiKeySecretRecord(
                **{column.name: values[f"secret_{column.name}"] for column in api_key_secrets.c}
            ),
            key=ApiKeyRecord(**{column.name: values[f"key_{column.name}"] for column in api_keys.c}),
            principal_state=values["principal_state"],
        )

    async def previous_secret_expiry(self, key_id: str, now: datetime) -> datetime | None:
        """The latest expiry among the key's rotated-away secrets still in grace, or None."""
        statement = select(api_key_secrets.c.expire_time).where(
            api_key_secrets.c.api_key_id == key_id, api_key_secrets.c.expire_time > now
        )
        times = [row.expire_time for row in (await self.conn.execute(statement)).all()]
        return max(times) if times else None

    async def rotate_api_key(
        self, key: ApiKeyRecord, new_secret: ApiKeySecretRecord, old_secrets_expire: datetime, now: datetime
    ) -> ApiKeyRecord | None:
        """Adds the new secret; secrets still valid get `old_secrets_expire` (never a later one)."""
        result = await self.conn.execute(
            update(api_keys)
            .where(api_keys.c.id == key.id, api_keys.c.state == "active")
            .values(public_id=new_secret.public_id, rotate_time=now)
        )
        if result.rowcount != 1:
            return None
        await self.conn.execute(
            update(api_key_secrets)
            .where(
                api_key_secrets.c.api_key_id == key.id,
                or_(
                    api_key_secrets.c.expire_time.is_(None),
                    api_key_secrets.c.expire_time > old_secrets_expire,
                ),
            )
            .values(expire_time=old_secrets_expire)
        )
        await self.conn.execute(insert(api_key_secrets).values(**_values(new_secret)))
        return await self.get_api_key(key.principal_id, key.id)

    async def revoke_api_key(self, principal_id: str, key_id: str, now: datetime) -> ApiKeyRecord | None:
        """Revokes the key and ends every one of its secrets now."""
        await self.conn.execute(
            update(api_keys)
            .where(
                api_keys.c.id == key_id, api_keys.c.principal_id == principal_id, api_keys.c.state == "active"
            )
            .values(state="revoked", revoke_time=now)
        )
        await self._end_secrets(select(api_keys.c.id).where(api_keys.c.id == key_id), now)
        return await self.get_api_key(principal_id, key_id)

    async def revoke_principal_api_keys(self, principal_id: str, now: datetime) -> None:
        """Revokes every key of a principal and ends all their secrets now."""
        await self.conn.execute(
            update(api_keys)
            .where(api_keys.c.principal_id == principal_id, api_keys.c.state == "active")
            .values(state="revoked", revoke_time=now)
        )
        await self._end_secrets(select(api_keys.c.id).where(api_keys.c.principal_id == principal_id), now)

    async def _end_secrets(self, key_ids: Any, now: datetime) -> None:
        await self.conn.execute(
            update(api_key_secrets)
            .where(
                api_key_secrets.c.api_key_id.in_(key_ids),
                or_(api_key_secrets.c.expire_time.is_(None), api_key_secrets.c.expire_time > now),
            )
            .values(expire_time=now)
        )

    async def touch_api_key(self, key_id: str, now: datetime, not_since: datetime) -> None:
        """Sets last_use_time unless it was set after `not_since` (keeps the hot path write-light)."""
        await self.conn.execute(
            update(api_keys)
            .where(
                api_keys.c.id == key_id,
                or_(api_keys.c.last_use_time.is_(None), api_keys.c.last_use_time < not_since),
            )
            .values(last_use_time=now)
        )

    # refresh tokens ---------------------------------------------------------------------------------

    async def insert_refresh_family(self, family_id: str, user_id: str, now: datetime) -> None:
        """Starts a refresh-token family (one login session)."""
        await self.conn.execute(
            insert(refresh_families).values(id=family_id, user_id=user_id, create_time=now)
        )

    async def insert_refresh_token(self, token: RefreshTokenRecord) -> None:
        """Adds a refresh token to its family."""
        await self.conn.execute(insert(refresh_tokens).values(**_values(token)))

    async def find_refresh_token(
        self, token_hash: str
    ) -> tuple[RefreshTokenRecord, RefreshFamilyRecord] | None:
        """The token with this hash and its family, or None."""
        token = await self._one(
            RefreshTokenRecord, select(refresh_tokens).where(refresh_tokens.c.token_hash == token_hash)
        )
        if token is None:
            return None
        family = await self._one(
            RefreshFamilyRecord, select(refresh_families).where(refresh_families.c.id == token.family_id)
        )
        return None if family is None else (token, family)

    async def spend_refresh_token(self, token_hash: str, now: datetime) -> bool:
        """Marks the token spent; False when it already was (a concurrent or repeated use)."""
        result = await self.conn.execute(
            update(refresh_tokens)
            .where(refresh_tokens.c.token_hash == token_hash, refresh_tokens.c.spent_time.is_(None))
            .values(spent_time=now)
        )
        return bool(result.rowcount == 1)

    async def revoke_refresh_family(self, family_id: str, now: datetime, reason: str) -> bool:
        """Ends a family: none of its tokens is accepted any more. False when it already was ended."""
        result = await self.conn.execute(
            update(refresh_families)
            .where(refresh_families.c.id == family_id, refresh_families.c.revoke_time.is_(None))
            .values(revoke_time=now, revoke_reason=reason)
        )
        return bool(result.rowcount == 1)

    async def revoke_user_families(
        self, user_id: str, now: datetime, *, reason: str, keep_family_id: str | None = None
    ) -> list[str]:
        """Ends every live family of a user, except `keep_family_id`; the ids of those it ended."""
        conditions = [refresh_families.c.user_id == user_id, refresh_families.c.revoke_time.is_(None)]
        if keep_family_id:
            conditions.append(refresh_families.c.id != keep_family_id)
        result = await self.conn.execute(
            update(refresh_families)
            .where(and_(*conditions))
            .values(revoke_time=now, revoke_reason=reason)
            .returning(refresh_families.c.id)
        )
        return sorted(str(family_id) for family_id in result.scalars())

    async def is_family_live(self, family_id: str) -> bool:
        """Whether the family exists and is not revoked."""
        row = (
            await self.conn.execute(
                select(refresh_families.c.revoke_time).where(refresh_families.c.id == family_id)
            )
        ).first()
        return row is not None and row.revoke_time is None

    # revocation feed --------------------------------------------------------------------------------

    async def record_revocations(
        self,
        *,
        subject_ids: Sequence[str] = (),
        session_ids: Sequence[str] = (),
        revoke_time: datetime,
        expire_time: datetime,
    ) -> list[RevocationRecord]:
        """Appends revoked subjects and sessions to the feed, numbered after every earlier one.

        The sequence comes from the counter row, whose lock this transaction holds until it
        ends: a concurrent revocation waits, then numbers after it. So sequences become
        visible in commit order and a poller that moved past n can never miss a later
        commit below n (an autoincrement gives insert order instead). Call it after the
        change's other writes, so that no transaction waits for a row lock while holding it.
        """
        entries = [(subject, "") for subject in subject_ids] + [("", session) for session in session_ids]
        if not entries:
            return []
        counter = revocation_counter.c
        last = (
            await self.conn.execute(
                update(revocation_counter)
                .where(counter.id == REVOCATION_COUNTER_ID)
                .values(last_sequence=counter.last_sequence + len(entries))
                .returning(counter.last_sequence)
            )
        ).scalar_one()
        first = int(last) - len(entries) + 1
        records = [
            RevocationRecord(first + offset, subject, session, revoke_time, expire_time)
            for offset, (subject, session) in enumerate(entries)
        ]
        await self.conn.execute(insert(revocations), [_values(record) for record in records])
        return records

    async def list_revocations(
        self, after_sequence: int, now: datetime, limit: int
    ) -> list[RevocationRecord]:
        """Unexpired revocations numbered above `after_sequence`, in sequence order."""
        statement = (
            select(revocations)
            .where(revocations.c.sequence > after_sequence, revocations.c.expire_time > now)
            .order_by(revocations.c.sequence)
            .limit(limit)
        )
        return await self._all(RevocationRecord, statement)

    async def purge_revocations(self, now: datetime) -> int:
        """Forgets revocations past their expiry (no token they concern can be valid); how many."""
        result = await self.conn.execute(delete(revocations).where(revocations.c.expire_time <= now))
        return int(result.rowcount)

    # signing keys -----------------------------------------------------------------------------------

    async def current_signing_key(self) -> SigningKeyRecord | None:
        """The key that signs new tokens, or None before the first one exists."""
        statement = select(signing_keys).where(signing_keys.c.state == "current")
        return await self._one(SigningKeyRecord, statement)

    async def published_signing_keys(self, now: datetime) -> list[SigningKeyRecord]:
        """The current key and retired keys not yet past their expiry, newest first."""
        statement = (
            select(signing_keys)
            .where(
                or_(
                    signing_keys.c.state == "current",
                    and_(signing_keys.c.state == "retired", signing_keys.c.expire_time > now),
                )
            )
            .order_by(signing_keys.c.create_time.desc(), signing_keys.c.id)
        )
        return await self._all(SigningKeyRecord, statement)

    async def list_signing_keys(self, query: ListQuery) -> Page[SigningKeyRecord]:
        """One page of signing keys, newest first."""
        return await self._page(
            SigningKeyRecord,
            "ListSigningKeys",
            signing_keys,
            query,
            filters={},
            sortable={"create_time": signing_keys.c.create_time},
            default_order="create_time desc",
        )

    async def insert_signing_key(self, key: SigningKeyRecord) -> None:
        """Adds a key; `Conflict` when it is current and another current key exists."""
        await self.conn.execute(insert(signing_keys).values(**_values(key)))

    async def retire_signing_key(self, key_id: str, now: datetime, expire_time: datetime) -> bool:
        """Moves a current key to retired; False when it was not current any more."""
        result = await self.conn.execute(
            update(signing_keys)
            .where(signing_keys.c.id == key_id, signing_keys.c.state == "current")
            .values(state="retired", retire_time=now, expire_time=expire_time)
        )
        return bool(result.rowcount == 1)

    async def expire_signing_keys(self, now: datetime) -> int:
        """Marks retired keys past their expiry as expired and erases their private keys."""
        result = await self.conn.execute(
            update(signing_keys)
            .where(signing_keys.c.state == "retired", signing_keys.c.expire_time <= now)
            .values(state="expired", private_key_sealed=b"")
        )
        return int(result.rowcount)

    # login throttling -------------------------------------------------------------------------------

    async def get_throttles(self, keys: Sequence[str]) -> list[ThrottleRecord]:
        """The throttle rows of these keys (missing ones are simply absent)."""
        statement = select(login_throttle).where(login_throttle.c.throttle_key.in_(list(keys)))
        return await self._all(ThrottleRecord, statement.with_for_update())

    async def save_throttle(self, record: ThrottleRecord) -> None:
        """Inserts or replaces one throttle row."""
        values = _values(record)
        changed = await self.conn.execute(
            update(login_throttle)
            .where(login_throttle.c.throttle_key == record.throttle_key)
            .values(**{k: v for k, v in values.items() if k != "throttle_key"})
        )
        if changed.rowcount == 0:
            await self.conn.execute(insert(login_throttle).values(**values))

    async def clear_throttle(self, key: str) -> None:
        """Forgets the failures of one key."""
        await self.conn.execute(delete(login_throttle).where(login_throttle.c.throttle_key == key))

    # OIDC logins ------------------------------------------------------------------------------------

    async def insert_oidc_login(self, record: OidcLoginRecord) -> None:
        """Remembers a started single-sign-on login."""
        await self.conn.execute(insert(oidc_logins).values(**_values(record)))

    async def take_oidc_login(self, state_hash: str) -> OidcLoginRecord | None:
        """Removes and returns the login with this state; None when absent or taken by a concurrent call."""
        record = await self._one(
            OidcLoginRecord, select(oidc_logins).where(oidc_logins.c.state_hash == state_hash)
        )
        if record is None:
            return None
        deleted = await self.conn.execute(delete(oidc_logins).where(oidc_logins.c.state_hash == state_hash))
        return record if deleted.rowcount == 1 else None

    async def delete_expired_oidc_logins(self, now: datetime) -> None:
        """Drops logins nobody completed in time."""
        await self.conn.execute(delete(oidc_logins).where(oidc_logins.c.expire_time <= now))
