"""The database test harness itself: both backends work, PostgreSQL databases are isolated."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from pgserver import PgServer, find_pg_bin


def _notes_table(metadata: sa.MetaData) -> sa.Table:
    return sa.Table(
        "notes",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("body", sa.Text, nullable=False),
    )


def test_db_url_roundtrip(db_url: str) -> None:
    expected_dialect = "postgresql" if db_url.startswith("postgresql") else "sqlite"
    engine = sa.create_engine(db_url)
    try:
        assert engine.dialect.name == expected_dialect
        metadata = sa.MetaData()
        notes = _notes_table(metadata)
        metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(sa.insert(notes), [{"body": "一窗受理"}, {"body": "hello"}])
        with engine.connect() as conn:
            rows = conn.execute(sa.select(notes.c.body).order_by(notes.c.id)).scalars().all()
        assert rows == ["一窗受理", "hello"]
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_pg_databases_are_isolated(pg_server: PgServer, pg_url: str) -> None:
    other_url = pg_server.create_database()
    assert other_url != pg_url
    first, second = sa.create_engine(pg_url), sa.create_engine(other_url)
    try:
        metadata = sa.MetaData()
        notes = _notes_table(metadata)
        metadata.create_all(first)
        with first.begin() as conn:
            conn.execute(sa.insert(notes), [{"body": "only in the first database"}])
        assert sa.inspect(second).get_table_names() == []
        with second.connect() as conn:
            current = conn.execute(sa.text("SELECT current_database()")).scalar_one()
        assert current == other_url.rsplit("/", 1)[1] != pg_url.rsplit("/", 1)[1]
    finally:
        first.dispose()
        second.dispose()
        pg_server.drop_database(other_url.rsplit("/", 1)[1])


@pytest.mark.postgres
def test_pg_url_is_fresh_each_test(pg_url: str) -> None:
    engine = sa.create_engine(pg_url)
    try:
        assert sa.inspect(engine).get_table_names() == []
        with engine.connect() as conn:
            assert conn.execute(sa.text("SHOW fsync")).scalar_one() == "off"
    finally:
        engine.dispose()


def test_find_pg_bin_honours_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XHUB_PG_BIN", str(tmp_path / "nonexistent"))
    assert find_pg_bin() is None
