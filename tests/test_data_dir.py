"""Personal data at rest: the data directory is private to its owner (0700 / 0600)."""

from __future__ import annotations

import io
import logging
import stat
from pathlib import Path

import pytest
from hubkit import HubKit
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from xhub.hub.core.data_dir import secure_tree
from xhub.hub.core.failures import REDACTED, RedactingFormatter, redact
from xhub.hub.setup import init_data_dir
from xhub.storage import make_engine


def _loose(root: Path) -> list[str]:
    """Every path below ``root`` that a group or other user could read, write or enter."""
    return [
        f"{p} {stat.S_IMODE(p.lstat().st_mode):04o}"
        for p in [root, *root.rglob("*")]
        if not p.is_symlink() and stat.S_IMODE(p.lstat().st_mode) & 0o077
    ]


def test_init_writes_a_private_tree(tmp_path: Path) -> None:
    root = tmp_path / "hub"
    init_data_dir(root, listen="127.0.0.1:0")
    assert (root / "xhub.db").exists()
    assert _loose(root) == []


def test_secure_tree_tightens_and_reports_only_what_was_loose(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub").chmod(0o755)
    (tmp_path / "sub" / "open.txt").write_text("x")
    (tmp_path / "sub" / "open.txt").chmod(0o644)
    (tmp_path / "private.txt").write_text("y")
    (tmp_path / "private.txt").chmod(0o600)
    (tmp_path / "link").symlink_to(tmp_path / "private.txt")
    tmp_path.chmod(0o700)
    fixed = secure_tree(tmp_path)
    assert fixed == [
        f"{tmp_path / 'sub'}: 0755 -> 0700",
        f"{tmp_path / 'sub' / 'open.txt'}: 0644 -> 0600",
    ]
    assert _loose(tmp_path) == []
    assert secure_tree(tmp_path) == []


def test_start_up_repairs_a_loosened_tree_and_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with HubKit(tmp_path / "hub") as kit:
        kit.stop()
        data_dir = kit.config.data_dir
        database = data_dir / "xhub.db"
        database.chmod(0o644)
        data_dir.chmod(0o755)
        with caplog.at_level(logging.WARNING, logger="xhub.server"):
            kit.start()
        assert _loose(data_dir) == []
        warned = [r.getMessage() for r in caplog.records if "readable by others" in r.getMessage()]
        assert any(str(database) in line and "0644 -> 0600" in line for line in warned), warned
        assert any(f"{data_dir}: 0755 -> 0700" in line for line in warned), warned


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_database_errors_do_not_carry_statement_parameters(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = (
        f"sqlite:///{tmp_path / 'x.db'}"
        if backend == "sqlite"
        else request.getfixturevalue("pg_url")
    )
    engine = make_engine(url)
    citizen_id = "440103198503170512"
    try:
        with engine.begin() as connection:
            connection.execute(text("CREATE TABLE people (code VARCHAR(18) PRIMARY KEY)"))
            connection.execute(text("INSERT INTO people VALUES (:code)"), {"code": citizen_id})
        with pytest.raises(IntegrityError) as caught, engine.begin() as connection:
            connection.execute(text("INSERT INTO people VALUES (:code)"), {"code": citizen_id})
        message = str(caught.value)
        assert "[SQL parameters hidden due to hide_parameters=True]" in message
        if backend == "sqlite":  # PostgreSQL's own DETAIL line still names the key (issue 12)
            assert citizen_id not in message
    finally:
        with engine.begin() as connection:
            connection.execute(text("DROP TABLE IF EXISTS people"))
        engine.dispose()


def test_log_lines_carry_no_citizen_id_even_from_a_driver_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    citizen_id = "440103198503170512"
    log = logging.getLogger("xhub.test.personal")
    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(RedactingFormatter("%(message)s"))
    log.addHandler(handler)
    try:
        try:
            raise RuntimeError(f"duplicate key: DETAIL: Key (code)=({citizen_id}) already exists.")
        except RuntimeError as exc:
            log.error("internal error in %s for %s", "/xhub.v1.X/Y", citizen_id, exc_info=exc)
        log.warning("member CN.440100.91440101MA5FD0017X.window called")
    finally:
        log.removeHandler(handler)
    written = handler.stream.getvalue()  # type: ignore[attr-defined]
    assert citizen_id not in written
    assert written.count(REDACTED) == 2  # the message and the traceback's last line
    assert "CN.440100.91440101MA5FD0017X.window" in written  # organisations stay readable
    assert redact("old id 440103850317051 and 11000019900101123X") == (
        f"old id {REDACTED} and {REDACTED}"
    )
