"""The issuer connector (证照前置机同步): `xhub-connector sync-certificates CONFIG [--once]`.

A department's own SQLite table is synced into a running hub by an updated-at watermark:
only changed rows are sent, a status change becomes a status change at the hub, a content
change becomes a new version linked to its predecessor, bad rows are recorded and skipped,
a restarted connector resumes where it stopped, and a hub outage delays delivery but loses
nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hubkit import HubKit
from sqlalchemy import (
    Column,
    Date,
    DateTime,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    func,
    insert,
    select,
    update,
)

from xhub.certificates_store.model import REVOKED, SUSPENDED, VALID
from xhub.certificates_store.schema import CertificateRow
from xhub.connectors.cli import main
from xhub.connectors.issuer.config import SyncConfigError, load_sync_config
from xhub.connectors.issuer.state import SyncState
from xhub.connectors.issuer.sync import IssuerSync
from xhub.protocol.codes import make_uscc

FOOD_LICENCE = "11100000000013338W004"  # 食品经营许可证
ROOT = Path(__file__).resolve().parent.parent


class Source:
    """The department's own table, with a clock that only moves forward."""

    def __init__(self, path: Path, *, versioned: bool = False) -> None:
        self.engine: Engine = create_engine(f"sqlite:///{path}")
        self.metadata = MetaData()
        columns = [
            Column("id", Integer, primary_key=True),
            Column("licence_no", String(40), nullable=False),
            Column("holder", String(100), nullable=False),
            Column("holder_code", String(18), nullable=False),
            Column("holder_type", String(3), nullable=False),
            Column("issued", Date, nullable=False),
            Column("valid_from", Date, nullable=False),
            Column("valid_until", Date),
            Column("status", String(2), nullable=False),
            Column("status_note", String(200)),
            Column("premises", String(200)),
            Column("updated_at", DateTime),
        ]
        if versioned:
            columns.append(Column("version", Integer, nullable=False))
        self.table = Table("licences", self.metadata, *columns)
        self.metadata.create_all(self.engine)
        self.clock = datetime(2025, 1, 1, 9, 0, 0)

    def tick(self) -> datetime:
        self.clock += timedelta(seconds=1)
        return self.clock

    def add(self, ident: int, **values: Any) -> None:
        row = {
            "id": ident,
            "licence_no": f"JY1440103{ident:06d}",
            "holder": f"荔湾示例餐饮{ident}号店",
            "holder_code": make_uscc("9", "2", "440103", f"{ident:08d}"),
            "holder_type": "001",
            "issued": datetime(2025, 1, 1).date(),
            "valid_from": datetime(2025, 1, 1).date(),
            "valid_until": datetime(2030, 1, 1).date(),
            "status": "1",
            "premises": f"荔湾区示例路{ident}号",
            "updated_at": self.tick(),
        }
        row.update(values)
        with self.engine.begin() as connection:
            connection.execute(insert(self.table).values(**row))

    def change(self, ident: int, **values: Any) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                update(self.table)
                .where(self.table.c.id == ident)
                .values(updated_at=self.tick(), **values)
            )

    def close(self) -> None:
        self.engine.dispose()


def write_config(tmp_path: Path, kit: HubKit, source: Path, **hub: Any) -> Path:
    bundle = kit.members["department"].bundle_dir
    extra = "".join(f"{key} = {value}\n" for key, value in hub.items())
    config = tmp_path / "sync.toml"
    config.write_text(
        f"""
[hub]
bundle = "{bundle}"
address = "{kit.address}"
retry_initial_seconds = 0.05
retry_max_seconds = 0.5
{extra}
[source]
url = "sqlite:///{source}"
table = "licences"
updated_at_column = "updated_at"
key_column = "id"
reason_column = "status_note"
poll_seconds = 0.1
batch_size = 7

[columns]
serial = "id"
number = "licence_no"
holder_name = "holder"
holder_code_type = "holder_type"
issue_date = "issued"
raw_status = "status"
KZ_JYCS = "premises"

[defaults]
type_code = "{FOOD_LICENCE}"
type_name = "食品经营许可证"
division_code = "440103"

[status_codes]
"1" = "valid"
"2" = "suspended"
"9" = "revoked"

[state]
path = "state/sync-state.sqlite"
""",
        "utf-8",
    )
    return config


@pytest.fixture
def source(tmp_path: Path) -> Iterator[Source]:
    table = Source(tmp_path / "department.db")
    yield table
    table.close()


@pytest.fixture
def config(tmp_path: Path, hub_kit: HubKit, source: Source) -> Path:
    return write_config(tmp_path, hub_kit, tmp_path / "department.db")


@pytest.fixture
def open_sync(config: Path) -> Iterator[Callable[..., IssuerSync]]:
    opened: list[IssuerSync] = []

    def make(**kwargs: Any) -> IssuerSync:
        sync = IssuerSync(load_sync_config(config), **kwargs)
        opened.append(sync)
        return sync

    yield make
    for sync in opened:
        sync.close()


def hub_rows(kit: HubKit) -> list[CertificateRow]:
    with kit.session() as session:
        return list(session.scalars(select(CertificateRow).order_by(CertificateRow.identifier)))


def latest(kit: HubKit, serial: int) -> CertificateRow:
    rows = [r for r in hub_rows(kit) if r.is_latest and r.base_identifier.endswith(f".{serial}")]
    assert len(rows) == 1, rows
    return rows[0]


def versions(kit: HubKit, serial: int) -> list[CertificateRow]:
    return sorted(
        (r for r in hub_rows(kit) if r.base_identifier.endswith(f".{serial}")),
        key=lambda r: r.version,
    )


def test_once_then_only_changes(
    hub_kit: HubKit,
    source: Source,
    config: Path,
    open_sync: Callable[..., IssuerSync],
    capsys: pytest.CaptureFixture[str],
) -> None:
    for ident in range(1, 21):
        source.add(ident)
    assert main(["sync-certificates", str(config), "--once"]) == 0
    assert "20 row(s): 20 published" in capsys.readouterr().out
    assert len(hub_rows(hub_kit)) == 20
    first = latest(hub_kit, 5)
    assert first.version == 1 and first.status == VALID
    assert first.issuer_member_id == hub_kit.member_id("department")

    # Three new rows, two changed in content: only those five are sent.
    for ident in (21, 22, 23):
        source.add(ident)
    source.change(5, premises="荔湾区新址路1号")
    source.change(6, holder="荔湾示例餐饮6号店(更名)")
    sync = open_sync()
    result = sync.sync_once()
    assert (result.published, result.status_changed, result.unchanged) == (5, 0, 0)
    assert not result.errors
    assert len(hub_rows(hub_kit)) == 25

    # A content change is a new version whose predecessor is the version before.
    old, new = versions(hub_kit, 5)
    assert (old.version, new.version) == (1, 2)
    assert new.predecessor == old.identifier and new.is_latest and not old.is_latest

    # Nothing changed: nothing sent.
    assert sync.sync_once().rows == 0


def test_status_changes_reach_the_hub(
    hub_kit: HubKit, source: Source, open_sync: Callable[..., IssuerSync]
) -> None:
    for ident in (1, 2, 3):
        source.add(ident)
    source.add(4, status="9", status_note="已吊销")  # revoked before it was ever published
    sync = open_sync()
    assert sync.sync_once().published == 4
    assert latest(hub_kit, 4).status == REVOKED

    source.change(1, status="9", status_note="违法经营，吊销许可证")
    source.change(2, status="2")  # no note: the default reason
    result = sync.sync_once()
    assert (result.published, result.status_changed) == (0, 2)
    revoked, suspended = latest(hub_kit, 1), latest(hub_kit, 2)
    assert (revoked.status, revoked.status_reason, revoked.raw_status_code) == (
        REVOKED,
        "违法经营，吊销许可证",
        "9",
    )
    assert len(versions(hub_kit, 1)) == 1  # a status change, not a new version
    assert (suspended.status, suspended.status_reason) == (SUSPENDED, "source status changed")

    # Reinstated (恢复) after suspension.
    source.change(2, status="1")
    assert sync.sync_once().status_changed == 1
    assert latest(hub_kit, 2).status == VALID

    # Revoked is final: the hub refuses, the row is recorded and skipped, not retried.
    source.change(1, status="1")
    result = sync.sync_once()
    assert [e.key for e in result.errors] == [1]
    assert "cannot become valid" in result.errors[0].reason
    assert latest(hub_kit, 1).status == REVOKED
    assert sync.sync_once().rows == 0


def test_bad_rows_are_recorded_and_skipped(
    hub_kit: HubKit,
    source: Source,
    config: Path,
    open_sync: Callable[..., IssuerSync],
    capsys: pytest.CaptureFixture[str],
) -> None:
    good = make_uscc("9", "2", "440103", "00000002")
    source.add(1)
    source.add(2, holder_code=good[:-1] + ("0" if good[-1] != "0" else "1"))
    source.add(3, status="5")  # no mapping for this source code
    source.add(4)
    sync = open_sync()
    result = sync.sync_once()
    assert result.published == 2
    assert {e.key: e.reason.split(":")[0] for e in result.errors} == {
        2: "holder_code",
        3: "raw_status_code",
    }
    assert sync.sync_once().rows == 0  # skipped, not retried forever

    state = SyncState(load_sync_config(config).state_path)
    try:
        assert sorted(e.key for e in state.errors()) == [2, 3]
    finally:
        state.close()
    # The report both connectors give: rows in error make it exit 1.
    assert main(["sync-status", str(config)]) == 1
    assert "2 row(s) in error" in capsys.readouterr().out
    assert main(["status", str(config), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert (report["connector"], report["exit_code"]) == ("issuer", 1)
    assert report["counts"] == {
        "pending": 0,
        "sent": 2,
        "refused": 2,
        "passed_over": 0,
        "stuck": 0,
        "in_error": 2,
    }
    refused = {row["key"]: row for row in report["rows"] if row["state"] == "refused"}
    assert sorted(refused) == [2, 3] and refused[3]["reason"].startswith("raw_status_code")
    assert all(row["reason_code"] == "ROW_REFUSED" and row["at"] for row in refused.values())
    assert {row["key"] for row in report["rows"] if row["state"] == "sent"} == {1, 4}

    # Fixed in the source: picked up again, and the error is cleared.
    source.change(2, holder_code=good)
    result = sync.sync_once()
    assert result.published == 1 and not result.errors
    assert [e.key for e in sync.state.errors()] == [3]
    assert len(hub_rows(hub_kit)) == 3
    assert main(["status", str(config)]) == 1
    assert "3 sent, 1 refused" in capsys.readouterr().out


def test_restart_resumes_from_the_watermark(
    hub_kit: HubKit, source: Source, config: Path, open_sync: Callable[..., IssuerSync]
) -> None:
    for ident in range(1, 11):
        source.add(ident)
    first = open_sync()
    assert first.sync_once().published == 10
    first.close()

    # A new process: nothing is sent again.
    command = [
        sys.executable,
        "-m",
        "xhub.connectors.cli",
        "sync-certificates",
        str(config),
    ]
    done = subprocess.run(
        [*command, "--once"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "0 row(s)" in done.stdout

    source.add(11)
    source.change(3, status="9", status_note="注销前吊销")
    done = subprocess.run(
        [*command, "--once"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "2 row(s): 1 published (发布), 1 status changed" in done.stdout
    assert latest(hub_kit, 3).status == REVOKED

    # And a new object after that sees nothing new either.
    assert open_sync().sync_once().rows == 0
    assert len(hub_rows(hub_kit)) == 11


def test_lost_state_republishes_idempotently(
    hub_kit: HubKit, source: Source, config: Path, open_sync: Callable[..., IssuerSync]
) -> None:
    for ident in (1, 2, 3):
        source.add(ident)
    sync = open_sync()
    sync.sync_once()
    source.change(2, status="9", status_note="吊销")
    sync.sync_once()
    sync.close()
    state_path = load_sync_config(config).state_path
    state_path.unlink()

    # At-least-once: everything is sent again, the hub already has it, nothing changes.
    result = open_sync().sync_once()
    assert result.published == 3 and not result.errors
    assert len(hub_rows(hub_kit)) == 3
    assert latest(hub_kit, 2).status == REVOKED


def test_versioned_source_table(hub_kit: HubKit, tmp_path: Path) -> None:
    source = Source(tmp_path / "versioned.db", versioned=True)
    try:
        config = write_config(tmp_path, hub_kit, tmp_path / "versioned.db")
        source.add(1, version=1)
        source.add(2, version=3)
        with IssuerSync(load_sync_config(config)) as sync:
            assert sync.versioned
            assert sync.sync_once().published == 2
            assert latest(hub_kit, 2).version == 3

            source.change(1, version=2, premises="新址")
            assert sync.sync_once().published == 1
            old, new = versions(hub_kit, 1)
            assert new.version == 2 and new.predecessor == old.identifier

            # Content changed without a new version: refused locally, recorded.
            source.change(1, premises="又一个新址")
            result = sync.sync_once()
            assert [e.key for e in result.errors] == [1]
            assert "raise the version" in result.errors[0].reason
    finally:
        source.close()


@pytest.mark.timeout(120)
def test_hub_outage_during_loop(
    hub_kit: HubKit, source: Source, open_sync: Callable[..., IssuerSync]
) -> None:
    for ident in range(1, 6):
        source.add(ident)
    stop = threading.Event()
    sync = open_sync(stop=stop)
    failure: list[BaseException] = []

    def loop() -> None:
        try:
            sync.run()
        except BaseException as exc:  # surfaced by the assertion below
            failure.append(exc)

    def wait_for(count: int, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while len(hub_rows(hub_kit)) < count:
            assert not failure, failure
            assert time.monotonic() < deadline, f"only {len(hub_rows(hub_kit))} of {count}"
            time.sleep(0.1)

    worker = threading.Thread(target=loop, name="sync-loop", daemon=True)
    worker.start()
    try:
        wait_for(5, 30)
        hub_kit.stop()
        for ident in range(6, 11):
            source.add(ident)
        source.change(1, status="9", status_note="停机期间吊销")
        time.sleep(1.5)  # the loop keeps trying while the hub is down
        assert not failure, failure
        hub_kit.start()
        wait_for(10, 60)
        deadline = time.monotonic() + 30
        while latest(hub_kit, 1).status != REVOKED:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        stop.set()
        worker.join(timeout=20)
    assert not worker.is_alive()
    assert not failure, failure
    with hub_kit.session() as session:
        assert session.scalar(select(func.count()).select_from(CertificateRow)) == 10


def test_config_errors(hub_kit: HubKit, tmp_path: Path, source: Source) -> None:
    config = write_config(tmp_path, hub_kit, tmp_path / "department.db")
    text = config.read_text("utf-8")
    config.write_text(text.replace('number = "licence_no"', 'number = "licence_number"'), "utf-8")
    with pytest.raises(SyncConfigError, match="licence_number"):
        IssuerSync(load_sync_config(config))
    assert main(["sync-certificates", str(config), "--once"]) == 2

    config.write_text(text.replace('"9" = "revoked"', '"9" = "gone"'), "utf-8")
    with pytest.raises(SyncConfigError, match="use one of valid"):
        load_sync_config(config)
    config.write_text(text.replace("[state]", "[stat]"), "utf-8")
    with pytest.raises(SyncConfigError, match="unknown table"):
        load_sync_config(config)


def test_once_gives_up_when_the_hub_stays_down(
    hub_kit: HubKit, tmp_path: Path, source: Source, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, hub_kit, tmp_path / "department.db", once_attempts=2)
    source.add(1)
    hub_kit.stop()
    assert main(["sync-certificates", str(config), "--once"]) == 3
    assert "cannot reach the hub" in capsys.readouterr().err
    hub_kit.start()
    assert main(["sync-certificates", str(config), "--once"]) == 0
    assert len(hub_rows(hub_kit)) == 1
