"""MaterialService (材料库): upload once, reuse by reference, download purpose-bound."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import Future
from datetime import UTC, date, datetime
from typing import Any

from xhub.certificates_store.model import CertificateDataError, validate_holder
from xhub.hub.binding.purpose import bound_case, deny_unbound, refusal, reviewed_case
from xhub.hub.binding.rules import RuleError, check_reviewed_references
from xhub.hub.binding.store import read_bound_case
from xhub.hub.catalog import store as catalog
from xhub.hub.catalog.store import CODE_RE
from xhub.hub.core.db import MaterialRow
from xhub.hub.core.gate import Admitted
from xhub.hub.core.rpc import Context, Received, Service, Unary
from xhub.hub.core.runtime import Call, HubRuntime
from xhub.hub.materials import store as materials
from xhub.hub.materials.blobstore import CHUNK, BlobWriter, LocalBlobStore
from xhub.protocol.errors import (
    FailedPreconditionError,
    MalformedError,
    PermissionDeniedError,
    RefusedError,
    ResourceExhaustedError,
)
from xhub.v1 import envelope_pb2, material_pb2, registry_pb2

DESCRIPTOR = material_pb2.DESCRIPTOR.services_by_name["MaterialService"]
SERVICE = DESCRIPTOR.full_name
DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
R = envelope_pb2


def _mismatch(message: str) -> MalformedError:
    return MalformedError(message, reason=R.ERROR_REASON_CONTENT_MISMATCH)


class MaterialService(Service):
    descriptor = DESCRIPTOR

    def __init__(self, runtime: HubRuntime, blobs: LocalBlobStore | None = None) -> None:
        super().__init__(runtime)
        self.blobs = blobs or LocalBlobStore(runtime.config.paths.blobs)
        self.max_bytes = runtime.config.max_material_bytes

    def unary(self) -> Sequence[Unary[Any]]:
        return [
            Unary(
                "FindMaterials",
                material_pb2.MaterialQuery,
                _find,
                role=registry_pb2.ROLE_PLATFORM,
            ),
        ]

    # -- upload ---------------------------------------------------------------

    async def Upload(
        self,
        request_iterator: AsyncIterator[Received[material_pb2.UploadRequest]],
        context: Context,
    ) -> material_pb2.UploadResponse:
        first = await anext(aiter(request_iterator), None)
        opening = first.message if first is not None else None
        manifest_envelope = (
            opening.manifest if opening is not None and opening.HasField("manifest") else None
        )
        # 1. The first message is the signed manifest of a platform member.
        admitted, draft = await self.runtime.admit(
            context,
            manifest_envelope,
            material_pb2.MaterialManifest,
            method=f"/{SERVICE}/Upload",
            require_role=registry_pb2.ROLE_PLATFORM,
            subject=lambda manifest: manifest.applicant_code[:32],
            envelope_bytes=first.envelope_bytes if first is not None else b"",
        )
        manifest = admitted.message
        writer: BlobWriter | None = None
        try:
            # 2. The manifest is sound and within limits, before any content is read.
            applicant = self._check_manifest(manifest)
            draft.subject = applicant
            # 3. Content streams to a temporary file; more than declared stops it at once.
            writer = self.blobs.begin()
            received = await self._receive(request_iterator, writer, manifest.size)
            # 4. Size and hash must match the manifest before the material becomes visible.
            if received != manifest.size:
                raise _mismatch(f"received {received} of the declared {manifest.size} bytes")
            if writer.sha256() != manifest.sha256.hex():
                raise _mismatch("content SHA-256 differs from the manifest")
            done = writer
            envelope = await self.runtime.run_blocking(
                lambda: self._store(admitted, draft, done, manifest, applicant)
            )
        except RefusedError as exc:
            # Discard and audit as one shielded job: the client may cancel while the
            # temporary is thrown away (a half-closed stream often is), and the refusal must
            # still be logged — awaiting them one by one lost the entry to that cancellation.
            refused, error = writer, exc

            def discard_and_log() -> None:
                if refused is not None:
                    refused.discard()
                self.runtime.record_refusal(draft, error)

            await asyncio.shield(self.runtime.run_blocking(discard_and_log))
            await context.abort_with_status(exc.to_status())
            raise AssertionError("unreachable") from exc
        except BaseException:
            # The client went away or something broke: leave nothing behind, log the attempt.
            # One shielded job: a second cancellation of this call cannot stop it halfway.
            abandoned = writer

            def clean_up() -> None:
                if abandoned is not None:
                    abandoned.discard()
                self.runtime.audit_refusal(draft, "ABORTED")

            await asyncio.shield(self.runtime.run_blocking(clean_up))
            raise
        return material_pb2.UploadResponse(envelope=envelope)

    async def _receive(
        self,
        requests: AsyncIterator[Received[material_pb2.UploadRequest]],
        writer: BlobWriter,
        declared: int,
    ) -> int:
        """Write the chunks after the manifest; returns how many bytes came.

        One chunk is hashed and written on a worker thread while the next is received, so
        network and disk overlap and at most two chunks are held. A write may still run
        when this raises: ``BlobWriter.discard`` waits for it.
        """
        received = 0
        pending: Future[None] | None = None
        counted = self.runtime.metrics.material_bytes.labels("in")
        async for item in requests:
            message = item.message
            if not message.HasField("chunk"):
                raise MalformedError("after the manifest only chunks may follow")
            chunk = message.chunk  # every access copies: read it once
            if len(chunk) > CHUNK:
                raise MalformedError(f"a chunk may hold at most {CHUNK} bytes")
            received += len(chunk)
            counted.inc(len(chunk))
            if received > declared:
                raise _mismatch(f"more content than the declared {declared} bytes")
            if pending is not None:
                await asyncio.wrap_future(pending)
            pending = self.runtime.executor.submit(writer.write, chunk)
        if pending is not None:
            await asyncio.wrap_future(pending)
        return received

    def _check_manifest(self, manifest: material_pb2.MaterialManifest) -> str:
        """Refuse a bad manifest; returns the applicant code in its normalised form."""
        if manifest.size > self.max_bytes:
            raise ResourceExhaustedError(
                f"{manifest.size} bytes exceeds the maximum material size {self.max_bytes}",
                metadata={"max_bytes": str(self.max_bytes)},
            )
        problems = {
            "size": manifest.size == 0,
            "sha256": len(manifest.sha256) != 32,
            "material_type": not CODE_RE.match(manifest.material_type),
            "media_type": not (0 < len(manifest.media_type) <= 100),
            "name": len(manifest.name) > 200,
            "source_case": len(manifest.source_case) > 64,
            "valid_until": bool(manifest.valid_until) and not _is_date(manifest.valid_until),
        }
        for field, bad in problems.items():
            if bad:
                raise MalformedError(
                    f"manifest field {field} is invalid", metadata={"field": field}
                )
        try:
            return validate_holder(manifest.applicant_code, manifest.applicant_code_type)
        except CertificateDataError as exc:
            raise MalformedError(str(exc), metadata={"field": "applicant_code"}) from exc

    def _store(
        self,
        admitted: Admitted[material_pb2.MaterialManifest],
        draft: Any,
        writer: BlobWriter,
        manifest: material_pb2.MaterialManifest,
        applicant: str,
    ) -> envelope_pb2.Envelope:
        sha256 = writer.sha256()
        intent = materials.add_intent(self.runtime.sessions, sha256)
        deduplicated = self.blobs.exists(sha256)
        self.blobs.place(writer)  # fsynced and in place before the record commits

        def effect(call: Call[material_pb2.MaterialManifest]) -> material_pb2.MaterialReceipt:
            row = MaterialRow(
                material_id=materials.new_material_id(),
                sha256=sha256,
                size=manifest.size,
                media_type=manifest.media_type,
                material_type=manifest.material_type,
                name=manifest.name or manifest.material_type,
                applicant_code=applicant,
                source_case=manifest.source_case,
                uploader=call.caller.member_id,
                uploaded_at=datetime.now(UTC),
                valid_until=manifest.valid_until,
                manifest=admitted.envelope_bytes or admitted.opened.envelope.SerializeToString(),
            )
            call.session.add(row)
            materials.drop_intent(call.session, intent)
            call.session.flush()
            return material_pb2.MaterialReceipt(
                material=materials.to_ref(row), deduplicated=deduplicated
            )

        return self.runtime.complete(admitted, draft, effect)

    # -- reuse ------------------------------------------------------------------

    async def Download(
        self, request: Received[material_pb2.DownloadRequest], context: Context
    ) -> AsyncIterator[material_pb2.DownloadResponse]:
        envelope = await self.runtime.unary(
            context,
            request.envelope,
            material_pb2.MaterialFetch,
            _fetch,
            method=f"/{SERVICE}/Download",
            envelope_bytes=request.envelope_bytes,
        )
        descriptor = material_pb2.MaterialDescriptor()
        descriptor.ParseFromString(envelope.payload)  # our own signed bytes
        yield material_pb2.DownloadResponse(descriptor=envelope)
        blob = await self.runtime.run_blocking(
            lambda: self.blobs.open(descriptor.material.sha256.hex())
        )
        # The next chunk is read on a worker thread while this one is sent.
        ahead = self.runtime.executor.submit(blob.read, CHUNK)
        sent = self.runtime.metrics.material_bytes.labels("out")
        try:
            while chunk := await asyncio.wrap_future(ahead):
                ahead = self.runtime.executor.submit(blob.read, CHUNK)
                sent.inc(len(chunk))
                yield material_pb2.DownloadResponse(chunk=chunk)
        finally:
            ahead.add_done_callback(lambda _: blob.close())  # once no read runs any more


def _is_date(value: str) -> bool:
    if not DATE_RE.match(value):
        return False
    try:
        date.fromisoformat(value)
    except ValueError:
        return False
    return True


def _required_types(call: Call[Any], item_code: str) -> set[str]:
    item = catalog.get_item(call.session, item_code)
    return {t for material in item.materials for t in material.material_types}


def _find(call: Call[material_pb2.MaterialQuery]) -> material_pb2.MaterialList:
    case = bound_case(call)
    call.audit.subject = case.applicant_code
    required = _required_types(call, case.item_code)
    refused = [t for t in call.message.material_types if t not in required]
    if refused or not call.message.material_types:
        raise deny_unbound(
            f"the case's item does not require material type(s) {', '.join(refused) or '(none)'}",
            case_id=case.case_id,
        )
    found = materials.reusable(
        call.session,
        case.applicant_code,
        list(call.message.material_types),
        datetime.now(UTC).date(),
    )
    return material_pb2.MaterialList(materials=[materials.to_ref(row) for row in found])


def _fetch(call: Call[material_pb2.MaterialFetch]) -> material_pb2.MaterialDescriptor:
    row = _downloadable(call)
    return material_pb2.MaterialDescriptor(
        material=materials.to_ref(row),
        manifest=envelope_pb2.Envelope.FromString(row.manifest),
    )


def _downloadable(call: Call[material_pb2.MaterialFetch]) -> MaterialRow:
    """Who may download what (the one place that decides it):

    * a platform, for the prepared case the header names: a material of the case's
      applicant, of a type its item requires, still valid;
    * a department, for a case dispatched to it and open there (the header's case_id is
      the case number): a material that case references (``hub.binding.rules.check_review``);
    * nobody else (ROLE_REQUIRED).

    A member holding both roles downloads as the platform when the header names one of its
    prepared cases, else as the department."""
    is_department = call.caller.has(registry_pb2.ROLE_DEPARTMENT)
    if call.caller.has(registry_pb2.ROLE_PLATFORM) and not (
        is_department and read_bound_case(call.session, call.header.case_id) is None
    ):
        return _for_prepared_case(call)
    if is_department:
        return _for_reviewed_case(call)
    raise PermissionDeniedError(
        f"{call.caller.member_id} lacks the ROLE_PLATFORM or ROLE_DEPARTMENT role",
        metadata={"required_role": "ROLE_PLATFORM,ROLE_DEPARTMENT"},
    )


def _for_reviewed_case(call: Call[material_pb2.MaterialFetch]) -> MaterialRow:
    case = reviewed_case(call)
    try:
        check_reviewed_references(case, materials=[call.message.material_id])
    except RuleError as exc:
        raise refusal(exc) from exc
    return materials.get(call.session, call.message.material_id)


def _for_prepared_case(call: Call[material_pb2.MaterialFetch]) -> MaterialRow:
    case = bound_case(call)
    call.audit.subject = case.applicant_code
    row = materials.get(call.session, call.message.material_id)
    if row.applicant_code != case.applicant_code:
        raise deny_unbound("the material belongs to another applicant", case_id=case.case_id)
    if row.material_type not in _required_types(call, case.item_code):
        raise deny_unbound("the case's item does not require this material", case_id=case.case_id)
    if row.valid_until and row.valid_until < datetime.now(UTC).date().isoformat():
        raise FailedPreconditionError(
            f"the material expired on {row.valid_until}",
            reason=R.ERROR_REASON_PURPOSE_NOT_BOUND,
            metadata={"material_id": row.material_id},
        )
    return row
