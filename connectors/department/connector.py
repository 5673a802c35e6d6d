"""Department connector (审批部门前置机): cases in, approval status out, through the 前置库.

A department's approval system knows nothing of xhub. The connector adapts it with two
tables in the department's own database, so the department keeps working in its own
system even while the hub is unreachable:

* inbound (接收办件): cases the hub dispatches on the SubscribeCases stream are written to
  an *inbox table* (created if missing), upserted by case number; a withdrawal (撤回) sets
  its ``withdrawn`` flag. The subscription cursor is saved only after the inbox row is
  committed: delivery is at-least-once and a repeated delivery changes nothing.
* outbound (状态回传): new or changed rows of the department's *status table* are read by an
  updated-at watermark, their native status codes mapped to stages, and each becomes a push
  in a durable local *outbox*, in the same state-file transaction that moves the watermark.
  A sender drains the outbox oldest first and calls PushStatus; the event id is derived from
  the row (key, status, updated_at), so a push sent twice is applied once at the hub.

    xhub-connector run department.toml [--once]

Configuration (TOML; relative paths are relative to the file, SQLAlchemy URLs are not)::

    [hub]
    bundle = "bundles/CN.440103...."   # the department's member bundle (接入包)
    address = "127.0.0.1:7443"         # optional: overrides the bundle's hub address
    retry_initial_seconds = 0.5        # backoff while the hub is unreachable (with jitter)
    retry_max_seconds = 30
    once_attempts = 5                  # --once gives up on the hub after this many tries
    subscribe_seconds = 2              # --once: how long the bounded subscription stays open

    [department]
    url = "postgresql+psycopg://…"     # any SQLAlchemy URL of the department's own database
    inbox_table = "xhub_inbox"         # created if missing (see INBOX_COLUMNS)
    status_table = "case_status"       # the department's status table or process log (办件过程表)
    key_column = "id"                  # unique; breaks ties of equal updated_at
    case_column = "case_no"            # the hub's case number (办件编号)
    status_column = "status_code"      # the department's native status code
    updated_at_column = "updated_at"   # rows with NULL here are not read
    note_column = "opinion"            # optional: 办理意见
    missing_items_column = "missing"   # optional: 补正材料, JSON list or split by ; ； 、 newline
    certificate_column = "licence_id"  # optional: certificate issued on COMPLETED (出证证照标识)
    poll_seconds = 5                   # loop mode: how often the status table is read
    batch_size = 500

    [status_codes]                     # native code -> stage (English name or Chinese term)
    "01" = "ACCEPTED"                  # 受理
    "02" = "不予受理"                   # NOT_ACCEPTED
    "10" = "UNDER_REVIEW"
    "11" = ""                          # an internal step the hub is not told about

    [state]
    path = "department-state.sqlite"   # cursor, watermark and outbox (local SQLite file)
    keep_sent_days = 30                # sent pushes are kept this long for inspection

Receiving cases: every dispatched case is checked end to end before it reaches the inbox
(端到端核验, ``HubClient.verify_submission``): the platform's signed submission and
resubmissions travel with the case, and its applicant, form and references must be the ones
the platform signed. A case that fails is kept out of the inbox, logged as an error and
reported (``PassResult.unverified``; ``--once`` exits 1); the cursor moves past it, since
the hub would only deliver the same bytes again.

Stages a department may report: ACCEPTED 受理, NOT_ACCEPTED 不予受理, UNDER_REVIEW 审核,
SUPPLEMENT_REQUIRED 补正, APPROVED 审批通过, REJECTED 不予许可, COMPLETED 办结, DELIVERED 出件.

Status rows are read in ``(updated_at, key)`` order, so ``updated_at`` must grow as rows are
written. A process log (one row per step) reports every step; a table updated in place
reports only the latest status of each poll, so a case moved through two stages within one
poll skips a stage and the hub refuses the push. A row repeating the stage last queued for
its case (only the note changed, say) is not pushed. Rows about cases the hub never
dispatched here (the department's own counter cases) are passed over; rows with an unknown
status code or no case number are recorded as skipped (see ``DepartmentState.skipped``).

Delivery of pushes: the outbox is drained strictly in the order rows were read, so a
case's later push is never sent before an earlier one. While the hub is unreachable
(transport failure, UNAVAILABLE) the head push is retried with exponential backoff and
jitter and stays in the outbox. When the hub *refuses* a push (FAILED_PRECONDITION, e.g. an
illegal transition; INVALID_ARGUMENT; NOT_FOUND; PERMISSION_DENIED for the case) the refusal
is recorded on the outbox row (state ``failed``), logged as an error, and the sender moves
on. We chose moving on over holding the case: a refused push changed nothing at the hub,
and the hub checks every later push against the case's real stage, so nothing can be
applied out of order; holding would freeze the case until an operator stepped in, whereas a
department usually corrects its record by writing a new status row. A refusal of the
connector itself (revoked member, bad signature, missing role) leaves the push queued and
stops the connector.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import signal
import sys
import threading
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType, MappingProxyType
from typing import Any, Final, TypeVar

import grpc
from google.protobuf.json_format import MessageToDict
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    create_engine,
    delete,
    insert,
    inspect,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import SQLAlchemyError
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_never,
    wait_exponential_jitter,
)

from xhub.connectors.issuer.sync import (
    SyncConfigError,
    _get,
    _section,
    decode_value,
    encode_value,
)
from xhub.connectors.sdk.client import HubClient, RetryPolicy, secure_channel
from xhub.protocol.bundle import BundleError, MemberBundle
from xhub.protocol.errors import BadResponseError, RefusedError, TransportError, XhubError
from xhub.protocol.stages import TRANSITIONS, Actor, Stage
from xhub.storage import make_engine
from xhub.v1 import case_pb2, material_pb2

log = logging.getLogger("xhub.connector.department")
T = TypeVar("T")
RETRYABLE: Final = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})

DEPARTMENT_STAGES: Final = frozenset(
    stage
    for moves in TRANSITIONS.values()
    for stage, actor in moves.items()
    if actor is Actor.DEPARTMENT
)
"""The stages a department may report, straight from the stage machine."""

PENDING, SENT, FAILED = "pending", "sent", "failed"


class DepartmentConfigError(SyncConfigError):
    """The connector configuration or the department's tables do not fit."""


# -- configuration ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StatusColumns:
    """Where the department's status table keeps each field."""

    key: str
    case: str
    status: str
    updated_at: str
    note: str = ""
    missing_items: str = ""
    certificate: str = ""

    def required(self) -> list[str]:
        return [self.key, self.case, self.status, self.updated_at]

    def optional(self) -> list[str]:
        return [c for c in (self.note, self.missing_items, self.certificate) if c]


@dataclass(frozen=True)
class DepartmentConfig:
    bundle: Path
    department_url: str
    status_table: str
    columns: StatusColumns
    status_codes: Mapping[str, Stage | None]
    state_path: Path
    address: str | None = None
    inbox_table: str = "xhub_inbox"
    poll_seconds: float = 5.0
    batch_size: int = 500
    retry_initial_seconds: float = 0.5
    retry_max_seconds: float = 30.0
    once_attempts: int = 5
    subscribe_seconds: float = 2.0
    keep_sent_days: int = 30


def stage_of(name: str) -> Stage | None:
    """A ``[status_codes]`` value: an English stage name, its Chinese term, or "" (not reported)."""
    text = name.strip()
    if not text:
        return None
    for stage in DEPARTMENT_STAGES:
        if text.upper() == stage.name or text == stage.zh:
            return stage
    allowed = ", ".join(s.label for s in sorted(DEPARTMENT_STAGES))
    raise DepartmentConfigError(
        f"{name!r} is not a stage a department reports; use one of {allowed}, "
        'or "" for an internal step the hub is not told about'
    )


_HUB_KEYS = {
    "bundle",
    "address",
    "retry_initial_seconds",
    "retry_max_seconds",
    "once_attempts",
    "subscribe_seconds",
}
_DEPARTMENT_KEYS = {
    "url",
    "inbox_table",
    "status_table",
    "key_column",
    "case_column",
    "status_column",
    "updated_at_column",
    "note_column",
    "missing_items_column",
    "certificate_column",
    "poll_seconds",
    "batch_size",
}


def load_department_config(path: Path) -> DepartmentConfig:
    """Read and check the TOML configuration (see the module docstring)."""
    try:
        document = tomllib.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise DepartmentConfigError(f"{path}: {exc}") from exc
    unknown = set(document) - {"hub", "department", "status_codes", "state"}
    if unknown:
        raise DepartmentConfigError(f"{path}: unknown table(s) {', '.join(sorted(unknown))}")
    hub = _section(document, "hub", f"{path} [hub]")
    department = _section(document, "department", f"{path} [department]")
    state = _section(document, "state", f"{path} [state]")
    codes = _section(document, "status_codes", f"{path} [status_codes]")
    for table, name, keys in (
        (hub, "hub", _HUB_KEYS),
        (department, "department", _DEPARTMENT_KEYS),
        (state, "state", {"path", "keep_sent_days"}),
    ):
        extra = set(table) - keys
        if extra:
            raise DepartmentConfigError(
                f"{path}: unknown key(s) in [{name}]: {', '.join(sorted(extra))}"
            )
    if not codes:
        raise DepartmentConfigError(
            f"{path}: [status_codes] must map the department's status codes to stages"
        )
    status_codes: dict[str, Stage | None] = {}
    for code, name in codes.items():
        if not isinstance(name, str):
            raise DepartmentConfigError(f"{path} [status_codes]: {code!r} must map to a string")
        try:
            status_codes[code.strip()] = stage_of(name)
        except DepartmentConfigError as exc:
            raise DepartmentConfigError(f"{path} [status_codes] {code!r}: {exc}") from None
    where_hub, where_dep = f"{path} [hub]", f"{path} [department]"
    base = path.parent
    config = DepartmentConfig(
        bundle=base / _get(hub, "bundle", str, where_hub),
        address=hub.get("address") or None,
        department_url=_get(department, "url", str, where_dep),
        inbox_table=_get(department, "inbox_table", str, where_dep, "xhub_inbox"),
        status_table=_get(department, "status_table", str, where_dep),
        columns=StatusColumns(
            key=_get(department, "key_column", str, where_dep),
            case=_get(department, "case_column", str, where_dep),
            status=_get(department, "status_column", str, where_dep),
            updated_at=_get(department, "updated_at_column", str, where_dep),
            note=_get(department, "note_column", str, where_dep, ""),
            missing_items=_get(department, "missing_items_column", str, where_dep, ""),
            certificate=_get(department, "certificate_column", str, where_dep, ""),
        ),
        status_codes=MappingProxyType(status_codes),
        poll_seconds=_get(department, "poll_seconds", float, where_dep, 5.0),
        batch_size=_get(department, "batch_size", int, where_dep, 500),
        state_path=base / _get(state, "path", str, f"{path} [state]", "department-state.sqlite"),
        keep_sent_days=_get(state, "keep_sent_days", int, f"{path} [state]", 30),
        retry_initial_seconds=_get(hub, "retry_initial_seconds", float, where_hub, 0.5),
        retry_max_seconds=_get(hub, "retry_max_seconds", float, where_hub, 30.0),
        once_attempts=_get(hub, "once_attempts", int, where_hub, 5),
        subscribe_seconds=_get(hub, "subscribe_seconds", float, where_hub, 2.0),
    )
    if min(config.poll_seconds, config.batch_size, config.once_attempts) <= 0:
        raise DepartmentConfigError(f"{path}: poll_seconds, batch_size, once_attempts must be > 0")
    if config.subscribe_seconds <= 0 or config.keep_sent_days < 0:
        raise DepartmentConfigError(
            f"{path}: subscribe_seconds must be > 0 and keep_sent_days >= 0"
        )
    if config.inbox_table == config.status_table:
        raise DepartmentConfigError(f"{path}: inbox_table and status_table must differ")
    return config


# -- local state: cursor, watermark, outbox --------------------------------------------------


_state_metadata = MetaData()
_cursor = Table(
    "subscription_cursor",
    _state_metadata,
    Column("id", Integer, primary_key=True),
    Column("after_cursor", BigInteger, nullable=False),
    Column("saved_at", Text, nullable=False),
)
_watermark = Table(
    "status_watermark",
    _state_metadata,
    Column("id", Integer, primary_key=True),
    Column("updated_at", Text, nullable=False),
    Column("row_key", Text, nullable=False),
    Column("saved_at", Text, nullable=False),
)
_outbox = Table(
    "outbox",
    _state_metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("event_id", Text, nullable=False, unique=True),
    Column("case_number", Text, nullable=False, index=True),
    Column("stage", Integer, nullable=False),
    Column("native_code", Text, nullable=False),
    Column("note", Text, nullable=False),
    Column("missing_items", Text, nullable=False),  # JSON list
    Column("certificate_identifier", Text, nullable=False),
    Column("row_key", Text, nullable=False),
    Column("row_updated_at", Text, nullable=False),
    Column("state", Text, nullable=False, index=True),
    Column("attempts", Integer, nullable=False),
    Column("error", Text, nullable=False),
    Column("created_at", Text, nullable=False),
    Column("sent_at", Text),
    Column("overall", Integer),
    Column("duplicate", Integer),
)
_last_stage = Table(  # the stage last queued per case, to pass over rows that repeat it
    "last_stage",
    _state_metadata,
    Column("case_number", Text, primary_key=True),
    Column("stage", Integer, nullable=False),
    Column("seq", Integer, nullable=False),
)
_skipped = Table(
    "skipped_rows",
    _state_metadata,
    Column("row_key", Text, primary_key=True),
    Column("updated_at", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("recorded_at", Text, nullable=False),
)


@dataclass(frozen=True)
class OutboxEntry:
    """One push, queued, sent or refused."""

    seq: int
    event_id: str
    case_number: str
    stage: Stage
    native_code: str
    note: str
    missing_items: tuple[str, ...]
    certificate_identifier: str
    state: str
    attempts: int
    error: str


@dataclass(frozen=True)
class RowError:
    key: Any
    reason: str


@dataclass(frozen=True)
class StatusRow:
    """A status-table row, read and mapped; ``stage`` None = not reported to the hub."""

    key: Any
    updated_at: Any
    case_number: str
    native_code: str
    stage: Stage | None = None
    note: str = ""
    missing_items: tuple[str, ...] = ()
    certificate_identifier: str = ""
    skip_reason: str = ""

    @property
    def event_id(self) -> str:
        """Deterministic: re-reading the same row (lost state file) gives the same id."""
        text = json.dumps(
            [encode_value(self.key), self.native_code, encode_value(self.updated_at)],
            ensure_ascii=False,
        )
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _entry(row: Any) -> OutboxEntry:
    return OutboxEntry(
        seq=row.seq,
        event_id=row.event_id,
        case_number=row.case_number,
        stage=Stage(row.stage),
        native_code=row.native_code,
        note=row.note,
        missing_items=tuple(json.loads(row.missing_items)),
        certificate_identifier=row.certificate_identifier,
        state=row.state,
        attempts=row.attempts,
        error=row.error,
    )


class DepartmentState:
    """The connector's own SQLite file: cursor, watermark and the outbox of pushes."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Three threads in loop mode: receiver, reader and sender.
        self.engine: Engine = make_engine(f"sqlite:///{path}", pool_size=3)
        _state_metadata.create_all(self.engine)  # local bookkeeping, not the hub schema

    def close(self) -> None:
        self.engine.dispose()

    # -- inbound ------------------------------------------------------------------------------

    def cursor(self) -> int:
        with self.engine.connect() as connection:
            value = connection.scalar(select(_cursor.c.after_cursor).where(_cursor.c.id == 1))
        return int(value or 0)

    def advance_cursor(self, cursor: int, *, resubmitted: str = "") -> None:
        """Save the cursor (never backwards); ``resubmitted`` names a case back at 收件."""
        with self.engine.begin() as connection:
            current = connection.scalar(select(_cursor.c.after_cursor).where(_cursor.c.id == 1))
            if current is None:
                connection.execute(
                    insert(_cursor).values(id=1, after_cursor=cursor, saved_at=_now())
                )
            elif cursor > current:
                connection.execute(
                    update(_cursor)
                    .where(_cursor.c.id == 1)
                    .values(after_cursor=cursor, saved_at=_now())
                )
            if resubmitted:
                # Back at SUBMITTED, the same stage may legitimately be reported again.
                connection.execute(
                    delete(_last_stage).where(_last_stage.c.case_number == resubmitted)
                )

    # -- outbound: reading the status table -------------------------------------------------------

    def watermark(self) -> tuple[Any, Any] | None:
        with self.engine.connect() as connection:
            row = connection.execute(select(_watermark).where(_watermark.c.id == 1)).first()
        return None if row is None else (decode_value(row.updated_at), decode_value(row.row_key))

    def ingest(self, rows: Sequence[StatusRow]) -> dict[str, int]:
        """Queue the pushes of a batch and move the watermark past it, in one transaction."""
        counts = {"queued": 0, "unchanged": 0, "ignored": 0, "skipped": 0}
        if not rows:
            return counts
        now = _now()
        with self.engine.begin() as connection:
            for row in rows:
                row_key = encode_value(row.key)
                connection.execute(delete(_skipped).where(_skipped.c.row_key == row_key))
                if row.skip_reason:
                    connection.execute(
                        insert(_skipped).values(
                            row_key=row_key,
                            updated_at=encode_value(row.updated_at),
                            reason=row.skip_reason,
                            recorded_at=now,
                        )
                    )
                    counts["skipped"] += 1
                    continue
                if row.stage is None:
                    counts["ignored"] += 1
                    continue
                last = connection.scalar(
                    select(_last_stage.c.stage).where(_last_stage.c.case_number == row.case_number)
                )
                if last == int(row.stage):
                    counts["unchanged"] += 1
                    continue
                added = connection.execute(
                    sqlite_insert(_outbox)
                    .values(
                        event_id=row.event_id,
                        case_number=row.case_number,
                        stage=int(row.stage),
                        native_code=row.native_code,
                        note=row.note,
                        missing_items=json.dumps(list(row.missing_items), ensure_ascii=False),
                        certificate_identifier=row.certificate_identifier,
                        row_key=row_key,
                        row_updated_at=encode_value(row.updated_at),
                        state=PENDING,
                        attempts=0,
                        error="",
                        created_at=now,
                    )
                    .on_conflict_do_nothing(index_elements=["event_id"])
                )
                if added.rowcount != 1:
                    counts["unchanged"] += 1  # this very row was queued before
                    continue
                seq = int(added.lastrowid)
                connection.execute(
                    delete(_last_stage).where(_last_stage.c.case_number == row.case_number)
                )
                connection.execute(
                    insert(_last_stage).values(
                        case_number=row.case_number, stage=int(row.stage), seq=seq
                    )
                )
                counts["queued"] += 1
            last_row = rows[-1]
            stamp, key = encode_value(last_row.updated_at), encode_value(last_row.key)
            moved = connection.execute(
                update(_watermark)
                .where(_watermark.c.id == 1)
                .values(updated_at=stamp, row_key=key, saved_at=now)
            )
            if moved.rowcount == 0:
                connection.execute(
                    insert(_watermark).values(id=1, updated_at=stamp, row_key=key, saved_at=now)
                )
        return counts

    # -- outbound: the sender -------------------------------------------------------------------

    def next_pending(self) -> OutboxEntry | None:
        """The oldest queued push: draining in this order keeps every case in order."""
        with self.engine.connect() as connection:
            row = connection.execute(
                select(_outbox).where(_outbox.c.state == PENDING).order_by(_outbox.c.seq).limit(1)
            ).first()
        return None if row is None else _entry(row)

    def note_attempt(self, seq: int, error: str) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                update(_outbox)
                .where(_outbox.c.seq == seq)
                .values(attempts=_outbox.c.attempts + 1, error=error[:2000])
            )

    def mark_sent(self, seq: int, result: case_pb2.StatusPushResult) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                update(_outbox)
                .where(_outbox.c.seq == seq)
                .values(
                    state=SENT,
                    attempts=_outbox.c.attempts + 1,
                    error="",
                    sent_at=_now(),
                    overall=int(result.overall),
                    duplicate=int(result.duplicate),
                )
            )

    def mark_failed(self, entry: OutboxEntry, error: str) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                update(_outbox)
                .where(_outbox.c.seq == entry.seq)
                .values(state=FAILED, attempts=_outbox.c.attempts + 1, error=error[:2000])
            )
            # The hub did not take this stage, so a later row repeating it is a new attempt.
            connection.execute(
                delete(_last_stage).where(
                    _last_stage.c.case_number == entry.case_number, _last_stage.c.seq == entry.seq
                )
            )

    def prune_sent(self, keep: timedelta) -> int:
        cutoff = (datetime.now(UTC) - keep).isoformat()
        with self.engine.begin() as connection:
            result = connection.execute(
                delete(_outbox).where(_outbox.c.state == SENT, _outbox.c.sent_at < cutoff)
            )
        return int(result.rowcount)

    # -- inspection -------------------------------------------------------------------------------

    def outbox(self, state: str | None = None, *, case_number: str = "") -> list[OutboxEntry]:
        query = select(_outbox).order_by(_outbox.c.seq)
        if state is not None:
            query = query.where(_outbox.c.state == state)
        if case_number:
            query = query.where(_outbox.c.case_number == case_number)
        with self.engine.connect() as connection:
            return [_entry(row) for row in connection.execute(query)]

    def skipped(self) -> list[RowError]:
        with self.engine.connect() as connection:
            rows = connection.execute(select(_skipped).order_by(_skipped.c.recorded_at)).all()
        return [RowError(decode_value(r.row_key), r.reason) for r in rows]


# -- the department's tables ----------------------------------------------------------------


def inbox_table(name: str, metadata: MetaData) -> Table:
    """The inbox (收件箱) the department's system reads; times are UTC without zone."""
    return Table(
        name,
        metadata,
        Column("case_number", String(40), primary_key=True),  # 办件编号
        Column("item_code", String(64), nullable=False),  # 事项编码
        Column("item_name", String(200), nullable=False),  # 事项名称
        Column("time_limit_days", Integer, nullable=False),  # 承诺时限 (工作日)
        Column("applicant_code", String(64), nullable=False),  # 申请人代码
        Column("applicant_name", String(200), nullable=False),  # 申请人名称
        Column("form_json", Text, nullable=False),  # 申请表信息
        Column("certificates_json", Text, nullable=False),  # 证照引用
        Column("materials_json", Text, nullable=False),  # 材料引用
        Column("platform", String(128), nullable=False),  # 受理平台
        Column("submitted_at", DateTime, nullable=False),  # 提交时间
        Column("received_at", DateTime, nullable=False),  # 接收时间
        Column("updated_at", DateTime, nullable=False),  # 最后更新 (poll this)
        Column("withdrawn", Integer, nullable=False),  # 撤回: 1
        Column("withdrawn_at", DateTime),
        Column("hub_cursor", BigInteger, nullable=False),  # last dispatch applied
    )


INBOX_COLUMNS: Final = tuple(c.name for c in inbox_table("inbox", MetaData()).columns)

_MISSING_SPLIT = re.compile(r"[\n;；、]+")


def parse_missing_items(value: Any) -> tuple[str, ...]:
    """补正材料 as the department wrote them: a JSON list, or items split by ; ； 、 or lines."""
    if value is None:
        return ()
    text = str(value).strip()
    if text.startswith("["):
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        if isinstance(parsed, list):
            return tuple(str(item).strip() for item in parsed if str(item).strip())
    return tuple(part.strip() for part in _MISSING_SPLIT.split(text) if part.strip())


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _utc_naive(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None)


def _refs_json(refs: Sequence[Any]) -> str:
    items = []
    for ref in refs:
        item = MessageToDict(ref, preserving_proto_field_name=True)
        if isinstance(ref, material_pb2.MaterialRef):
            item["sha256"] = ref.sha256.hex()  # hex, as the department would compute it
        items.append(item)
    return json.dumps(items, ensure_ascii=False, sort_keys=True)


# -- the connector --------------------------------------------------------------------------------


@dataclass
class PassResult:
    """What a pass did (run_once), or what the loop has done so far."""

    received: int = 0
    withdrawn: int = 0
    duplicates: int = 0
    queued: int = 0
    unchanged: int = 0
    ignored: int = 0
    foreign: int = 0
    skipped: list[RowError] = field(default_factory=list)
    unverified: list[RowError] = field(default_factory=list)  # cases kept out of the inbox
    sent: int = 0
    failed: list[OutboxEntry] = field(default_factory=list)
    pending: int = 0
    unreachable: str = ""

    def summary(self) -> str:
        text = (
            f"inbound (收件): {self.received} case(s), {self.withdrawn} withdrawn (撤回), "
            f"{self.duplicates} repeated; outbound (状态回传): {self.queued} queued, "
            f"{self.sent} sent, {len(self.failed)} refused, {self.pending} waiting in the "
            f"outbox; {len(self.skipped)} row(s) skipped"
        )
        if self.unverified:
            text += f"; {len(self.unverified)} case(s) failed end-to-end verification"
        if self.unreachable:
            text += f"; hub unreachable: {self.unreachable}"
        return text


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, TransportError):
        return True
    return isinstance(exc, XhubError) and exc.code in RETRYABLE


def is_push_refusal(exc: XhubError) -> bool:
    """True when the hub refused this push (its case, stage or fields), not the connector."""
    code = exc.code
    if code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND):
        return True
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return exc.reason_name == "INVALID_FIELD"  # not a malformed envelope or wrong recipient
    if code == grpc.StatusCode.PERMISSION_DENIED:
        # "not dispatched to you" comes with the case; a missing role names the role.
        return isinstance(exc, RefusedError) and "required_role" not in exc.metadata
    return False


class DepartmentConnector:
    """Receives dispatched cases into the inbox table and sends status rows back via the outbox.

    ``run_once()`` does one bounded pass (tests, cron, ``--once``); ``run(stop)`` keeps
    running until ``stop`` is set, with the receiver, the status reader and the sender each
    on its own thread, so a hub outage never stops the department's rows being queued.
    """

    def __init__(self, config: DepartmentConfig) -> None:
        self.config = config
        self.stop = threading.Event()
        self._wake = threading.Event()
        self._fatal: BaseException | None = None
        self.state = DepartmentState(config.state_path)
        self.department: Engine = create_engine(config.department_url)
        self.client: HubClient | None = None
        try:
            self.inbox = self._open_inbox()
            self.status = self._open_status()
            self.client = self._new_client()
        except SQLAlchemyError as exc:
            self.close()
            raise DepartmentConfigError(f"department database: {exc}") from exc
        except BaseException:
            self.close()
            raise

    @classmethod
    def from_file(cls, path: Path) -> DepartmentConnector:
        return cls(load_department_config(path))

    def _new_client(self) -> HubClient:
        bundle = MemberBundle.load(self.config.bundle, hub_address=self.config.address)
        # One retry layer only: ours, which can wait for the hub for as long as it takes.
        return HubClient(
            bundle,
            channel=secure_channel(
                bundle,
                reconnect_initial=self.config.retry_initial_seconds,
                reconnect_max=self.config.retry_max_seconds,
            ),
            retry=RetryPolicy(attempts=1),
        )

    def _open_inbox(self) -> Table:
        name = self.config.inbox_table
        if not inspect(self.department).has_table(name):
            metadata = MetaData()
            inbox_table(name, metadata)
            metadata.create_all(self.department)
            log.info("created the inbox table (收件箱) %s", name)
        table = Table(name, MetaData(), autoload_with=self.department)
        missing = [c for c in INBOX_COLUMNS if c not in table.c]
        if missing:
            raise DepartmentConfigError(f"inbox table {name!r} lacks: {', '.join(missing)}")
        return table

    def _open_status(self) -> Table:
        name = self.config.status_table
        try:
            table = Table(name, MetaData(), autoload_with=self.department)
        except SQLAlchemyError as exc:
            raise DepartmentConfigError(f"status table {name!r}: {exc}") from exc
        columns = self.config.columns
        missing = [c for c in columns.required() + columns.optional() if c not in table.c]
        if missing:
            raise DepartmentConfigError(f"status table {name!r} lacks: {', '.join(missing)}")
        return table

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        self.department.dispose()
        self.state.close()

    def __enter__(self) -> DepartmentConnector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- inbound: dispatched cases into the inbox -------------------------------------------

    def receive(self, case: case_pb2.DispatchedCase, result: PassResult | None = None) -> str:
        """Write one dispatched case to the inbox, then save its cursor (at-least-once).

        Returns "new", "updated" (resubmitted after 补正), "withdrawn", "duplicate" or
        "unverified" (it fails the end-to-end check and stays out of the inbox).
        """
        try:
            self._hub().verify_submission(case)
        except BadResponseError as exc:
            log.error("case %s kept out of the inbox (端到端核验失败): %s", case.case_number, exc)
            self.state.advance_cursor(case.cursor)
            if result is not None:
                result.unverified.append(RowError(case.case_number, exc.message))
            return "unverified"
        outcome = self._store_case(case)
        resubmitted = (
            case.case_number
            if outcome == "updated" and case.stage == case_pb2.CASE_STAGE_SUBMITTED
            else ""
        )
        self.state.advance_cursor(case.cursor, resubmitted=resubmitted)
        if result is not None:
            if outcome in ("new", "updated"):
                result.received += 1
            elif outcome == "withdrawn":
                result.withdrawn += 1
            else:
                result.duplicates += 1
        if outcome != "duplicate":
            log.info("case %s: %s (办件%s)", case.case_number, outcome, _ZH_OUTCOME[outcome])
        return outcome

    def _store_case(self, case: case_pb2.DispatchedCase) -> str:
        table = self.inbox
        withdrawn = case.stage == case_pb2.CASE_STAGE_WITHDRAWN
        now = _utc_naive(datetime.now(UTC))
        values = {
            "item_code": case.item.code,
            "item_name": case.item.name,
            "time_limit_days": int(case.item.time_limit_days),
            "applicant_code": case.applicant_code,
            "applicant_name": case.applicant_name,
            "form_json": json.dumps(dict(case.form), ensure_ascii=False, sort_keys=True),
            "certificates_json": _refs_json(case.certificates),
            "materials_json": _refs_json(case.materials),
            "platform": case.platform,
            "submitted_at": _utc_naive(case.submitted_at.ToDatetime(tzinfo=UTC)),
            "hub_cursor": int(case.cursor),
        }
        with self.department.begin() as connection:
            row = connection.execute(
                select(table.c.hub_cursor, table.c.withdrawn).where(
                    table.c.case_number == case.case_number
                )
            ).first()
            if row is None:
                connection.execute(
                    insert(table).values(
                        case_number=case.case_number,
                        received_at=now,
                        updated_at=now,
                        withdrawn=int(withdrawn),
                        withdrawn_at=now if withdrawn else None,
                        **values,
                    )
                )
                return "withdrawn" if withdrawn else "new"
            if case.cursor <= int(row.hub_cursor or 0):
                return "duplicate"  # an event this inbox already holds (redelivery)
            changes: dict[str, Any] = {"hub_cursor": int(case.cursor)}
            if row.withdrawn:
                outcome = "duplicate"  # 撤回 is final: never un-withdraw
            elif withdrawn:
                changes.update(withdrawn=1, withdrawn_at=now, updated_at=now)
                outcome = "withdrawn"
            else:
                changes.update(values, updated_at=now)
                outcome = "updated"
            connection.execute(
                update(table).where(table.c.case_number == case.case_number).values(**changes)
            )
            return outcome

    def receive_bounded(self, result: PassResult) -> None:
        """One short subscription from the saved cursor (``--once``)."""
        client = self._hub()

        def attempt() -> None:
            stream = client.subscribe_cases(
                self.state.cursor(), timeout=self.config.subscribe_seconds
            )
            for case in stream:
                self.receive(case, result)

        self._call(attempt, bounded=True)

    def _receive_forever(self, client: HubClient) -> None:
        """Loop mode: follow the stream across hub restarts until stopped."""
        while not self.stop.is_set():
            try:
                events: Iterator[case_pb2.DispatchedCase] = client.follow(
                    client.subscribe_cases, self.state.cursor(), stop=self.stop.is_set
                )
                for case in events:
                    self.receive(case)
            except SQLAlchemyError as exc:
                # The cursor did not move: the same case is delivered again after the pause.
                log.warning(
                    "inbox write failed: %s; retrying in %ss", exc, self.config.poll_seconds
                )
                self.stop.wait(self.config.poll_seconds)
            except (TransportError, XhubError) as exc:
                if self.stop.is_set():
                    return
                if not _retryable(exc):
                    self._fail("the hub refused the case subscription", exc)
                    return
                log.warning("case stream interrupted: %s; resubscribing", exc)
                self.stop.wait(self.config.retry_initial_seconds)
            except Exception as exc:  # pragma: no cover - a bug: stop loudly, not silently
                self._fail("the case receiver crashed", exc)
                return

    # -- outbound: status rows into the outbox ---------------------------------------------------

    def _batch(self, after: tuple[Any, Any] | None) -> list[dict[str, Any]]:
        stamp = self.status.c[self.config.columns.updated_at]
        key = self.status.c[self.config.columns.key]
        query = select(self.status).where(stamp.is_not(None))
        if after is not None:
            query = query.where(or_(stamp > after[0], and_(stamp == after[0], key > after[1])))
        query = query.order_by(stamp, key).limit(self.config.batch_size)
        with self.department.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(query)]

    def _ours(self, case_numbers: set[str]) -> set[str]:
        if not case_numbers:
            return set()
        column = self.inbox.c.case_number
        with self.department.connect() as connection:
            return set(connection.scalars(select(column).where(column.in_(case_numbers))))

    def _map_row(self, row: Mapping[str, Any], ours: set[str]) -> StatusRow | None:
        columns = self.config.columns
        key, stamp = row[columns.key], row[columns.updated_at]
        case_number = _text(row[columns.case])
        native = _text(row[columns.status])
        if not case_number:
            return StatusRow(key, stamp, "", native, skip_reason="no case number (办件编号为空)")
        if case_number not in ours:
            return None  # not a case the hub dispatched here (e.g. a counter case)
        if native not in self.config.status_codes:
            return StatusRow(
                key,
                stamp,
                case_number,
                native,
                skip_reason=f"status code {native!r} is not in [status_codes] (未映射的状态码)",
            )
        return StatusRow(
            key,
            stamp,
            case_number,
            native,
            stage=self.config.status_codes[native],
            note=_text(row[columns.note]) if columns.note else "",
            missing_items=(
                parse_missing_items(row[columns.missing_items]) if columns.missing_items else ()
            ),
            certificate_identifier=_text(row[columns.certificate]) if columns.certificate else "",
        )

    def collect(self, result: PassResult | None = None) -> int:
        """Queue every status row after the watermark; returns the pushes queued."""
        result = result if result is not None else PassResult()
        queued = 0
        while not self.stop.is_set():
            rows = self._batch(self.state.watermark())
            if not rows:
                break
            case_column = self.config.columns.case
            ours = self._ours({_text(r[case_column]) for r in rows} - {""})
            mapped: list[StatusRow] = []
            foreign = 0
            for row in rows:
                status_row = self._map_row(row, ours)
                if status_row is None:
                    foreign += 1
                    columns = self.config.columns
                    # Still moves the watermark: an entry with no stage is only counted.
                    status_row = StatusRow(row[columns.key], row[columns.updated_at], "", "")
                elif status_row.skip_reason:
                    log.warning("status row %r skipped: %s", status_row.key, status_row.skip_reason)
                    result.skipped.append(RowError(status_row.key, status_row.skip_reason))
                mapped.append(status_row)
            counts = self.state.ingest(mapped)
            result.queued += counts["queued"]
            result.unchanged += counts["unchanged"]
            result.ignored += counts["ignored"] - foreign
            result.foreign += foreign
            queued += counts["queued"]
        if queued:
            self._wake.set()
        return queued

    # -- outbound: the sender ---------------------------------------------------------------------

    def drain(self, result: PassResult | None = None, *, bounded: bool = True) -> None:
        """Send queued pushes oldest first until the outbox is empty or the hub is away."""
        result = result if result is not None else PassResult()
        client = self._hub()
        while not self.stop.is_set():
            entry = self.state.next_pending()
            if entry is None:
                break
            try:
                answer = self._push(client, entry, bounded=bounded)
            except XhubError as exc:
                if not is_push_refusal(exc):
                    raise  # the hub is away, or refuses the connector: the push stays queued
                reason = f"{exc.code.name} {exc.reason_name}: {exc.message}"
                self.state.mark_failed(entry, reason)
                result.failed.append(entry)
                log.error(
                    "push %s refused (推送被拒), case %s → %s (native code %r): %s; recorded in "
                    "the outbox as failed, moving on to the next push",
                    entry.event_id,
                    entry.case_number,
                    entry.stage.label,
                    entry.native_code,
                    reason,
                )
                continue
            self.state.mark_sent(entry.seq, answer)
            result.sent += 1
            log.info(
                "case %s → %s sent (已回传)%s",
                entry.case_number,
                entry.stage.label,
                " (already applied 重复)" if answer.duplicate else "",
            )
        self.state.prune_sent(timedelta(days=self.config.keep_sent_days))

    def _push(
        self, client: HubClient, entry: OutboxEntry, *, bounded: bool
    ) -> case_pb2.StatusPushResult:
        def send() -> case_pb2.StatusPushResult:
            return client.push_status(
                entry.case_number,
                case_pb2.CaseStage.Value(f"CASE_STAGE_{entry.stage.name}"),
                event_id=entry.event_id,
                note=entry.note,
                missing_items=list(entry.missing_items),
                certificate_identifier=entry.certificate_identifier,
            )

        return self._call(
            send,
            bounded=bounded,
            on_retry=lambda exc: self.state.note_attempt(entry.seq, str(exc)),
        )

    def _send_forever(self) -> None:
        while not self.stop.is_set():
            self._wake.clear()
            try:
                self.drain(bounded=False)
            except (TransportError, XhubError) as exc:
                if self.stop.is_set() and _retryable(exc):
                    return  # asked to stop while waiting for the hub
                self._fail("the hub refused the connector's push", exc)
                return
            except Exception as exc:
                self._fail("the sender crashed", exc)
                return
            self._wake.wait(self.config.poll_seconds)

    # -- hub calls, retried while the hub is unreachable -----------------------------------------

    def _hub(self) -> HubClient:
        if self.client is None:
            raise RuntimeError("connector is closed")
        return self.client

    def _call(
        self,
        fn: Callable[[], T],
        *,
        bounded: bool,
        on_retry: Callable[[BaseException], None] | None = None,
    ) -> T:
        def stop(state: RetryCallState) -> bool:
            if self.stop.is_set():
                return True
            limit = stop_after_attempt(self.config.once_attempts) if bounded else stop_never
            return bool(limit(state))

        def warn(state: RetryCallState) -> None:
            outcome = state.outcome.exception() if state.outcome else None
            if outcome is not None and on_retry is not None:
                on_retry(outcome)
            log.warning("hub unreachable (attempt %d): %s; retrying", state.attempt_number, outcome)

        def pause(seconds: float) -> None:
            self.stop.wait(seconds)  # wakes at once when asked to stop

        retrying = Retrying(
            retry=retry_if_exception(_retryable),
            stop=stop,
            # Exponential with jitter: waits always grow, so a bounded pass spans real time.
            wait=wait_exponential_jitter(
                multiplier=self.config.retry_initial_seconds,
                max=self.config.retry_max_seconds,
                jitter=self.config.retry_initial_seconds,
            ),
            sleep=pause,
            before_sleep=warn,
            reraise=True,
        )
        return retrying(fn)

    # -- passes -----------------------------------------------------------------------------------

    def run_once(self) -> PassResult:
        """One inbound pass, one read of the status table, one drain of the outbox.

        The hub being unreachable is not an error here: the pushes wait in the outbox and
        ``unreachable`` says why.
        """
        result = PassResult()
        try:
            self.receive_bounded(result)
        except (TransportError, XhubError) as exc:
            if not _retryable(exc):
                raise
            result.unreachable = str(exc)
        self.collect(result)
        if not result.unreachable:
            try:
                self.drain(result, bounded=True)
            except (TransportError, XhubError) as exc:
                if not _retryable(exc):
                    raise
                result.unreachable = str(exc)
        result.pending = len(self.state.outbox(PENDING))
        return result

    def run(self, stop: threading.Event | None = None) -> None:
        """Loop mode until ``stop`` is set (it is also set if the connector must give up).

        Raises what made it give up: the hub refusing the connector itself (revoked member,
        bad key) or a broken state file. Hub outages and department-database hiccups are
        waited out.
        """
        if stop is not None:
            self.stop = stop
        stream_client = self._new_client()
        threads = [
            threading.Thread(
                target=self._receive_forever, args=(stream_client,), name="xhub-receiver"
            ),
            threading.Thread(target=self._send_forever, name="xhub-sender"),
        ]
        for thread in threads:
            thread.start()
        try:
            while not self.stop.is_set():
                try:
                    self.collect()
                except SQLAlchemyError as exc:
                    log.warning(
                        "department database: %s; retrying in %ss", exc, self.config.poll_seconds
                    )
                self.stop.wait(self.config.poll_seconds)
        finally:
            self.stop.set()
            self._wake.set()
            stream_client.close()  # ends a subscription waiting for the next case
            for thread in threads:
                thread.join()
        if self._fatal is not None:
            raise self._fatal

    def _fail(self, what: str, exc: BaseException) -> None:
        log.error("%s: %s; stopping the connector (前置机停止)", what, exc)
        if self._fatal is None:
            self._fatal = exc
        self.stop.set()


_ZH_OUTCOME: Final = MappingProxyType(
    {"new": "已接收", "updated": "已更新", "withdrawn": "已撤回", "duplicate": "重复"}
)


# -- command line (xhub-connector run) --------------------------------------------------------


def run_command(config_path: Path, *, once: bool) -> int:
    """``xhub-connector run CONFIG [--once]``: 0 ok, 1 pushes refused, 2 configuration or
    database, 3 hub unreachable (pushes wait in the outbox), 4 the hub refused the connector."""
    try:
        connector = DepartmentConnector(load_department_config(config_path))
    except (DepartmentConfigError, BundleError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SQLAlchemyError as exc:
        print(f"error: department database: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    with connector:
        try:
            if once:
                result = connector.run_once()
                for row in result.skipped:
                    print(f"status row {row.key}: {row.reason}")
                for row in result.unverified:
                    print(f"case {row.key} failed end-to-end verification: {row.reason}")
                refused = {entry.seq for entry in result.failed}
                for entry in connector.state.outbox(FAILED):
                    if entry.seq in refused:
                        print(
                            f"refused push (推送被拒) #{entry.seq} case {entry.case_number} → "
                            f"{entry.stage.label}: {entry.error}"
                        )
                print(result.summary())
                if result.unreachable:
                    return 3
                return 1 if result.failed or result.unverified else 0
            stop = threading.Event()

            def on_signal(signum: int, frame: FrameType | None) -> None:
                stop.set()

            signal.signal(signal.SIGTERM, on_signal)
            signal.signal(signal.SIGINT, on_signal)
            connector.run(stop)
            return 0
        except SQLAlchemyError as exc:
            print(f"error: database: {str(exc).splitlines()[0]}", file=sys.stderr)
            return 2
        except TransportError as exc:
            print(f"error: cannot reach the hub: {exc}", file=sys.stderr)
            return 3
        except XhubError as exc:
            print(f"error: the hub refused the connector: {exc}", file=sys.stderr)
            return 4
