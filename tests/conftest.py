"""Shared pytest fixtures.

Storage tests run twice: on SQLite and on a real PostgreSQL server that this harness starts
itself (``tests/pgserver.py``: a throwaway cluster in a temp dir, on a free port on 127.0.0.1,
run as the ``postgres`` OS user when the tests run as root).  Use the ``db_url`` fixture to get
both (``[sqlite]`` / ``[postgres]``), ``pg_url`` for PostgreSQL only.

When no PostgreSQL server binaries are found, the PostgreSQL cases are *skipped* locally.
``REQUIRE_POSTGRES=1`` (set by ``.ci/run``) turns a missing server into a *failure*, so CI can
never go green without having exercised PostgreSQL.  ``XHUB_PG_BIN=/path/to/bin`` picks the
binaries explicitly.  ``pytest -m "not postgres"`` runs the SQLite side alone.

A running hub: ``hub_kit`` (SQLite) and ``hub_kit_pg`` (PostgreSQL) yield a started
``tests/hubkit.HubKit`` per test, ``kit`` runs a test on each of the two;
``shared_hub_kit`` / ``shared_hub_kit_pg`` share one per module for tests that change no
registry state.  ``kit.client(key)`` is an SDK client for a member.

Hypothesis: profile "ci" (200 examples) when ``$CI`` is set, else "dev" (50 examples).
"""

from __future__ import annotations

import os
import re
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from hubkit import HubKit
from hypothesis import settings
from pgserver import PgServer, PgServerError, find_pg_bin

# The worlds that several test files of one feature share (their fixtures and helpers).
pytest_plugins = ["cases_world", "intake_world"]

settings.register_profile("ci", max_examples=200, deadline=None)
settings.register_profile("dev", max_examples=50, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


def _postgres_required() -> bool:
    return os.environ.get("REQUIRE_POSTGRES", "").strip().lower() in {"1", "true", "yes"}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "postgres: needs the PostgreSQL server the harness starts")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One throwaway PostgreSQL server for the whole session (started on first use)."""
    bin_dir = find_pg_bin()
    if bin_dir is None:
        override = os.environ.get("XHUB_PG_BIN")
        where = (
            f"in XHUB_PG_BIN={override}"
            if override
            else "in /usr/lib/postgresql/*/bin, `pg_config --bindir` or PATH"
        )
        reason = (
            f"PostgreSQL server binaries (initdb, postgres) not found {where}; "
            "install them (e.g. `apt-get install postgresql`) or point XHUB_PG_BIN at them"
        )
        if _postgres_required():
            pytest.fail(f"REQUIRE_POSTGRES=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    try:
        server = PgServer(bin_dir).start()
    except PgServerError as exc:
        # Binaries exist but the server will not come up: always a real error.
        pytest.fail(f"could not start the PostgreSQL test server: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


def _db_name_for(node_name: str) -> str:
    stem = re.sub(r"[^a-z0-9_]+", "_", node_name.lower()).strip("_")[:40]
    return f"t_{stem}_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def pg_url(pg_server: PgServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """SQLAlchemy URL of a fresh, empty PostgreSQL database for this test (dropped afterwards)."""
    name = _db_name_for(request.node.name)
    url = pg_server.create_database(name)
    yield url
    try:
        pg_server.drop_database(name)
    except Exception as exc:  # cleanup only: never mask the test's own outcome
        warnings.warn(f"could not drop test database {name}: {exc}", stacklevel=1)


@pytest.fixture(
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
    ids=["sqlite", "postgres"],
)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database URL, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'hub.db'}"
    # Looked up lazily so that SQLite-only runs never start PostgreSQL.
    url: str = request.getfixturevalue("pg_url")
    return url


# -- a running hub (tests/hubkit.py) ----------------------------------------------------------


@pytest.fixture
def hub_kit(tmp_path: Path) -> Iterator[HubKit]:
    """A hub on SQLite, serving over mTLS on 127.0.0.1, with the default members."""
    kit = HubKit(tmp_path).start()
    try:
        yield kit
    finally:
        kit.close()


@pytest.fixture
def hub_kit_pg(tmp_path: Path, pg_url: str) -> Iterator[HubKit]:
    """The same hub on a fresh PostgreSQL database (skipped when no server is available)."""
    kit = HubKit(tmp_path, database_url=pg_url).start()
    try:
        yield kit
    finally:
        kit.close()


@pytest.fixture(
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
    ids=["sqlite", "postgres"],
)
def kit(request: pytest.FixtureRequest) -> HubKit:
    """A fresh running hub, once on SQLite (``hub_kit``) and once on PostgreSQL (``hub_kit_pg``)."""
    name = "hub_kit" if request.param == "sqlite" else "hub_kit_pg"
    fixture: HubKit = request.getfixturevalue(name)
    return fixture


@pytest.fixture(scope="module")
def shared_hub_kit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubKit]:
    """One SQLite hub for a whole module, for tests that change no registry state
    (no revoke/expire/add_member/restart): saves a hub start per test."""
    kit = HubKit(tmp_path_factory.mktemp("shared-hub")).start()
    try:
        yield kit
    finally:
        kit.close()


@pytest.fixture(scope="module")
def shared_hub_kit_pg(
    pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HubKit]:
    """``shared_hub_kit`` on a PostgreSQL database of its own (dropped afterwards)."""
    name = _db_name_for("shared_hub")
    kit = HubKit(
        tmp_path_factory.mktemp("shared-hub-pg"), database_url=pg_server.create_database(name)
    ).start()
    try:
        yield kit
    finally:
        kit.close()
        try:
            pg_server.drop_database(name)
        except Exception as exc:  # cleanup only
            warnings.warn(f"could not drop test database {name}: {exc}", stacklevel=1)
