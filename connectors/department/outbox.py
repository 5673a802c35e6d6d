"""The department connector's local state (SQLite): the subscription cursor, the status-table
watermark, the rows passed over, and the durable outbox of pushes.

A batch of status rows becomes pushes in the same transaction that moves the watermark, so a
crash never loses a row nor queues one twice; the outbox is drained strictly oldest first.
Every row read is either queued (``outbox``) or *passed over* (``passed_over``, with a
reason code), never dropped: a row read again (the watermark's overlap window) is
recognised by its event id and changes nothing.

The department reads the outcome of each of its rows in the view ``row_status``::

    row_key       the status table's key (as the department wrote it)
    updated_at    its updated_at, as kept by the connector (JSON ["type", "value"])
    case_number   办件编号;  native_code  the department's status code
    state         pending (待回传) | sent (已回传) | refused (推送被拒) | passed_over (未回传)
    reason_code   "" | HUB_REFUSED | why it was passed over (``reasons.PASS_REASONS``)
    reason        why (the hub's refusal, the last transport error of a waiting push, or
                  why the row is passed over); never the row's note or form
    recorded_at   when it was queued, answered or passed over (ISO 8601, UTC)

e.g. ``sqlite3 department-state.sqlite "SELECT * FROM row_status WHERE state != 'sent'"``.
Sent pushes and rows passed over by design (``INTERNAL_STEP``, ``STAGE_UNCHANGED``,
``CASE_NOT_DISPATCHED``) are kept ``keep_sent_days``; refused pushes and rows passed over
for an error until the row changes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Integer,
    MetaData,
    Table,
    Text,
    delete,
    insert,
    select,
    text,
    update,
)

from xhub.connectors.common.state import (
    LocalState,
    RowError,
    Watermark,
    decode_value,
    encode_value,
    now_text,
    rewind,
    watermark_table,
)
from xhub.connectors.department.reasons import (
    HUB_REFUSED,
    INTERNAL_STEP,
    ROW_ERRORS,
    STAGE_UNCHANGED,
)
from xhub.protocol.stages import Stage
from xhub.v1 import case_pb2

PENDING, SENT, FAILED = "pending", "sent", "failed"


_state_metadata = MetaData()
_cursor = Table(
    "subscription_cursor",
    _state_metadata,
    Column("id", Integer, primary_key=True),
    Column("after_cursor", BigInteger, nullable=False),
    Column("saved_at", Text, nullable=False),
)
_watermark = watermark_table("status_watermark", _state_metadata)
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
_push_numbers = Table(  # per case: the last push number the hub took, and the one in flight
    "push_numbers",
    _state_metadata,
    Column("case_number", Text, primary_key=True),
    Column("last_sent", Integer, nullable=False),
    Column("pending_event_id", Text, nullable=False),
    Column("pending_number", Integer, nullable=False),
)
_passed_over = Table(  # one line per status-table row whose latest version was not queued
    "passed_over",
    _state_metadata,
    Column("row_key", Text, primary_key=True),
    Column("updated_at", Text, nullable=False),
    Column("event_id", Text, nullable=False),
    Column("case_number", Text, nullable=False),
    Column("native_code", Text, nullable=False),
    Column("reason_code", Text, nullable=False, index=True),
    Column("reason", Text, nullable=False),
    Column("recorded_at", Text, nullable=False),
)
_ROW_STATUS_VIEW = f"""
CREATE VIEW IF NOT EXISTS row_status AS
SELECT json_extract(row_key, '$[1]') AS row_key, row_updated_at AS updated_at, case_number,
       native_code, CASE state WHEN '{FAILED}' THEN 'refused' ELSE state END AS state,
       CASE state WHEN '{FAILED}' THEN '{HUB_REFUSED}' ELSE '' END AS reason_code,
       error AS reason, COALESCE(sent_at, created_at) AS recorded_at
  FROM outbox
UNION ALL
SELECT json_extract(row_key, '$[1]'), updated_at, case_number, native_code, 'passed_over',
       reason_code, reason, recorded_at
  FROM passed_over
"""


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
    row_key: Any = None
    created_at: str = ""
    answered_at: str = ""  # when the hub took or refused it


@dataclass(frozen=True)
class PassedRow:
    """A status row passed over, and why (never its note or form)."""

    key: Any
    case_number: str
    native_code: str
    reason_code: str
    reason: str
    recorded_at: str = ""


@dataclass
class Ingested:
    """What ``DepartmentState.ingest`` did with a batch; rows it had seen before are only
    counted (``seen``)."""

    queued: int = 0
    seen: int = 0
    passed: list[PassedRow] = field(default_factory=list)


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
    reason_code: str = ""  # set: passed over, for this reason (PASS_REASONS)
    reason: str = ""

    @property
    def event_id(self) -> str:
        """Deterministic: re-reading the same row (lost state file) gives the same id."""
        text = json.dumps(
            [encode_value(self.key), self.native_code, encode_value(self.updated_at)],
            ensure_ascii=False,
        )
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


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
        row_key=decode_value(row.row_key),
        created_at=row.created_at,
        answered_at=row.sent_at or "",
    )


def _seen(connection: Connection, row: StatusRow) -> bool:
    """True when this very version of the row was queued or passed over before."""
    if connection.scalar(select(_outbox.c.seq).where(_outbox.c.event_id == row.event_id)):
        return True
    passed = connection.scalar(
        select(_passed_over.c.event_id).where(_passed_over.c.row_key == encode_value(row.key))
    )
    return passed == row.event_id


def _pass_over(connection: Connection, row: StatusRow, now: str) -> PassedRow:
    row_key = encode_value(row.key)
    connection.execute(delete(_passed_over).where(_passed_over.c.row_key == row_key))
    connection.execute(
        insert(_passed_over).values(
            row_key=row_key,
            updated_at=encode_value(row.updated_at),
            event_id=row.event_id,
            case_number=row.case_number,
            native_code=row.native_code,
            reason_code=row.reason_code,
            reason=row.reason,
            recorded_at=now,
        )
    )
    return PassedRow(row.key, row.case_number, row.native_code, row.reason_code, row.reason, now)


def _queue(connection: Connection, row: StatusRow, stage: Stage, now: str) -> None:
    """A new push in the outbox; the row's earlier version is no longer passed over."""
    row_key = encode_value(row.key)
    added = connection.execute(
        insert(_outbox).values(
            event_id=row.event_id,
            case_number=row.case_number,
            stage=int(stage),
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
    )
    seq = int(added.lastrowid)
    connection.execute(delete(_passed_over).where(_passed_over.c.row_key == row_key))
    connection.execute(delete(_last_stage).where(_last_stage.c.case_number == row.case_number))
    connection.execute(
        insert(_last_stage).values(case_number=row.case_number, stage=int(stage), seq=seq)
    )


class DepartmentState(LocalState):
    """The connector's own SQLite file: cursor, watermark and the outbox of pushes."""

    def __init__(self, path: Path) -> None:
        # Three threads in loop mode: receiver, reader and sender.
        super().__init__(path, _state_metadata, watermark=_watermark, pool_size=3)
        with self.engine.begin() as connection:
            connection.execute(text(_ROW_STATUS_VIEW))

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
                    insert(_cursor).values(id=1, after_cursor=cursor, saved_at=now_text())
                )
            elif cursor > current:
                connection.execute(
                    update(_cursor)
                    .where(_cursor.c.id == 1)
                    .values(after_cursor=cursor, saved_at=now_text())
                )
            if resubmitted:
                # Back at SUBMITTED, the same stage may legitimately be reported again.
                connection.execute(
                    delete(_last_stage).where(_last_stage.c.case_number == resubmitted)
                )

    # -- outbound: reading the status table -------------------------------------------------------

    def ingest(self, rows: Sequence[StatusRow]) -> Ingested:
        """Queue the pushes of a batch, record the rows passed over, and move the watermark
        to the batch's last row, in one transaction. Rows handled before are only counted."""
        done = Ingested()
        if not rows:
            return done
        now = now_text()
        with self.engine.begin() as connection:
            for row in rows:
                if _seen(connection, row):
                    done.seen += 1
                    continue
                passed = row
                if not row.reason_code and row.stage is None:
                    passed = replace(row, reason_code=INTERNAL_STEP, reason="not reported")
                elif not row.reason_code and row.stage is not None:
                    last = connection.scalar(
                        select(_last_stage.c.stage).where(
                            _last_stage.c.case_number == row.case_number
                        )
                    )
                    if last != int(row.stage):
                        _queue(connection, row, row.stage, now)
                        done.queued += 1
                        continue
                    passed = replace(
                        row,
                        reason_code=STAGE_UNCHANGED,
                        reason=f"stage {row.stage.label} already queued",
                    )
                done.passed.append(_pass_over(connection, passed, now))
            self.save_watermark(connection, rows[-1].updated_at, rows[-1].key)
        return done

    # -- outbound: the sender -------------------------------------------------------------------

    def next_pending(self) -> OutboxEntry | None:
        """The oldest queued push: draining in this order keeps every case in order."""
        with self.engine.connect() as connection:
            row = connection.execute(
                select(_outbox).where(_outbox.c.state == PENDING).order_by(_outbox.c.seq).limit(1)
            ).first()
        return None if row is None else _entry(row)

    def push_number(self, entry: OutboxEntry, *, expected: int = 0) -> int:
        """The number (回传序号) ``entry`` is pushed under: one past the case's last push the
        hub took, kept for ``entry`` across retries (a retry after a lost answer must carry
        the same signed number). ``expected`` (the number a hub refusal names) replaces it."""
        with self.engine.begin() as connection:
            row = connection.execute(
                select(_push_numbers).where(_push_numbers.c.case_number == entry.case_number)
            ).first()
            if row is not None and row.pending_event_id == entry.event_id and not expected:
                return int(row.pending_number)
            number = expected or (int(row.last_sent) if row is not None else 0) + 1
            values = {"pending_event_id": entry.event_id, "pending_number": number}
            if row is None:
                connection.execute(
                    insert(_push_numbers).values(
                        case_number=entry.case_number, last_sent=0, **values
                    )
                )
            else:
                connection.execute(
                    update(_push_numbers)
                    .where(_push_numbers.c.case_number == entry.case_number)
                    .values(**values)
                )
        return number

    def _settle_number(self, connection: Connection, entry: OutboxEntry, *, taken: bool) -> None:
        """The hub answered ``entry``: its number is used (taken) or free again (refused)."""
        pending = (
            _push_numbers.c.case_number == entry.case_number,
            _push_numbers.c.pending_event_id == entry.event_id,
        )
        values: dict[str, Any] = {"pending_event_id": "", "pending_number": 0}
        if taken:
            values["last_sent"] = _push_numbers.c.pending_number
        connection.execute(update(_push_numbers).where(*pending).values(**values))

    def note_attempt(self, seq: int, error: str) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                update(_outbox)
                .where(_outbox.c.seq == seq)
                .values(attempts=_outbox.c.attempts + 1, error=error[:2000])
            )

    def mark_sent(self, entry: OutboxEntry, result: case_pb2.StatusPushResult) -> None:
        seq = entry.seq
        with self.engine.begin() as connection:
            self._settle_number(connection, entry, taken=True)
            connection.execute(
                update(_outbox)
                .where(_outbox.c.seq == seq)
                .values(
                    state=SENT,
                    attempts=_outbox.c.attempts + 1,
                    error="",
                    sent_at=now_text(),
                    overall=int(result.overall),
                    duplicate=int(result.duplicate),
                )
            )

    def mark_failed(self, entry: OutboxEntry, error: str) -> None:
        with self.engine.begin() as connection:
            self._settle_number(connection, entry, taken=False)
            connection.execute(
                update(_outbox)
                .where(_outbox.c.seq == entry.seq)
                .values(
                    state=FAILED,
                    attempts=_outbox.c.attempts + 1,
                    error=error[:2000],
                    sent_at=now_text(),  # when the hub answered, here with a refusal
                )
            )
            # The hub did not take this stage, so a later row repeating it is a new attempt.
            connection.execute(
                delete(_last_stage).where(
                    _last_stage.c.case_number == entry.case_number, _last_stage.c.seq == entry.seq
                )
            )

    def prune_sent(
        self,
        older_than: timedelta,
        *,
        overlap_seconds: float = 0.0,
        errors: Collection[str] = ROW_ERRORS,
    ) -> int:
        """Forget sent pushes, and rows passed over for a reason not in ``errors``, older than
        ``older_than``; except those the next pass re-reads (at or above the watermark rewound
        by ``overlap_seconds``): their event ids keep them from being queued twice."""
        cutoff = (datetime.now(UTC) - older_than).isoformat()
        mark = self.watermark()
        with self.engine.begin() as connection:
            sent = connection.execute(
                select(_outbox.c.seq, _outbox.c.row_updated_at).where(
                    _outbox.c.state == SENT, _outbox.c.sent_at < cutoff
                )
            ).all()
            passed = connection.execute(
                select(_passed_over.c.row_key, _passed_over.c.updated_at).where(
                    _passed_over.c.reason_code.not_in(list(errors)),
                    _passed_over.c.recorded_at < cutoff,
                )
            ).all()
            old_seqs = [seq for seq, stamp in sent if _below(stamp, mark, overlap_seconds)]
            old_keys = [key for key, stamp in passed if _below(stamp, mark, overlap_seconds)]
            for chunk in _chunks(old_seqs):
                connection.execute(delete(_outbox).where(_outbox.c.seq.in_(chunk)))
            for chunk in _chunks(old_keys):
                connection.execute(delete(_passed_over).where(_passed_over.c.row_key.in_(chunk)))
        return len(old_seqs) + len(old_keys)

    # -- inspection -------------------------------------------------------------------------------

    def outbox(self, state: str | None = None, *, case_number: str = "") -> list[OutboxEntry]:
        query = select(_outbox).order_by(_outbox.c.seq)
        if state is not None:
            query = query.where(_outbox.c.state == state)
        if case_number:
            query = query.where(_outbox.c.case_number == case_number)
        with self.engine.connect() as connection:
            return [_entry(row) for row in connection.execute(query)]

    def passed_over(self) -> list[PassedRow]:
        """Status rows passed over, with why, oldest first."""
        table = _passed_over
        query = select(table).order_by(table.c.recorded_at, table.c.row_key)
        with self.engine.connect() as connection:
            return [
                PassedRow(
                    decode_value(r.row_key),
                    r.case_number,
                    r.native_code,
                    r.reason_code,
                    r.reason,
                    r.recorded_at,
                )
                for r in connection.execute(query)
            ]

    def skipped(self) -> list[RowError]:
        """Status rows passed over for an error (no case number, unknown status code)."""
        return [
            RowError(r.key, r.reason) for r in self.passed_over() if r.reason_code in ROW_ERRORS
        ]


def _below(stamp: str, mark: Watermark | None, overlap_seconds: float) -> bool:
    """True when a row of this updated_at is no longer re-read by the next pass."""
    if mark is None:
        return True
    try:
        return bool(decode_value(stamp) < rewind(mark[0], overlap_seconds))
    except TypeError:  # a column whose type changed: not comparable, keep the line
        return False


def _chunks(items: list[Any], size: int = 500) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
