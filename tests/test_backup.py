"""Backup, restore and moving a hub to PostgreSQL (xhub backup / restore / db copy).

Real hubs over mTLS: a backup taken while a platform keeps submitting cases restores into a
new directory whose audit log checks and which serves the same members; a tampered archive
is refused naming the file; ``db copy`` moves a SQLite hub into the harness's PostgreSQL and
the hub serves from it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import tarfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cases_world import COMPANY, ITEM, PURPOSE, Desk, upload
from hubkit import HubKit, free_port
from sqlalchemy import func, select

from xhub.cli.main import main
from xhub.hub.core.config import HubConfig, load_config
from xhub.hub.core.db import Base, CaseRow, MaterialRow, MemberRow, make_engine
from xhub.hub.ops.backup import MANIFEST, BackupError, create_backup, restore_backup
from xhub.hub.ops.db_copy import copy_database
from xhub.hub.server import start_hub


def _keep_submitting(desk: Desk, stop: threading.Event, submitted: list[str]) -> None:
    while not stop.is_set():
        submitted.append(desk.submit().case_number)


@contextmanager
def _serving(kit: HubKit, config: HubConfig) -> Iterator[str]:
    """Serve ``config`` (another data directory or database) on the kit's loop."""
    port = free_port()
    running = kit.run(start_hub(config, port_override=port))
    try:
        yield f"127.0.0.1:{port}"
    finally:
        kit.run(running.stop(0.2))


def _rows(url: str) -> tuple[set[str], set[str], set[str]]:
    engine = make_engine(url, pool_size=1)
    try:
        with engine.connect() as connection:
            return (
                set(connection.scalars(select(MemberRow.member_id))),
                set(connection.scalars(select(CaseRow.case_number))),
                set(connection.scalars(select(MaterialRow.sha256))),
            )
    finally:
        engine.dispose()


@pytest.fixture
def archive(desk: Desk, tmp_path: Path) -> Path:
    desk.submit()
    upload(desk, tmp_path / "files", b"%PDF-1.4 backup test " * 100, COMPANY)
    out = tmp_path / "hub.tar"
    create_backup(desk.kit.config, out)
    return out


def test_a_backup_taken_while_calls_run_restores_a_hub_that_checks_and_serves(
    desk: Desk, tmp_path: Path
) -> None:
    kit = desk.kit
    before = [desk.submit().case_number for _ in range(3)]
    upload(desk, tmp_path / "files", b"%PDF-1.4 material " * 500, COMPANY)
    submitted: list[str] = []
    stop = threading.Event()
    caller = threading.Thread(target=_keep_submitting, args=(desk, stop, submitted))
    caller.start()
    try:
        while len(submitted) < 2:  # the calls are running when the snapshot starts
            threading.Event().wait(0.02)
        answered = len(submitted)  # cases whose submission returned before the snapshot
        report = create_backup(kit.config, tmp_path / "hub.tar")
    finally:
        stop.set()
        caller.join(timeout=30)
    assert (tmp_path / "hub.tar").stat().st_mode & 0o777 == 0o600
    assert report.blobs == 1 and report.database == "sqlite"

    new = tmp_path / "restored"
    assert main(["restore", str(tmp_path / "hub.tar"), "--data-dir", str(new)]) == 0
    assert all(p.stat().st_mode & 0o077 == 0 for p in [new, *new.rglob("*")])
    assert main(["audit", "check", "--data-dir", str(new)]) == 0

    restored = load_config(new)
    members, cases, blobs = _rows(restored.effective_database_url)
    original_members, _, original_blobs = _rows(kit.config.effective_database_url)
    assert members == original_members
    assert set(before) | set(submitted[:answered]) <= cases
    assert blobs == original_blobs
    for sha256 in blobs:
        blob = new / "blobs" / sha256[:2] / sha256[2:4] / sha256
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == sha256

    kit.stop()  # the original stops; the restored hub takes over with the same keys
    with _serving(kit, restored) as address:
        platform = kit.client("platform", address=address)
        checklist = platform.prepare_case(ITEM, COMPANY, purpose=PURPOSE)
        assert platform.submit_case(checklist.case_id, purpose=PURPOSE).case_number not in cases


def _rewrite(archive: Path, change: Callable[[str, bytes], bytes | None]) -> None:
    """Rewrite the archive keeping its manifest; ``change`` returns a member's new bytes
    (None: leave it out)."""
    members: list[tuple[str, bytes]] = []
    with tarfile.open(archive) as tar:
        for member in tar:
            handle = tar.extractfile(member)
            assert handle is not None
            data = handle.read()
            kept = data if member.name == MANIFEST else change(member.name, data)
            if kept is not None:
                members.append((member.name, kept))
    with tarfile.open(archive, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _flip(data: bytes) -> bytes:
    return bytes([data[0] ^ 1]) + data[1:]


@pytest.mark.parametrize(
    ("target", "change", "message"),
    [
        ("xhub.toml", lambda data: _flip(data), "checksum differs from the manifest"),
        ("hub/signing.key", lambda data: _flip(data), "checksum differs from the manifest"),
        ("xhub.db", lambda data: data + b"\0", "checksum differs from the manifest"),
        ("blobs/", lambda data: _flip(data), "checksum differs from the manifest"),
        ("ca/ca.pem", lambda data: None, "listed in the manifest but missing"),
    ],
    ids=["config", "signing-key", "database", "blob", "missing-file"],
)
def test_a_tampered_archive_is_refused_naming_the_file(
    archive: Path,
    tmp_path: Path,
    target: str,
    change: Callable[[bytes], bytes | None],
    message: str,
) -> None:
    touched: list[str] = []

    def edit(name: str, data: bytes) -> bytes | None:
        if name.startswith(target) and not touched:
            touched.append(name)
            return change(data)
        return data

    _rewrite(archive, edit)
    new = tmp_path / "restored"
    with pytest.raises(BackupError, match=message) as refused:
        restore_backup(archive, new)
    assert str(refused.value).startswith(touched[0])
    assert not new.exists()  # nothing written before the whole archive verified


def test_a_file_the_manifest_does_not_list_is_refused(archive: Path, tmp_path: Path) -> None:
    with tarfile.open(archive, "a") as tar:
        info = tarfile.TarInfo("hub/extra.key")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"key"))
    with pytest.raises(BackupError, match=r"^hub/extra\.key: in the archive but not in"):
        restore_backup(archive, tmp_path / "restored")


def test_restore_refuses_a_directory_that_is_not_empty(archive: Path, tmp_path: Path) -> None:
    target = tmp_path / "busy"
    target.mkdir()
    (target / "xhub.toml").write_text("[hub]\n")
    assert main(["restore", str(archive), "--data-dir", str(target)]) == 2
    assert [p.name for p in target.iterdir()] == ["xhub.toml"]


def test_the_manifest_names_the_hub_schema_and_every_file(archive: Path, desk: Desk) -> None:
    with tarfile.open(archive) as tar:
        handle = tar.extractfile(MANIFEST)
        assert handle is not None
        manifest = json.loads(handle.read())
        names = set(tar.getnames()) - {MANIFEST}
    assert manifest["hub_id"] == desk.kit.hub_id
    assert manifest["schema_revision"] == "0010_key_history"
    assert {f["path"] for f in manifest["files"]} == names
    assert {"xhub.db", "xhub.toml", "ca/ca.key", "hub/log.key", "hub/signing.key"} <= names


def test_a_postgresql_hub_is_pointed_to_pg_dump(desk: Desk, tmp_path: Path) -> None:
    config = dataclasses.replace(desk.kit.config, database_url="postgresql+psycopg://h/db")
    with pytest.raises(BackupError, match=r"pg_dump.*--no-database"):
        create_backup(config, tmp_path / "hub.tar")
    assert not (tmp_path / "hub.tar").exists()


@pytest.mark.postgres
def test_db_copy_moves_a_sqlite_hub_to_postgresql_which_then_serves(
    desk: Desk, tmp_path: Path, pg_url: str
) -> None:
    kit = desk.kit
    cases = {desk.submit().case_number for _ in range(3)}
    upload(desk, tmp_path / "files", b"%PDF-1.4 moved " * 200, COMPANY)
    kit.stop()
    spelled = pg_url.replace("postgresql+psycopg://", "postgres://")
    report = copy_database(kit.config, spelled)
    assert report.url == pg_url
    source = make_engine(kit.config.effective_database_url, pool_size=1)
    try:
        with source.connect() as connection:
            for table, count in report.counts.items():
                counted = select(func.count()).select_from(Base.metadata.tables[table])
                assert connection.scalar(counted) == count, table
    finally:
        source.dispose()
    assert report.counts["cases"] == 3 and report.audit_size > 0
    assert _rows(pg_url) == _rows(kit.config.effective_database_url)

    with pytest.raises(BackupError, match="not empty"):
        copy_database(kit.config, pg_url)

    moved = dataclasses.replace(kit.config, database_url=pg_url)
    with _serving(kit, moved) as address:
        platform = kit.client("platform", address=address)
        checklist = platform.prepare_case(ITEM, COMPANY, purpose=PURPOSE)
        number = platform.submit_case(checklist.case_id, purpose=PURPOSE).case_number
    assert number not in cases
    assert number in _rows(pg_url)[1]


def test_the_cli_writes_a_private_archive_with_progress_on_stderr(
    desk: Desk, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cli.tar"
    assert main(["backup", "--data-dir", str(desk.kit.config.data_dir), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "database:" in captured.err and "pages" in captured.err
    assert f"backup written to {out}" in captured.out
    assert out.stat().st_mode & 0o777 == 0o600
    assert main(["backup", "--data-dir", str(desk.kit.config.data_dir), "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err


@pytest.mark.postgres
def test_a_postgresql_hub_backs_up_its_blobs_and_keys_without_the_database(
    hub_kit_pg: HubKit, tmp_path: Path
) -> None:
    data_dir = hub_kit_pg.config.data_dir
    blob = b"%PDF-1.4 pg blob"
    sha256 = hashlib.sha256(blob).hexdigest()
    stored = data_dir / "blobs" / sha256[:2] / sha256[2:4] / sha256
    stored.parent.mkdir(parents=True)
    stored.write_bytes(blob)
    out = tmp_path / "files.tar"
    assert main(["backup", "--data-dir", str(data_dir), "--out", str(out)]) == 2
    assert main(["backup", "--data-dir", str(data_dir), "--out", str(out), "--no-database"]) == 0
    new = tmp_path / "restored"
    manifest = restore_backup(out, new)
    assert manifest["database"] == "none"
    assert manifest["schema_revision"] == "0010_key_history"
    assert not (new / "xhub.db").exists()
    restored = new / "blobs" / sha256[:2] / sha256[2:4] / sha256
    assert restored.read_bytes() == blob
    assert (new / "hub" / "signing.key").read_bytes() == (
        data_dir / "hub" / "signing.key"
    ).read_bytes()


def test_db_copy_refuses_a_target_that_is_not_postgresql(desk: Desk, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'other.db'}"
    with pytest.raises(BackupError, match="must be a PostgreSQL URL"):
        copy_database(desk.kit.config, url)
    assert not (tmp_path / "other.db").exists()
