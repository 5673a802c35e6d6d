"""``xhub-connector status department.toml [--json]``: the department connector's report,
from its state file (the format and exit codes: ``connectors/common/status.py``).

* pending — pushes in the outbox, oldest first, with their attempts and the last transport
  error (why they wait); *stuck* once older than ``[state] stuck_after_seconds``;
* sent — pushes the hub took (kept ``keep_sent_days``);
* refused — pushes the hub refused (``HUB_REFUSED``, with its status and reason);
* passed over — rows not sent, with their reason code (``reasons.py``); NO_CASE_NUMBER and
  UNMAPPED_STATUS_CODE (and CASE_NOT_DISPATCHED with ``counter_cases = false``) are errors.
"""

from __future__ import annotations

from xhub.connectors.common.status import PASSED_OVER, REFUSED, ReportRow, StatusReport
from xhub.connectors.department.config import DepartmentConfig
from xhub.connectors.department.outbox import FAILED, DepartmentState
from xhub.connectors.department.reasons import HUB_REFUSED


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
    return StatusReport(
        "department",
        config.state_path,
        state.watermark(),
        rows,
        stuck_after_seconds=config.stuck_after_seconds,
    )
