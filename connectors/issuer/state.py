"""The issuer connector's local state (SQLite): the watermark, what each row published, and
the rows in error.

The watermark (the last ``(updated_at, key)`` the hub accepted) moves only after the hub's
answer, in the same transaction that records the row's outcome: delivery is at-least-once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Integer, MetaData, Table, Text, delete, insert, select

from xhub.certificates_store.model import Status
from xhub.connectors.common.state import (
    LocalState,
    RowError,
    decode_value,
    encode_value,
    now_text,
    row_errors_table,
    watermark_table,
)

_state_metadata = MetaData()
_watermark = watermark_table("watermark", _state_metadata)
_published = Table(
    "published",
    _state_metadata,
    Column("row_key", Text, primary_key=True),
    Column("identifier", Text, nullable=False),
    Column("version", Integer, nullable=False),
    Column("status", Integer, nullable=False),
    Column("raw_status", Text, nullable=False),
    Column("fingerprint", Text, nullable=False),
    Column("synced_at", Text, nullable=False),
)
_errors = row_errors_table("errors", _state_metadata)


@dataclass(frozen=True)
class PublishedState:
    identifier: str
    version: int
    status: Status
    raw_status: str
    fingerprint: str
    synced_at: str = ""  # as read from the state file


class SyncState(LocalState):
    """The connector's own SQLite file; one writer (this connector) at a time."""

    def __init__(self, path: Path) -> None:
        super().__init__(
            path, _state_metadata, watermark=_watermark, row_errors=_errors, pool_size=1
        )

    def published(self, key: Any) -> PublishedState | None:
        with self.engine.connect() as connection:
            row = connection.execute(
                select(_published).where(_published.c.row_key == encode_value(key))
            ).first()
        if row is None:
            return None
        return PublishedState(
            row.identifier, row.version, row.status, row.raw_status, row.fingerprint
        )

    def published_rows(self) -> list[tuple[Any, PublishedState]]:
        """Every row published, by key, oldest first."""
        query = select(_published).order_by(_published.c.synced_at, _published.c.row_key)
        with self.engine.connect() as connection:
            return [
                (
                    decode_value(row.row_key),
                    PublishedState(
                        row.identifier,
                        row.version,
                        row.status,
                        row.raw_status,
                        row.fingerprint,
                        row.synced_at,
                    ),
                )
                for row in connection.execute(query)
            ]

    def errors(self) -> list[RowError]:
        """Rows the hub refused or that failed validation, oldest first."""
        return self.row_errors()

    def commit_row(
        self,
        updated_at: Any,
        key: Any,
        *,
        published: PublishedState | None = None,
        error: str = "",
    ) -> None:
        """Record one row's outcome and advance the watermark past it, in one transaction."""
        row_key = encode_value(key)
        with self.engine.begin() as connection:
            if published is not None:
                connection.execute(delete(_published).where(_published.c.row_key == row_key))
                connection.execute(
                    insert(_published).values(
                        row_key=row_key,
                        identifier=published.identifier,
                        version=published.version,
                        status=int(published.status),
                        raw_status=published.raw_status,
                        fingerprint=published.fingerprint,
                        synced_at=now_text(),
                    )
                )
            self.set_row_error(connection, key, updated_at, error)
            self.save_watermark(connection, updated_at, key)
