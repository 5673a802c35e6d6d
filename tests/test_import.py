"""Bulk certificate import (证照批量导入): `xhub certificates import FILE --bundle DIR`.

Exactly the good rows reach the hub; each bad row is reported once with its line and
reason; running the same import again publishes nothing new and reports the same rows.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from hubkit import HubKit
from sqlalchemy import func, select

from xhub.certificates_store.model import REVOKED, SUSPENDED, VALID
from xhub.certificates_store.schema import CertificateRow
from xhub.cli.main import main
from xhub.protocol.codes import make_citizen_id, make_uscc

LICENCE = "11100000000013338W001"  # 营业执照
ID_CARD = "11100000000013338W002"  # 居民身份证
HEADER = [
    "type_code",
    "type_name",
    "serial",
    "number",
    "version",
    "holder_name",
    "holder_code",
    "holder_code_type",
    "issue_date",
    "valid_from",
    "valid_until",
    "division_code",
    "raw_status",
    "KZ_ADDRESS",
]
BAD_EVERY = 100  # one bad row in each hundred: 1%
BAD_KINDS = ("uscc-check", "citizen-id-check", "holder-type-mismatch", "validity", "raw-status")
EXPECTED_REASON = {
    "uscc-check": "holder_code: USCC",
    "citizen-id-check": "holder_code:",
    "holder-type-mismatch": "holder_code:",
    "validity": "valid_until: is before valid_from",
    "raw-status": "raw_status_code: no status mapping for source code '99'",
}

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture(autouse=True)
def _no_xhub_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("XHUB_") and name != "XHUB_PG_BIN":
            monkeypatch.delenv(name)


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Run:
    def invoke(*args: Any) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return invoke


def company(i: int) -> str:
    return make_uscc("9", "1", "440103", f"{i:08d}")


def person(i: int) -> str:
    birth = date(1960, 1, 1) + timedelta(days=i % 15_000)
    return make_citizen_id("440103", birth.strftime("%Y%m%d"), f"{i % 1000:03d}")


def good_row(i: int) -> dict[str, str]:
    is_company = i % 2 == 0
    return {
        "type_code": LICENCE if is_company else ID_CARD,
        "type_name": "营业执照" if is_company else "居民身份证",
        "serial": f"S{i:07d}",
        "number": f"NO{i:07d}",
        "version": "1",
        "holder_name": f"示例企业{i}有限公司" if is_company else f"测试人员{i}",
        "holder_code": company(i) if is_company else person(i),
        "holder_code_type": "001" if is_company else "111",
        "issue_date": "2024-01-02",
        "valid_from": "2024-01-02",
        "valid_until": "" if i % 3 == 0 else "2034-01-01",
        "division_code": "440103",
        "raw_status": {0: "02", 1: "07"}.get(i % 50, "01"),
        "KZ_ADDRESS": f"广州市荔湾区示例路{i}号",
    }


def bad_row(i: int, kind: str) -> dict[str, str]:
    row = good_row(i)
    if kind == "uscc-check":
        code = company(i)
        row.update(holder_code=code[:-1] + ("0" if code[-1] != "0" else "1"))
        row.update(holder_code_type="001", type_code=LICENCE)
    elif kind == "citizen-id-check":
        code = person(i)
        row.update(holder_code=code[:-1] + ("0" if code[-1] != "0" else "1"))
        row.update(holder_code_type="111", type_code=ID_CARD)
    elif kind == "holder-type-mismatch":
        row.update(holder_code=company(i), holder_code_type="111")
    elif kind == "validity":
        row.update(valid_from="2024-05-01", valid_until="2024-04-30")
    else:
        row.update(raw_status="99")
    return row


def rows(count: int) -> Iterator[tuple[dict[str, str], str]]:
    """(row, bad kind or "") for row index 0..count-1."""
    for i in range(count):
        if i % BAD_EVERY == 37:
            kind = BAD_KINDS[(i // BAD_EVERY) % len(BAD_KINDS)]
            yield bad_row(i, kind), kind
        else:
            yield good_row(i), ""


def write_rows(path: Path, mix: Iterable[tuple[dict[str, str], str]]) -> dict[int, str]:
    """Write (row, bad kind or "") as CSV; returns {line: bad kind} (the header is line 1)."""
    bad: dict[int, str] = {}
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=HEADER)
        writer.writeheader()
        for index, (row, kind) in enumerate(mix):
            writer.writerow(row)
            if kind:
                bad[index + 2] = kind
    return bad


def write_csv(path: Path, count: int) -> dict[int, str]:
    """The 1% mix of ``rows(count)``; returns {line: bad kind}."""
    return write_rows(path, rows(count))


def read_report(path: Path) -> dict[int, str]:
    with path.open(encoding="utf-8", newline="") as source:
        reader = csv.reader(source)
        assert next(reader) == ["line", "reason"]
        return {int(line): reason for line, reason in reader}


def stored(kit: HubKit) -> int:
    with kit.session() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(CertificateRow)
                .where(CertificateRow.issuer_member_id == kit.member_id("issuer"))
            )
            or 0
        )


def check_report(reported: dict[int, str], bad: dict[int, str], out: str) -> None:
    assert set(reported) == set(bad)
    for line, kind in bad.items():
        assert EXPECTED_REASON[kind] in reported[line], (line, kind, reported[line])
        assert f"line {line}: " in out


def test_good_rows_published_and_each_bad_line_reported(
    hub_kit: HubKit, run: Run, tmp_path: Path
) -> None:
    """A handful of rows with every kind of bad row among them (the 10,000-row import is the
    benchmark row ``certificate_import_rows_per_s`` in ``make bench``)."""
    mix = [(good_row(i), "") for i in range(48, 54)]
    for n, kind in enumerate(BAD_KINDS):
        mix.insert(2 * n + 1, (bad_row(60 + n, kind), kind))
    source = tmp_path / "certificates.csv"
    bad = write_rows(source, mix)
    assert sorted(bad.values()) == sorted(BAD_KINDS)
    report = tmp_path / "report.csv"
    bundle = hub_kit.members["issuer"].bundle_dir

    code, out, err = run(
        "certificates", "import", source, "--bundle", bundle, "--hub", hub_kit.address,
        "--report", report,
    )  # fmt: skip
    assert code == 1, err
    good = len(mix) - len(bad)
    assert f"{good} published" in out and "0 already published" in out
    assert f"{len(bad)} failed" in out
    assert stored(hub_kit) == good
    check_report(read_report(report), bad, out)

    # Statuses other than valid are published as such, with the source's raw code.
    with hub_kit.session() as session:
        by_serial = {
            row.base_identifier.rsplit(".", 1)[-1]: (row.status, row.raw_status_code)
            for row in session.scalars(select(CertificateRow))
        }
    assert by_serial["S0000050"] == (SUSPENDED, "02")
    assert by_serial["S0000051"] == (REVOKED, "07")
    assert by_serial["S0000052"] == (VALID, "01")


def test_rerun_publishes_nothing_new(hub_kit: HubKit, run: Run, tmp_path: Path) -> None:
    """The same 1% mix on 1,000 rows, imported twice."""
    count = 1_000
    source = tmp_path / "certificates.csv"
    bad = write_csv(source, count)
    good = count - len(bad)
    bundle = hub_kit.members["issuer"].bundle_dir
    args = ("certificates", "import", source, "--bundle", bundle, "--hub", hub_kit.address)
    first, again = tmp_path / "first.csv", tmp_path / "again.csv"

    code, out, _err = run(*args, "--report", first)
    assert code == 1 and f"{good} published" in out
    check_report(read_report(first), bad, out)

    code, out, _err = run(*args, "--report", again, "--workers", 2)
    assert code == 1
    assert "0 published" in out and f"{good} already published" in out
    assert read_report(again) == read_report(first)
    assert stored(hub_kit) == good


def test_jsonl_small(hub_kit: HubKit, run: Run, tmp_path: Path) -> None:
    lines = [
        json.dumps(good_row(1), ensure_ascii=False),
        json.dumps({**good_row(2), "version": 2, "KZ_EXTRA": "附加"}, ensure_ascii=False),
        "",
        "{not json",
        json.dumps(bad_row(4, "validity"), ensure_ascii=False),
        json.dumps({**good_row(5), "colour": "red"}, ensure_ascii=False),
        json.dumps(["a", "list"]),
        json.dumps(good_row(8), ensure_ascii=False),
    ]
    source = tmp_path / "certificates.jsonl"
    source.write_text("\n".join(lines) + "\n", "utf-8")
    bundle = hub_kit.members["issuer"].bundle_dir
    code, out, _err = run(
        "certificates", "import", source, "--bundle", bundle, "--hub", hub_kit.address
    )
    assert code == 1
    assert "3 published" in out and "4 failed" in out
    assert "line 4: not valid JSON" in out
    assert "line 5: valid_until: is before valid_from" in out
    assert "line 6: unknown key(s) colour" in out
    assert "line 7: must be a JSON object" in out
    assert stored(hub_kit) == 3
    with hub_kit.session() as session:
        versions = {row.number: row.version for row in session.scalars(select(CertificateRow))}
    assert versions["NO0000002"] == 2


def test_mapping_file_and_hub_refusal(hub_kit: HubKit, run: Run, tmp_path: Path) -> None:
    mapping = tmp_path / "mapping.toml"
    mapping.write_text(
        """
[columns]
number = "ZZBH"
holder_name = "CZZT"
raw_status = "ZT"
KZ_JYCS = "premises"

[defaults]
type_code = "11100000000013338W001"
type_name = "营业执照"
holder_code_type = "001"

[status_codes]
"10" = "valid"
"90" = "revoked"
""",
        "utf-8",
    )
    header = "serial,ZZBH,CZZT,holder_code,issue_date,valid_from,ZT,premises\n"
    source = tmp_path / "export.csv"
    source.write_text(
        header
        + f"A1,N-1,甲公司,{company(1)},2024-01-01,2024-01-01,10,一号铺\n"
        + f"A2,N-2,乙公司,{company(2)},2024-01-01,2024-01-01,90,二号铺\n"
        + f"A3,N-3,丙公司,{company(3)},2024-01-01,2024-01-01,01,三号铺\n",
        "utf-8",
    )
    bundle = hub_kit.members["issuer"].bundle_dir
    base = ("certificates", "import", "--bundle", bundle, "--hub", hub_kit.address)
    code, out, _err = run(*base, source, "--mapping", mapping)
    assert code == 1
    assert "2 published" in out
    assert "line 4: raw_status_code: no status mapping for source code '01'" in out
    with hub_kit.session() as session:
        rows_by_number = {row.number: row for row in session.scalars(select(CertificateRow))}
    assert rows_by_number["N-2"].status == REVOKED
    assert rows_by_number["N-1"].raw_status_code == "10"

    # The same identifier with other content is refused by the hub, by line.
    changed = tmp_path / "changed.csv"
    changed.write_text(
        header + f"A1,N-1-CHANGED,甲公司,{company(1)},2024-01-01,2024-01-01,10,一号铺\n", "utf-8"
    )
    code, out, _err = run(*base, changed, "--mapping", mapping)
    assert code == 1
    assert "line 2: VERSION_CONFLICT:" in out and "publish a new version" in out


def test_usage_errors_exit_2(hub_kit: HubKit, run: Run, tmp_path: Path) -> None:
    bundle = hub_kit.members["issuer"].bundle_dir
    base = ("certificates", "import", "--bundle", bundle, "--hub", hub_kit.address)
    typo = tmp_path / "typo.csv"
    typo.write_text(",".join([*HEADER, "valid_untill"]) + "\n", "utf-8")
    code, _out, err = run(*base, typo)
    assert code == 2 and "unknown column(s) valid_untill" in err

    missing = tmp_path / "missing.csv"
    missing.write_text("type_code,serial\n", "utf-8")
    code, _out, err = run(*base, missing)
    assert code == 2 and "missing column(s) type_name" in err

    mapping = tmp_path / "mapping.toml"
    mapping.write_text('[status_codes]\n"01" = "gone"\n', "utf-8")
    code, _out, err = run(*base, typo, "--mapping", mapping)
    assert code == 2 and "use one of valid" in err

    code, _out, err = run(*base, tmp_path / "absent.csv")
    assert code == 2
    assert stored(hub_kit) == 0
