"""``xhub-connector run CONFIG [--once]``: the department connector as a command."""

from __future__ import annotations

import sys
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from xhub.connectors.common.signals import stop_on_signals
from xhub.connectors.department.config import load_department_config
from xhub.connectors.department.connector import DepartmentConnector
from xhub.connectors.department.outbox import FAILED


def run_command(config_path: Path, *, once: bool) -> int:
    """0 ok, 1 pushes refused or cases failing verification (``--once``), 2 the department
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


def _report_once(connector: DepartmentConnector) -> int:
    result = connector.run_once()
    for row in result.skipped:
        print(f"status row {row.key}: {row.reason}")
    for row in result.unverified:
        print(f"case {row.key} failed end-to-end verification: {row.reason}")
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
    return 1 if result.failed or result.unverified else 0
