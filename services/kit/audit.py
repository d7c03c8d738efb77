"""Audit events and the transactional outbox that carries them to the organization's audit log.

A service records an event into its own `audit_outbox` table in the SAME
transaction as the change, so the event exists if and only if the change
committed. An `OutboxShipper` per process delivers unsent rows, in order, at
least once, to a sink (the orgs service's audit ingestion, idempotent on the
event id) and marks them sent. The log itself, with its hash chain, lives in
orgs (see `services.kit.audit_chain` and docs/decisions/audit-outbox.md).

    audit_outbox = audit_outbox_table(metadata)       # in the store, and in its migration
    async with engine.begin() as conn:
        ...deactivate the user...
        await record(conn, audit_outbox, event_for_request(
            action="authn.users.deactivate", resource_type="user", resource_id=user_id,
            organization_id="", occur_time=clock.now()))
    shipper.notify()                                   # after commit: ship soon

Secrets never enter an event: `details` keys that name credentials and
values shaped like credentials are refused with ValueError.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import json
import logging
import math
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.kit.audit_chain import canonical_json, format_time, parse_time
from services.kit.clients import connect
from services.kit.clock import Clock
from services.kit.config import ServiceSettings
from services.kit.context import current_peer, current_principal, current_request_id
from services.kit.interceptors import Denial
from services.kit.service_identity import ServiceCredential

logger = logging.getLogger(__name__)

Outcome = Literal["SUCCESS", "DENIED", "FAILED"]
OUTCOMES: frozenset[str] = frozenset(get_args(Outcome))
# Principal kinds, plus "system" (the service itself: start-up, schedulers) and "anonymous".
ACTOR_KINDS = frozenset({"user", "service_account", "workload", "system", "anonymous"})

MAX_DETAILS_BYTES = 4096
_MAX_DEPTH = 4
_MAX_FIELD = 512  # characters of any string field other than details

# A details key is refused when one of its words names a credential, unless the key ends in a
# word that makes it an identifier or a label ("token_id", "api_key_prefix", "secret_name").
_SECRET_WORDS = frozenset(
    {"password", "passwd", "passphrase", "secret", "secrets", "token", "tokens", "credential",
     "credentials", "authorization", "cookie", "cookies", "jwt", "bearer", "otp", "pin", "salt"}
)  # fmt: skip
_SECRET_PAIRS = frozenset({("api", "key"), ("private", "key"), ("signing", "key"), ("key", "material")})
_SECRET_JOINED = frozenset({"apikey", "privatekey", "signingkey", "keymaterial", "accesskey", "secretkey"})
_SAFE_LAST_WORDS = frozenset({"id", "ids", "count", "type", "kind", "name", "prefix", "expiry", "time"})
_WORD = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")

# Values shaped like credentials, anywhere inside a string.
_SECRET_VALUE = re.compile(
    r"keel_rt_[A-Za-z0-9_-]{16,}"  # a Keel refresh token
    r"|keel_ak_[0-9a-f]{8}_[A-Za-z0-9_-]+"  # a whole Keel API key (the keel_ak_<id> prefix alone is public)
    r"|keel_(?:wsc|inv)_[0-9a-f-]{8,}_[A-Za-z0-9_-]+"  # a workspace server credential, an invitation token
    r"|eyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"  # a JWT / JWS compact form
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----"  # PEM key material
    r"|(?i:bearer|basic)\s+[A-Za-z0-9._~+/-]{16,}"  # an Authorization header value
    r"|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"  # an AWS access key id
    r"|\bgh[pousr]_[A-Za-z0-9]{30,}"  # a GitHub token
)


@dataclass(frozen=True)
class Actor:
    """Who did it: a subject id and its kind."""

    subject: str
    kind: str

    def __post_init__(self) -> None:
        if self.kind not in ACTOR_KINDS:
            raise ValueError(f"actor kind must be one of {sorted(ACTOR_KINDS)}, not {self.kind!r}")
        _check_field("actor.subject", self.subject)


@dataclass(frozen=True)
class AuditEvent:
    """One audited action. `id` is the idempotency key at the sink; details are small and secret-free."""

    organization_id: str  # '' for installation-wide events (users, signing keys, ...)
    actor: Actor
    action: str  # "authn.users.deactivate" or the full gRPC method
    resource_type: str
    resource_id: str
    outcome: Outcome
    occur_time: dt.datetime
    on_behalf_of: str = ""  # the principal the actor acts for, '' if none
    request_id: str = ""
    source_address: str = ""
    details: Mapping[str, Any] = field(default_factory=dict, hash=False)
    id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {sorted(OUTCOMES)}, not {self.outcome!r}")
        if self.occur_time.tzinfo is None:
            raise ValueError("occur_time must be timezone-aware")
        if not self.action:
            raise ValueError("action is required")
        try:
            uuid.UUID(self.id)
        except ValueError:
            raise ValueError(f"id must be a UUID, not {self.id!r}") from None
        for name in ("organization_id", "action", "resource_type", "resource_id", "on_behalf_of",
                     "request_id", "source_address"):  # fmt: skip
            _check_field(name, getattr(self, name))
        # A private, normalized copy (tuples become lists): what is checked is what is stored.
        object.__setattr__(self, "details", _checked_details(self.details))
        object.__setattr__(self, "occur_time", self.occur_time.astimezone(dt.UTC))

    def to_record(self) -> dict[str, Any]:
        """The event as a JSON-able dict: the stored payload and the input of the chain hash."""
        return {
            "id": self.id,
            "organization_id": self.organization_id,
            "actor": {"subject": self.actor.subject, "kind": self.actor.kind},
            "on_behalf_of": self.on_behalf_of,
            "action": self.action,
            "resource_type": self.resource_type,
            "resource_id": self.resource_id,
            "outcome": self.outcome,
            "request_id": self.request_id,
            "source_address": self.source_address,
            "occur_time": format_time(self.occur_time),
            "details": dict(self.details),
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> AuditEvent:
        """The event of a `to_record` dict."""
        actor = record["actor"]
        return cls(
            id=record["id"],
            organization_id=record["organization_id"],
            actor=Actor(actor["subject"], actor["kind"]),
            on_behalf_of=record["on_behalf_of"],
            action=record["action"],
            resource_type=record["resource_type"],
            resource_id=record["resource_id"],
            outcome=record["outcome"],
            request_id=record["request_id"],
            source_address=record["source_address"],
            occur_time=parse_time(record["occur_time"]),
            details=record["details"],
        )


def event_for_request(
    *,
    action: str,
    resource_type: str,
    resource_id: str,
    organization_id: str,
    occur_time: dt.datetime,
    outcome: Outcome = "SUCCESS",
    on_behalf_of: str = "",
    details: Mapping[str, Any] | None = None,
    actor: Actor | None = None,
) -> AuditEvent:
    """An event whose actor, request id and source address come from the request being served.

    Outside a request (or on an anonymous call) the actor is ANONYMOUS; services
    acting on their own account pass `actor=SYSTEM` (or whoever acted, when the
    caller is not the actor: a user logging in is anonymous until it has).
    """
    if actor is None:
        principal = current_principal()
        actor = ANONYMOUS if principal is None else Actor(principal.subject, principal.kind)
    return AuditEvent(
        organization_id=organization_id,
        actor=actor,
        on_behalf_of=on_behalf_of,
        action=action,
        resource_type=resource_type,
        resource_id=resource_id,
        outcome=outcome,
        request_id=current_request_id(),
        source_address=current_peer(),
        occur_time=occur_time,
        details=details or {},
    )


def service_event(
    *,
    action: str,
    resource_type: str,
    resource_id: str,
    organization_id: str,
    occur_time: dt.datetime,
    outcome: Outcome = "SUCCESS",
    details: Mapping[str, Any] | None = None,
    actor: Actor | None = None,
) -> AuditEvent:
    """`event_for_request` for a service's own writes: SYSTEM outside a request, redaction within.

    Outside a request (start-up, a background task, the command line) the actor is
    SYSTEM unless given. Ids, names and details come from callers, so any that look
    like credentials are redacted rather than refused: a caller cannot make a
    change unauditable by choosing a credential-shaped name.
    """
    if actor is None and not current_request_id():
        actor = SYSTEM
    return event_for_request(
        action=action,
        resource_type=resource_type,
        resource_id=redact_credentials(resource_id),
        organization_id=redact_credentials(organization_id),
        occur_time=occur_time,
        outcome=outcome,
        details=redact_credentials(details or {}),
        actor=actor,
    )


def _check_field(name: str, value: str) -> None:
    if len(value) > _MAX_FIELD:
        raise ValueError(f"{name} is longer than {_MAX_FIELD} characters")
    if _looks_like_secret(value):
        raise ValueError(f"{name} looks like a credential; audit events never hold secrets")


def _checked_details(details: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(details, Mapping):
        raise ValueError("details must be a mapping")
    checked = _checked_value(details, "details", 0)
    try:
        size = len(canonical_json(checked))
    except ValueError as error:  # NaN or infinity
        raise ValueError(f"details are not JSON: {error}") from None
    if size > MAX_DETAILS_BYTES:
        raise ValueError(f"details take {size} bytes encoded; the limit is {MAX_DETAILS_BYTES}")
    result: dict[str, Any] = checked
    return result


def _checked_value(value: Any, path: str, depth: int) -> Any:
    if depth > _MAX_DEPTH:
        raise ValueError(f"{path} nests deeper than {_MAX_DEPTH} levels")
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{path} is not a finite number")
        return value
    if isinstance(value, str):
        if _looks_like_secret(value):
            raise ValueError(f"{path} looks like a credential; audit events never hold secrets")
        return value
    if isinstance(value, Mapping):
        result: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{path} has a key that is not a string: {key!r}")
            if _names_secret(key):
                raise ValueError(f"{path}.{key} names a credential; audit events never hold secrets")
            result[key] = _checked_value(item, f"{path}.{key}", depth + 1)
        return result
    if isinstance(value, list | tuple):
        return [_checked_value(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value)]
    raise ValueError(f"{path} is a {type(value).__name__}, not a JSON value")


def _names_secret(key: str) -> bool:
    words = [word.lower() for word in _WORD.findall(key)]
    if not words or words[-1] in _SAFE_LAST_WORDS:
        return False
    if any(word in _SECRET_WORDS or word in _SECRET_JOINED for word in words):
        return True
    return any(pair in _SECRET_PAIRS for pair in itertools.pairwise(words))


def looks_like_credential(text: str) -> bool:
    """Whether `text` holds a credential shape an event refuses (validate caller input with it)."""
    return _looks_like_secret(text)


REDACTED = "[redacted]"


def redact_credentials(value: Any) -> Any:
    """`value` with every credential-shaped string (also inside lists and dicts) replaced by REDACTED.

    For caller-supplied text put into an event (names, ids): an event refuses a
    credential shape, and a caller must not be able to fail a change, or keep it
    out of the log, by naming something like a token. Keys are left alone: they
    are the service's own words.
    """
    if isinstance(value, str):
        return REDACTED if _looks_like_secret(value) else value
    if isinstance(value, Mapping):
        return {key: redact_credentials(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact_credentials(item) for item in value]
    return value


def _looks_like_secret(text: str) -> bool:
    # Known shapes only: a generic "high entropy" test also refuses long readable names (the
    # change would then fail), and Keel's own credentials all have a recognisable shape.
    return _SECRET_VALUE.search(text) is not None


# The service acting on its own account, and a caller without credentials.
SYSTEM = Actor("system", "system")
ANONYMOUS = Actor("", "anonymous")


# ----------------------------------------------------------------------------------- the outbox


def audit_outbox_table(metadata: MetaData, name: str = "audit_outbox") -> Table:
    """The outbox of audit events, in a service's own metadata (and its migration)."""
    table = Table(
        name,
        metadata,
        # Insert order; the shipper delivers in this order. BIGSERIAL on PostgreSQL, ROWID on SQLite.
        Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
        Column("event_id", String(36), nullable=False, unique=True),
        Column("organization_id", String(64), nullable=False),
        # The event's `to_record()` as canonical JSON.
        Column("payload", Text, nullable=False),
        Column("occur_time", DateTime(timezone=True), nullable=False),
        Column("sent_time", DateTime(timezone=True), nullable=True),
    )
    Index(
        f"ix_{name}_unsent",
        table.c.seq,
        postgresql_where=table.c.sent_time.is_(None),
        sqlite_where=table.c.sent_time.is_(None),
    )
    Index(f"ix_{name}_sent_time", table.c.sent_time)
    return table


async def record(conn: AsyncConnection, table: Table, event: AuditEvent) -> None:
    """Adds the event to the outbox inside the caller's transaction (it ships iff that commits)."""
    await conn.execute(
        insert(table).values(
            event_id=event.id,
            organization_id=event.organization_id,
            payload=canonical_json(event.to_record()).decode("ascii"),
            occur_time=event.occur_time,
        )
    )


async def claim_batch(conn: AsyncConnection, table: Table, limit: int) -> list[AuditEvent]:
    """Up to `limit` unsent events in outbox order, locked until the caller's transaction ends.

    PostgreSQL: rows another shipper holds are skipped (FOR UPDATE SKIP LOCKED),
    and an organization's events are returned only as an unbroken prefix of
    its unsent events, so concurrent shippers never deliver one organization's
    events out of order. SQLite has one writer and one shipper per process.
    """
    if limit < 1:
        raise ValueError("limit must be at least 1")
    claimed = (
        await conn.execute(
            select(table.c.seq, table.c.organization_id, table.c.payload)
            .where(table.c.sent_time.is_(None))
            .order_by(table.c.seq)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    ).all()
    if not claimed:
        return []
    if conn.dialect.name == "postgresql":
        claimed = await _ordered_prefixes(conn, table, claimed)
    return [AuditEvent.from_record(json.loads(row.payload)) for row in claimed]


async def _ordered_prefixes(conn: AsyncConnection, table: Table, claimed: Sequence[Any]) -> list[Any]:
    # A plain read sees rows another shipper has locked: an organization whose earlier unsent
    # events are held elsewhere is cut at the first one it does not hold.
    mine = {row.seq for row in claimed}
    organizations = {row.organization_id for row in claimed}
    pending = await conn.execute(
        select(table.c.seq, table.c.organization_id)
        .where(
            table.c.sent_time.is_(None),
            table.c.organization_id.in_(organizations),
            table.c.seq <= max(mine),
        )
        .order_by(table.c.seq)
    )
    blocked: set[str] = set()
    deliverable: set[int] = set()
    for seq, organization_id in pending:
        if organization_id in blocked:
            continue
        if seq in mine:
            deliverable.add(seq)
        else:
            blocked.add(organization_id)
    return [row for row in claimed if row.seq in deliverable]


async def mark_sent(conn: AsyncConnection, table: Table, ids: Sequence[str], sent_time: dt.datetime) -> int:
    """Marks delivered events (by event id) as sent; returns how many were unsent."""
    if not ids:
        return 0
    if sent_time.tzinfo is None:
        raise ValueError("sent_time must be timezone-aware")
    result = await conn.execute(
        update(table)
        .where(table.c.event_id.in_(list(ids)), table.c.sent_time.is_(None))
        .values(sent_time=sent_time.astimezone(dt.UTC))
    )
    return result.rowcount


async def purge_sent(conn: AsyncConnection, table: Table, older_than: dt.datetime) -> int:
    """Deletes events sent before `older_than` (unsent ones are never purged); returns how many."""
    if older_than.tzinfo is None:
        raise ValueError("older_than must be timezone-aware")
    result = await conn.execute(delete(table).where(table.c.sent_time < older_than.astimezone(dt.UTC)))
    return result.rowcount


AuditSink = Callable[[Sequence[AuditEvent]], Awaitable[None]]


class OutboxShipper:
    """Delivers a service's outbox to a sink at least once, in order, in batches.

    One per service process. `run()` ships until the outbox is empty, then waits
    for `notify()` (called after a commit that recorded events) or for
    `idle_interval`, which also catches events committed by other replicas and
    retries after a failing sink. Sent rows are kept for `retention` (a window
    to investigate a delivery) and then purged, at most once per `purge_interval`.
    Tests call `ship_once()` and `purge_if_due()` directly.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        table: Table,
        sink: AuditSink,
        clock: Clock,
        *,
        batch_size: int = 100,
        idle_interval: float = 5.0,
        retention: dt.timedelta = dt.timedelta(days=7),
        purge_interval: dt.timedelta = dt.timedelta(hours=1),
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self._retention = retention
        self._purge_interval = purge_interval
        self._last_purge: dt.datetime | None = None
        self._engine = engine
        self._table = table
        self._sink = sink
        self._clock = clock
        self._batch_size = batch_size
        self._idle_interval = idle_interval
        self._wake = asyncio.Event()
        self._stopping = False

    def notify(self) -> None:
        """Asks the running shipper to ship now rather than at the next interval."""
        self._wake.set()

    async def ship_once(self) -> int:
        """Claims, delivers and marks one batch; returns how many events were delivered.

        When the sink raises, the transaction rolls back: nothing is marked, the
        locks are released, the error propagates and the rows ship next time.
        """
        async with self._engine.begin() as conn:
            events = await claim_batch(conn, self._table, self._batch_size)
            if not events:
                return 0
            await self._sink(events)
            await mark_sent(conn, self._table, [event.id for event in events], self._clock.now())
        return len(events)

    async def purge_if_due(self) -> int:
        """Deletes rows sent more than `retention` ago, when the last purge is `purge_interval` old."""
        now = self._clock.now()
        if self._last_purge is not None and now - self._last_purge < self._purge_interval:
            return 0
        async with self._engine.begin() as conn:
            purged = await purge_sent(conn, self._table, now - self._retention)
        self._last_purge = now
        return purged

    async def run(self) -> None:
        """Ships until `stop()`; a failing sink or database is logged and retried after the interval."""
        while not self._stopping:
            self._wake.clear()
            try:
                shipped = await self.ship_once()
                await self.purge_if_due()
            except Exception:  # CancelledError is not an Exception: cancelling still stops the loop
                logger.exception("audit outbox delivery failed; retrying in %ss", self._idle_interval)
                shipped = 0
            if shipped == self._batch_size and not self._stopping:
                continue  # more may be waiting
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._idle_interval)

    def stop(self) -> None:
        """Makes `run()` return after the batch in flight, if any."""
        self._stopping = True
        self._wake.set()


# ------------------------------------------------------------------------------------- denials

# Widths of the outbox columns an event's request-supplied ids may have to fit.
_ORGANIZATION_ID_WIDTH = 64


def denial_event(denial: Denial, occur_time: dt.datetime) -> AuditEvent:
    """The DENIED event of a refused call: actor from the principal, action = the full gRPC method.

    The resource and scope ids come from the caller's request, so a value an
    event would refuse (too long, credential-shaped) is dropped and named in
    details instead of failing the record: a caller must not be able to keep
    its own denial out of the log.
    """
    dropped: list[str] = []

    def usable(name: str, value: str, width: int = _MAX_FIELD) -> str:
        if len(value) > width or _looks_like_secret(value):
            dropped.append(name)
            return ""
        return value

    principal = denial.principal
    details: dict[str, Any] = {"permission": f"{denial.resource_type}.{denial.action}"}
    event_fields = {
        "organization_id": usable("organization_id", denial.scope_id, _ORGANIZATION_ID_WIDTH),
        "resource_id": usable("resource_id", denial.resource_id),
        "request_id": usable("request_id", denial.request_id),
        "source_address": usable("source_address", denial.peer),
    }
    if dropped:
        details["dropped_fields"] = dropped
    return AuditEvent(
        actor=Actor(usable("actor", principal.subject), principal.kind),
        action=denial.method,
        resource_type=denial.resource_type,
        outcome="DENIED",
        occur_time=occur_time,
        details=details,
        **event_fields,
    )


class OutboxDenialRecorder:
    """A `DenialRecorder` writing DENIED events into a service's outbox, one short transaction each.

    A denial changes nothing, so there is no change's transaction to join.
    Errors propagate to the interceptor, which logs them and still denies.
    """

    def __init__(
        self, engine: AsyncEngine, table: Table, clock: Clock, notify: Callable[[], None] = lambda: None
    ) -> None:
        self._engine = engine
        self._table = table
        self._clock = clock
        self._notify = notify

    async def __call__(self, denial: Denial) -> None:
        """Records the denial, then wakes the shipper."""
        event = denial_event(denial, self._clock.now())
        async with self._engine.begin() as conn:
            await record(conn, self._table, event)
        self._notify()


# ----------------------------------------------------------------------------- service wiring


class AuditOutbox:
    """A service's outbox as its server wiring holds it: the notify hook, denials, the shipper task.

    The shipper runs only with a sink (the service has its own credential);
    without one, events wait in the outbox until a start with a credential.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        table: Table,
        clock: Clock,
        sink: AuditSink | None = None,
        *,
        service_name: str = "",
        close: Callable[[], Awaitable[None]] | None = None,
        idle_interval: float = 5.0,
    ) -> None:
        self.engine = engine
        self.table = table
        self.shipper = (
            None if sink is None else OutboxShipper(engine, table, sink, clock, idle_interval=idle_interval)
        )
        self.denial_recorder = OutboxDenialRecorder(engine, table, clock, self.notify)
        self._service_name = service_name
        self._close = close
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(
        cls,
        engine: AsyncEngine,
        table: Table,
        settings: ServiceSettings,
        clock: Clock,
        service_name: str,
        credential: ServiceCredential | None,
    ) -> AuditOutbox:
        """Ships to orgs (KEEL_ORGS_ADDRESS) as the service's own account; without a credential, no shipper.

        The credential stays the caller's (it serves the service's other own calls too).
        """
        if credential is None:
            return cls(engine, table, clock, service_name=service_name)
        # Imported here: the sink module builds on this one.
        from services.kit.audit_sink import GrpcAuditSink

        channel = connect(settings.orgs_address)

        async def close() -> None:
            await channel.close(None)

        sink = GrpcAuditSink(channel, credential.metadata)
        return cls(engine, table, clock, sink, service_name=service_name, close=close)

    def notify(self) -> None:
        """After a commit that recorded events: ship soon (a no-op without a shipper)."""
        if self.shipper is not None:
            self.shipper.notify()

    def start(self) -> None:
        """Starts the shipper task, or says once that events wait in the outbox."""
        if self.shipper is None:
            logger.warning(
                "%s has no service credential (KEEL_SERVICE_API_KEY_FILE): audit events stay in its "
                "outbox until it runs with one",
                self._service_name or "this service",
            )
            return
        if self._task is None:
            self._task = asyncio.create_task(self.shipper.run(), name=f"{self._service_name}-audit-shipper")

    async def stop(self) -> None:
        """Stops the shipper after its batch in flight and closes its channels."""
        if self.shipper is not None and self._task is not None:
            self.shipper.stop()
            try:
                await self._task
            finally:
                self._task = None
        if self._close is not None:
            await self._close()
            self._close = None
