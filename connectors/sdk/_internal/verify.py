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

from xhub.certificates_store.model import open_certificate
from xhub.protocol.envelope import Opened, open_envelope
from xhub.protocol.errors import AuthenticationError, BadResponseError, MalformedError
from xhub.protocol.key_rotation import EVER, HubKey, KeyWindow, outside_window
from xhub.protocol.pki import CertificateError, load_certificate, verify_member_certificate
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


def check_member_certificate(
    member: registry_pb2.Member, ca_cert: x509.Certificate
) -> x509.Certificate:
    """A looked-up member's certificate, chained to our hub CA and naming that member."""
    try:
        cert = load_certificate(member.certificate_der)
        named = verify_member_certificate(cert, ca_cert)
    except (CertificateError, ValueError) as exc:
        raise BadResponseError(f"certificate of {member.member_id} is not valid: {exc}") from exc
    if named != member.member_id:
        raise BadResponseError(f"certificate names {named}, not {member.member_id}")
    return cert


class TrustedMembers:
    """Members whose certificates chained to our hub CA, and their signing keys.

    The trust root for checking other members' signatures (issuers, platforms): the client
    fetches a member once, ``add`` checks it, and later checks need no network.
    """

    def __init__(
        self, ca_cert: x509.Certificate, *, clock_skew: timedelta = timedelta(minutes=5)
    ) -> None:
        self._ca_cert = ca_cert
        # A message's issued_at is the signer's clock, a key's window the hub's.
        self._slack = clock_skew
        self._members: dict[str, registry_pb2.Member] = {}
        self._verifiers: dict[bytes, KeyVerifier] = {}

    def __contains__(self, member_id: object) -> bool:
        return member_id in self._members

    def add(self, member: registry_pb2.Member) -> None:
        """Trust ``member`` once its certificate chains to the hub CA (BadResponseError)."""
        check_member_certificate(member, self._ca_cert)
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
    answer: intake_pb2.PulledCertificates, issuers: TrustedMembers
) -> list[certificate_pb2.ElectronicCertificate]:
    """Every certificate of a pull answer, each checked by ``verify_pulled_certificate``."""
    return [verify_pulled_certificate(pulled, issuers) for pulled in answer.certificates]


def verify_dispatched_case(
    case: case_pb2.DispatchedCase, platforms: TrustedMembers, *, hub_id: str
) -> case_pb2.CaseSubmission:
    """End-to-end check of a dispatched case (端到端核验): what the hub forwards is what
    the platform signed, so not even the hub can alter an application unnoticed.

    1. The submission and every resubmission verify against the platform's own
       registered key valid when each was issued, and were addressed by that platform to
       this hub.
    2. Each resubmission names this case.
    3. Applicant name and form are the submission's.
    4. The certificate and material references are exactly those the platform's
       signed messages name.
    """

    def platform_message(envelope: envelope_pb2.Envelope, message_type: type[M]) -> M:
        try:
            opened = platforms.open_from(case.platform, envelope, message_type)
        except BadResponseError as exc:
            raise BadResponseError(f"the platform's signed message is invalid: {exc}") from exc
        header = opened.header
        if header.sender != case.platform or header.recipient != hub_id:
            raise BadResponseError(
                f"the platform's message was sent by {header.sender!r} to {header.recipient!r}"
            )
        return opened.message

    # 1. signatures and senders
    submission = platform_message(case.submission, case_pb2.CaseSubmission)
    resubmissions = [
        platform_message(envelope, case_pb2.CaseResubmission) for envelope in case.resubmissions
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


class ContentCheck:
    """A download's bytes against the size and SHA-256 of the hub-signed descriptor."""

    def __init__(self, material: material_pb2.MaterialRef) -> None:
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
            raise BadResponseError("downloaded content does not match the signed descriptor")
