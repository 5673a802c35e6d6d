"""HubClient: the synchronous SDK department integrators call from plain Python.

Every request is signed with the member's key; every response is verified
against the hub's key before it is parsed, and must answer this very request.
Every call has a deadline. Only idempotent calls are retried, and only on
UNAVAILABLE / DEADLINE_EXCEEDED, with exponential backoff and jitter.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, TypeAlias, TypeVar

import grpc
from cryptography import x509
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tenacity import (
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from xhub.certificates_store.model import open_certificate
from xhub.protocol.bundle import MemberBundle
from xhub.protocol.envelope import (
    check_shape,
    new_header,
    open_envelope,
    parse_verified,
    payload_type_of,
    seal,
    verify_signature_by,
)
from xhub.protocol.errors import (
    AuthenticationError,
    BadResponseError,
    MalformedError,
    TransportError,
    XhubError,
    typed_error,
)
from xhub.protocol.log.merkle import ProofError, verify_consistency, verify_inclusion
from xhub.protocol.log.note import Checkpoint, NoteError, NoteVerifier, open_checkpoint
from xhub.protocol.pki import CertificateError, load_certificate, verify_member_certificate
from xhub.protocol.signing import KeyVerifier
from xhub.v1 import (
    audit_pb2,
    audit_pb2_grpc,
    case_pb2,
    case_pb2_grpc,
    certificate_pb2,
    certificate_pb2_grpc,
    envelope_pb2,
    intake_pb2,
    intake_pb2_grpc,
    material_pb2,
    material_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)

M = TypeVar("M", bound=Message)

CertificateStatus: TypeAlias = certificate_pb2.CertificateStatus.ValueType
CaseStage: TypeAlias = case_pb2.CaseStage.ValueType
HolderCodeType: TypeAlias = certificate_pb2.HolderCodeType.ValueType


@dataclass(frozen=True)
class VerifiedCheckpoint:
    """A checkpoint whose signature verified with the pinned log key."""

    checkpoint: Checkpoint
    note: bytes

    @property
    def size(self) -> int:
        return self.checkpoint.size

    @property
    def root_hash(self) -> bytes:
        return self.checkpoint.root_hash


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4
    initial_backoff: float = 0.2
    max_backoff: float = 5.0
    jitter: float = 0.2


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, XhubError) and exc.retryable


def secure_channel(
    bundle: MemberBundle,
    *,
    address: str | None = None,
    reconnect_initial: float = 0.2,
    reconnect_max: float = 5.0,
) -> grpc.Channel:
    """An mTLS channel to the hub. gRPC's own reconnect backoff is bounded (its default grows
    to 120 s, so calls would keep failing long after a hub came back)."""
    root, key, chain = bundle.tls_credentials()
    credentials = grpc.ssl_channel_credentials(
        root_certificates=root, private_key=key, certificate_chain=chain
    )
    return grpc.secure_channel(
        address or bundle.hub_address,
        credentials,
        options=[
            ("grpc.ssl_target_name_override", bundle.server_name),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.max_receive_message_length", 8 * 1024 * 1024),
            ("grpc.initial_reconnect_backoff_ms", max(50, int(reconnect_initial * 1000))),
            ("grpc.min_reconnect_backoff_ms", max(50, int(reconnect_initial * 1000))),
            ("grpc.max_reconnect_backoff_ms", max(100, int(reconnect_max * 1000))),
        ],
    )


class HubClient:
    def __init__(
        self,
        bundle: MemberBundle,
        *,
        channel: grpc.Channel | None = None,
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        clock_skew: timedelta = timedelta(minutes=5),
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self.bundle = bundle
        self.member_id = bundle.member_id
        self.hub_id = bundle.hub_id
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.clock_skew = clock_skew
        self._sleep = sleep
        self.channel = channel or secure_channel(bundle)
        self.registry = registry_pb2_grpc.RegistryServiceStub(self.channel)
        self.audit = audit_pb2_grpc.AuditServiceStub(self.channel)
        self.certificates = certificate_pb2_grpc.CertificateServiceStub(self.channel)
        self.intake = intake_pb2_grpc.IntakeServiceStub(self.channel)
        self.materials = material_pb2_grpc.MaterialServiceStub(self.channel)
        self.cases = case_pb2_grpc.CaseServiceStub(self.channel)
        self.last_receipt: envelope_pb2.AuditReceipt | None = None
        # Members looked up to check their signatures (issuers, platforms), and their keys.
        self._members: dict[str, registry_pb2.Member] = {}
        self._verifiers: dict[bytes, KeyVerifier] = {}

    @classmethod
    def from_bundle(
        cls, path: Path | str, *, hub_address: str | None = None, **kwargs: Any
    ) -> HubClient:
        return cls(MemberBundle.load(Path(path), hub_address=hub_address), **kwargs)

    def __enter__(self) -> HubClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    # -- health ---------------------------------------------------------------

    def health(self, service: str = "") -> str:
        """SERVING / NOT_SERVING / … from the standard health service."""
        stub = health_pb2_grpc.HealthStub(self.channel)
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=self.timeout)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    def wait_until_serving(self, timeout: float = 30.0) -> None:
        """Block until the hub reports SERVING (e.g. right after starting it)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.health() == "SERVING":
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TransportError(
                    grpc.StatusCode.UNAVAILABLE, f"hub not serving after {timeout}s"
                )
            time.sleep(0.1)

    # -- registry -------------------------------------------------------------

    def get_member(self, member_id: str) -> registry_pb2.Member:
        """Look up one member (查询接入单位); the answer is signed by the hub."""
        result = self.call(
            self.registry.GetMember,
            registry_pb2.GetMemberRequest,
            registry_pb2.MemberLookup(member_id=member_id),
            registry_pb2.MemberLookupResult,
            idempotent=True,
        )
        return result.member

    def list_members(
        self,
        *,
        level: registry_pb2.Level.ValueType = registry_pb2.LEVEL_UNSPECIFIED,
        role: registry_pb2.Role.ValueType = registry_pb2.ROLE_UNSPECIFIED,
        division_prefix: str = "",
        include_revoked: bool = False,
        page_size: int = 100,
    ) -> Iterator[registry_pb2.Member]:
        """All matching members, fetching page after page."""
        token = ""
        while True:
            page = self.call(
                self.registry.ListMembers,
                registry_pb2.ListMembersRequest,
                registry_pb2.MemberListQuery(
                    level=level,
                    role=role,
                    division_prefix=division_prefix,
                    include_revoked=include_revoked,
                    page_size=page_size,
                    page_token=token,
                ),
                registry_pb2.MemberListResult,
                idempotent=True,
            )
            yield from page.members
            token = page.next_page_token
            if not token:
                return

    def verified_certificate(self, member: registry_pb2.Member) -> x509.Certificate:
        """Check offline that a looked-up member's certificate chains to our hub CA."""
        try:
            cert = load_certificate(member.certificate_der)
            named = verify_member_certificate(cert, self.bundle.ca_cert)
        except (CertificateError, ValueError) as exc:
            raise BadResponseError(
                f"certificate of {member.member_id} is not valid: {exc}"
            ) from exc
        if named != member.member_id:
            raise BadResponseError(f"certificate names {named}, not {member.member_id}")
        return cert

    # -- e-certificates and intake ---------------------------------------------

    def publish_certificate(
        self,
        certificate: certificate_pb2.ElectronicCertificate,
        *,
        status: CertificateStatus = certificate_pb2.CERTIFICATE_STATUS_VALID,
        raw_status_code: str = "",
    ) -> certificate_pb2.PublicationResult:
        """Sign ``certificate`` as its issuer and publish it (idempotent by identifier+version)."""
        signed = seal(certificate, self.bundle.signer)
        return self.call(
            self.certificates.PublishCertificate,
            certificate_pb2.PublishCertificateRequest,
            certificate_pb2.CertificatePublication(
                certificate=signed, status=status, raw_status_code=raw_status_code
            ),
            certificate_pb2.PublicationResult,
            idempotent=True,
        )

    def change_certificate_status(
        self,
        identifier: str,
        status: CertificateStatus,
        *,
        reason: str = "",
        raw_status_code: str = "",
    ) -> certificate_pb2.StatusChangeResult:
        return self.call(
            self.certificates.ChangeCertificateStatus,
            certificate_pb2.ChangeCertificateStatusRequest,
            certificate_pb2.CertificateStatusChange(
                identifier=identifier, status=status, reason=reason, raw_status_code=raw_status_code
            ),
            certificate_pb2.StatusChangeResult,
            idempotent=False,
        )

    def get_item(self, code: str) -> intake_pb2.Item:
        return self.call(
            self.intake.GetItem,
            intake_pb2.GetItemRequest,
            intake_pb2.ItemLookup(code=code),
            intake_pb2.ItemLookupResult,
            idempotent=True,
        ).item

    def prepare_case(
        self,
        item_code: str,
        applicant_code: str,
        *,
        purpose: str,
        applicant_code_type: HolderCodeType = certificate_pb2.HOLDER_CODE_TYPE_USCC,
        legal_representative_code: str = "",
    ) -> intake_pb2.Checklist:
        """The one-time checklist (一次性告知) for an application; platform members only."""
        return self.call(
            self.intake.PrepareCase,
            intake_pb2.PrepareCaseRequest,
            intake_pb2.CasePreparation(
                item_code=item_code,
                applicant_code=applicant_code,
                applicant_code_type=applicant_code_type,
                legal_representative_code=legal_representative_code,
            ),
            intake_pb2.Checklist,
            idempotent=False,
            purpose=purpose,
        )

    def pull_certificates(
        self, case_id: str, holder_code: str, type_codes: list[str], *, purpose: str
    ) -> list[certificate_pb2.PulledCertificate]:
        """Certificates bound to a prepared case, each verified against its issuer's key."""
        result = self.call(
            self.intake.PullCertificates,
            intake_pb2.PullCertificatesRequest,
            intake_pb2.CertificatePull(holder_code=holder_code, type_codes=type_codes),
            intake_pb2.PulledCertificates,
            idempotent=True,
            case_id=case_id,
            purpose=purpose,
        )
        receipt = self.last_receipt  # issuer look-ups below must not replace the pull's receipt
        for pulled in result.certificates:
            self.verify_issuer_signature(pulled)
        self.last_receipt = receipt
        return list(result.certificates)

    def member_verifier(self, member_id: str, key_id: str) -> KeyVerifier:
        """The registered signing key ``key_id`` of ``member_id``: looked up once (signed by
        the hub, certificate chained to our hub CA), then from the cache, so later checks
        work offline."""
        member = self._members.get(member_id)
        if member is None:
            member = self.get_member(member_id)
            self.verified_certificate(member)
            self._members[member_id] = member
        for key in member.signing_keys:
            if key.key_id == key_id:
                verifier = self._verifiers.get(key.public_key_der)
                if verifier is None:
                    verifier = KeyVerifier.from_der(key.public_key_der)
                    self._verifiers[key.public_key_der] = verifier
                return verifier
        raise BadResponseError(f"{key_id[:64]!r} is not a registered key of {member_id}")

    def verify_issuer_signature(
        self, pulled: certificate_pb2.PulledCertificate
    ) -> certificate_pb2.ElectronicCertificate:
        """Check a pulled certificate against its issuer's registered keys (works offline
        once the issuer's member record is cached)."""
        if not pulled.certificate.signatures:
            raise BadResponseError("pulled certificate carries no signature")
        try:
            verifier = self.member_verifier(
                pulled.issuer_member_id, pulled.certificate.signatures[0].key_id
            )
        except BadResponseError as exc:
            raise BadResponseError(
                f"pulled certificate is not signed by a key of its issuer: {exc}"
            ) from exc
        try:
            cert = open_certificate(pulled.certificate, verifier)
        except (MalformedError, AuthenticationError) as exc:
            raise BadResponseError(f"pulled certificate fails verification: {exc}") from exc
        if cert.issuer_code != self._members[pulled.issuer_member_id].uscc:
            raise BadResponseError("certificate names another issuer than its signer")
        return cert

    def verify_submission(self, case: case_pb2.DispatchedCase) -> case_pb2.CaseSubmission:
        """End-to-end check of a dispatched case (端到端核验): what the hub forwards is what
        the platform signed, so not even the hub can alter an application unnoticed.

        1. The submission and every resubmission verify against the platform's own
           registered key and were addressed by that platform to this hub.
        2. Each resubmission names this case.
        3. Applicant name and form are the submission's.
        4. The certificate and material references are exactly those the platform's
           signed messages name.
        """
        # 1. signatures and senders
        submission = self._open_platform_message(
            case.platform, case.submission, case_pb2.CaseSubmission
        )
        resubmissions = [
            self._open_platform_message(case.platform, envelope, case_pb2.CaseResubmission)
            for envelope in case.resubmissions
        ]
        # 2. each resubmission is for this case
        if any(r.case_number != case.case_number for r in resubmissions):
            raise BadResponseError(f"case {case.case_number}: a resubmission names another case")
        # 3. the application's content
        if case.applicant_name != submission.applicant_name[:200] or dict(case.form) != dict(
            submission.form
        ):
            raise BadResponseError(
                f"case {case.case_number}: applicant or form differs from the platform's "
                "signed submission"
            )
        # 4. the references
        certificates = list(submission.certificate_identifiers)
        materials = list(submission.material_ids)
        for resubmission in resubmissions:
            certificates.extend(resubmission.certificate_identifiers)
            materials.extend(resubmission.material_ids)
        if [c.identifier for c in case.certificates] != certificates or [
            m.material_id for m in case.materials
        ] != materials:
            raise BadResponseError(
                f"case {case.case_number}: certificate or material references differ from "
                "the platform's signed messages"
            )
        return submission

    def _open_platform_message(
        self, platform: str, envelope: envelope_pb2.Envelope, message_type: type[M]
    ) -> M:
        try:
            opened = open_envelope(
                envelope, message_type, lambda key_id: self.member_verifier(platform, key_id)
            )
        except (MalformedError, AuthenticationError) as exc:
            raise BadResponseError(f"the platform's signed message is invalid: {exc}") from exc
        header = opened.header
        if header.sender != platform or header.recipient != self.hub_id:
            raise BadResponseError(
                f"the platform's message was sent by {header.sender!r} to {header.recipient!r}"
            )
        return opened.message

    def verify_certificate(
        self, *, identifier: str = "", number: str = "", type_code: str = ""
    ) -> intake_pb2.CertificateVerification:
        return self.call(
            self.intake.VerifyCertificate,
            intake_pb2.VerifyCertificateRequest,
            intake_pb2.CertificateCheck(identifier=identifier, number=number, type_code=type_code),
            intake_pb2.CertificateVerification,
            idempotent=True,
        )

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
        envelope = self.seal(manifest, case_id=source_case)
        request_id = manifest.header.message_id

        def stream() -> Iterator[material_pb2.UploadRequest]:
            yield material_pb2.UploadRequest(manifest=envelope)
            with path.open("rb") as source:
                while block := source.read(chunk_size):
                    yield material_pb2.UploadRequest(chunk=block)

        try:
            response = self.materials.Upload(stream(), timeout=max(self.timeout, size / 1e6))
        except grpc.RpcError as exc:
            raise typed_error(exc) from exc
        return self.open_response(response.envelope, material_pb2.MaterialReceipt, request_id)

    def find_materials(
        self, case_id: str, material_types: list[str], *, purpose: str
    ) -> list[material_pb2.MaterialRef]:
        result = self.call(
            self.materials.FindMaterials,
            material_pb2.FindMaterialsRequest,
            material_pb2.MaterialQuery(material_types=material_types),
            material_pb2.MaterialList,
            idempotent=True,
            case_id=case_id,
            purpose=purpose,
        )
        return list(result.materials)

    def download_material(
        self, case_id: str, material_id: str, destination: Path, *, purpose: str
    ) -> material_pb2.MaterialRef:
        """Stream a material to ``destination``; size and SHA-256 are checked before the
        file appears (written to a temporary name, then renamed)."""
        payload = material_pb2.MaterialFetch(material_id=material_id)
        envelope = self.seal(payload, case_id=case_id, purpose=purpose)
        stream = self.materials.Download(
            material_pb2.DownloadRequest(envelope=envelope), timeout=max(self.timeout, 120.0)
        )
        partial = destination.with_name(destination.name + ".part")
        try:
            first = next(stream)
            descriptor = self.open_response(
                first.descriptor, material_pb2.MaterialDescriptor, payload.header.message_id
            )
            digest = hashlib.sha256()
            size = 0
            with partial.open("wb") as out:
                for message in stream:
                    chunk = message.chunk  # each access copies the bytes: read it once
                    size += len(chunk)
                    if size > descriptor.material.size:
                        raise BadResponseError("download is longer than the material")
                    digest.update(chunk)
                    out.write(chunk)
            if size != descriptor.material.size or digest.digest() != descriptor.material.sha256:
                raise BadResponseError("downloaded content does not match the signed descriptor")
            partial.replace(destination)
            return descriptor.material
        except grpc.RpcError as exc:
            raise typed_error(exc) from exc
        finally:
            partial.unlink(missing_ok=True)

    # -- cases ----------------------------------------------------------------

    def submit_case(
        self,
        case_id: str,
        *,
        purpose: str,
        certificate_identifiers: list[str] | None = None,
        material_ids: list[str] | None = None,
        applicant_name: str = "",
        form: dict[str, str] | None = None,
    ) -> case_pb2.CaseReceipt:
        """Submit a prepared case once; the hub dispatches it to every department."""
        return self.call(
            self.cases.SubmitCase,
            case_pb2.SubmitCaseRequest,
            case_pb2.CaseSubmission(
                certificate_identifiers=certificate_identifiers or [],
                material_ids=material_ids or [],
                applicant_name=applicant_name,
                form=form or {},
            ),
            case_pb2.CaseReceipt,
            idempotent=False,
            case_id=case_id,
            purpose=purpose,
        )

    def push_status(
        self,
        case_number: str,
        stage: CaseStage,
        *,
        event_id: str,
        note: str = "",
        missing_items: list[str] | None = None,
        certificate_identifier: str = "",
    ) -> case_pb2.StatusPushResult:
        """Report a stage change; idempotent by ``event_id``, so retrying is safe."""
        return self.call(
            self.cases.PushStatus,
            case_pb2.PushStatusRequest,
            case_pb2.StatusPush(
                case_number=case_number,
                stage=stage,
                event_id=event_id,
                note=note,
                missing_items=missing_items or [],
                certificate_identifier=certificate_identifier,
            ),
            case_pb2.StatusPushResult,
            idempotent=True,
            case_id=case_number,
        )

    def resubmit_case(
        self,
        case_number: str,
        *,
        event_id: str,
        certificate_identifiers: list[str] | None = None,
        material_ids: list[str] | None = None,
        note: str = "",
    ) -> case_pb2.StatusPushResult:
        """Answer a supplement request (补正): the departments receive the case again."""
        return self.call(
            self.cases.ResubmitCase,
            case_pb2.ResubmitCaseRequest,
            case_pb2.CaseResubmission(
                case_number=case_number,
                event_id=event_id,
                certificate_identifiers=certificate_identifiers or [],
                material_ids=material_ids or [],
                note=note,
            ),
            case_pb2.StatusPushResult,
            idempotent=True,
            case_id=case_number,
        )

    def withdraw_case(
        self, case_number: str, *, event_id: str, reason: str
    ) -> case_pb2.StatusPushResult:
        return self.call(
            self.cases.WithdrawCase,
            case_pb2.WithdrawCaseRequest,
            case_pb2.CaseWithdrawal(case_number=case_number, event_id=event_id, reason=reason),
            case_pb2.StatusPushResult,
            idempotent=True,
            case_id=case_number,
        )

    def subscribe_cases(
        self, after_cursor: int = 0, *, timeout: float | None = None
    ) -> Iterator[case_pb2.DispatchedCase]:
        """Cases dispatched to this department after ``after_cursor``, each verified."""
        return self._subscribe(
            self.cases.SubscribeCases,
            case_pb2.SubscribeCasesRequest,
            case_pb2.DispatchedCase,
            after_cursor,
            timeout,
        )

    def subscribe_status(
        self, after_cursor: int = 0, *, timeout: float | None = None
    ) -> Iterator[case_pb2.StatusEvent]:
        """Status events of this platform's cases after ``after_cursor``, each verified."""
        return self._subscribe(
            self.cases.SubscribeStatus,
            case_pb2.SubscribeStatusRequest,
            case_pb2.StatusEvent,
            after_cursor,
            timeout,
        )

    def subscribe_supervision(
        self, after_cursor: int = 0, *, timeout: float | None = None
    ) -> Iterator[case_pb2.SupervisionEvent]:
        return self._subscribe(
            self.cases.SubscribeSupervision,
            case_pb2.SubscribeSupervisionRequest,
            case_pb2.SupervisionEvent,
            after_cursor,
            timeout,
        )

    def follow(
        self,
        subscribe: Callable[..., Iterator[M]],
        after_cursor: int = 0,
        *,
        stop: Callable[[], bool] = lambda: False,
        max_backoff: float = 5.0,
        window: float = 300.0,
    ) -> Iterator[M]:
        """A subscription that survives hub restarts: resubscribes after the last cursor
        it delivered, with exponential backoff and jitter while the hub is away."""
        cursor, delay = after_cursor, 0.1
        while not stop():
            try:
                # Each window is one audited subscription; a new one resumes by cursor.
                for event in subscribe(cursor, timeout=window):
                    cursor = getattr(event, "cursor")  # noqa: B009
                    delay = 0.1
                    yield event
                    if stop():
                        return
            except XhubError as exc:
                if not exc.retryable:
                    raise
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, max_backoff)

    def _subscribe(
        self,
        rpc: Callable[..., Any],
        request_type: Callable[..., Any],
        event_type: type[M],
        after_cursor: int,
        timeout: float | None,
    ) -> Iterator[M]:
        payload = case_pb2.CaseSubscription(after_cursor=after_cursor)
        envelope = self.seal(payload)
        try:
            for message in rpc(request_type(envelope=envelope), timeout=timeout):
                yield self.open_response(message.envelope, event_type, payload.header.message_id)
        except grpc.RpcError as exc:
            if isinstance(exc, grpc.Call) and exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                return  # a bounded subscription ended: the caller resubscribes by cursor
            raise typed_error(exc) from exc

    # -- audit log ------------------------------------------------------------

    def checkpoint(self) -> VerifiedCheckpoint:
        """The latest checkpoint, its signature checked with the log key pinned in the bundle."""
        result = self.call(
            self.audit.GetCheckpoint,
            audit_pb2.GetCheckpointRequest,
            audit_pb2.CheckpointQuery(),
            audit_pb2.CheckpointResult,
            idempotent=True,
        )
        # The pinned key wins; an old bundle falls back to the key in the hub-signed answer.
        verifier = NoteVerifier.from_vkey(self.bundle.log_key or result.log_key)
        try:
            checkpoint = open_checkpoint(result.checkpoint_note, verifier)
        except NoteError as exc:
            raise BadResponseError(f"checkpoint does not verify with the log key: {exc}") from exc
        return VerifiedCheckpoint(checkpoint, bytes(result.checkpoint_note))

    def inclusion_proof(
        self, *, leaf_hash: bytes = b"", leaf_index: int = 0, tree_size: int = 0
    ) -> audit_pb2.InclusionProofResult:
        return self.call(
            self.audit.GetInclusionProof,
            audit_pb2.GetInclusionProofRequest,
            audit_pb2.InclusionProofQuery(
                leaf_hash=leaf_hash, leaf_index=leaf_index, tree_size=tree_size
            ),
            audit_pb2.InclusionProofResult,
            idempotent=True,
        )

    def consistency_proof(self, old_size: int, new_size: int) -> audit_pb2.ConsistencyProofResult:
        return self.call(
            self.audit.GetConsistencyProof,
            audit_pb2.GetConsistencyProofRequest,
            audit_pb2.ConsistencyProofQuery(old_size=old_size, new_size=new_size),
            audit_pb2.ConsistencyProofResult,
            idempotent=True,
        )

    def prove_logged(
        self, receipt: envelope_pb2.AuditReceipt, *, timeout: float = 15.0
    ) -> tuple[VerifiedCheckpoint, int]:
        """Prove a receipt's entry is in a signed checkpoint; returns it and the leaf index.

        Waits (bounded) while the entry is still waiting for the sequencer.
        """
        deadline = time.monotonic() + timeout
        while True:
            checkpoint = self.checkpoint()
            if checkpoint.size == 0:  # nothing sequenced yet
                if time.monotonic() > deadline:
                    raise TransportError(grpc.StatusCode.DEADLINE_EXCEEDED, "log still empty")
                time.sleep(0.2)
                continue
            try:
                proof = self.inclusion_proof(leaf_hash=receipt.leaf_hash, tree_size=checkpoint.size)
            except (XhubError, TransportError) as exc:
                pending = getattr(exc, "code", None) == grpc.StatusCode.UNAVAILABLE or (
                    isinstance(exc, MalformedError)
                )
                if not pending or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
                continue
            if proof.tree_size != checkpoint.size:
                raise BadResponseError("inclusion proof is for another tree size")
            try:
                verify_inclusion(
                    receipt.leaf_hash,
                    proof.leaf_index,
                    checkpoint.size,
                    proof.hashes,
                    checkpoint.root_hash,
                )
            except ProofError as exc:
                raise BadResponseError(f"inclusion proof does not verify: {exc}") from exc
            return checkpoint, proof.leaf_index

    def prove_consistent(self, old: VerifiedCheckpoint, new: VerifiedCheckpoint) -> None:
        """Prove ``new`` extends ``old``: the log was appended to, never rewritten."""
        if old.size == 0 or old.size == new.size:
            verify_consistency(old.size, new.size, old.root_hash, new.root_hash, [])
            return
        proof = self.consistency_proof(old.size, new.size)
        try:
            verify_consistency(old.size, new.size, old.root_hash, new.root_hash, proof.hashes)
        except ProofError as exc:
            raise BadResponseError(f"consistency proof does not verify: {exc}") from exc

    def query_audit(
        self, *, page_size: int = 100, **filters: Any
    ) -> Iterator[audit_pb2.AuditRecord]:
        """Auditor members only: every matching audit record, page after page."""
        token = ""
        while True:
            page = self.call(
                self.audit.Query,
                audit_pb2.QueryRequest,
                audit_pb2.AuditQuery(page_size=page_size, page_token=token, **filters),
                audit_pb2.AuditQueryResult,
                idempotent=True,
            )
            yield from page.records
            token = page.next_page_token
            if not token:
                return

    # -- signed calls ---------------------------------------------------------

    def seal(self, payload: M, *, case_id: str = "", purpose: str = "") -> envelope_pb2.Envelope:
        """Stamp a fresh header on ``payload`` and sign it with this member's key."""
        getattr(payload, "header").CopyFrom(  # noqa: B009
            new_header(self.member_id, self.hub_id, case_id=case_id, purpose=purpose)
        )
        return seal(payload, self.bundle.signer)

    def call(
        self,
        rpc: Callable[..., Any],
        request_type: Callable[..., Any],
        payload: Message,
        response_type: type[M],
        *,
        idempotent: bool,
        case_id: str = "",
        purpose: str = "",
    ) -> M:
        """Sign, send with a deadline, verify the answer; retry idempotent calls only."""

        def attempt() -> M:
            # A retry is a new message: fresh id and nonce, so the hub's replay check holds.
            envelope = self.seal(payload, case_id=case_id, purpose=purpose)
            request_id = getattr(payload, "header").message_id  # noqa: B009
            try:
                response = rpc(request_type(envelope=envelope), timeout=self.timeout)
            except grpc.RpcError as exc:
                raise typed_error(exc) from exc
            return self.open_response(response.envelope, response_type, request_id)

        if not idempotent:
            return attempt()
        retrying = Retrying(
            retry=retry_if_exception(_retryable),
            stop=stop_after_attempt(self.retry.attempts),
            wait=wait_exponential_jitter(
                multiplier=self.retry.initial_backoff,
                max=self.retry.max_backoff,
                jitter=self.retry.jitter,
            ),
            reraise=True,
            sleep=self._sleep or time.sleep,
        )
        return retrying(attempt)

    def open_response(
        self, envelope: envelope_pb2.Envelope, response_type: type[M], request_id: str
    ) -> M:
        """Verify the hub's signature over the exact bytes, then parse and match the header."""
        try:
            # 1. shape and payload type
            check_shape(envelope, payload_type_of(response_type))
            # 2. the hub's signature over the exact received bytes
            verify_signature_by(envelope, self.bundle.hub_verifier)
            # 3. only now parse
            message = parse_verified(envelope, response_type)
        except (MalformedError, AuthenticationError) as exc:
            raise BadResponseError(f"response refused: {exc.message}") from exc
        header: envelope_pb2.Header = getattr(message, "header")  # noqa: B009
        # 4. it must come from the hub, be for us and answer this request
        if header.sender != self.hub_id or header.recipient != self.member_id:
            raise BadResponseError(
                f"response from {header.sender!r} to {header.recipient!r} is not for us"
            )
        if header.in_reply_to != request_id:
            raise BadResponseError("response answers another request")
        issued = header.issued_at.ToDatetime(tzinfo=UTC)
        if abs(datetime.now(UTC) - issued) > self.clock_skew:
            raise BadResponseError(f"response issued at {issued.isoformat()} is outside the window")
        if header.HasField("receipt"):
            self.last_receipt = header.receipt
        return message
