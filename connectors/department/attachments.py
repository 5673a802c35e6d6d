"""Attachments (附件): the certificates and materials a received case references, fetched into
the department's own system (部门调阅材料).

When a case enters the inbox (after ``verify_submission`` passed) each reference becomes a row
of the ``attachments`` table in the connector's state file, in state ``pending``, before the
subscription cursor moves — so a crash never loses a case's fetch. A fetch then pulls the
certificate (``HubClient.pull_case_certificates``: the issuer's signature, the identifier the
platform signed) or downloads the material (``HubClient.download_case_material``: size and
hash checked before the file appears) into the blob directory::

    <attachments_dir>/<case number>/<certificate identifier>.pb   the issuer-signed envelope
    <attachments_dir>/<case number>/<material id>                 the material's bytes

(``[state] attachments_dir``, default ``attachments`` next to the state file; directories
0700, files 0600). A download goes to ``<attachments_dir>/.incoming`` first and is renamed
into place only once verified, so no partial file is ever visible under its name; a crash
leaves only a temporary there, removed at the next start. The row is marked ``fetched`` (with
name, size and SHA-256) after its file is in place: a restart resumes a half-fetched case
and never fetches again what is done, and a repeated fetch replaces the same file.

A fetch the hub cannot be reached for is retried with the connector's retry policy
(``common/retry.py``) and stays ``pending`` (its attempts and last error recorded) for the
next pass; one the hub refuses (the case closed there, say) or that fails verification is
``failed`` with its reason, until the case is delivered again (a resubmission). The
``status`` command reports pending and failed attachments (``status.py``).
"""

from __future__ import annotations

import functools
import hashlib
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from sqlalchemy import (
    Column,
    ColumnElement,
    Engine,
    Integer,
    MetaData,
    Table,
    Text,
    select,
    update,
)
from sqlalchemy.dialects.sqlite import insert

from xhub.connectors.common.retry import retryable
from xhub.connectors.common.state import now_text
from xhub.connectors.sdk.client import HubClient
from xhub.protocol.errors import XhubError
from xhub.v1 import case_pb2

CERTIFICATE, MATERIAL = "certificate", "material"
PENDING, FETCHED, FAILED = "pending", "fetched", "failed"
STATES: Final = (FETCHED, PENDING, FAILED)
INCOMING: Final = ".incoming"

_metadata = MetaData()
attachments_table = Table(
    "attachments",
    _metadata,
    Column("case_number", Text, primary_key=True),  # 办件编号
    Column("kind", Text, primary_key=True),  # certificate | material
    Column("ref", Text, primary_key=True),  # 证照标识 | 材料标识
    Column("applicant_code", Text, nullable=False, server_default=""),  # 申请人代码 (signed)
    Column("state", Text, nullable=False, index=True),  # pending | fetched | failed
    Column("attempts", Integer, nullable=False),
    Column("error", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("media_type", Text, nullable=False),
    Column("size", Integer, nullable=False),
    Column("sha256", Text, nullable=False),  # hex
    Column("path", Text, nullable=False),  # relative to attachments_dir
    Column("created_at", Text, nullable=False),
    Column("updated_at", Text, nullable=False),
)


@dataclass(frozen=True)
class Attachment:
    case_number: str
    kind: str
    ref: str
    state: str
    attempts: int
    error: str
    name: str
    size: int
    sha256: str
    path: str
    updated_at: str
    applicant_code: str = ""  # of the case, as the platform signed it


def _private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def _safe(name: str) -> str:
    """A reference as a file name (identifiers and ids are dotted ASCII; nothing else passes)."""
    return "".join(c if c.isalnum() or c in ".-_" else "_" for c in name)[:160] or "_"


class Attachments:
    """The attachments table (in the connector's state file) and the blob directory."""

    def __init__(self, engine: Engine, directory: Path, *, reading: bool = False) -> None:
        """``reading``: only to report (the status command), touching no file."""
        self.engine = engine
        self.directory = directory
        self.incoming = directory / INCOMING
        _metadata.create_all(engine)
        if reading:
            return
        _private_dir(directory)
        _private_dir(self.incoming)
        for leftover in self.incoming.iterdir():  # a crash mid-download: never visible
            leftover.unlink(missing_ok=True)

    def enqueue(self, case: case_pb2.DispatchedCase) -> None:
        """Every reference of a verified case, pending unless fetched; failed ones get
        another chance (the case was delivered again)."""
        refs = [(CERTIFICATE, c.identifier) for c in case.certificates]
        refs += [(MATERIAL, m.material_id) for m in case.materials]
        now = now_text()
        table = attachments_table
        with self.engine.begin() as connection:
            for kind, ref in refs:
                connection.execute(
                    insert(table)
                    .values(
                        case_number=case.case_number,
                        kind=kind,
                        ref=ref,
                        applicant_code=case.applicant_code,
                        state=PENDING,
                        attempts=0,
                        error="",
                        name="",
                        media_type="",
                        size=0,
                        sha256="",
                        path="",
                        created_at=now,
                        updated_at=now,
                    )
                    .on_conflict_do_nothing()
                )
            connection.execute(
                update(table)
                .where(table.c.case_number == case.case_number, table.c.state == FAILED)
                .values(state=PENDING, updated_at=now)
            )

    def all(self, state: str | None = None) -> list[Attachment]:
        table = attachments_table
        query = select(table).order_by(table.c.created_at, table.c.case_number, table.c.ref)
        if state is not None:
            query = query.where(table.c.state == state)
        with self.engine.connect() as connection:
            rows = connection.execute(query).all()
        return [
            Attachment(
                r.case_number,
                r.kind,
                r.ref,
                r.state,
                r.attempts,
                r.error,
                r.name,
                r.size,
                r.sha256,
                r.path,
                r.updated_at,
                r.applicant_code,
            )
            for r in rows
        ]

    def file(self, attachment: Attachment) -> Path:
        return self.directory / attachment.path

    def fetch_pending(
        self,
        client: HubClient,
        call: Callable[[Callable[[], None], Callable[[BaseException], None]], None],
        *,
        stop: Callable[[], bool] = lambda: False,
    ) -> tuple[int, int]:
        """Fetch every pending attachment, oldest first; returns (fetched, failed).

        ``call(fn, on_retry)`` runs one fetch with the connector's retry policy; when it
        gives up (the hub unreachable) the attachment stays pending and this raises."""
        fetched = failed = 0
        for attachment in self.all(PENDING):
            if stop():
                break

            def note(exc: BaseException, attachment: Attachment = attachment) -> None:
                self._note(attachment, str(exc))

            try:
                call(functools.partial(self._fetch, client, attachment), note)
            except OSError as exc:  # our disk, not the hub: try again next pass
                self._note(attachment, f"writing the attachment: {exc}")
                continue
            except XhubError as exc:
                if retryable(exc):
                    self._note(attachment, str(exc))
                    raise
                self._mark(attachment, state=FAILED, error=f"{exc.reason_name}: {exc.message}")
                failed += 1
                continue
            fetched += 1
        return fetched, failed

    def _fetch(self, client: HubClient, attachment: Attachment) -> None:
        folder = _private_dir(self.directory / _safe(attachment.case_number))
        temporary = self.incoming / uuid.uuid4().hex
        try:
            if attachment.kind == CERTIFICATE:
                pulled = client.pull_case_certificates(attachment.case_number, [attachment.ref])
                (copy,) = pulled.certificates
                certificate = client.verify_issuer_signature(copy)
                data = copy.certificate.SerializeToString()
                descriptor_fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(descriptor_fd, "wb") as out:
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())
                name = f"{certificate.type_name} {certificate.holder_name}".strip()
                size, sha256 = len(data), hashlib.sha256(data).hexdigest()
                final = folder / (_safe(attachment.ref) + ".pb")
                media_type = "application/x-protobuf; xhub.v1.Envelope"
            else:
                descriptor = client.download_case_material(
                    attachment.case_number,
                    attachment.ref,
                    temporary,
                    applicant_code=attachment.applicant_code,
                )
                temporary.chmod(0o600)
                material = descriptor.material
                name, size, sha256 = material.name, material.size, material.sha256.hex()
                media_type = material.media_type
                final = folder / _safe(attachment.ref)
            os.replace(temporary, final)  # visible only now, verified
        finally:
            temporary.unlink(missing_ok=True)
        self._mark(
            attachment,
            state=FETCHED,
            error="",
            name=name,
            size=size,
            sha256=sha256,
            media_type=media_type,
            path=str(final.relative_to(self.directory)),
        )

    def _note(self, attachment: Attachment, error: str) -> None:
        table = attachments_table
        with self.engine.begin() as connection:
            connection.execute(
                update(table)
                .where(*self._key(attachment))
                .values(attempts=table.c.attempts + 1, error=error[:500], updated_at=now_text())
            )

    def _mark(self, attachment: Attachment, **values: object) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                update(attachments_table)
                .where(*self._key(attachment))
                .values(attempts=attachments_table.c.attempts + 1, updated_at=now_text(), **values)
            )

    @staticmethod
    def _key(attachment: Attachment) -> tuple[ColumnElement[bool], ...]:
        table = attachments_table
        return (
            table.c.case_number == attachment.case_number,
            table.c.kind == attachment.kind,
            table.c.ref == attachment.ref,
        )
