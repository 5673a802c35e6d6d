"""The issuer connector's configuration (TOML), read and checked.

Relative paths are relative to the file::

    [hub]
    bundle = "member"                  # keys + installed bundle (接入包, `bundle install`)
    address = "127.0.0.1:7443"         # optional: overrides the bundle's hub address
    retry_initial_seconds = 0.5        # backoff while the hub is unreachable
    retry_max_seconds = 30
    once_attempts = 5                  # --once gives up after this many tries per call

    [source]
    url = "sqlite:///licences.db"      # any SQLAlchemy URL of the department's database
    table = "licences"
    updated_at_column = "updated_at"   # rows with NULL here are never synced
    key_column = "id"                  # unique; breaks ties of equal updated_at
    reason_column = "status_note"      # optional: why a status changed (变更原因)
    poll_seconds = 5                   # loop mode: wait between polls when idle
    batch_size = 500

    [columns]                          # certificate field -> source column (default: same name)
    serial = "id"
    number = "licence_no"
    KZ_JYCS = "premises"               # extension fields 照面信息

    [defaults]                         # constants for fields the table lacks
    type_code = "11100000000013338W004"
    type_name = "食品经营许可证"

    [status_codes]                     # source code -> valid/suspended/revoked/cancelled/expired
    "1" = "valid"
    "9" = "revoked"

    [state]
    path = "sync-state.sqlite"
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from xhub.connectors.common.config import BACKOFF_KEYS, Backoff, ConfigFile, ConnectorConfigError
from xhub.connectors.issuer.importer import FieldMapping, ImportFileError


class SyncConfigError(ConnectorConfigError):
    """The connector configuration or the source table does not fit."""


@dataclass(frozen=True)
class SyncConfig:
    bundle: Path
    source_url: str
    table: str
    updated_at_column: str
    key_column: str
    state_path: Path
    mapping: FieldMapping
    address: str | None = None
    reason_column: str = ""
    poll_seconds: float = 5.0
    batch_size: int = 500
    backoff: Backoff = field(default_factory=Backoff)


_HUB_KEYS = {"bundle", "address", *BACKOFF_KEYS}
_SOURCE_KEYS = {
    "url",
    "table",
    "updated_at_column",
    "key_column",
    "reason_column",
    "poll_seconds",
    "batch_size",
}


def load_sync_config(path: Path) -> SyncConfig:
    """Read and check the TOML configuration (see the module docstring).

    Raises SyncConfigError naming the file, table and key at fault.
    """
    file = ConfigFile.read(
        path,
        tables={"hub", "source", "columns", "defaults", "status_codes", "state"},
        error=SyncConfigError,
    )
    hub = file.section("hub", _HUB_KEYS)
    source = file.section("source", _SOURCE_KEYS)
    state = file.section("state", {"path"})
    try:
        mapping = FieldMapping.from_tables(
            file.section("columns").values,
            file.section("defaults").values,
            file.document.get("status_codes"),
            where=str(path),
        )
    except ImportFileError as exc:
        raise SyncConfigError(str(exc)) from exc
    config = SyncConfig(
        bundle=file.relative(hub.get("bundle", str)),
        address=hub.values.get("address") or None,
        source_url=source.get("url", str),
        table=source.get("table", str),
        updated_at_column=source.get("updated_at_column", str),
        key_column=source.get("key_column", str),
        reason_column=source.get("reason_column", str, ""),
        poll_seconds=source.get("poll_seconds", float, 5.0),
        batch_size=source.get("batch_size", int, 500),
        state_path=file.relative(state.get("path", str, "sync-state.sqlite")),
        mapping=mapping,
        backoff=Backoff.from_section(hub),
    )
    if config.poll_seconds <= 0 or config.batch_size <= 0:
        raise SyncConfigError(f"{path}: poll_seconds and batch_size must be > 0")
    return config
