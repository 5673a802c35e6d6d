"""Signed envelopes (签名信封): payload, envelope and serialization kept apart.

The signature covers PAE(payload_type, payload) over the *exact* payload bytes.
Verification never re-serializes: it checks the received bytes first and only
then parses them, and callers only ever see the message parsed from the bytes
that verified.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, TypeVar

from google.protobuf.message import DecodeError, Message

from xhub.protocol.errors import AuthenticationError, MalformedError
from xhub.protocol.signing import SignatureMismatch, Signer, Verifier
from xhub.v1 import envelope_pb2

PAE_PREFIX = b"XHUBv1"
NONCE_BYTES = 16
MAX_PAYLOAD_BYTES = 4 * 1024 * 1024

Envelope = envelope_pb2.Envelope
Header = envelope_pb2.Header


M = TypeVar("M", bound=Message)


def pae(payload_type: str, payload: bytes) -> bytes:
    """Pre-authentication encoding: binds the type so bytes cannot change meaning."""
    type_bytes = payload_type.encode("utf-8")
    return b" ".join(
        [
            PAE_PREFIX,
            str(len(type_bytes)).encode(),
            type_bytes,
            str(len(payload)).encode(),
            payload,
        ]
    )


def payload_type_of(message: Message | type[Message]) -> str:
    return message.DESCRIPTOR.full_name


def new_header(
    sender: str,
    recipient: str,
    *,
    case_id: str = "",
    purpose: str = "",
    in_reply_to: str = "",
    now: datetime | None = None,
) -> envelope_pb2.Header:
    header = envelope_pb2.Header(
        message_id=str(uuid.uuid4()),
        sender=sender,
        recipient=recipient,
        nonce=os.urandom(NONCE_BYTES),
        case_id=case_id,
        purpose=purpose,
        in_reply_to=in_reply_to,
    )
    header.issued_at.FromDatetime(now or datetime.now(UTC))
    return header


def sign_payload(payload: bytes, payload_type: str, signer: Signer) -> envelope_pb2.Envelope:
    signature = envelope_pb2.Signature(
        key_id=signer.key_id, sig=signer.sign(pae(payload_type, payload))
    )
    return envelope_pb2.Envelope(payload=payload, payload_type=payload_type, signatures=[signature])


def seal(message: Message, signer: Signer) -> envelope_pb2.Envelope:
    """Serialize once and sign those bytes."""
    return sign_payload(message.SerializeToString(), payload_type_of(message), signer)


def countersign(envelope: envelope_pb2.Envelope, signer: Signer) -> envelope_pb2.Envelope:
    """Add a signature (e.g. the hub's 副署) over the same PAE bytes."""
    signed = envelope_pb2.Envelope()
    signed.CopyFrom(envelope)
    signed.signatures.add(
        key_id=signer.key_id, sig=signer.sign(pae(envelope.payload_type, envelope.payload))
    )
    return signed


def check_shape(envelope: envelope_pb2.Envelope | None, expected_type: str) -> None:
    """Step 1–2 of verification: shape and payload type, before any crypto."""
    if envelope is None or not envelope.payload:
        raise MalformedError(
            "envelope has no payload", reason=envelope_pb2.ERROR_REASON_MALFORMED_ENVELOPE
        )
    if len(envelope.payload) > MAX_PAYLOAD_BYTES:
        raise MalformedError(
            f"payload exceeds {MAX_PAYLOAD_BYTES} bytes",
            reason=envelope_pb2.ERROR_REASON_MALFORMED_ENVELOPE,
        )
    if not envelope.signatures or not all(s.key_id and s.sig for s in envelope.signatures):
        raise MalformedError(
            "envelope carries no complete signature",
            reason=envelope_pb2.ERROR_REASON_MALFORMED_ENVELOPE,
        )
    if envelope.payload_type != expected_type:
        received = envelope.payload_type[:200]  # never echo a huge input back
        raise MalformedError(
            f"payload type {received!r} is not {expected_type!r}",
            reason=envelope_pb2.ERROR_REASON_WRONG_PAYLOAD_TYPE,
            metadata={"expected": expected_type, "received": received},
        )


def verify_signature_by(envelope: envelope_pb2.Envelope, verifier: Verifier) -> None:
    """Check the signature made by ``verifier``'s key over the exact bytes received."""
    signed_bytes = pae(envelope.payload_type, envelope.payload)
    for signature in envelope.signatures:
        if signature.key_id == verifier.key_id:
            try:
                verifier.verify(signature.sig, signed_bytes)
            except SignatureMismatch as exc:
                raise AuthenticationError(
                    "signature does not verify over the payload",
                    reason=envelope_pb2.ERROR_REASON_BAD_SIGNATURE,
                    metadata={"key_id": verifier.key_id},
                ) from exc
            return
    raise AuthenticationError(
        f"no signature by key {verifier.key_id}",
        reason=envelope_pb2.ERROR_REASON_UNKNOWN_KEY,
        metadata={"key_id": verifier.key_id},
    )


def parse_payload(envelope: envelope_pb2.Envelope, message_type: type[M]) -> M:
    """Parse the payload bytes that verified; call only after the signature check."""
    message = message_type()
    try:
        message.ParseFromString(envelope.payload)
    except DecodeError as exc:
        raise MalformedError(
            f"payload is not a valid {payload_type_of(message_type)}",
            reason=envelope_pb2.ERROR_REASON_MALFORMED_PAYLOAD,
        ) from exc
    return message


def check_header(message: Message) -> envelope_pb2.Header:
    """The message's header, complete and bounded; refused before any use."""
    header = getattr(message, "header", None)
    if not isinstance(header, envelope_pb2.Header) or not message.HasField("header"):
        raise MalformedError(
            "payload has no header", reason=envelope_pb2.ERROR_REASON_MALFORMED_PAYLOAD
        )
    missing = [f for f in ("message_id", "sender", "recipient") if not getattr(header, f)]
    if not header.HasField("issued_at"):
        missing.append("issued_at")
    if missing:
        raise MalformedError(
            f"header lacks {', '.join(missing)}",
            reason=envelope_pb2.ERROR_REASON_MALFORMED_PAYLOAD,
            metadata={"missing": ",".join(missing)},
        )
    _check_header_fields(header)
    return header


def parse_verified(envelope: envelope_pb2.Envelope, message_type: type[M]) -> M:
    """Parse the payload bytes that verified and check its header (after the signature)."""
    message = parse_payload(envelope, message_type)
    check_header(message)
    return message


HEADER_LIMITS = {
    "message_id": 64,
    "sender": 128,
    "recipient": 128,
    "case_id": 64,
    "purpose": 512,
    "in_reply_to": 64,
}


_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")


def _check_header_fields(header: envelope_pb2.Header) -> None:
    """Bounded, printable header strings and a representable time: refused before any use."""
    for name, limit in HEADER_LIMITS.items():
        value: str = getattr(header, name)
        if len(value) > limit or _CONTROL_CHARACTER.search(value):
            raise MalformedError(
                f"header {name} must be at most {limit} printable characters",
                reason=envelope_pb2.ERROR_REASON_MALFORMED_PAYLOAD,
                metadata={"field": name},
            )
    try:
        header.issued_at.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError) as exc:
        raise MalformedError(
            "header issued_at is not a valid timestamp",
            reason=envelope_pb2.ERROR_REASON_MALFORMED_PAYLOAD,
            metadata={"field": "issued_at"},
        ) from exc


@dataclass(frozen=True)
class Verified(Generic[M]):
    """A payload whose signature verified, parsed from exactly the bytes that verified."""

    message: M
    envelope: envelope_pb2.Envelope
    key_id: str


@dataclass(frozen=True)
class Opened(Verified[M]):
    """A verified request or answer, with its checked header pulled out."""

    header: envelope_pb2.Header


def open_signed(
    envelope: envelope_pb2.Envelope | None,
    message_type: type[M],
    resolve: Callable[[str], Verifier],
) -> Verified[M]:
    """The one opening sequence: shape, type, key, signature, and only then the payload.

    For signed objects without a header (a certificate); requests and answers go through
    ``open_envelope``. ``resolve`` maps the first signature's key id to a Verifier or
    raises AuthenticationError(UNKNOWN_KEY). Raises MalformedError (shape, payload type,
    undecodable payload) or AuthenticationError (key, signature).
    """
    # 1–2. shape and payload type
    check_shape(envelope, payload_type_of(message_type))
    assert envelope is not None
    # 3. the first signature is the signer's; find its key
    verifier = resolve(envelope.signatures[0].key_id)
    # 4. signature over the exact received bytes
    verify_signature_by(envelope, verifier)
    # 5. only now parse
    message = parse_payload(envelope, message_type)
    return Verified(message=message, envelope=envelope, key_id=verifier.key_id)


def open_envelope(
    envelope: envelope_pb2.Envelope | None,
    message_type: type[M],
    resolve: Callable[[str], Verifier],
) -> Opened[M]:
    """Verify then parse (``open_signed``), then check the header the message carries.

    ``resolve`` maps the first signature's key id to a Verifier or raises
    AuthenticationError(UNKNOWN_KEY).
    """
    verified = open_signed(envelope, message_type, resolve)
    # 6. a complete, bounded header
    header = check_header(verified.message)
    return Opened(
        message=verified.message, envelope=verified.envelope, key_id=verified.key_id, header=header
    )
