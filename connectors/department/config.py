"""The department connector's configuration (TOML), read and checked.

Relative paths are relative to the file; SQLAlchemy URLs are not::

    [hub]
    bundle = "member"                  # keys + installed bundle (接入包, `bundle install`)
    address = "127.0.0.1:7443"         # optional: overrides the bundle's hub address
    retry_initial_seconds = 0.5        # backoff while the hub is unreachable (with jitter)
    retry_max_seconds = 30
    once_attempts = 5                  # --once gives up on the hub after this many tries
    subscribe_seconds = 2              # --once: how long the bounded subscription stays open

    [department]
    url = "postgresql+psycopg://…"     # any SQLAlchemy URL of the department's own database
    inbox_table = "xhub_inbox"         # created if missing (see inbox.INBOX_COLUMNS)
    status_table = "case_status"       # the department's status table or process log (办件过程表)
    key_column = "id"                  # unique; breaks ties of equal updated_at
    case_column = "case_no"            # the hub's case number (办件编号)
    status_column = "status_code"      # the department's native status code
    updated_at_column = "updated_at"   # rows with NULL here are not read
    note_column = "opinion"            # optional: 办理意见
    missing_items_column = "missing"   # optional: 补正材料, JSON list or split by ; ； 、 newline
    certificate_column = "licence_id"  # optional: certificate issued on COMPLETED (出证证照标识)
    poll_seconds = 5                   # loop mode: how often the status table is read
    batch_size = 500
    overlap_seconds = 60               # each read starts this far below the watermark, so a
                                       # row committed late (its transaction stamped it
                                       # earlier) is still sent; rows read before are known
                                       # by event id. Longer than the longest transaction
                                       # writing the status table. (Units of a numeric
                                       # updated_at; a date or text column re-reads from the
                                       # watermark's own value.)
    counter_cases = true               # the status table also holds the department's own
                                       # counter cases (窗口件): rows for cases the hub never
                                       # dispatched here are logged and listed, not errors;
                                       # false: every such row is an error (status exits 1)

    [status_codes]                     # native code -> stage (English name or Chinese term)
    "01" = "ACCEPTED"                  # 受理
    "02" = "不予受理"                   # NOT_ACCEPTED
    "10" = "UNDER_REVIEW"
    "11" = ""                          # an internal step the hub is not told about

    [state]
    path = "department-state.sqlite"   # cursor, watermark, outbox and the row_status view
    keep_sent_days = 30                # sent pushes (and rows passed over by design) are
                                       # kept this long for inspection
    stuck_after_seconds = 600          # `xhub-connector status`: a push waiting this long
                                       # is stuck (exit code 5)
    attachments_dir = "attachments"    # fetched certificates and materials of received
                                       # cases (default: next to the state file; 0700/0600)

Stages a department may report: ACCEPTED 受理, NOT_ACCEPTED 不予受理, UNDER_REVIEW 审核,
SUPPLEMENT_REQUIRED 补正, APPROVED 审批通过, REJECTED 不予许可, COMPLETED 办结, DELIVERED 出件.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Final

from xhub.connectors.common.config import (
    BACKOFF_KEYS,
    Backoff,
    ConfigFile,
    ConnectorConfigError,
)
from xhub.connectors.department.reasons import CASE_NOT_DISPATCHED, ROW_ERRORS
from xhub.protocol.stages import TRANSITIONS, Actor, Stage

DEPARTMENT_STAGES: Final = frozenset(
    stage
    for moves in TRANSITIONS.values()
    for stage, actor in moves.items()
    if actor is Actor.DEPARTMENT
)
"""The stages a department may report, straight from the stage machine."""


class DepartmentConfigError(ConnectorConfigError):
    """The connector configuration or the department's tables do not fit."""


@dataclass(frozen=True)
class StatusColumns:
    """Where the department's status table keeps each field."""

    key: str
    case: str
    status: str
    updated_at: str
    note: str = ""
    missing_items: str = ""
    certificate: str = ""

    def required(self) -> list[str]:
        return [self.key, self.case, self.status, self.updated_at]

    def optional(self) -> list[str]:
        return [c for c in (self.note, self.missing_items, self.certificate) if c]


@dataclass(frozen=True)
class DepartmentConfig:
    bundle: Path
    department_url: str
    status_table: str
    columns: StatusColumns
    status_codes: Mapping[str, Stage | None]
    state_path: Path
    address: str | None = None
    inbox_table: str = "xhub_inbox"
    poll_seconds: float = 5.0
    batch_size: int = 500
    backoff: Backoff = field(default_factory=Backoff)
    subscribe_seconds: float = 2.0
    keep_sent_days: int = 30
    overlap_seconds: float = 60.0
    counter_cases: bool = True
    stuck_after_seconds: float = 600.0
    attachments_dir: Path | None = None  # default: "attachments" next to the state file

    @property
    def attachments_path(self) -> Path:
        """Where fetched certificates and materials are kept (部门调阅材料)."""
        return self.attachments_dir or self.state_path.parent / "attachments"

    @property
    def row_errors(self) -> frozenset[str]:
        """The reasons a row is passed over that a person must fix (``status`` exits 1)."""
        return ROW_ERRORS if self.counter_cases else ROW_ERRORS | {CASE_NOT_DISPATCHED}


def stage_of(name: str) -> Stage | None:
    """A ``[status_codes]`` value: an English stage name, its Chinese term, or "" (not reported)."""
    text = name.strip()
    if not text:
        return None
    for stage in DEPARTMENT_STAGES:
        if text.upper() == stage.name or text == stage.zh:
            return stage
    allowed = ", ".join(s.label for s in sorted(DEPARTMENT_STAGES))
    raise DepartmentConfigError(
        f"{name!r} is not a stage a department reports; use one of {allowed}, "
        'or "" for an internal step the hub is not told about'
    )


_HUB_KEYS = {"bundle", "address", "subscribe_seconds", *BACKOFF_KEYS}
_DEPARTMENT_KEYS = {
    "url",
    "inbox_table",
    "status_table",
    "key_column",
    "case_column",
    "status_column",
    "updated_at_column",
    "note_column",
    "missing_items_column",
    "certificate_column",
    "poll_seconds",
    "batch_size",
    "overlap_seconds",
    "counter_cases",
}


def _status_codes(file: ConfigFile) -> Mapping[str, Stage | None]:
    codes = file.section("status_codes").values
    if not codes:
        raise DepartmentConfigError(
            f"{file.path}: [status_codes] must map the department's status codes to stages"
        )
    status_codes: dict[str, Stage | None] = {}
    for code, name in codes.items():
        if not isinstance(name, str):
            raise DepartmentConfigError(
                f"{file.path} [status_codes]: {code!r} must map to a string"
            )
        try:
            status_codes[code.strip()] = stage_of(name)
        except DepartmentConfigError as exc:
            raise DepartmentConfigError(f"{file.path} [status_codes] {code!r}: {exc}") from None
    return MappingProxyType(status_codes)


def load_department_config(path: Path) -> DepartmentConfig:
    """Read and check the TOML configuration (see the module docstring).

    Raises DepartmentConfigError naming the file, table and key at fault.
    """
    file = ConfigFile.read(
        path, tables={"hub", "department", "status_codes", "state"}, error=DepartmentConfigError
    )
    hub = file.section("hub", _HUB_KEYS)
    department = file.section("department", _DEPARTMENT_KEYS)
    state = file.section(
        "state", {"path", "keep_sent_days", "stuck_after_seconds", "attachments_dir"}
    )
    config = DepartmentConfig(
        bundle=file.relative(hub.get("bundle", str)),
        address=hub.values.get("address") or None,
        department_url=department.get("url", str),
        inbox_table=department.get("inbox_table", str, "xhub_inbox"),
        status_table=department.get("status_table", str),
        columns=StatusColumns(
            key=department.get("key_column", str),
            case=department.get("case_column", str),
            status=department.get("status_column", str),
            updated_at=department.get("updated_at_column", str),
            note=department.get("note_column", str, ""),
            missing_items=department.get("missing_items_column", str, ""),
            certificate=department.get("certificate_column", str, ""),
        ),
        status_codes=_status_codes(file),
        poll_seconds=department.get("poll_seconds", float, 5.0),
        batch_size=department.get("batch_size", int, 500),
        state_path=file.relative(state.get("path", str, "department-state.sqlite")),
        keep_sent_days=state.get("keep_sent_days", int, 30),
        overlap_seconds=department.get("overlap_seconds", float, 60.0),
        counter_cases=department.get("counter_cases", bool, True),
        stuck_after_seconds=state.get("stuck_after_seconds", float, 600.0),
        attachments_dir=(
            file.relative(state.get("attachments_dir", str))
            if "attachments_dir" in state.values
            else None
        ),
        backoff=Backoff.from_section(hub),
        subscribe_seconds=hub.get("subscribe_seconds", float, 2.0),
    )
    if min(config.poll_seconds, config.batch_size) <= 0:
        raise DepartmentConfigError(f"{path}: poll_seconds and batch_size must be > 0")
    if config.subscribe_seconds <= 0 or config.keep_sent_days < 0:
        raise DepartmentConfigError(
            f"{path}: subscribe_seconds must be > 0 and keep_sent_days >= 0"
        )
    if min(config.overlap_seconds, config.stuck_after_seconds) < 0:
        raise DepartmentConfigError(f"{path}: overlap_seconds and stuck_after_seconds must be >= 0")
    if config.inbox_table == config.status_table:
        raise DepartmentConfigError(f"{path}: inbox_table and status_table must differ")
    return config
