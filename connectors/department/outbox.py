"""The department connector's local state (SQLite): the subscription cursor, the status-table
watermark, the rows skipped, and the durable outbox of pushes.

A batch of status rows becomes pushes in the same transaction that moves the watermark, so a
crash never loses a row nor queues one twice; the outbox is drained strictly oldest first.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Integer,
    MetaData,
    Table,
    Text,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from xhub.connectors.common.state import (
    LocalState,
    RowError,
    encode_value,
    now_text,
    row_errors_table,
    watermark_table,
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
_skipped = row_errors_table("skipped_rows", _state_metadata)


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


class DepartmentState(LocalState):
    """The connector's own SQLite file: cursor, watermark and the outbox of pushes."""

    def __init__(self, path: Path) -> None:
        # Three threads in loop mode: receiver, reader and sender.
        super().__init__(
            path, _state_metadata, watermark=_watermark, row_errors=_skipped, pool_size=3
        )

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

    def ingest(self, rows: Sequence[StatusRow]) -> dict[str, int]:
        """Queue the pushes of a batch and move the watermark past it, in one transaction."""
        counts = {"queued": 0, "unchanged": 0, "ignored": 0, "skipped": 0}
        if not rows:
            return counts
        now = now_text()
        with self.engine.begin() as connection:
            for row in rows:
                self.set_row_error(connection, row.key, row.updated_at, row.skip_reason)
                if row.skip_reason:
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
                        row_key=encode_value(row.key),
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
            self.save_watermark(connection, rows[-1].updated_at, rows[-1].key)
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
                    sent_at=now_text(),
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
        """Status rows passed over (unknown status code, no case number), oldest first."""
        return self.row_errors()
