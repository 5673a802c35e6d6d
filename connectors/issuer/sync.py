"""Issuer connector (证照前置机同步): keep the hub in step with a department's own table.

A department keeps issuing certificates in its own system; this connector reads
that table incrementally by an updated-at watermark and publishes what changed,
so nobody exports files by hand. Delivery is at-least-once: the watermark (the
last ``(updated_at, key)`` the hub accepted) is stored in a local SQLite file and
advanced only after the hub's answer, and publishing is idempotent at the hub.

    xhub-connector sync-certificates sync.toml [--once]
    xhub-connector sync-status sync.toml

Configuration (TOML; relative paths are relative to the file)::

    [hub]
    bundle = "bundles/CN.440103...."   # the issuer's member bundle (接入包)
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

Versions: when the table has a ``version`` column (or ``[columns] version``), a
higher version is published as a new version whose predecessor is the last one
published; otherwise the connector numbers versions itself and raises the
version when the certificate's content changes. A change of status alone
becomes a status change (变更证照状态) of the published version. Rows that fail
validation, or that the hub refuses, are recorded in the state file with their
key and reason and skipped until the row changes again.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import signal
import sys
import threading
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import grpc
from sqlalchemy import (
    Column,
    Engine,
    Integer,
    MetaData,
    Table,
    Text,
    and_,
    create_engine,
    delete,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import SQLAlchemyError
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_never,
    wait_random_exponential,
)

from xhub.certificates_store.model import EXPIRED, STATUS_NAMES, VALID, CertificateDataError, Status
from xhub.connectors.issuer.importer import (
    CERTIFICATE_FIELDS,
    REQUIRED_FIELDS,
    FieldMapping,
    ImportFileError,
    Issuer,
    SourceCertificate,
    certificate_from_row,
    is_row_refusal,
    issuer_of,
    refusal_text,
)
from xhub.connectors.sdk.client import HubClient
from xhub.protocol.bundle import BundleError
from xhub.protocol.errors import TransportError, XhubError
from xhub.storage import make_engine

log = logging.getLogger("xhub.connector.sync")
T = TypeVar("T")
DEFAULT_REASON = "source status changed"
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
# Fields that make up a certificate's content; status, version and predecessor do not.
CONTENT_FIELDS = tuple(
    f for f in CERTIFICATE_FIELDS if f not in ("raw_status", "version", "predecessor")
)


class SyncConfigError(ValueError):
    """The connector configuration or the source table does not fit."""


# -- configuration ---------------------------------------------------------------------------


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
    retry_initial_seconds: float = 0.5
    retry_max_seconds: float = 30.0
    once_attempts: int = 5


def _section(document: Mapping[str, Any], name: str, where: str) -> dict[str, Any]:
    value = document.get(name, {})
    if not isinstance(value, dict):
        raise SyncConfigError(f"{where}: [{name}] must be a table")
    return value


def _get(
    table: Mapping[str, Any], key: str, kind: type[T], where: str, default: T | None = None
) -> T:
    if key not in table:
        if default is None:
            raise SyncConfigError(f"{where}: {key} is required")
        return default
    value = table[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
        raise SyncConfigError(f"{where}: {key} must be a {kind.__name__}, got {value!r}")
    return value


def load_sync_config(path: Path) -> SyncConfig:
    """Read and check the TOML configuration (see the module docstring)."""
    try:
        document = tomllib.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise SyncConfigError(f"{path}: {exc}") from exc
    allowed = {"hub", "source", "columns", "defaults", "status_codes", "state"}
    unknown = set(document) - allowed
    if unknown:
        raise SyncConfigError(f"{path}: unknown table(s) {', '.join(sorted(unknown))}")
    base = path.parent
    hub = _section(document, "hub", f"{path} [hub]")
    source = _section(document, "source", f"{path} [source]")
    state = _section(document, "state", f"{path} [state]")
    for table, name, keys in (
        (
            hub,
            "hub",
            {"bundle", "address", "retry_initial_seconds", "retry_max_seconds", "once_attempts"},
        ),
        (
            source,
            "source",
            {
                "url",
                "table",
                "updated_at_column",
                "key_column",
                "reason_column",
                "poll_seconds",
                "batch_size",
            },
        ),
        (state, "state", {"path"}),
    ):
        extra = set(table) - keys
        if extra:
            raise SyncConfigError(f"{path}: unknown key(s) in [{name}]: {', '.join(sorted(extra))}")
    try:
        mapping = FieldMapping.from_tables(
            _section(document, "columns", str(path)),
            _section(document, "defaults", str(path)),
            document.get("status_codes"),
            where=str(path),
        )
    except ImportFileError as exc:
        raise SyncConfigError(str(exc)) from exc
    where = f"{path} [source]"
    config = SyncConfig(
        bundle=base / _get(hub, "bundle", str, f"{path} [hub]"),
        address=hub.get("address") or None,
        source_url=_get(source, "url", str, where),
        table=_get(source, "table", str, where),
        updated_at_column=_get(source, "updated_at_column", str, where),
        key_column=_get(source, "key_column", str, where),
        reason_column=_get(source, "reason_column", str, where, ""),
        poll_seconds=_get(source, "poll_seconds", float, where, 5.0),
        batch_size=_get(source, "batch_size", int, where, 500),
        state_path=base / _get(state, "path", str, f"{path} [state]", "sync-state.sqlite"),
        mapping=mapping,
        retry_initial_seconds=_get(hub, "retry_initial_seconds", float, f"{path} [hub]", 0.5),
        retry_max_seconds=_get(hub, "retry_max_seconds", float, f"{path} [hub]", 30.0),
        once_attempts=_get(hub, "once_attempts", int, f"{path} [hub]", 5),
    )
    if config.poll_seconds <= 0 or config.batch_size <= 0 or config.once_attempts <= 0:
        raise SyncConfigError(f"{path}: poll_seconds, batch_size and once_attempts must be > 0")
    return config


# -- local state: watermark, what was published, row errors ----------------------------------


def encode_value(value: Any) -> str:
    """A watermark value as text that decodes to the same Python type (for the SQL compare)."""
    if isinstance(value, bool):
        return json.dumps(["bool", value])
    if isinstance(value, datetime):
        return json.dumps(["datetime", value.isoformat()])
    if isinstance(value, date):
        return json.dumps(["date", value.isoformat()])
    if isinstance(value, Decimal):
        return json.dumps(["decimal", str(value)])
    if isinstance(value, int | float | str):
        return json.dumps([type(value).__name__, value], ensure_ascii=False)
    raise SyncConfigError(f"cannot keep a watermark of type {type(value).__name__}")


def decode_value(text: str) -> Any:
    kind, value = json.loads(text)
    decoders: dict[str, Callable[[Any], Any]] = {
        "bool": bool,
        "int": int,
        "float": float,
        "str": str,
        "datetime": datetime.fromisoformat,
        "date": date.fromisoformat,
        "decimal": Decimal,
    }
    return decoders[kind](value)


_state_metadata = MetaData()
_watermark = Table(
    "watermark",
    _state_metadata,
    Column("id", Integer, primary_key=True),
    Column("updated_at", Text, nullable=False),
    Column("row_key", Text, nullable=False),
    Column("saved_at", Text, nullable=False),
)
_published = Table(
    "published",
    _state_metadata,
    Column("row_key", Text, primary_key=True),
    Column("identifier", Text, nullable=False),
    Column("version", Integer, nullable=False),
    Column("status", Integer, nullable=False),
    Column("raw_status", Text, nullable=False),
    Column("fingerprint", Text, nullable=False),
    Column("synced_at", Text, nullable=False),
)
_errors = Table(
    "errors",
    _state_metadata,
    Column("row_key", Text, primary_key=True),
    Column("updated_at", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("recorded_at", Text, nullable=False),
)


@dataclass(frozen=True)
class PublishedState:
    identifier: str
    version: int
    status: Status
    raw_status: str
    fingerprint: str


@dataclass(frozen=True)
class RowError:
    key: Any
    reason: str


class SyncState:
    """The connector's own SQLite file; one writer (this connector) at a time."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = make_engine(f"sqlite:///{path}", pool_size=1)
        # The connector's local bookkeeping, not the hub schema (which only Alembic changes).
        _state_metadata.create_all(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    def watermark(self) -> tuple[Any, Any] | None:
        with self.engine.connect() as connection:
            row = connection.execute(select(_watermark).where(_watermark.c.id == 1)).first()
        return None if row is None else (decode_value(row.updated_at), decode_value(row.row_key))

    def published(self, key: Any) -> PublishedState | None:
        with self.engine.connect() as connection:
            row = connection.execute(
                select(_published).where(_published.c.row_key == encode_value(key))
            ).first()
        if row is None:
            return None
        return PublishedState(
            row.identifier, row.version, row.status, row.raw_status, row.fingerprint
        )

    def errors(self) -> list[RowError]:
        with self.engine.connect() as connection:
            rows = connection.execute(select(_errors).order_by(_errors.c.recorded_at)).all()
        return [RowError(decode_value(r.row_key), r.reason) for r in rows]

    def commit_row(
        self,
        updated_at: Any,
        key: Any,
        *,
        published: PublishedState | None = None,
        error: str = "",
    ) -> None:
        """Record one row's outcome and advance the watermark past it, in one transaction."""
        now = datetime.now(UTC).isoformat()
        row_key, stamp = encode_value(key), encode_value(updated_at)
        with self.engine.begin() as connection:
            if published is not None:
                connection.execute(delete(_published).where(_published.c.row_key == row_key))
                connection.execute(
                    insert(_published).values(
                        row_key=row_key,
                        identifier=published.identifier,
                        version=published.version,
                        status=int(published.status),
                        raw_status=published.raw_status,
                        fingerprint=published.fingerprint,
                        synced_at=now,
                    )
                )
            connection.execute(delete(_errors).where(_errors.c.row_key == row_key))
            if error:
                connection.execute(
                    insert(_errors).values(
                        row_key=row_key, updated_at=stamp, reason=error, recorded_at=now
                    )
                )
            moved = connection.execute(
                update(_watermark)
                .where(_watermark.c.id == 1)
                .values(updated_at=stamp, row_key=row_key, saved_at=now)
            )
            if moved.rowcount == 0:
                connection.execute(
                    insert(_watermark).values(id=1, updated_at=stamp, row_key=row_key, saved_at=now)
                )


# -- the sync ---------------------------------------------------------------------------------


@dataclass
class SyncResult:
    """What one pass did."""

    published: int = 0
    status_changed: int = 0
    unchanged: int = 0
    errors: list[RowError] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return self.published + self.status_changed + self.unchanged + len(self.errors)

    def summary(self) -> str:
        return (
            f"{self.rows} row(s): {self.published} published (发布), {self.status_changed} "
            f"status changed (状态变更), {self.unchanged} unchanged, {len(self.errors)} error(s)"
        )


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, TransportError):
        return True
    return isinstance(exc, XhubError) and exc.code in RETRYABLE


class IssuerSync:
    """Reads the source table after the watermark and brings the hub up to date."""

    def __init__(
        self,
        config: SyncConfig,
        *,
        client: HubClient | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.config = config
        self.stop = stop or threading.Event()
        self.client = client or HubClient.from_bundle(config.bundle, hub_address=config.address)
        self._own_client = client is None
        self._issuer: Issuer | None = None
        self.state = SyncState(config.state_path)
        self.source: Engine = create_engine(config.source_url)
        try:
            self.table = Table(config.table, MetaData(), autoload_with=self.source)
            self._check_columns()
        except SQLAlchemyError as exc:
            self.close()
            raise SyncConfigError(f"source table {config.table!r}: {exc}") from exc
        except BaseException:
            self.close()
            raise
        self.versioned = config.mapping.column("version") in self.table.c

    def _check_columns(self) -> None:
        columns = set(self.table.c.keys())
        config, mapping = self.config, self.config.mapping
        wanted = [config.updated_at_column, config.key_column, *mapping.columns.values()]
        if config.reason_column:
            wanted.append(config.reason_column)
        missing = sorted({c for c in wanted if c not in columns})
        missing += [
            f"{f} (no column {mapping.column(f)!r} and no [defaults] value)"
            for f in REQUIRED_FIELDS
            if mapping.column(f) not in columns and f not in mapping.defaults
        ]
        if missing:
            raise SyncConfigError(f"table {config.table!r} lacks: {', '.join(missing)}")

    def close(self) -> None:
        if self._own_client:
            self.client.close()
        self.source.dispose()
        self.state.close()

    def __enter__(self) -> IssuerSync:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- hub calls, retried while the hub is unreachable ----------------------------------------

    def _call(self, fn: Callable[[], T], *, bounded: bool) -> T:
        def stop(state: RetryCallState) -> bool:
            if self.stop.is_set():
                return True
            limit = stop_after_attempt(self.config.once_attempts) if bounded else stop_never
            return bool(limit(state))

        def warn(state: RetryCallState) -> None:
            outcome = state.outcome.exception() if state.outcome else None
            log.warning("hub unreachable (attempt %d): %s; retrying", state.attempt_number, outcome)

        def pause(seconds: float) -> None:
            self.stop.wait(seconds)  # wakes at once when asked to stop

        retrying = Retrying(
            retry=retry_if_exception(_retryable),
            stop=stop,
            # Full jitter (random up to the exponential bound): same API on every tenacity.
            wait=wait_random_exponential(
                multiplier=self.config.retry_initial_seconds, max=self.config.retry_max_seconds
            ),
            sleep=pause,
            before_sleep=warn,
            reraise=True,
        )
        return retrying(fn)

    def issuer(self, *, bounded: bool) -> Issuer:
        if self._issuer is None:
            client = self.client
            self._issuer = self._call(lambda: issuer_of(client), bounded=bounded)
        return self._issuer

    # -- passes -----------------------------------------------------------------------------------

    def _batch(self, after: tuple[Any, Any] | None) -> Sequence[Mapping[str, Any]]:
        stamp = self.table.c[self.config.updated_at_column]
        key = self.table.c[self.config.key_column]
        query = select(self.table).where(stamp.is_not(None))
        if after is not None:
            query = query.where(or_(stamp > after[0], and_(stamp == after[0], key > after[1])))
        query = query.order_by(stamp, key).limit(self.config.batch_size)
        with self.source.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(query)]

    def sync_once(self, *, bounded: bool = True) -> SyncResult:
        """Process every row after the watermark; returns when the table is caught up."""
        result = SyncResult()
        issuer = self.issuer(bounded=bounded)
        while not self.stop.is_set():
            rows = self._batch(self.state.watermark())
            if not rows:
                break
            for row in rows:
                if self.stop.is_set():
                    break
                self._sync_row(row, issuer, result, bounded=bounded)
        return result

    def run(self) -> None:
        """Loop mode: poll until ``stop`` is set; hub outages are waited out, not fatal."""
        while not self.stop.is_set():
            try:
                result = self.sync_once(bounded=False)
            except SQLAlchemyError as exc:
                log.warning("source database: %s; retrying in %ss", exc, self.config.poll_seconds)
                self.stop.wait(self.config.poll_seconds)
                continue
            except (TransportError, XhubError) as exc:
                if self.stop.is_set() and _retryable(exc):
                    break  # asked to stop while waiting for the hub
                raise
            if result.rows:
                log.info("%s", result.summary())
            self.stop.wait(self.config.poll_seconds)

    # -- one row ----------------------------------------------------------------------------------

    def _fingerprint(self, row: Mapping[str, Any]) -> str:
        mapping = self.config.mapping
        content = {name: mapping.value(row, name) for name in CONTENT_FIELDS}
        content["extensions"] = json.dumps(mapping.extensions(row), sort_keys=True)
        text = json.dumps(content, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def _sync_row(
        self, row: Mapping[str, Any], issuer: Issuer, result: SyncResult, *, bounded: bool
    ) -> None:
        key = row[self.config.key_column]
        stamp = row[self.config.updated_at_column]
        try:
            outcome = self._apply(row, issuer, bounded=bounded)
        except XhubError as exc:
            if not (isinstance(exc, CertificateDataError) or is_row_refusal(exc)):
                raise  # the caller, not the row, is refused: stop without advancing
            reason = refusal_text(exc)
            log.warning("row %r skipped: %s", key, reason)
            self.state.commit_row(stamp, key, error=reason)
            result.errors.append(RowError(key, reason))
            return
        published, action = outcome
        self.state.commit_row(stamp, key, published=published)
        if action == "published":
            result.published += 1
        elif action == "status":
            result.status_changed += 1
        else:
            result.unchanged += 1

    def _apply(
        self, row: Mapping[str, Any], issuer: Issuer, *, bounded: bool
    ) -> tuple[PublishedState, str]:
        mapping = self.config.mapping
        key = row[self.config.key_column]
        previous = self.state.published(key)
        fingerprint = self._fingerprint(row)
        raw_status = mapping.value(row, "raw_status")
        status = mapping.status(raw_status)
        reason = ""
        if self.config.reason_column:
            reason = str(row.get(self.config.reason_column) or "").strip()
        reason = reason or DEFAULT_REASON

        if self.versioned:
            version = self._source_version(row)
            same_version = previous is not None and previous.version == version
            if previous is not None and version < previous.version:
                raise CertificateDataError(
                    f"version: {version} is older than the published version {previous.version}",
                    metadata={"field": "version"},
                )
            if same_version and previous is not None and previous.fingerprint != fingerprint:
                raise CertificateDataError(
                    f"version: the content changed but the version stayed {version}; "
                    "raise the version (版本号) in the source",
                    metadata={"field": "version"},
                )
        else:
            same_version = previous is not None and previous.fingerprint == fingerprint
            version = 1 if previous is None else previous.version + (0 if same_version else 1)

        if same_version and previous is not None:
            if status == previous.status:
                unchanged = PublishedState(
                    previous.identifier, previous.version, status, raw_status, fingerprint
                )
                return unchanged, "unchanged"
            self._change_status(previous.identifier, status, raw_status, reason, bounded=bounded)
            changed = PublishedState(
                previous.identifier, previous.version, status, raw_status, fingerprint
            )
            return changed, "status"

        predecessor = previous.identifier if previous is not None else None
        source = certificate_from_row(
            row, mapping, issuer, version=version, predecessor=predecessor
        )
        client = self.client
        published = self._call(
            lambda: client.publish_certificate(
                source.certificate, status=source.status, raw_status_code=source.raw_status
            ),
            bounded=bounded,
        )
        if published.already_published:
            # Published before (a crash before the watermark moved, or a lost state file):
            # the hub may hold another status than the row now says.
            self._reconcile(source, reason, bounded=bounded)
        state = PublishedState(
            published.identifier, version, source.status, source.raw_status, fingerprint
        )
        return state, "published"

    def _source_version(self, row: Mapping[str, Any]) -> int:
        text = self.config.mapping.value(row, "version") or "1"
        try:
            return int(text)
        except ValueError:
            raise CertificateDataError(
                f"version: {text!r} is not a number", metadata={"field": "version"}
            ) from None

    def _current_status(self, identifier: str, *, bounded: bool) -> Status:
        client = self.client
        check = self._call(
            lambda: client.verify_certificate(identifier=identifier), bounded=bounded
        )
        return check.certificate.status

    def _change_status(
        self, identifier: str, status: Status, raw_status: str, reason: str, *, bounded: bool
    ) -> None:
        client = self.client
        try:
            self._call(
                lambda: client.change_certificate_status(
                    identifier, status, reason=reason, raw_status_code=raw_status
                ),
                bounded=bounded,
            )
        except XhubError as exc:
            # A retried change the hub had already applied is refused as a transition from
            # the new status to itself: that is success.
            if exc.code != grpc.StatusCode.FAILED_PRECONDITION:
                raise
            if self._current_status(identifier, bounded=bounded) != status:
                raise
        log.info("%s is now %s", identifier, STATUS_NAMES.get(status, status))

    def _reconcile(self, source: SourceCertificate, reason: str, *, bounded: bool) -> None:
        identifier = source.certificate.identifier
        current = self._current_status(identifier, bounded=bounded)
        if current == source.status or (current == EXPIRED and source.status == VALID):
            return
        self._change_status(identifier, source.status, source.raw_status, reason, bounded=bounded)


# -- command line -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xhub-connector", description="xhub department connector (前置机)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug output")
    commands = parser.add_subparsers(dest="command", required=True)
    sync = commands.add_parser(
        "sync-certificates", help="publish certificates from the department's table (证照同步)"
    )
    sync.add_argument("config", type=Path, help="connector TOML (see connectors/issuer_sync.py)")
    sync.add_argument(
        "--once", action="store_true", help="catch up once and exit (default: keep polling)"
    )
    status = commands.add_parser("sync-status", help="show the watermark and rows in error")
    status.add_argument("config", type=Path)
    run = commands.add_parser(
        "run", help="receive cases and send approval status back (办件接收与状态回传)"
    )
    run.add_argument("config", type=Path, help="connector TOML (see connectors/department.py)")
    run.add_argument(
        "--once", action="store_true", help="one pass and exit (default: keep running)"
    )
    return parser


def _status(config: SyncConfig) -> int:
    state = SyncState(config.state_path)
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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "run":
        from xhub.connectors.department.connector import (
            run_command,  # imports this module: load it late
        )

        return run_command(args.config, once=args.once)
    try:
        config = load_sync_config(args.config)
        if args.command == "sync-status":
            return _status(config)
        stop = threading.Event()
        with IssuerSync(config, stop=stop) as sync:
            if args.once:
                result = sync.sync_once(bounded=True)
                for error in result.errors:
                    print(f"key {error.key}: {error.reason}")
                print(result.summary())
                return 1 if result.errors else 0

            def on_signal(signum: int, frame: FrameType | None) -> None:
                stop.set()

            signal.signal(signal.SIGTERM, on_signal)
            signal.signal(signal.SIGINT, on_signal)
            sync.run()
            return 0
    except (SyncConfigError, BundleError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SQLAlchemyError as exc:
        print(f"error: source database: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    except TransportError as exc:
        print(f"error: cannot reach the hub: {exc}", file=sys.stderr)
        return 3
    except XhubError as exc:
        print(f"error: the hub refused the connector: {exc}", file=sys.stderr)
        return 4


if __name__ == "__main__":
    sys.exit(main())
