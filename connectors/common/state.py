"""The local SQLite state both connectors keep: a watermark over a department table, and the
rows recorded as skipped with their reason.

Both read a department's table incrementally, in ``(updated_at, key)`` order after the last
pair they committed, so that pair is kept as text that decodes to the same Python types
(the SQL comparison must see a datetime as a datetime, a Decimal as a Decimal).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
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
        row_errors: Table,
        pool_size: int,
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = make_engine(f"sqlite:///{path}", pool_size=pool_size)
        metadata.create_all(self.engine)
        self._watermark = watermark
        self._row_errors = row_errors

    def close(self) -> None:
        self.engine.dispose()

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
        table = self._row_errors
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
        table = self._row_errors
        with self.engine.connect() as connection:
            rows = connection.execute(select(table).order_by(table.c.recorded_at)).all()
        return [RowError(decode_value(r.row_key), r.reason) for r in rows]


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
