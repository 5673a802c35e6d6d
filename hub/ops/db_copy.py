"""``xhub db copy``: move a SQLite hub's rows into an empty PostgreSQL database (迁移).

The target is brought to the schema with the project's Alembic migrations, then every table
is copied in dependency order (``Base.metadata.sorted_tables``), in batches, inside ONE
transaction of the target: a failure leaves the target's tables empty. Serial columns'
sequences are moved past the copied ids. Afterwards the audit log's integrity check runs
against the target and every table's row count is compared with the source's.

Stop the hub first (``xhub serve``): rows written during the copy would not be copied.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, Integer, func, select, text

import xhub.certificates_store.schema  # noqa: F401  (its table joins the one metadata)
from xhub.hub.core.audit_log import TamperedLogError
from xhub.hub.core.config import HubConfig
from xhub.hub.core.db import AuditTreeRow, Base, current_revision, make_engine, migrate, table_names
from xhub.hub.core.runtime import HubRuntime
from xhub.hub.ops.backup import BackupError, sqlite_path
from xhub.storage import normalize_database_url

BATCH = 1000
# Rows the migrations themselves write (the empty log's tree row): replaced by the hub's.
SEEDED = {AuditTreeRow.__tablename__: AuditTreeRow.size > 0}

Progress = Callable[[str], None]


@dataclass(frozen=True)
class CopyReport:
    url: str
    counts: dict[str, int]
    audit_size: int


def _quiet(_: str) -> None:
    pass


def postgres_url(url: str) -> str:
    """A PostgreSQL URL in the spelling the hub uses (``storage.normalize_database_url``:
    ``postgres://`` and ``postgresql://`` name the psycopg driver).

    Raises:
        BackupError: not a PostgreSQL URL.
    """
    normalized = normalize_database_url(url)
    if not normalized.startswith("postgresql+psycopg://"):
        raise BackupError("the target must be a PostgreSQL URL (postgresql://user@host/db)")
    return normalized


def _counts(connection: Connection) -> dict[str, int]:
    return {
        table.name: int(connection.scalar(select(func.count()).select_from(table)) or 0)
        for table in Base.metadata.sorted_tables
    }


def _check_target_empty(target: Engine) -> None:
    present = table_names(target) & set(Base.metadata.tables)
    if not present:
        return
    with target.connect() as connection:
        for table in Base.metadata.sorted_tables:
            if table.name in present and connection.scalar(select(func.count()).select_from(table)):
                raise BackupError(
                    f"the target database is not empty (table {table.name} has rows): "
                    "copy into a new, empty database"
                )


def _reset_sequences(connection: Connection) -> None:
    for table in Base.metadata.sorted_tables:
        for column in table.primary_key.columns:
            if not isinstance(column.type, Integer):
                continue
            sequence = connection.scalar(
                text("SELECT pg_get_serial_sequence(:table, :column)"),
                {"table": table.name, "column": column.name},
            )
            if sequence is None:
                continue
            highest = connection.scalar(select(func.max(column)))
            if highest is not None:
                connection.execute(
                    text("SELECT setval(:sequence, :value, true)"),
                    {"sequence": sequence, "value": int(highest)},
                )


def copy_database(config: HubConfig, to_url: str, *, progress: Progress = _quiet) -> CopyReport:
    """Copy the SQLite hub of ``config`` into the empty PostgreSQL database at ``to_url``.

    Raises:
        BackupError: the source is not SQLite or not at the newest schema, the target is not
            PostgreSQL or not empty, the audit log check fails on the target, or a table's
            row count differs after the copy.
    """
    url = postgres_url(to_url)
    source_url = config.effective_database_url
    if sqlite_path(source_url) is None:
        raise BackupError("the hub's database is not SQLite: nothing to copy from")
    source = make_engine(source_url, pool_size=1)
    target = make_engine(url, pool_size=2)
    try:
        _check_target_empty(target)
        migrate(target)
        if current_revision(source) != current_revision(target):
            raise BackupError(
                f"the hub's schema is at {current_revision(source)}, the migrations at "
                f"{current_revision(target)}: run `xhub db upgrade` on the hub first"
            )
        with source.connect() as reading, target.begin() as writing:
            expected = _counts(reading)
            for name in SEEDED:
                writing.execute(Base.metadata.tables[name].delete())
            for table in Base.metadata.sorted_tables:
                total, done = expected[table.name], 0
                order = list(table.primary_key.columns) or list(table.columns)
                rows = reading.execution_options(yield_per=BATCH).execute(
                    select(table).order_by(*order)
                )
                for batch in rows.mappings().partitions(BATCH):
                    writing.execute(table.insert(), [dict(row) for row in batch])
                    done += len(batch)
                    progress(f"{table.name}: {done} / {total} rows")
            _reset_sequences(writing)
            copied = _counts(writing)
        differing = [name for name in expected if expected[name] != copied[name]]
        if differing:
            name = differing[0]
            raise BackupError(
                f"table {name}: {expected[name]} rows in the hub, {copied[name]} in the target"
            )
    finally:
        source.dispose()
        target.dispose()
    runtime = HubRuntime(dataclasses.replace(config, database_url=url))
    try:
        size, _root = runtime.audit.check_integrity(
            progress=lambda done, total: progress(f"audit check: {done} / {total}")
        )
    except TamperedLogError as exc:
        raise BackupError(f"the copied audit log fails its integrity check: {exc}") from exc
    finally:
        runtime.close()
    return CopyReport(url=url, counts=copied, audit_size=size)
