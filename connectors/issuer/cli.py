"""``xhub-connector sync-certificates CONFIG [--once]`` and ``sync-status CONFIG``."""

from __future__ import annotations

from pathlib import Path

from xhub.connectors.common.signals import stop_on_signals
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


def status_command(config_path: Path) -> int:
    """Print the watermark and the rows in error; 0. Raises as ``sync_command`` does."""
    state = SyncState(load_sync_config(config_path).state_path)
    try:
        mark = state.watermark()
        print(f"watermark (水位): {'none yet' if mark is None else f'{mark[0]} / key {mark[1]}'}")
        errors = state.errors()
        for error in errors:
            print(f"  key {error.key}: {error.reason}")
        print(f"{len(errors)} row(s) in error")
    finally:
        state.close()
    return 0
