"""Issuer connector (证照前置机同步): keep the hub in step with a department's own table.

A department keeps issuing certificates in its own system; this connector reads
that table incrementally by an updated-at watermark and publishes what changed,
so nobody exports files by hand. Delivery is at-least-once: the watermark (the
last ``(updated_at, key)`` the hub accepted) is stored in a local SQLite file
(``state.py``) and advanced only after the hub's answer, and publishing is
idempotent at the hub.

    xhub-connector sync-certificates sync.toml [--once]
    xhub-connector sync-status sync.toml

The configuration is described in ``config.py``; the commands in ``cli.py``.

Versions: when the table has a ``version`` column (or ``[columns] version``), a
higher version is published as a new version whose predecessor is the last one
published; otherwise the connector numbers versions itself and raises the
version when the certificate's content changes. A change of status alone
becomes a status change (变更证照状态) of the published version. Rows that fail
validation, or that the hub refuses, are recorded in the state file with their
key and reason and skipped until the row changes again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from sqlalchemy import Engine, MetaData, Table, create_engine
from sqlalchemy.exc import SQLAlchemyError

from xhub.certificates_store.model import EXPIRED, STATUS_NAMES, VALID, CertificateDataError, Status
from xhub.connectors.common.retry import call_hub, retryable
from xhub.connectors.common.state import RowError, rows_after
from xhub.connectors.issuer.config import SyncConfig, SyncConfigError
from xhub.connectors.issuer.importer import (
    CERTIFICATE_FIELDS,
    REQUIRED_FIELDS,
    Issuer,
    SourceCertificate,
    certificate_from_row,
    is_row_refusal,
    issuer_of,
    refusal_text,
)
from xhub.connectors.issuer.state import PublishedState, SyncState
from xhub.connectors.sdk.client import HubClient
from xhub.protocol.errors import XhubError

log = logging.getLogger("xhub.connector.sync")
T = TypeVar("T")
DEFAULT_REASON = "source status changed"
# Fields that make up a certificate's content; status, version and predecessor do not.
CONTENT_FIELDS = tuple(
    f for f in CERTIFICATE_FIELDS if f not in ("raw_status", "version", "predecessor")
)


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
        return call_hub(fn, backoff=self.config.backoff, bounded=bounded, stop=self.stop, log=log)

    def issuer(self, *, bounded: bool) -> Issuer:
        if self._issuer is None:
            client = self.client
            self._issuer = self._call(lambda: issuer_of(client), bounded=bounded)
        return self._issuer

    # -- passes -----------------------------------------------------------------------------------

    def sync_once(self, *, bounded: bool = True) -> SyncResult:
        """Process every row after the watermark; returns when the table is caught up."""
        result = SyncResult()
        issuer = self.issuer(bounded=bounded)
        while not self.stop.is_set():
            rows = rows_after(
                self.source,
                self.table,
                updated_at_column=self.config.updated_at_column,
                key_column=self.config.key_column,
                after=self.state.watermark(),
                limit=self.config.batch_size,
            )
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
            except XhubError as exc:
                if self.stop.is_set() and retryable(exc):
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
