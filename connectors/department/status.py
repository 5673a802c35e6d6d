"""``xhub-connector status department.toml [--json]``: the department connector's report,
from its state file (the format and exit codes: ``connectors/common/status.py``).

* pending — pushes in the outbox, oldest first, with their attempts and the last transport
  error (why they wait); *stuck* once older than ``[state] stuck_after_seconds``;
* sent — pushes the hub took (kept ``keep_sent_days``);
* refused — pushes the hub refused (``HUB_REFUSED``, with its status and reason);
* passed over — rows not sent, with their reason code (``reasons.py``); NO_CASE_NUMBER and
  UNMAPPED_STATUS_CODE (and CASE_NOT_DISPATCHED with ``counter_cases = false``) are errors;
* attachments (部门调阅材料, ``attachments.py``) — one line of counts (fetched, pending,
  failed; ``"attachments"`` in ``--json``); a pending one is listed under pending (key
  ``certificate <identifier>`` or ``material <id>``, with its attempts and last error, stuck
  like a push), a failed one under refused (``ATTACHMENT_FAILED``, an error: exit 1).
"""

from __future__ import annotations

from xhub.connectors.common.status import (
    PASSED_OVER,
    PENDING,
    REFUSED,
    ReportRow,
    StatusReport,
)
from xhub.connectors.department import attachments as fetch
from xhub.connectors.department.attachments import Attachments
from xhub.connectors.department.config import DepartmentConfig
from xhub.connectors.department.outbox import FAILED, DepartmentState
from xhub.connectors.department.reasons import HUB_REFUSED

ATTACHMENT_PENDING, ATTACHMENT_FAILED = "ATTACHMENT_PENDING", "ATTACHMENT_FAILED"


def attachment_rows(attachments: Attachments) -> tuple[list[ReportRow], dict[str, int]]:
    """The attachments not fetched yet as report rows, and the counts of every state."""
    every = attachments.all()
    counts = {state: sum(a.state == state for a in every) for state in fetch.STATES}
    rows = [
        ReportRow(
            state=PENDING if a.state == fetch.PENDING else REFUSED,
            key=f"{a.kind} {a.ref}",
            subject=a.case_number,
            at=a.updated_at,
            stage="ATTACHMENT",
            reason_code=ATTACHMENT_PENDING if a.state == fetch.PENDING else ATTACHMENT_FAILED,
            reason=a.error,
            attempts=a.attempts,
            error=a.state == fetch.FAILED,
        )
        for a in every
        if a.state != fetch.FETCHED
    ]
    return rows, counts


def department_report(config: DepartmentConfig, state: DepartmentState) -> StatusReport:
    rows = [
        ReportRow(
            state=REFUSED if entry.state == FAILED else entry.state,
            key=entry.row_key,
            subject=entry.case_number,
            at=entry.answered_at or entry.created_at,
            stage=entry.stage.name,
            native_code=entry.native_code,
            reason_code=HUB_REFUSED if entry.state == FAILED else "",
            reason=entry.error,
            attempts=entry.attempts,
            error=entry.state == FAILED,
        )
        for entry in state.outbox()
    ]
    rows += [
        ReportRow(
            state=PASSED_OVER,
            key=row.key,
            subject=row.case_number,
            at=row.recorded_at,
            native_code=row.native_code,
            reason_code=row.reason_code,
            reason=row.reason,
            error=row.reason_code in config.row_errors,
        )
        for row in state.passed_over()
    ]
    pending, counts = attachment_rows(
        Attachments(state.engine, config.attachments_path, reading=True)
    )
    return StatusReport(
        "department",
        config.state_path,
        state.watermark(),
        rows + pending,
        stuck_after_seconds=config.stuck_after_seconds,
        extra={"attachments": counts},
    )
