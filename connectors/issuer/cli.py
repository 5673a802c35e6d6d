"""``xhub-connector sync-certificates CONFIG [--once]`` and ``status CONFIG [--json]``
(alias ``sync-status``): the issuer sync's report, in the format of
``connectors/common/status.py``: rows published (*sent*: identifier, version, status) and
rows in error (*refused*, ``ROW_REFUSED``: refused by the hub or failing validation, with
the field or the hub's reason), skipped until the row changes. The sync publishes each row
before moving on, so nothing is ever *pending*; the exit code is 1 while rows are in error.
"""

from __future__ import annotations

from pathlib import Path

from xhub.certificates_store.model import STATUS_NAMES
from xhub.connectors.common.signals import stop_on_signals
from xhub.connectors.common.status import (
    DEFAULT_LIMIT,
    REFUSED,
    SENT,
    ReportRow,
    StatusReport,
    print_report,
)
from xhub.connectors.issuer.config import load_sync_config
from xhub.connectors.issuer.state import SyncState
from xhub.connectors.issuer.sync import IssuerSync


def sync_command(config_path: Path, *, once: bool) -> int:
    """0 ok, 1 rows in error (``--once``).

    Raises SyncConfigError or BundleError (configuration), SQLAlchemyError (the source or
    state database), TransportError (hub unreachable) and any other XhubError (the hub
    refused the connector): ``xhub.connectors.cli`` turns them into exit codes 2, 2, 3, 4.
    """
    config = load_sync_config(config_path)
    if once:
        with IssuerSync(config) as sync:
            result = sync.sync_once(bounded=True)
        for error in result.errors:
            print(f"key {error.key}: {error.reason}")
        print(result.summary())
        return 1 if result.errors else 0
    with IssuerSync(config, stop=stop_on_signals()) as sync:
        sync.run()
    return 0


ROW_REFUSED = "ROW_REFUSED"


def status_command(config_path: Path, *, as_json: bool = False, limit: int = DEFAULT_LIMIT) -> int:
    """Print the report; its exit code (0, or 1 with rows in error). Raises as
    ``sync_command`` does."""
    config = load_sync_config(config_path)
    if not config.state_path.exists():  # never run: nothing to report, and no file made
        return print_report(StatusReport("issuer", config.state_path, None, []), as_json=as_json)
    state = SyncState(config.state_path)
    try:
        report = StatusReport("issuer", config.state_path, state.watermark(), _report_rows(state))
    finally:
        state.close()
    return print_report(report, as_json=as_json, limit=limit)


def _report_rows(state: SyncState) -> list[ReportRow]:
    rows = [
        ReportRow(
            state=SENT,
            key=key,
            subject=published.identifier,
            at=published.synced_at,
            stage=f"v{published.version} {STATUS_NAMES.get(published.status, published.status)}",
            native_code=published.raw_status,
        )
        for key, published in state.published_rows()
    ]
    rows += [
        ReportRow(
            state=REFUSED,
            key=error.key,
            subject="",
            at=error.recorded_at,
            reason_code=ROW_REFUSED,
            reason=error.reason,
            error=True,
        )
        for error in state.errors()
    ]
    return rows
