"""``xhub-connector status CONFIG [--json] [--limit N]``: what a connector did with each row
of the department's table, read from its local state file only (neither the hub nor the
department's database is contacted). The same report for both connectors.

Text (for people)::

    department connector — state file state/department.sqlite
    watermark (水位): 2026-03-02 09:00:05 / key 7
    pending (待回传) 1:
      row 7  case 2026…0002 → UNDER_REVIEW (10)  since 2026-03-02T01:00:06+00:00, 3
             attempt(s): UNAVAILABLE …
    sent (已回传) 1:
      row 2  case 2026…0002 → ACCEPTED (01)  at …
    refused (推送被拒) 1:
      row 1  case 2026…0001 → DELIVERED (50)  at …  HUB_REFUSED: FAILED_PRECONDITION …
    passed over (未回传) 1:
      row 3  case 2026…0002 (77)  at …  UNMAPPED_STATUS_CODE: status code '77' is not …
    1 pending (0 stuck), 1 sent, 1 refused, 1 passed over; 2 row(s) in error

Each section lists its latest ``--limit`` rows (default 20; 0: all). ``--json`` prints one
object with every row::

    {"connector": "department" | "issuer", "state_file": "…",
     "watermark": {"updated_at": "…", "key": …} | null,
     "counts": {"pending", "sent", "refused", "passed_over", "stuck", "in_error"},
     "rows": [{"state", "key", "subject", "stage", "native_code", "reason_code", "reason",
               "at", "attempts", "error"}],
     "exit_code": 0 | 1 | 5}

``subject`` is the case number (department) or certificate identifier (issuer); ``error`` is
true for a row counted in ``in_error``. Reports carry keys, case numbers, status codes and
reasons, never a row's note or form.

Exit codes: 0 nothing refused, in error or stuck; 1 rows refused by the hub or passed over
for an error a person must fix (``in_error``); otherwise 5 pushes waiting in the outbox
longer than ``stuck_after_seconds`` (``stuck``: the hub unreachable, or no connector
running). Like every command, 2 when the configuration or the state file cannot be read.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from xhub.connectors.common.state import Watermark

PENDING, SENT, REFUSED, PASSED_OVER = "pending", "sent", "refused", "passed_over"
STATES: Final = (PENDING, SENT, REFUSED, PASSED_OVER)
_HEADINGS: Final = {
    PENDING: "pending (待回传)",
    SENT: "sent (已回传)",
    REFUSED: "refused (推送被拒)",
    PASSED_OVER: "passed over (未回传)",
}
EXIT_OK, EXIT_IN_ERROR, EXIT_STUCK = 0, 1, 5
DEFAULT_LIMIT = 20


@dataclass(frozen=True)
class ReportRow:
    """One row of the department's table, as the connector last handled it."""

    state: str  # one of STATES
    key: Any  # the row's key, as the department wrote it
    subject: str  # case number, or certificate identifier
    at: str  # ISO 8601: queued (pending), answered (sent, refused), or passed over
    stage: str = ""
    native_code: str = ""
    reason_code: str = ""
    reason: str = ""
    attempts: int = 0
    error: bool = False  # refused, or passed over for an error a person must fix


@dataclass(frozen=True)
class StatusReport:
    connector: str  # "department" or "issuer"
    state_file: Path
    watermark: Watermark | None
    rows: Sequence[ReportRow]
    stuck_after_seconds: float | None = None  # None: nothing waits (the issuer sync)
    # Counts of what else the connector keeps, by name (the department's attachments), as
    # a JSON object and one text line each; empty for the issuer sync.
    extra: Mapping[str, Mapping[str, int]] = field(default_factory=dict)

    def is_stuck(self, row: ReportRow, now: datetime) -> bool:
        if row.state != PENDING or self.stuck_after_seconds is None:
            return False
        since = datetime.fromisoformat(row.at)
        return now - since >= timedelta(seconds=self.stuck_after_seconds)

    def counts(self, now: datetime | None = None) -> dict[str, int]:
        now = now or datetime.now(UTC)
        counts = {state: sum(row.state == state for row in self.rows) for state in STATES}
        counts["stuck"] = sum(self.is_stuck(row, now) for row in self.rows)
        counts["in_error"] = sum(row.error for row in self.rows)
        return counts

    def exit_code(self, counts: dict[str, int]) -> int:
        if counts["in_error"]:
            return EXIT_IN_ERROR
        return EXIT_STUCK if counts["stuck"] else EXIT_OK

    def to_json(self) -> dict[str, Any]:
        counts = self.counts()
        mark = self.watermark
        return {
            "connector": self.connector,
            "state_file": str(self.state_file),
            "watermark": (
                None if mark is None else {"updated_at": str(mark[0]), "key": _plain(mark[1])}
            ),
            "counts": counts,
            "rows": [{**asdict(row), "key": _plain(row.key)} for row in self.rows],
            "exit_code": self.exit_code(counts),
            **{name: dict(values) for name, values in self.extra.items()},
        }

    def text(self, limit: int = DEFAULT_LIMIT) -> str:
        counts = self.counts()
        mark = self.watermark
        lines = [
            f"{self.connector} connector — state file {self.state_file}",
            f"watermark (水位): {'none yet' if mark is None else f'{mark[0]} / key {mark[1]}'}",
        ]
        for state in STATES:
            rows = [row for row in self.rows if row.state == state]
            if not rows:
                continue
            lines.append(f"{_HEADINGS[state]} {len(rows)}:")
            shown = rows[-limit:] if limit > 0 else rows
            if len(shown) < len(rows):
                lines.append(f"  … {len(rows) - len(shown)} earlier row(s) (--limit 0: all)")
            lines.extend(f"  {_line(row)}" for row in shown)
        lines.append(
            f"{counts[PENDING]} pending ({counts['stuck']} stuck), {counts[SENT]} sent, "
            f"{counts[REFUSED]} refused, {counts[PASSED_OVER]} passed over; "
            f"{counts['in_error']} row(s) in error"
        )
        for name, values in self.extra.items():
            lines.append(f"{name}: " + ", ".join(f"{n} {k}" for k, n in values.items()))
        return "\n".join(lines)


def print_report(report: StatusReport, *, as_json: bool, limit: int = DEFAULT_LIMIT) -> int:
    """Print the report; returns its exit code."""
    if as_json:
        document = report.to_json()
        print(json.dumps(document, ensure_ascii=False, indent=2))
        return int(document["exit_code"])
    print(report.text(limit))
    return report.exit_code(report.counts())


def _line(row: ReportRow) -> str:
    text = f"row {row.key}  "
    if row.subject:
        text += f"{'case ' if row.stage or row.native_code else ''}{row.subject}"
    if row.stage:
        text += f" → {row.stage}"
    if row.native_code:
        text += f" ({row.native_code})"
    text += f"  {'since' if row.state == PENDING else 'at'} {row.at}"
    if row.attempts and row.state == PENDING:
        text += f", {row.attempts} attempt(s)"
    if row.reason_code or row.reason:
        text += f"  {row.reason_code}{': ' if row.reason_code else ''}{row.reason}"
    return text


def _plain(value: Any) -> Any:
    """A key as JSON has it: numbers and text as they are, anything else (a date) as text."""
    return value if value is None or isinstance(value, int | float | str) else str(value)
