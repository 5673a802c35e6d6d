"""``xhub-connector run CONFIG [--once]``: the department connector as a command; and
``xhub-connector status CONFIG [--json] [--limit N]``, its report (``status.py``)."""

from __future__ import annotations

import sys
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from xhub.connectors.common.signals import stop_on_signals
from xhub.connectors.common.status import DEFAULT_LIMIT, StatusReport, print_report
from xhub.connectors.department.config import load_department_config
from xhub.connectors.department.connector import DepartmentConnector
from xhub.connectors.department.outbox import FAILED, DepartmentState
from xhub.connectors.department.status import department_report


def run_command(config_path: Path, *, once: bool) -> int:
    """0 ok, 1 pushes refused, rows in error (``DepartmentConfig.row_errors``) or cases failing
    verification (``--once``), 2 the department
    database cannot be opened, 3 hub unreachable (``--once``: the pushes wait in the outbox).

    Raises DepartmentConfigError or BundleError (configuration), SQLAlchemyError (a database
    while running), TransportError (hub unreachable) and any other XhubError (the hub
    refused the connector): ``xhub.connectors.cli`` turns them into exit codes 2, 2, 3, 4.
    """
    try:
        connector = DepartmentConnector(load_department_config(config_path))
    except SQLAlchemyError as exc:
        print(f"error: department database: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    with connector:
        if once:
            return _report_once(connector)
        connector.run(stop_on_signals())
        return 0


def status_command(config_path: Path, *, as_json: bool = False, limit: int = DEFAULT_LIMIT) -> int:
    """Print the report; its exit code (``connectors/common/status.py``). Reads the state file
    only. Raises DepartmentConfigError (configuration) and SQLAlchemyError (the state file)."""
    config = load_department_config(config_path)
    if not config.state_path.exists():  # never run: nothing to report, and no file made
        return print_report(
            StatusReport("department", config.state_path, None, []), as_json=as_json
        )
    state = DepartmentState(config.state_path)
    try:
        report = department_report(config, state)
    finally:
        state.close()
    return print_report(report, as_json=as_json, limit=limit)


def _report_once(connector: DepartmentConnector) -> int:
    result = connector.run_once()
    for passed in result.passed_over:
        if passed.reason_code in connector.config.row_errors:
            print(f"status row {passed.key} passed over ({passed.reason_code}): {passed.reason}")
    for case in result.unverified:
        print(f"case {case.key} failed end-to-end verification: {case.reason}")
    refused = {entry.seq for entry in result.failed}
    for entry in connector.state.outbox(FAILED):
        if entry.seq in refused:
            print(
                f"refused push (推送被拒) #{entry.seq} case {entry.case_number} → "
                f"{entry.stage.label}: {entry.error}"
            )
    print(result.summary())
    if result.unreachable:
        return 3
    return 1 if result.failed or result.unverified or result.row_errors else 0
