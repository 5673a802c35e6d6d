"""HubClient's material library operations: upload, find, download."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import grpc

from xhub.connectors.sdk._internal.verify import (
    ContentCheck,
    check_descriptor_names,
    verify_download_manifest,
)
from xhub.connectors.sdk.services.intake import REVIEW_PURPOSE, HolderCodeType
from xhub.connectors.sdk.services.registry import RegistryCalls
from xhub.protocol.errors import typed_error
from xhub.v1 import certificate_pb2, material_pb2


class MaterialCalls(RegistryCalls):
    """HubClient's material library operations: upload, find, download."""

    # -- material library -----------------------------------------------------

    def upload_material(
        self,
        path: Path,
        *,
        material_type: str,
        applicant_code: str,
        media_type: str,
        source_case: str = "",
        valid_until: str = "",
        name: str = "",
        applicant_code_type: HolderCodeType = certificate_pb2.HOLDER_CODE_TYPE_USCC,
        chunk_size: int = 1024 * 1024,
    ) -> material_pb2.MaterialReceipt:
        """Upload a file once: hash it, send a signed manifest, then stream it in chunks.

        Never holds the whole file in memory. Not retried (an upload is not idempotent
        at the protocol level, though identical content is stored once).

        Raises: PermissionDeniedError, MalformedError (a bad manifest, or content that
        does not match it), ResourceExhaustedError (TOO_LARGE), OSError (reading ``path``).
        """
        with path.open("rb") as source:
            digest = hashlib.file_digest(source, "sha256")
            size = source.tell()  # what was hashed, even if the file grows meanwhile
        manifest = material_pb2.MaterialManifest(
            material_type=material_type,
            applicant_code=applicant_code,
            applicant_code_type=applicant_code_type,
            size=size,
            sha256=digest.digest(),
            media_type=media_type,
            source_case=source_case,
            valid_until=valid_until,
            name=name or path.name,
        )
        envelope = self.transport.seal(manifest, case_id=source_case)

        def stream() -> Iterator[material_pb2.UploadRequest]:
            yield material_pb2.UploadRequest(manifest=envelope)
            with path.open("rb") as source:
                while block := source.read(chunk_size):
                    yield material_pb2.UploadRequest(chunk=block)

        timeout = max(self.transport.timeout, size / 1e6)
        try:
            response = self.transport.materials.Upload(stream(), timeout=timeout)
        except grpc.RpcError as exc:
            raise typed_error(exc) from exc
        return self.transport.open_response(
            response.envelope, material_pb2.MaterialReceipt, manifest.header.message_id
        )

    def find_materials(
        self, case_id: str, material_types: list[str], *, purpose: str
    ) -> material_pb2.MaterialList:
        """The applicant's stored materials of these types, for a prepared case.

        Raises: PermissionDeniedError (purpose or case binding), NotFoundError, MalformedError.
        """
        return self.transport.call(
            self.transport.materials.FindMaterials,
            material_pb2.FindMaterialsRequest,
            material_pb2.MaterialQuery(material_types=material_types),
            material_pb2.MaterialList,
            idempotent=True,
            case_id=case_id,
            purpose=purpose,
        )

    def download_material(
        self,
        case_id: str,
        material_id: str,
        destination: Path,
        *,
        purpose: str,
        holders: frozenset[str] | None = None,
    ) -> material_pb2.MaterialDescriptor:
        """Stream a material to ``destination``; returns the hub-signed descriptor.

        The descriptor must be of ``material_id`` and carries the uploader's own signed
        manifest: it is checked with the uploader's registered key (its member record
        fetched first if not yet trusted), the descriptor must agree with it, its applicant
        must be one of ``holders`` when given, else the prepared case's applicant or legal
        representative (when this client prepared the case), and the content's size and
        SHA-256 are checked against the manifest — not the hub's descriptor — before the
        file appears (written to a temporary name, then renamed).

        Raises: PermissionDeniedError (purpose or case binding), NotFoundError,
        BadResponseError (another material's descriptor, no or a forged manifest, a
        descriptor that differs from it, another applicant's manifest, or content that
        differs from it), OSError (writing).
        """
        payload = material_pb2.MaterialFetch(material_id=material_id)
        envelope = self.transport.seal(payload, case_id=case_id, purpose=purpose)
        stream = self.transport.materials.Download(
            material_pb2.DownloadRequest(envelope=envelope),
            timeout=max(self.transport.timeout, 120.0),
        )
        partial = destination.with_name(destination.name + ".part")
        try:
            first = next(stream)
            descriptor = self.transport.open_response(
                first.descriptor, material_pb2.MaterialDescriptor, payload.header.message_id
            )
            self._trust([descriptor.material.uploader])
            manifest = verify_download_manifest(
                descriptor,
                self._trusted,
                hub_id=self.hub_id,
                material_id=material_id,
                holders=self._holders.get(case_id, frozenset()) if holders is None else holders,
            )
            content = ContentCheck(manifest)
            with partial.open("wb") as out:
                for message in stream:
                    chunk = message.chunk  # each access copies the bytes: read it once
                    content.add(chunk)
                    out.write(chunk)
            content.finish()
            partial.replace(destination)
            return descriptor
        except grpc.RpcError as exc:
            raise typed_error(exc) from exc
        finally:
            partial.unlink(missing_ok=True)

    def download_case_material(
        self,
        case_number: str,
        material_id: str,
        destination: Path,
        *,
        purpose: str = REVIEW_PURPOSE,
        applicant_code: str = "",
    ) -> material_pb2.MaterialDescriptor:
        """Departments: stream a material the case ``case_number`` references to
        ``destination`` (部门调阅), while the case is open at this department; checked as
        ``download_material`` checks a download (size and hash against the uploader's
        signed manifest before the file appears), and the descriptor must name
        ``material_id``. Given ``applicant_code`` (the applicant of the dispatched case, as
        the platform signed it), the uploader's manifest must be of that applicant.

        Raises: PermissionDeniedError (not a department: ROLE_REQUIRED; another
        department's case: NOT_YOUR_CASE; a material the case does not reference:
        PURPOSE_NOT_BOUND), FailedPreconditionError (CASE_CLOSED), NotFoundError,
        BadResponseError (content or descriptor differ), OSError (writing).
        """
        descriptor = self.download_material(
            case_number,
            material_id,
            destination,
            purpose=purpose,
            holders=frozenset({applicant_code.upper()}) if applicant_code else frozenset(),
        )
        try:
            check_descriptor_names(descriptor, material_id)
        except BaseException:
            destination.unlink(missing_ok=True)
            raise
        return descriptor
