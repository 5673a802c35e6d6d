"""Offline checks of what the hub sends (no network I/O: callers fetch first, then verify).

As sigstore-python's verifier does, each check holds what it trusts and runs in numbered
steps over data already in hand: the hub's answer to a request, certificates pulled for a
case, a dispatched case against its platform's signatures, a downloaded material's bytes.
Every failure is a ``BadResponseError`` (a ``VerificationError``): a forged or inconsistent
answer, never retried.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from cryptography import x509
from google.protobuf.message import Message

from xhub.certificates_store.model import (
    CertificateDataError,
    open_certificate,
    validate_certificate,
    validate_holder,
)
from xhub.protocol.envelope import Opened, open_envelope
from xhub.protocol.errors import AuthenticationError, BadResponseError, MalformedError
from xhub.protocol.key_rotation import EVER, HubKey, KeyWindow, outside_window
from xhub.protocol.pki import (
    CertificateError,
    Roots,
    as_roots,
    issuing_root,
    load_certificate,
    verify_member_certificate,
)
from xhub.protocol.signing import KeyVerifier, Verifier
from xhub.v1 import case_pb2, certificate_pb2, envelope_pb2, intake_pb2, material_pb2, registry_pb2

M = TypeVar("M", bound=Message)


class UnknownHubKey(BadResponseError):
    """An answer is signed by a hub key this client has not learnt (yet): the transport
    fetches the hub's key history once and tries again."""

    def __init__(self, key_id: str) -> None:
        super().__init__(f"response refused: answer signed by key {key_id[:64]!r}, not the hub's")
        self.key_id = key_id


def open_answer(
    envelope: envelope_pb2.Envelope,
    response_type: type[M],
    *,
    hub_verifier: Verifier,
    hub_id: str,
    member_id: str,
    request_id: str,
    now: datetime,
    clock_skew: timedelta,
    hub_keys: Mapping[str, HubKey] | None = None,
) -> M:
    """The hub's answer to ``request_id``, or BadResponseError.

    1. The kernel's opener: shape, payload type, the hub's signature over the exact bytes
       (a key that is neither the pinned ``hub_verifier`` nor one of ``hub_keys``, learnt
       through the hub's signed hand-overs, is ``UnknownHubKey``), and only then the parse.
    2. It comes from the hub and is addressed to this member.
    3. It answers this very request.
    4. It was issued inside the clock window, and inside the window of the hub key that
       signed it (a handed-over key signs nothing after its hand-over).
    """
    keys = dict(hub_keys or {})
    keys.setdefault(hub_verifier.key_id, HubKey(hub_verifier, KeyWindow(EVER)))  # type: ignore[arg-type]

    def hub_key(key_id: str) -> Verifier:
        if key_id not in keys:
            raise UnknownHubKey(key_id)
        return keys[key_id].verifier

    # 1. verify, then parse
    try:
        opened = open_envelope(envelope, response_type, hub_key)
    except (MalformedError, AuthenticationError) as exc:
        raise BadResponseError(f"response refused: {exc.message}") from exc
    header = opened.header
    problem = outside_window(
        "the hub",
        opened.key_id,
        keys[opened.key_id].window,
        header.issued_at.ToDatetime(tzinfo=UTC),
        clock_skew,
    )
    if problem:
        raise BadResponseError(f"response refused: {problem}")
    # 2. from the hub, for us
    if header.sender != hub_id or header.recipient != member_id:
        raise BadResponseError(
            f"response from {header.sender!r} to {header.recipient!r} is not for us"
        )
    # 3. the answer to this request
    if header.in_reply_to != request_id:
        raise BadResponseError("response answers another request")
    # 4. fresh
    issued = header.issued_at.ToDatetime(tzinfo=UTC)
    if abs(now - issued) > clock_skew:
        raise BadResponseError(f"response issued at {issued.isoformat()} is outside the window")
    return opened.message


def check_member_certificate(member: registry_pb2.Member, ca_cert: Roots) -> x509.Certificate:
    """A looked-up member's certificate, chained to one of our hub CA roots and naming that
    member."""
    try:
        cert = load_certificate(member.certificate_der)
        named = verify_member_certificate(cert, ca_cert)
    except (CertificateError, ValueError) as exc:
        raise BadResponseError(f"certificate of {member.member_id} is not valid: {exc}") from exc
    if named != member.member_id:
        raise BadResponseError(f"certificate names {named}, not {member.member_id}")
    return cert


def of_unknown_root(member: registry_pb2.Member, roots: Roots) -> bool:
    """True when the member's certificate is issued by none of ``roots`` (the hub may have
    renewed its CA: learn the new root, then check again)."""
    try:
        return issuing_root(load_certificate(member.certificate_der), roots) is None
    except ValueError:
        return False


class TrustedMembers:
    """Members whose certificates chained to our hub CA, and their signing keys.

    The trust root for checking other members' signatures (issuers, platforms): the client
    fetches a member once, ``add`` checks it, and later checks need no network.
    """

    def __init__(self, ca_cert: Roots, *, clock_skew: timedelta = timedelta(minutes=5)) -> None:
        # The hub CA roots (several once the hub renewed its CA); ``roots`` may grow.
        self.roots = as_roots(ca_cert)
        # A message's issued_at is the signer's clock, a key's window the hub's.
        self._slack = clock_skew
        self._members: dict[str, registry_pb2.Member] = {}
        self._verifiers: dict[bytes, KeyVerifier] = {}

    def __contains__(self, member_id: object) -> bool:
        return member_id in self._members

    def add(self, member: registry_pb2.Member) -> None:
        """Trust ``member`` once its certificate chains to a hub CA root (BadResponseError)."""
        check_member_certificate(member, self.roots)
        self._members[member.member_id] = member

    def member(self, member_id: str) -> registry_pb2.Member:
        try:
            return self._members[member_id]
        except KeyError:
            raise BadResponseError(f"{member_id[:128]!r} is not a member checked here") from None

    def verifier(self, member_id: str, key_id: str, at: datetime | None = None) -> KeyVerifier:
        """The registered signing key ``key_id`` of ``member_id``, valid at ``at`` (the signed
        message's issued_at; None: any time the key was registered). BadResponseError if it
        is no key of the member, or ``at`` is outside the key's window widened by the clock
        skew (naming both)."""
        for key in self.member(member_id).signing_keys:
            if key.key_id == key_id:
                if at is not None:
                    window = KeyWindow.of(key)
                    problem = outside_window(member_id, key_id, window, at, self._slack)
                    if problem:
                        raise BadResponseError(problem)
                verifier = self._verifiers.get(key.public_key_der)
                if verifier is None:
                    verifier = KeyVerifier.from_der(key.public_key_der)
                    self._verifiers[key.public_key_der] = verifier
                return verifier
        raise BadResponseError(f"{key_id[:64]!r} is not a registered key of {member_id}")

    def open_from(
        self, member_id: str, envelope: envelope_pb2.Envelope, message_type: type[M]
    ) -> Opened[M]:
        """A message ``member_id`` signed, opened by the kernel's opener with that member's
        registered keys, then checked to be signed with the key valid at its issued_at (so
        what was signed before a rotation verifies, and a retired key signs nothing later).

        Raises: BadResponseError naming what disagreed.
        """
        try:
            opened = open_envelope(envelope, message_type, lambda k: self.verifier(member_id, k))
        except (MalformedError, AuthenticationError) as exc:
            raise BadResponseError(f"the message of {member_id} is invalid: {exc}") from exc
        self.verifier(member_id, opened.key_id, opened.header.issued_at.ToDatetime(tzinfo=UTC))
        return opened


def _short(value: str) -> str:
    """A value in a message a client logs: enough to tell two codes apart (their first and
    last four characters, as ID numbers are masked), not a whole ID number."""
    return repr(value[:4] + "…" + value[-4:] if len(value) > 10 else value)


def _differs(what: str, field: str, source: str, hub: object, signed: object) -> BadResponseError:
    shown = [_short(v) if isinstance(v, str) else repr(v) for v in (hub, signed)]
    return BadResponseError(
        f"{what}: {field} differs from the {source}: hub {shown[0]}, signed {shown[1]}"
    )


def open_member_message(
    envelope: envelope_pb2.Envelope,
    message_type: type[M],
    members: TrustedMembers,
    *,
    signer: str,
    hub_id: str,
    what: str,
) -> M:
    """A message ``signer`` signed with one of its registered keys and sent to ``hub_id``
    (the originator's own bytes that the hub forwards), or BadResponseError naming ``what``."""

    def signer_key(key_id: str) -> Verifier:
        try:
            return members.verifier(signer, key_id)
        except BadResponseError as exc:
            raise BadResponseError(f"{what}: signed with {exc.message}") from exc

    try:
        opened = open_envelope(envelope, message_type, signer_key)
    except (MalformedError, AuthenticationError) as exc:
        raise BadResponseError(f"{what}: the signed message is invalid: {exc}") from exc
    header = opened.header
    # The key must have been valid when the message was signed (rotated keys: 密钥轮换).
    try:
        members.verifier(signer, opened.key_id, header.issued_at.ToDatetime(tzinfo=UTC))
    except BadResponseError as exc:
        raise BadResponseError(f"{what}: {exc.message}") from exc
    if header.sender != signer or header.recipient != hub_id:
        raise BadResponseError(
            f"{what}: the signed message was sent by {header.sender!r} to "
            f"{header.recipient!r}, not by {signer!r} to the hub"
        )
    return opened.message


def issuers_to_fetch(answer: intake_pb2.PulledCertificates) -> set[str]:
    """The issuers whose keys checking ``answer`` needs (unsigned copies fail before that)."""
    return {p.issuer_member_id for p in answer.certificates if p.certificate.signatures}


def verify_pulled_certificate(
    pulled: certificate_pb2.PulledCertificate, issuers: TrustedMembers
) -> certificate_pb2.ElectronicCertificate:
    """A pulled certificate, checked against its issuer's registered keys.

    1. It carries a signature.
    2. The signing key is a registered key of the issuer the hub names.
    3. That key's signature covers the exact bytes; only then the certificate is parsed.
    4. The certificate names the signer as its issuer.
    """
    # 1.
    if not pulled.certificate.signatures:
        raise BadResponseError("pulled certificate carries no signature")
    # 2.
    try:
        verifier = issuers.verifier(
            pulled.issuer_member_id, pulled.certificate.signatures[0].key_id
        )
    except BadResponseError as exc:
        raise BadResponseError(
            f"pulled certificate is not signed by a key of its issuer: {exc}"
        ) from exc
    # 3.
    try:
        cert = open_certificate(pulled.certificate, verifier)
    except (MalformedError, AuthenticationError) as exc:
        raise BadResponseError(f"pulled certificate fails verification: {exc}") from exc
    # 4.
    if cert.issuer_code != issuers.member(pulled.issuer_member_id).uscc:
        raise BadResponseError("certificate names another issuer than its signer")
    return cert


def verify_pulled(
    answer: intake_pb2.PulledCertificates,
    issuers: TrustedMembers,
    asked: intake_pb2.CertificatePull | None = None,
    *,
    holders: frozenset[str] = frozenset(),
) -> list[certificate_pb2.ElectronicCertificate]:
    """Every certificate of a pull answer, each checked by ``verify_pulled_certificate``,
    then — from the issuer's signed bytes, never the hub's wrapper — against what was
    ``asked`` and the prepared case's ``holders`` (when known):

    1. the holder is the one asked for, and one of the case's holders;
    2. the type is one of the types asked for;
    3. the identifier is unique in the answer and the certificate's own: the signed
       certificate meets every rule of ``validate_certificate`` (type, issuer and version
       are the ones inside the identifier), as the hub checked at publishing.
    """
    certificates = [verify_pulled_certificate(pulled, issuers) for pulled in answer.certificates]
    if asked is None:
        return certificates
    wanted = asked.holder_code.strip().upper()
    types = set(asked.type_codes)
    seen: set[str] = set()
    for cert in certificates:
        what = f"pulled certificate {cert.identifier[:64]!r}"
        holder = cert.holder_code.upper()
        # 1.
        if holder != wanted:
            raise BadResponseError(
                f"{what}: holder differs from the one asked for: asked {_short(wanted)}, "
                f"issuer signed {_short(holder)}"
            )
        if holders and holder not in holders:
            raise BadResponseError(f"{what}: holder {_short(holder)} is not of the prepared case")
        # 2.
        if cert.type_code not in types:
            raise BadResponseError(
                f"{what}: type differs from the ones asked for: asked "
                f"{', '.join(sorted(types))[:200]}, issuer signed {cert.type_code[:32]!r}"
            )
        # 3.
        if cert.identifier in seen:
            raise BadResponseError(f"{what}: identifier returned twice")
        seen.add(cert.identifier)
        try:
            validate_certificate(cert)
        except CertificateDataError as exc:
            raise BadResponseError(
                f"{what}: the issuer's signed certificate breaks a certificate rule: {exc.message}"
            ) from exc
    return certificates


def verify_dispatched_case(
    case: case_pb2.DispatchedCase, platforms: TrustedMembers, *, hub_id: str
) -> case_pb2.CaseSubmission:
    """End-to-end check of a dispatched case (端到端核验): what the hub forwards is what
    the platform signed, so not even the hub can alter an application unnoticed.

    1. The submission and every resubmission verify against the platform's own
       registered key valid when each was issued, and were addressed by that platform to
       this hub.
    2. Each resubmission names this case.
    3. The case is the one the platform signed: its prepared case (= the header's case
       id), applicant code (and a code type that fits it), item code.
    4. Applicant name and form are the submission's.
    5. The certificate and material references are exactly those the platform's
       signed messages name.
    """
    what = f"case {case.case_number[:40]}"

    def platform_message(envelope: envelope_pb2.Envelope, message_type: type[M]) -> M:
        return open_member_message(
            envelope,
            message_type,
            platforms,
            signer=case.platform,
            hub_id=hub_id,
            what=f"{what}: the platform's message",
        )

    # 1. signatures and senders
    submission = platform_message(case.submission, case_pb2.CaseSubmission)
    resubmissions = [
        platform_message(envelope, case_pb2.CaseResubmission) for envelope in case.resubmissions
    ]
    # 2. each resubmission is for this case
    if any(r.case_number != case.case_number for r in resubmissions):
        raise BadResponseError(f"{what}: a resubmission names another case")
    # 3. which case: prepared case, applicant, item
    if submission.prepared_case_id != submission.header.case_id:
        raise BadResponseError(
            f"{what}: the signed prepared_case_id {submission.prepared_case_id[:40]!r} is not "
            f"the case the submission is bound to ({submission.header.case_id[:40]!r})"
        )
    signed: dict[str, tuple[object, object]] = {
        "applicant_code": (case.applicant_code, submission.applicant_code),
        "item_code": (case.item.code, submission.item_code),
        "applicant_name": (case.applicant_name, submission.applicant_name[:200]),
        "form": (dict(case.form), dict(submission.form)),
    }
    for field, (hub, platform) in signed.items():
        if hub != platform:
            if isinstance(hub, dict) and isinstance(platform, dict):
                keys = sorted(
                    k for k in hub.keys() | platform.keys() if hub.get(k) != platform.get(k)
                )
                raise BadResponseError(
                    f"{what}: form differs from the platform's signed submission in field(s) "
                    f"{', '.join(keys)[:200]}"
                )
            raise _differs(what, field, "platform's signed submission", hub, platform)
    try:
        validate_holder(submission.applicant_code, submission.applicant_code_type)
    except CertificateDataError as exc:
        raise BadResponseError(
            f"{what}: the signed applicant_code_type does not fit the applicant code"
        ) from exc
    # 5. the references
    certificates = list(submission.certificate_identifiers)
    materials = list(submission.material_ids)
    for resubmission in resubmissions:
        certificates.extend(resubmission.certificate_identifiers)
        materials.extend(resubmission.material_ids)
    if [c.identifier for c in case.certificates] != certificates or [
        m.material_id for m in case.materials
    ] != materials:
        raise BadResponseError(
            f"{what}: certificate or material references differ from the platform's signed messages"
        )
    return submission


def verify_case_certificates(
    answer: intake_pb2.PulledCertificates,
    certificates: list[certificate_pb2.ElectronicCertificate],
    *,
    case_number: str,
    wanted: list[str],
    complete: bool,
) -> None:
    """A department's pull for a case (部门调阅), after ``verify_pulled`` checked each
    certificate against its issuer: the certificates are the ones asked for.

    1. Each is annotated for this case.
    2. Each issuer-signed identifier is one of ``wanted`` (the identifiers asked for, or the
       case's references as the platform signed them), and none comes twice.
    3. With ``complete`` (``wanted`` are the case's signed references), every one came.
    """
    seen: set[str] = set()
    for pulled, cert in zip(answer.certificates, certificates, strict=True):
        # 1.
        if pulled.annotation.case_id != case_number:
            raise BadResponseError(
                f"pulled certificate {cert.identifier} is annotated for case "
                f"{pulled.annotation.case_id!r}, not {case_number!r}"
            )
        # 2.
        if cert.identifier not in wanted:
            raise BadResponseError(
                f"pulled certificate differs from what case {case_number} references: "
                f"issuer signed {cert.identifier}, asked {', '.join(wanted) or '(none)'}"
            )
        if cert.identifier in seen:
            raise BadResponseError(f"pulled certificate {cert.identifier} came twice")
        seen.add(cert.identifier)
    # 3.
    missing = [identifier for identifier in wanted if identifier not in seen]
    if complete and missing:
        raise BadResponseError(
            f"case {case_number} references certificate(s) the hub did not hand over: "
            + ", ".join(missing)
        )


def check_descriptor_names(descriptor: material_pb2.MaterialDescriptor, material_id: str) -> None:
    """A download's descriptor is of the material asked for."""
    if descriptor.material.material_id != material_id:
        raise BadResponseError(
            f"download describes material {descriptor.material.material_id!r}, "
            f"asked {material_id!r}"
        )


def verify_download_manifest(
    descriptor: material_pb2.MaterialDescriptor,
    uploaders: TrustedMembers,
    *,
    hub_id: str,
    material_id: str = "",
    holders: frozenset[str] = frozenset(),
) -> material_pb2.MaterialManifest:
    """The uploader's signed manifest a download's descriptor carries, checked before any
    content is read:

    1. the descriptor is of the material asked for (``material_id``, when given);
    2. the manifest verifies with a registered key of the uploader the descriptor names,
       who sent it to this hub;
    3. the hub's descriptor agrees with it (size, SHA-256, material type, media type,
       source case, valid until, name) — the content is then checked against the
       manifest (``ContentCheck(manifest)``), never the descriptor;
    4. the signed applicant is one of the prepared case's ``holders`` (when known): the
       manifest names no material id, so this is what tells another applicant's material
       served under the asked id.
    """
    material = descriptor.material
    what = f"material {material.material_id[:40]}"
    # 1.
    if material_id and material.material_id != material_id:
        raise BadResponseError(
            f"{what}: the descriptor is of another material than asked: asked "
            f"{material_id[:40]!r}, hub {material.material_id[:40]!r}"
        )
    if not descriptor.HasField("manifest"):
        raise BadResponseError(f"{what}: the download carries no uploader's signed manifest")
    # 2.
    manifest = open_member_message(
        descriptor.manifest,
        material_pb2.MaterialManifest,
        uploaders,
        signer=material.uploader,
        hub_id=hub_id,
        what=f"{what}: the uploader's manifest",
    )
    # 3.
    signed: dict[str, tuple[object, object]] = {
        "size": (material.size, manifest.size),
        "sha256": (material.sha256.hex(), manifest.sha256.hex()),
        "material_type": (material.material_type, manifest.material_type),
        "media_type": (material.media_type, manifest.media_type),
        "source_case": (material.source_case, manifest.source_case),
        "valid_until": (material.valid_until, manifest.valid_until),
        "name": (material.name, manifest.name or manifest.material_type),
    }
    for field, (hub, uploader) in signed.items():
        if hub != uploader:
            raise _differs(what, field, "uploader's signed manifest", hub, uploader)
    # 4.
    applicant = manifest.applicant_code.upper()
    if holders and applicant not in holders:
        raise BadResponseError(
            f"{what}: the uploader's signed manifest is of applicant {_short(applicant)}, "
            "not of the prepared case"
        )
    return manifest


class ContentCheck:
    """A download's bytes against the size and SHA-256 the uploader signed (its manifest;
    a descriptor's ``MaterialRef`` has the same two fields)."""

    def __init__(self, material: material_pb2.MaterialManifest | material_pb2.MaterialRef) -> None:
        self._material = material
        self._digest = hashlib.sha256()
        self._size = 0

    def add(self, chunk: bytes) -> None:
        """Count and hash the next chunk; refuse as soon as it runs past the size."""
        self._size += len(chunk)
        if self._size > self._material.size:
            raise BadResponseError("download is longer than the material")
        self._digest.update(chunk)

    def finish(self) -> None:
        """Refuse a download shorter than, or different from, the signed descriptor."""
        if self._size != self._material.size or self._digest.digest() != self._material.sha256:
            raise BadResponseError(
                f"downloaded content differs from the signed manifest: {self._size} bytes, "
                f"SHA-256 {self._digest.hexdigest()[:16]}…; signed {self._material.size} bytes, "
                f"SHA-256 {self._material.sha256.hex()[:16]}…"
            )
