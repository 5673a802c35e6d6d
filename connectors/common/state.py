"""The local SQLite state both connectors keep: a watermark over a department table, and the
rows recorded as skipped with their reason.

Both read a department's table incrementally, in ``(updated_at, key)`` order after the last
pair they committed, so that pair is kept as text that decodes to the same Python types
(the SQL comparison must see a datetime as a datetime, a Decimal as a Decimal).

A row can commit *after* a row with a later ``updated_at`` was read (its transaction began
first, stamped the row, and committed late). ``scan_rows`` therefore starts each pass an
overlap window below the watermark (``rewind``) and the caller passes over rows it already
handled (the department connector: by event id), so a late-committed row within the window
is still read. A row committed later than the window is not: make the window longer than
the department's longest transaction.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Integer,
    MetaData,
    Table,
    Text,
    and_,
    delete,
    insert,
    or_,
    select,
    update,
)

from xhub.connectors.common.config import ConnectorConfigError
from xhub.storage import make_engine

Watermark = tuple[Any, Any]
"""The ``(updated_at, key)`` of the last row a connector committed."""


def now_text() -> str:
    """Now, as the state files store times (ISO 8601, UTC)."""
    return datetime.now(UTC).isoformat()


# -- values ---------------------------------------------------------------------------------


def encode_value(value: Any) -> str:
    """A watermark value as text that decodes to the same Python type (for the SQL compare)."""
    if isinstance(value, bool):
        return json.dumps(["bool", value])
    if isinstance(value, datetime):
        return json.dumps(["datetime", value.isoformat()])
    if isinstance(value, date):
        return json.dumps(["date", value.isoformat()])
    if isinstance(value, Decimal):
        return json.dumps(["decimal", str(value)])
    if isinstance(value, int | float | str):
        return json.dumps([type(value).__name__, value], ensure_ascii=False)
    raise ConnectorConfigError(f"cannot keep a watermark of type {type(value).__name__}")


_DECODERS: dict[str, Callable[[Any], Any]] = {
    "bool": bool,
    "int": int,
    "float": float,
    "str": str,
    "datetime": datetime.fromisoformat,
    "date": date.fromisoformat,
    "decimal": Decimal,
}


def decode_value(text: str) -> Any:
    """The value ``encode_value`` wrote."""
    kind, value = json.loads(text)
    return _DECODERS[kind](value)


# -- the state file ---------------------------------------------------------------------------


def watermark_table(name: str, metadata: MetaData) -> Table:
    """One row (id 1): the encoded ``(updated_at, key)`` of the last row committed."""
    return Table(
        name,
        metadata,
        Column("id", Integer, primary_key=True),
        Column("updated_at", Text, nullable=False),
        Column("row_key", Text, nullable=False),
        Column("saved_at", Text, nullable=False),
    )


def row_errors_table(name: str, metadata: MetaData) -> Table:
    """Rows passed over, by encoded key, with why; until the row changes again."""
    return Table(
        name,
        metadata,
        Column("row_key", Text, primary_key=True),
        Column("updated_at", Text, nullable=False),
        Column("reason", Text, nullable=False),
        Column("recorded_at", Text, nullable=False),
    )


@dataclass(frozen=True)
class RowError:
    """A department row (or case) passed over, and why."""

    key: Any
    reason: str
    recorded_at: str = ""  # when it was recorded (ISO 8601, UTC), as read from a state file


class LocalState:
    """A connector's own SQLite file, with a watermark and a table of rows passed over.

    Local bookkeeping of the connector, not the hub schema (which only Alembic changes):
    the tables of ``metadata`` are created when missing.
    """

    def __init__(
        self,
        path: Path,
        metadata: MetaData,
        *,
        watermark: Table,
        row_errors: Table | None = None,
        pool_size: int,
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = make_engine(f"sqlite:///{path}", pool_size=pool_size)
        metadata.create_all(self.engine)
        self._watermark = watermark
        self._row_errors = row_errors

    def close(self) -> None:
        self.engine.dispose()

    def _tracked_row_errors(self) -> Table:
        if self._row_errors is None:
            raise TypeError("this state file keeps no row_errors table")
        return self._row_errors

    def watermark(self) -> Watermark | None:
        """The last row committed, or None before the first."""
        table = self._watermark
        with self.engine.connect() as connection:
            row = connection.execute(select(table).where(table.c.id == 1)).first()
        return None if row is None else (decode_value(row.updated_at), decode_value(row.row_key))

    def save_watermark(self, connection: Connection, updated_at: Any, key: Any) -> None:
        """Move the watermark to this row, inside the caller's transaction."""
        table = self._watermark
        values = {
            "updated_at": encode_value(updated_at),
            "row_key": encode_value(key),
            "saved_at": now_text(),
        }
        moved = connection.execute(update(table).where(table.c.id == 1).values(**values))
        if moved.rowcount == 0:
            connection.execute(insert(table).values(id=1, **values))

    def set_row_error(self, connection: Connection, key: Any, updated_at: Any, reason: str) -> None:
        """Record why this row is passed over, or (``reason`` empty) that it no longer is."""
        table = self._tracked_row_errors()
        row_key = encode_value(key)
        connection.execute(delete(table).where(table.c.row_key == row_key))
        if reason:
            connection.execute(
                insert(table).values(
                    row_key=row_key,
                    updated_at=encode_value(updated_at),
                    reason=reason,
                    recorded_at=now_text(),
                )
            )

    def row_errors(self) -> list[RowError]:
        """Every row recorded as passed over, oldest first."""
        table = self._tracked_row_errors()
        with self.engine.connect() as connection:
            rows = connection.execute(select(table).order_by(table.c.recorded_at)).all()
        return [RowError(decode_value(r.row_key), r.reason, r.recorded_at) for r in rows]


# -- the department's table, read after the watermark -----------------------------------------


def rows_after(
    engine: Engine,
    table: Table,
    *,
    updated_at_column: str,
    key_column: str,
    after: Watermark | None,
    limit: int,
) -> list[dict[str, Any]]:
    """The next ``limit`` rows in ``(updated_at, key)`` order; rows without updated_at never."""
    stamp, key = table.c[updated_at_column], table.c[key_column]
    query = select(table).where(stamp.is_not(None))
    if after is not None:
        query = query.where(or_(stamp > after[0], and_(stamp == after[0], key > after[1])))
    query = query.order_by(stamp, key).limit(limit)
    with engine.connect() as connection:
        return [dict(row._mapping) for row in connection.execute(query)]


def rewind(updated_at: Any, seconds: float) -> Any:
    """The lowest ``updated_at`` a pass re-reads: the watermark's, ``seconds`` earlier.

    A datetime moves back by that many seconds, a number (epoch seconds, say) by that many
    units; a date or a text stamp cannot move back, and the pass re-reads from the
    watermark's own value (rows tied with it, a lower key committed late, are still read).
    """
    if seconds <= 0 or isinstance(updated_at, bool):
        return updated_at
    if isinstance(updated_at, datetime):
        return updated_at - timedelta(seconds=seconds)
    if isinstance(updated_at, Decimal):
        return updated_at - Decimal(str(seconds))
    if isinstance(updated_at, int):
        return updated_at - int(seconds)
    if isinstance(updated_at, float):
        return updated_at - seconds
    return updated_at


def scan_rows(
    engine: Engine,
    table: Table,
    *,
    updated_at_column: str,
    key_column: str,
    watermark: Watermark | None,
    overlap_seconds: float,
    limit: int,
) -> Iterator[list[dict[str, Any]]]:
    """One pass over the table in batches of at most ``limit`` rows, ``(updated_at, key)``
    order, from ``rewind(watermark)`` on (every row when there is none yet).

    Rows at or below the watermark come again on every pass: the caller recognises them.
    """
    after: Watermark | None = None
    while True:
        if after is None and watermark is not None:
            stamp = table.c[updated_at_column]
            query = (
                select(table)
                .where(stamp >= rewind(watermark[0], overlap_seconds))
                .order_by(stamp, table.c[key_column])
                .limit(limit)
            )
            with engine.connect() as connection:
                rows = [dict(row._mapping) for row in connection.execute(query)]
        else:
            rows = rows_after(
                engine,
                table,
                updated_at_column=updated_at_column,
                key_column=key_column,
                after=after,
                limit=limit,
            )
        if not rows:
            return
        yield rows
        if len(rows) < limit:
            return
        after = (rows[-1][updated_at_column], rows[-1][key_column])
