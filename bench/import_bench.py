"""Bulk certificate import: rows per second through ``xhub certificates import``.

A 10,000-row CSV export (one row in a hundred invalid, as a real export has) is published
into a hub running as its own process on 127.0.0.1, with the command's default four
publishing threads. No bare baseline exists for this path, so the rate is reported plain,
with the row count and the elapsed time beside it. The suite keeps the behaviour (which
rows are published, which are refused and why, line by line) in tests/test_import.py.
"""

from __future__ import annotations

import contextlib
import csv
import io
import time
from collections.abc import Iterator
from pathlib import Path

from bench.harness import Row
from bench.hubproc import process, setup
from xhub.cli.main import main as xhub
from xhub.connectors import HubClient
from xhub.demo.process import free_port
from xhub.protocol.codes import make_uscc

ISSUER = "gz_market"  # 广州市市场监督管理局 issues the business licences (营业执照)
BAD_EVERY = 100


def _export(count: int) -> Iterator[dict[str, str]]:
    """Business licences of distinct companies; every hundredth holder code fails its check."""
    for i in range(count):
        code = make_uscc("9", "1", "440103", f"{i:08d}")
        if i % BAD_EVERY == BAD_EVERY - 1:
            code = code[:-1] + ("0" if code[-1] != "0" else "1")
        yield {
            "type_code": "11100000000013338W001",
            "type_name": "营业执照",
            "serial": f"S{i:07d}",
            "number": f"NO{i:07d}",
            "holder_name": f"示例企业{i}有限公司",
            "holder_code": code,
            "holder_code_type": "001",
            "issue_date": "2024-01-02",
            "valid_from": "2024-01-02",
            "valid_until": "" if i % 3 == 0 else "2034-01-01",
            "KZ_ADDRESS": f"广州市荔湾区示例路{i}号",
        }


def _write_export(path: Path, count: int) -> None:
    with path.open("w", encoding="utf-8", newline="") as out:
        writer: csv.DictWriter[str] | None = None
        for row in _export(count):
            if writer is None:
                writer = csv.DictWriter(out, fieldnames=list(row))
                writer.writeheader()
            writer.writerow(row)


def bench_import(root: Path, rows: int = 10_000) -> list[Row]:
    bundles = setup(root, free_port())
    source = root / "certificates.csv"
    _write_export(source, rows)
    bad = rows // BAD_EVERY
    args = ["certificates", "import", str(source), "--bundle", str(bundles[ISSUER])]
    output = io.StringIO()
    with (
        process(["-m", "xhub.cli.main", "serve", "--data-dir", str(root)], root / "hub.log"),
        HubClient.from_bundle(bundles[ISSUER]) as client,
    ):
        client.wait_until_serving()
        started = time.perf_counter()
        with contextlib.redirect_stdout(output):
            code = xhub([*args, "--report", str(root / "report.csv")])
        elapsed = time.perf_counter() - started
    expected = f"{rows} row(s): {rows - bad} published"
    summary = next((line for line in output.getvalue().splitlines() if " row(s): " in line), "")
    if code != (1 if bad else 0) or not summary.startswith(expected):
        raise RuntimeError(f"import did not publish what it should: exit {code}, {summary!r}")
    print(f"  {rows} rows in {elapsed:.1f}s: {rows / elapsed:.0f} rows/s ({summary})", flush=True)
    return [
        Row("certificate_import_rows_per_s", round(rows / elapsed, 1), "rows/s"),
        Row("certificate_import_rows", rows, "rows"),
        Row("certificate_import_seconds", round(elapsed, 1), "s"),
    ]
