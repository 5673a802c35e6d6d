"""Bulk import of e-certificates (证照批量导入) from CSV or JSON lines into the hub.

An issuer that starts using the hub has years of certificates in its own
system; this turns an export of them into signed publications. Each row is
validated locally (the same rules the hub applies), good rows are published
by a few threads sharing one client, and bad rows are reported by line with
their reason. Publishing is idempotent, so an import can simply be run again.

Columns (CSV header, or JSON-lines keys): ``type_code``, ``type_name``,
``serial``, ``number``, ``holder_name``, ``holder_code``,
``holder_code_type`` (``111`` citizen ID 公民身份号码, ``001`` USCC
统一社会信用代码), ``issue_date``, ``valid_from`` (required); ``version``
(default 1), ``valid_until`` (empty = long-term 长期), ``division_code``,
``predecessor``, ``raw_status`` (the source's status code, mapped to our
status; empty = valid) and ``KZ_*`` extension fields (照面信息), optional.

A mapping file (TOML) adapts another export layout::

    [columns]            # certificate field -> column in the file
    number = "ZZBH"
    KZ_JYCS = "premises"
    [defaults]           # constant value for a field the file lacks
    type_name = "食品经营许可证"
    [status_codes]       # source status code -> valid/suspended/revoked/cancelled/expired
    "10" = "valid"
    "90" = "revoked"
"""

from __future__ import annotations

import csv
import io
import json
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, cast

import grpc
from tqdm import tqdm

from xhub.certificates_store.model import (
    CANCELLED,
    DEFAULT_RAW_STATUS,
    EXPIRED,
    HOLDER_TYPE_CODES,
    REVOKED,
    SUSPENDED,
    VALID,
    CertificateDataError,
    Status,
    new_certificate,
    status_from_raw,
)
from xhub.protocol.errors import RefusedError, XhubError
from xhub.v1 import certificate_pb2, envelope_pb2, registry_pb2

CERTIFICATE_FIELDS = (
    "type_code",
    "type_name",
    "serial",
    "number",
    "version",
    "holder_name",
    "holder_code",
    "holder_code_type",
    "issue_date",
    "valid_from",
    "valid_until",
    "division_code",
    "predecessor",
    "raw_status",
)
REQUIRED_FIELDS = (
    "type_code",
    "type_name",
    "serial",
    "number",
    "holder_name",
    "holder_code",
    "holder_code_type",
    "issue_date",
    "valid_from",
)
DATE_FIELDS = frozenset({"issue_date", "valid_from", "valid_until"})
EXTENSION_PREFIX = "KZ_"
STATUS_BY_NAME: Mapping[str, Status] = {
    "valid": VALID,
    "suspended": SUSPENDED,
    "revoked": REVOKED,
    "cancelled": CANCELLED,
    "expired": EXPIRED,
}
# Refusals about one row's data; anything else (authentication, a revoked member, a bad
# response) concerns every row, so it stops the run instead of being reported per row.
ROW_REFUSAL_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.NOT_FOUND,
    }
)


class ImportFileError(ValueError):
    """The input or mapping file cannot be used at all (a usage error, not a bad row)."""


def is_row_refusal(exc: XhubError) -> bool:
    """True when the hub refused this row's data, not the caller as such."""
    return exc.code in ROW_REFUSAL_CODES or (
        isinstance(exc, RefusedError)
        and exc.code == grpc.StatusCode.PERMISSION_DENIED
        and exc.reason == envelope_pb2.ERROR_REASON_NOT_ISSUER
    )


def refusal_text(exc: XhubError) -> str:
    """A report line: local validation says which field; a hub refusal adds its reason."""
    if isinstance(exc, CertificateDataError):
        return exc.message
    return f"{exc.reason_name}: {exc.message}"


# -- mapping ---------------------------------------------------------------------------------


def _status_table(raw: Mapping[str, Any], where: str) -> dict[str, Status]:
    table: dict[str, Status] = {}
    for code, name in raw.items():
        status = STATUS_BY_NAME.get(str(name).strip().lower())
        if status is None:
            raise ImportFileError(
                f"{where}: status code {code!r} maps to {name!r}; "
                f"use one of {', '.join(STATUS_BY_NAME)}"
            )
        table[str(code)] = status
    return table


@dataclass(frozen=True)
class FieldMapping:
    """Where each certificate field comes from in a source row, and how statuses map."""

    columns: Mapping[str, str] = field(default_factory=dict)  # field -> source column
    defaults: Mapping[str, str] = field(default_factory=dict)  # field -> constant
    status_codes: Mapping[str, Status] = field(default_factory=lambda: dict(DEFAULT_RAW_STATUS))

    @classmethod
    def from_tables(
        cls,
        columns: Mapping[str, Any] | None,
        defaults: Mapping[str, Any] | None,
        status_codes: Mapping[str, Any] | None,
        *,
        where: str,
    ) -> FieldMapping:
        """Check the tables of a mapping or connector config; names the file on error."""
        for table, name in ((columns or {}, "columns"), (defaults or {}, "defaults")):
            for key, value in table.items():
                if key not in CERTIFICATE_FIELDS and not key.startswith(EXTENSION_PREFIX):
                    raise ImportFileError(
                        f"{where}: [{name}] {key!r} is not a certificate field; "
                        f"use one of {', '.join(CERTIFICATE_FIELDS)} or KZ_*"
                    )
                if not isinstance(value, str | int):
                    raise ImportFileError(f"{where}: [{name}] {key} must be a string")
        return cls(
            columns={k: str(v) for k, v in (columns or {}).items()},
            defaults={k: str(v) for k, v in (defaults or {}).items()},
            status_codes=(
                _status_table(status_codes, where)
                if status_codes is not None
                else dict(DEFAULT_RAW_STATUS)
            ),
        )

    def column(self, name: str) -> str:
        return self.columns.get(name, name)

    def check_header(self, header: Iterable[str], where: str) -> None:
        """Every column must be used and every required field present (catches typos)."""
        present = set(header)
        used = {self.column(f) for f in CERTIFICATE_FIELDS} | set(self.columns.values())
        unknown = sorted(
            c for c in present if c and c not in used and not c.startswith(EXTENSION_PREFIX)
        )
        if unknown:
            raise ImportFileError(
                f"{where}: unknown column(s) {', '.join(unknown)}; expected "
                f"{', '.join(CERTIFICATE_FIELDS)}, KZ_* or a [columns] mapping"
            )
        missing = [
            f for f in REQUIRED_FIELDS if self.column(f) not in present and f not in self.defaults
        ]
        if missing:
            raise ImportFileError(f"{where}: missing column(s) {', '.join(missing)}")

    def value(self, row: Mapping[str, Any], name: str) -> str:
        column = self.column(name)
        if column in row and row[column] is not None and str(row[column]).strip() != "":
            return _text(row[column], date_field=name in DATE_FIELDS)
        return self.defaults.get(name, "")

    def extensions(self, row: Mapping[str, Any]) -> dict[str, str]:
        mapped = {
            key: column for key, column in self.columns.items() if key.startswith(EXTENSION_PREFIX)
        }
        taken = set(mapped.values())
        for column in row:
            if (
                isinstance(column, str)
                and column.startswith(EXTENSION_PREFIX)
                and column not in taken
            ):
                mapped.setdefault(column, column)
        result = {k: v for k, v in self.defaults.items() if k.startswith(EXTENSION_PREFIX)}
        for key, column in mapped.items():
            value = row.get(column)
            if value is not None and str(value).strip() != "":
                result[key] = _text(value, date_field=False)
        return result

    def status(self, raw: str) -> Status:
        return VALID if raw == "" else status_from_raw(raw, self.status_codes)


def load_mapping(path: Path) -> FieldMapping:
    try:
        document = tomllib.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ImportFileError(f"{path}: {exc}") from exc
    unknown = set(document) - {"columns", "defaults", "status_codes"}
    if unknown:
        raise ImportFileError(f"{path}: unknown table(s) {', '.join(sorted(unknown))}")
    return FieldMapping.from_tables(
        document.get("columns"),
        document.get("defaults"),
        document.get("status_codes"),
        where=str(path),
    )


def _text(value: Any, *, date_field: bool) -> str:
    if isinstance(value, datetime):
        return value.date().isoformat() if date_field else value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    return str(value).strip()


# -- one row -> one certificate --------------------------------------------------------------


@dataclass(frozen=True)
class Issuer:
    """The issuing authority every imported certificate names (发证机构)."""

    code: str
    name: str


@dataclass(frozen=True)
class SourceCertificate:
    certificate: certificate_pb2.ElectronicCertificate
    status: Status
    raw_status: str


def _holder_type(text: str) -> int:
    code_type = HOLDER_TYPE_CODES.get(text) or HOLDER_TYPE_CODES.get(text.zfill(3))
    if code_type is None:
        raise CertificateDataError(
            f"holder_code_type: {text!r} must be 111 (citizen ID) or 001 (USCC)",
            metadata={"field": "holder_code_type"},
        )
    return code_type


def certificate_from_row(
    row: Mapping[str, Any],
    mapping: FieldMapping,
    issuer: Issuer,
    *,
    version: int | None = None,
    predecessor: str | None = None,
) -> SourceCertificate:
    """Validate one source row into a certificate; raises CertificateDataError naming the field.

    ``version`` / ``predecessor`` override the row's (a connector numbering versions itself).
    """
    for name in REQUIRED_FIELDS:
        if not mapping.value(row, name):
            raise CertificateDataError(f"{name}: is empty", metadata={"field": name})
    if version is None:
        version_text = mapping.value(row, "version") or "1"
        try:
            version = int(version_text)
        except ValueError:
            raise CertificateDataError(
                f"version: {version_text!r} is not a number", metadata={"field": "version"}
            ) from None
    raw_status = mapping.value(row, "raw_status")
    status = mapping.status(raw_status)
    certificate = new_certificate(
        type_code=mapping.value(row, "type_code"),
        type_name=mapping.value(row, "type_name"),
        issuer_code=issuer.code,
        issuer_name=issuer.name,
        serial=mapping.value(row, "serial"),
        number=mapping.value(row, "number"),
        holder_name=mapping.value(row, "holder_name"),
        holder_code=mapping.value(row, "holder_code").upper(),
        holder_code_type=_holder_type(mapping.value(row, "holder_code_type")),
        issue_date=mapping.value(row, "issue_date"),
        valid_from=mapping.value(row, "valid_from"),
        valid_until=mapping.value(row, "valid_until"),
        version=version,
        predecessor=mapping.value(row, "predecessor") if predecessor is None else predecessor,
        division_code=mapping.value(row, "division_code"),
        extensions=mapping.extensions(row),
    )
    return SourceCertificate(certificate, status, raw_status)


# -- reading files -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceRow:
    """One data row and its line in the file (or why it could not even be read)."""

    line: int
    values: Mapping[str, Any]
    error: str = ""


class RowSource:
    """A CSV (header row) or JSON-lines file, checked up front, read lazily."""

    def __init__(self, path: Path, mapping: FieldMapping) -> None:
        self.path = path
        self.mapping = mapping
        self.is_jsonl = path.suffix.lower() in (".jsonl", ".ndjson", ".json")
        try:
            self._file: io.TextIOWrapper = path.open("r", encoding="utf-8-sig", newline="")
        except OSError as exc:
            raise ImportFileError(f"{path}: {exc}") from exc
        try:
            self.total = max(sum(1 for _ in self._file) - (0 if self.is_jsonl else 1), 0)
            self._file.seek(0)
            self._csv: csv.DictReader[str] | None = None
            if not self.is_jsonl:
                self._csv = csv.DictReader(self._file)
                if self._csv.fieldnames is None:
                    raise ImportFileError(f"{path}: empty file, expected a header row")
                mapping.check_header(self._csv.fieldnames, str(path))
        except (UnicodeDecodeError, csv.Error) as exc:
            self._file.close()
            raise ImportFileError(f"{path}: {exc}") from exc
        except BaseException:
            self._file.close()
            raise

    def __enter__(self) -> RowSource:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._file.close()

    def __iter__(self) -> Iterator[SourceRow]:
        return self._jsonl() if self._csv is None else self._csv_rows(self._csv)

    def _csv_rows(self, reader: csv.DictReader[str]) -> Iterator[SourceRow]:
        width = len(reader.fieldnames or ())
        while True:
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield SourceRow(reader.line_num, {}, f"unreadable CSV: {exc}")
                continue
            line = reader.line_num  # the record's last physical line (= its line when one-line)
            extra = cast("list[str] | None", values.pop(None, None)) or []
            count = width + len(extra) if extra else sum(v is not None for v in values.values())
            if count != width:
                yield SourceRow(line, {}, f"has {count} field(s); the header has {width}")
                continue
            yield SourceRow(line, values)

    def _jsonl(self) -> Iterator[SourceRow]:
        used = {self.mapping.column(f) for f in CERTIFICATE_FIELDS}
        used |= set(self.mapping.columns.values())
        for line, text in enumerate(self._file, start=1):
            if not text.strip():
                continue
            try:
                values = json.loads(text)
            except json.JSONDecodeError as exc:
                yield SourceRow(line, {}, f"not valid JSON: {exc.msg} at column {exc.colno}")
                continue
            if not isinstance(values, dict):
                yield SourceRow(line, {}, "must be a JSON object")
                continue
            unknown = sorted(
                k for k in values if k not in used and not k.startswith(EXTENSION_PREFIX)
            )
            if unknown:
                yield SourceRow(line, {}, f"unknown key(s) {', '.join(unknown)}")
                continue
            yield SourceRow(line, values)


# -- publishing ------------------------------------------------------------------------------


class CertificatePublisher(Protocol):
    """The part of ``connectors.HubClient`` the importer uses."""

    member_id: str

    def publish_certificate(
        self,
        certificate: certificate_pb2.ElectronicCertificate,
        *,
        status: Status = ...,
        raw_status_code: str = ...,
    ) -> certificate_pb2.PublicationResult: ...

    def get_member(self, member_id: str) -> registry_pb2.Member: ...


@dataclass(frozen=True)
class RowFailure:
    line: int
    reason: str


@dataclass
class ImportReport:
    """Counts, and every refused row with its reason (sorted by line)."""

    published: int = 0
    already_published: int = 0
    failures: list[RowFailure] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return self.published + self.already_published + len(self.failures)

    def summary(self) -> str:
        return (
            f"{self.rows} row(s): {self.published} published (已发布), "
            f"{self.already_published} already published (已存在), "
            f"{len(self.failures)} failed (失败)"
        )

    def write_csv(self, path: Path) -> None:
        with path.open("w", encoding="utf-8", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(["line", "reason"])
            for failure in self.failures:
                writer.writerow([failure.line, failure.reason])


def _publish_one(
    client: CertificatePublisher, line: int, source: SourceCertificate
) -> tuple[int, bool | None, str]:
    """(line, already_published, "") on success; (line, None, reason) when the hub refused."""
    try:
        result = client.publish_certificate(
            source.certificate, status=source.status, raw_status_code=source.raw_status
        )
    except XhubError as exc:
        if not is_row_refusal(exc):
            raise
        return line, None, refusal_text(exc)
    return line, bool(result.already_published), ""


def import_certificates(
    client: CertificatePublisher,
    rows: Iterable[SourceRow],
    mapping: FieldMapping,
    issuer: Issuer,
    *,
    workers: int = 4,
    total: int | None = None,
    show_progress: bool | None = None,
) -> ImportReport:
    """Validate and publish every row; transport or caller-level failures stop the run.

    ``client`` is a ``HubClient`` (thread safe: one channel shared by the workers).
    ``show_progress=None`` shows the bar only when stderr is a terminal.
    """
    report = ImportReport()

    def collect(future: Future[tuple[int, bool | None, str]]) -> None:
        line, already, reason = future.result()
        if already is None:
            report.failures.append(RowFailure(line, reason))
        elif already:
            report.already_published += 1
        else:
            report.published += 1
        bar.update()

    window = max(workers, 1) * 8
    pool = ThreadPoolExecutor(max_workers=max(workers, 1), thread_name_prefix="import")
    # disable=None: tqdm shows the bar only when stderr is a terminal.
    disable = None if show_progress is None else not show_progress
    bar = tqdm(total=total, unit="row", desc="import 导入", disable=disable)
    pending: set[Future[tuple[int, bool | None, str]]] = set()
    try:
        for row in rows:
            if row.error:
                report.failures.append(RowFailure(row.line, row.error))
                bar.update()
                continue
            try:
                source = certificate_from_row(row.values, mapping, issuer)
            except CertificateDataError as exc:
                report.failures.append(RowFailure(row.line, refusal_text(exc)))
                bar.update()
                continue
            pending.add(pool.submit(_publish_one, client, row.line, source))
            if len(pending) >= window:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    collect(future)
        for future in list(pending):
            collect(future)
            pending.discard(future)
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        bar.close()
    pool.shutdown(wait=True)
    report.failures.sort(key=lambda f: f.line)
    return report


def issuer_of(client: CertificatePublisher) -> Issuer:
    """The bundle's own member record says which issuer code certificates must carry."""
    member = client.get_member(client.member_id)
    return Issuer(code=member.uscc, name=member.name)
