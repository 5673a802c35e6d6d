"""The enrolment request (接入申请): what a member hands the hub to get a certificate.

The member makes it on its own machine from two key pairs it generated there:

* the **TLS key** (ECDSA P-256; the hub CA issues P-256 only) — used for mutual TLS only;
* the **signing key** (ECDSA P-256 or Ed25519) — signs messages, never used for TLS.

Format: a ``xhub.v1.EnrolmentRequest`` (member id, PKCS#10 CSR of the TLS key naming the
member as SAN URI ``urn:xhub:member:<id>``, signing public key) carried as the payload of
an ``Envelope`` signed by that signing key — the kernel's one PAE, no second one. The CSR's
own signature is the TLS key's proof of possession; the envelope's signature is the signing
key's, and it covers the member id and the exact CSR bytes, so the two keys are bound to one
request. On disk the envelope is armoured as PEM (``XHUB ENROLMENT REQUEST``) so it survives
e-mail and copy-paste; a proto (not JSON) because the signed bytes must be exact and the
kernel already signs and opens proto payloads.

Building and checking live here (kernel, no I/O beyond bytes) so the member side
(``connectors/sdk/enrolment.py``) and the hub (``hub/registry/enrolment.py``) share them.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from google.protobuf.message import DecodeError

from xhub.protocol.envelope import payload_type_of, sign_payload, verify_signature_by
from xhub.protocol.errors import AuthenticationError
from xhub.protocol.pki import CertificateError, member_id_of, member_uri
from xhub.protocol.signing import (
    KeySigner,
    KeyVerifier,
    PrivateKey,
    key_id_for,
    public_key_der,
)
from xhub.v1 import envelope_pb2, registry_pb2

PEM_LABEL = "XHUB ENROLMENT REQUEST"
PAYLOAD_TYPE = payload_type_of(registry_pb2.EnrolmentRequest)
MAX_REQUEST_BYTES = 64 * 1024


class EnrolmentError(ValueError):
    """An enrolment request is malformed or a proof of possession fails; says which."""


@dataclass(frozen=True)
class VerifiedRequest:
    """A request whose both proofs of possession held."""

    member_id: str
    tls_public_key: ec.EllipticCurvePublicKey
    signing_key: KeyVerifier
    csr_der: bytes

    @property
    def tls_key_id(self) -> str:
        return key_id_for(self.tls_public_key)


def make_request(
    member_id: str, tls_key: ec.EllipticCurvePrivateKey, signing_key: PrivateKey
) -> envelope_pb2.Envelope:
    """The signed request for ``member_id`` (both private keys stay with the caller)."""
    if tls_key is signing_key:
        raise EnrolmentError("the TLS key and the signing key must be two different keys")
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, member_id)]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(member_uri(member_id))]),
            critical=False,
        )
        .sign(tls_key, hashes.SHA256())
    )
    signer = KeySigner(signing_key)
    request = registry_pb2.EnrolmentRequest(
        member_id=member_id,
        csr_der=csr.public_bytes(Encoding.DER),
        signing_key=registry_pb2.PublicKey(
            key_id=signer.key_id,
            algorithm=signer.algorithm,
            public_key_der=public_key_der(signing_key.public_key()),
        ),
    )
    request.created_at.GetCurrentTime()
    return sign_payload(request.SerializeToString(), PAYLOAD_TYPE, signer)


def armor(envelope: envelope_pb2.Envelope) -> bytes:
    """The request as PEM text (what ``keygen`` writes to ``enrolment.req``)."""
    body = base64.encodebytes(envelope.SerializeToString()).decode("ascii")
    return f"-----BEGIN {PEM_LABEL}-----\n{body}-----END {PEM_LABEL}-----\n".encode("ascii")


def unarmor(data: bytes) -> envelope_pb2.Envelope:
    """Parse a request file (PEM armour, or the bare envelope bytes)."""
    if len(data) > MAX_REQUEST_BYTES:
        raise EnrolmentError(f"request is {len(data)} bytes; at most {MAX_REQUEST_BYTES}")
    text = data.strip()
    begin, end = f"-----BEGIN {PEM_LABEL}-----".encode(), f"-----END {PEM_LABEL}-----".encode()
    if text.startswith(b"-----BEGIN"):
        if not text.startswith(begin) or not text.endswith(end):
            raise EnrolmentError(f"not an enrolment request: expected a {PEM_LABEL} PEM block")
        try:
            data = base64.b64decode(text[len(begin) : -len(end)], validate=False)
        except (binascii.Error, ValueError) as exc:
            raise EnrolmentError(f"enrolment request armour is not base64: {exc}") from exc
    try:
        return envelope_pb2.Envelope.FromString(data)
    except DecodeError as exc:
        raise EnrolmentError("not an enrolment request: the envelope does not parse") from exc


def verify_request(envelope: envelope_pb2.Envelope) -> VerifiedRequest:
    """Check both proofs of possession and the request's shape; return what it asks for.

    Raises:
        EnrolmentError: naming the check that failed (signature count, payload type, the
            signing key's proof, the CSR's signature, the TLS key's algorithm, the member id
            the CSR names).
    """
    if envelope.payload_type != PAYLOAD_TYPE:
        raise EnrolmentError(
            f"payload type is {envelope.payload_type!r}, not an enrolment request ({PAYLOAD_TYPE})"
        )
    if len(envelope.signatures) != 1:
        raise EnrolmentError(
            "the request must carry exactly one signature, by its signing key (proof of "
            f"possession); it carries {len(envelope.signatures)}"
        )
    try:
        request = registry_pb2.EnrolmentRequest.FromString(envelope.payload)
    except DecodeError as exc:
        raise EnrolmentError("the enrolment request payload does not parse") from exc
    if not request.member_id:
        raise EnrolmentError("the request names no member id")
    signing_key = _signing_key(request.signing_key)
    signature = envelope.signatures[0]
    if signature.key_id != signing_key.key_id:
        raise EnrolmentError(
            "the request is not signed by the signing key it names (no proof of possession): "
            f"signed by {signature.key_id[:16]}…, names {signing_key.key_id[:16]}…"
        )
    try:
        verify_signature_by(envelope, signing_key)
    except AuthenticationError as exc:
        raise EnrolmentError(
            "the signing key's proof of possession does not verify: the request was not "
            "signed by the private half of the signing key it names, or was altered"
        ) from exc
    csr = _csr(request.csr_der)
    tls_key = csr.public_key()
    if not isinstance(tls_key, ec.EllipticCurvePublicKey) or not isinstance(
        tls_key.curve, ec.SECP256R1
    ):
        raise EnrolmentError(
            f"the CSR's TLS key is {_describe(tls_key)}; the hub CA issues ECDSA P-256 only"
        )
    if key_id_for(tls_key) == signing_key.key_id:
        raise EnrolmentError("the TLS key and the signing key must be two different keys")
    try:
        named = member_id_of(csr)
    except CertificateError as exc:
        raise EnrolmentError(f"the CSR does not name the member: {exc}") from exc
    if named != request.member_id:
        raise EnrolmentError(
            f"the CSR names {named}, the request names {request.member_id}: they must agree"
        )
    return VerifiedRequest(request.member_id, tls_key, signing_key, request.csr_der)


def _signing_key(published: registry_pb2.PublicKey) -> KeyVerifier:
    try:
        key = KeyVerifier.from_der(published.public_key_der)
    except ValueError as exc:
        raise EnrolmentError(f"the signing public key does not parse: {exc}") from exc
    if published.key_id and published.key_id != key.key_id:
        raise EnrolmentError("the signing key's key id is not the hash of its public key")
    if published.algorithm != key.algorithm:
        raise EnrolmentError("the signing key's algorithm does not match its public key")
    return key


def _csr(der: bytes) -> x509.CertificateSigningRequest:
    try:
        csr = x509.load_der_x509_csr(der)
    except ValueError as exc:
        raise EnrolmentError("the CSR does not parse as PKCS#10 DER") from exc
    try:
        valid = csr.is_signature_valid
    except Exception as exc:  # unsupported algorithms raise from inside cryptography
        raise EnrolmentError(f"the CSR's signature cannot be checked: {exc}") from exc
    if not valid:
        raise EnrolmentError(
            "the CSR's signature does not verify (no proof of possession of the TLS key)"
        )
    return csr


def _describe(key: object) -> str:
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"ECDSA {key.curve.name}"
    return type(key).__name__.removeprefix("_").replace("PublicKey", "") or "unsupported"
