"""Signed envelopes: PAE, signature binding of payload and type, verify-then-parse order."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from xhub.protocol.envelope import (
    MAX_PAYLOAD_BYTES,
    check_shape,
    countersign,
    new_header,
    open_envelope,
    open_signed,
    pae,
    parse_verified,
    payload_type_of,
    seal,
    sign_payload,
    verify_signature_by,
)
from xhub.protocol.errors import AuthenticationError, MalformedError
from xhub.protocol.signing import (
    ECDSA_P256,
    ED25519,
    KeySigner,
    KeyVerifier,
    generate_private_key,
    public_key_der,
)
from xhub.v1 import certificate_pb2, envelope_pb2, registry_pb2

R = envelope_pb2
LOOKUP_TYPE = "xhub.v1.MemberLookup"

# Key generation is the slow part; hypothesis draws from a few keys made once.
SIGNERS = {
    "ecdsa-p256": KeySigner(generate_private_key(ECDSA_P256)),
    "ed25519": KeySigner(generate_private_key(ED25519)),
}
OTHER_SIGNERS = {
    "ecdsa-p256": KeySigner(generate_private_key(ECDSA_P256)),
    "ed25519": KeySigner(generate_private_key(ED25519)),
}
ALGORITHMS = sorted(SIGNERS)

algorithms = st.sampled_from(ALGORITHMS)
payloads = st.binary(min_size=1, max_size=2048)
payload_types = st.text(min_size=0, max_size=80)


def _copy(envelope: envelope_pb2.Envelope) -> envelope_pb2.Envelope:
    out = envelope_pb2.Envelope()
    out.CopyFrom(envelope)
    return out


def _lookup(
    sender: str = "CN.440100.A", recipient: str = "CN.440000.XHUB"
) -> registry_pb2.MemberLookup:
    message = registry_pb2.MemberLookup(member_id="CN.440103.X")
    message.header.CopyFrom(new_header(sender, recipient))
    return message


# -- PAE ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload_type", "payload", "expected"),
    [
        ("t", b"hello", b"XHUBv1 1 t 5 hello"),
        ("", b"", b"XHUBv1 0  0 "),
        (LOOKUP_TYPE, b"\x00\x01", b"XHUBv1 20 xhub.v1.MemberLookup 2 \x00\x01"),
        # lengths are in bytes, not characters: "证照" is 6 bytes of UTF-8
        ("证照", b"ab", "XHUBv1 6 证照 2 ab".encode()),
        ("a b", b"c d", b"XHUBv1 3 a b 3 c d"),
    ],
    ids=["ascii", "empty", "binary-payload", "utf8-type", "spaces"],
)
def test_pae_vectors(payload_type: str, payload: bytes, expected: bytes) -> None:
    assert pae(payload_type, payload) == expected


@given(t1=payload_types, p1=st.binary(max_size=64), t2=payload_types, p2=st.binary(max_size=64))
def test_pae_is_injective(t1: str, p1: bytes, t2: str, p2: bytes) -> None:
    """Two different (type, payload) pairs never encode to the same signed bytes."""
    assume((t1, p1) != (t2, p2))
    assert pae(t1, p1) != pae(t2, p2)


# -- signature binding (property tests, both algorithms) ------------------------------------


@given(alg=algorithms, payload=payloads, payload_type=payload_types)
def test_untouched_envelope_verifies(alg: str, payload: bytes, payload_type: str) -> None:
    signer = SIGNERS[alg]
    envelope = sign_payload(payload, payload_type, signer)
    assert envelope.payload == payload
    assert envelope.payload_type == payload_type
    assert [s.key_id for s in envelope.signatures] == [signer.key_id]
    verify_signature_by(envelope, signer.verifier())  # does not raise
    # a verifier rebuilt from the DER public key (as the registry stores it) agrees
    der = public_key_der(signer.private_key.public_key())
    verify_signature_by(envelope, KeyVerifier.from_der(der))


@given(
    alg=algorithms,
    payload=payloads,
    payload_type=payload_types,
    index=st.integers(min_value=0),
    flip=st.integers(min_value=1, max_value=255),
)
def test_any_changed_payload_byte_is_refused(
    alg: str, payload: bytes, payload_type: str, index: int, flip: int
) -> None:
    signer = SIGNERS[alg]
    envelope = sign_payload(payload, payload_type, signer)
    tampered = bytearray(payload)
    tampered[index % len(tampered)] ^= flip
    envelope.payload = bytes(tampered)
    with pytest.raises(AuthenticationError) as exc:
        verify_signature_by(envelope, signer.verifier())
    assert exc.value.reason == R.ERROR_REASON_BAD_SIGNATURE
    assert exc.value.metadata["key_id"] == signer.key_id


@given(
    alg=algorithms,
    payload=payloads,
    cut=st.integers(min_value=0),
    extra=st.binary(min_size=1, max_size=8),
)
def test_truncated_or_extended_payload_is_refused(
    alg: str, payload: bytes, cut: int, extra: bytes
) -> None:
    signer = SIGNERS[alg]
    envelope = sign_payload(payload, LOOKUP_TYPE, signer)
    for changed in (payload[: cut % len(payload)], payload + extra):
        bad = _copy(envelope)
        bad.payload = changed
        with pytest.raises(AuthenticationError) as exc:
            verify_signature_by(bad, signer.verifier())
        assert exc.value.reason == R.ERROR_REASON_BAD_SIGNATURE


@given(alg=algorithms, payload=payloads, payload_type=payload_types, new_type=payload_types)
def test_changed_payload_type_is_refused(
    alg: str, payload: bytes, payload_type: str, new_type: str
) -> None:
    """The type is bound: same payload bytes under another type must not verify."""
    assume(new_type != payload_type)
    signer = SIGNERS[alg]
    envelope = sign_payload(payload, payload_type, signer)
    envelope.payload_type = new_type
    with pytest.raises(AuthenticationError) as exc:
        verify_signature_by(envelope, signer.verifier())
    assert exc.value.reason == R.ERROR_REASON_BAD_SIGNATURE


@given(
    alg=algorithms,
    payload=payloads,
    index=st.integers(min_value=0),
    flip=st.integers(min_value=1, max_value=255),
    mode=st.sampled_from(["flip", "truncate", "append", "empty-but-one"]),
)
def test_any_changed_signature_is_refused(
    alg: str, payload: bytes, index: int, flip: int, mode: str
) -> None:
    signer = SIGNERS[alg]
    envelope = sign_payload(payload, LOOKUP_TYPE, signer)
    sig = bytearray(envelope.signatures[0].sig)
    if mode == "flip":
        sig[index % len(sig)] ^= flip
    elif mode == "truncate":
        del sig[index % len(sig) :]
    elif mode == "append":
        sig.append(flip)
    else:
        sig = bytearray(sig[:1])
    envelope.signatures[0].sig = bytes(sig)
    with pytest.raises(AuthenticationError) as exc:
        verify_signature_by(envelope, signer.verifier())
    assert exc.value.reason == R.ERROR_REASON_BAD_SIGNATURE


@given(alg=algorithms, other_alg=algorithms, payload=payloads)
def test_signature_by_another_key_under_the_right_key_id_is_refused(
    alg: str, other_alg: str, payload: bytes
) -> None:
    """A forger who copies the victim's key id still fails the signature check."""
    signer, forger = SIGNERS[alg], OTHER_SIGNERS[other_alg]
    envelope = sign_payload(payload, LOOKUP_TYPE, forger)
    envelope.signatures[0].key_id = signer.key_id
    with pytest.raises(AuthenticationError) as exc:
        verify_signature_by(envelope, signer.verifier())
    assert exc.value.reason == R.ERROR_REASON_BAD_SIGNATURE


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_no_signature_by_the_verifiers_key_is_unknown_key(alg: str) -> None:
    envelope = sign_payload(b"payload", LOOKUP_TYPE, SIGNERS[alg])
    verifier = OTHER_SIGNERS[alg].verifier()
    with pytest.raises(AuthenticationError) as exc:
        verify_signature_by(envelope, verifier)
    assert exc.value.reason == R.ERROR_REASON_UNKNOWN_KEY
    assert exc.value.metadata == {"key_id": verifier.key_id}


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_signers_report_their_algorithm_and_stable_key_id(alg: str) -> None:
    signer = SIGNERS[alg]
    assert signer.algorithm == (ED25519 if alg == "ed25519" else ECDSA_P256)
    assert signer.verifier().algorithm == signer.algorithm
    assert signer.key_id == signer.verifier().key_id
    assert len(signer.key_id) == 64 and int(signer.key_id, 16) >= 0
    assert signer.key_id != OTHER_SIGNERS[alg].key_id


# -- seal / countersign ------------------------------------------------------------------


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_seal_signs_the_serialized_bytes_under_the_full_type_name(alg: str) -> None:
    message = _lookup()
    envelope = seal(message, SIGNERS[alg])
    assert envelope.payload_type == LOOKUP_TYPE == payload_type_of(registry_pb2.MemberLookup)
    assert envelope.payload == message.SerializeToString()
    SIGNERS[alg].verifier().verify(envelope.signatures[0].sig, pae(LOOKUP_TYPE, envelope.payload))


@pytest.mark.parametrize("origin_alg", ALGORITHMS)
@pytest.mark.parametrize("hub_alg", ALGORITHMS)
def test_countersign_adds_a_second_verifying_signature(origin_alg: str, hub_alg: str) -> None:
    origin, hub = SIGNERS[origin_alg], OTHER_SIGNERS[hub_alg]
    envelope = seal(_lookup(), origin)
    countersigned = countersign(envelope, hub)

    assert len(envelope.signatures) == 1, "the original envelope must not change"
    assert [s.key_id for s in countersigned.signatures] == [origin.key_id, hub.key_id]
    assert countersigned.payload == envelope.payload
    assert countersigned.payload_type == envelope.payload_type
    assert countersigned.signatures[0] == envelope.signatures[0]
    verify_signature_by(countersigned, origin.verifier())
    verify_signature_by(countersigned, hub.verifier())

    # the opened message still names the origin (first signature) as the signer
    opened = open_envelope(countersigned, registry_pb2.MemberLookup, lambda _k: origin.verifier())
    assert opened.key_id == origin.key_id

    # a payload change breaks both signatures
    tampered = _copy(countersigned)
    tampered.payload = tampered.payload[:-1] + bytes([tampered.payload[-1] ^ 1])
    for verifier in (origin.verifier(), hub.verifier()):
        with pytest.raises(AuthenticationError) as exc:
            verify_signature_by(tampered, verifier)
        assert exc.value.reason == R.ERROR_REASON_BAD_SIGNATURE


def test_countersignature_over_a_different_payload_is_refused() -> None:
    """A hub signature copied onto another payload does not verify."""
    origin, hub = SIGNERS["ecdsa-p256"], OTHER_SIGNERS["ed25519"]
    first = countersign(seal(_lookup(), origin), hub)
    second = seal(_lookup(), origin)
    second.signatures.add().CopyFrom(first.signatures[1])
    verify_signature_by(second, origin.verifier())
    with pytest.raises(AuthenticationError) as exc:
        verify_signature_by(second, hub.verifier())
    assert exc.value.reason == R.ERROR_REASON_BAD_SIGNATURE


# -- open_envelope: shape, then signature, only then parse -----------------------------------


def _resolver(*signers: KeySigner) -> Callable[[str], KeyVerifier]:
    table = {s.key_id: s.verifier() for s in signers}

    def resolve(key_id: str) -> KeyVerifier:
        if key_id not in table:
            raise AuthenticationError("unknown", reason=R.ERROR_REASON_UNKNOWN_KEY)
        return table[key_id]

    return resolve


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_open_envelope_returns_the_message_parsed_from_the_verified_bytes(alg: str) -> None:
    signer = SIGNERS[alg]
    message = _lookup()
    envelope = seal(message, signer)
    opened = open_envelope(envelope, registry_pb2.MemberLookup, _resolver(signer))
    assert opened.message == message
    assert opened.header == message.header
    assert opened.key_id == signer.key_id
    assert opened.envelope is envelope


NOT_PROTOBUF = b"\xff\xff\xff"  # an unterminated varint tag: never parses


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_correctly_signed_garbage_is_malformed_payload(alg: str) -> None:
    signer = SIGNERS[alg]
    envelope = sign_payload(NOT_PROTOBUF, LOOKUP_TYPE, signer)
    with pytest.raises(MalformedError) as exc:
        open_envelope(envelope, registry_pb2.MemberLookup, _resolver(signer))
    assert exc.value.reason == R.ERROR_REASON_MALFORMED_PAYLOAD


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_badly_signed_garbage_is_bad_signature_not_malformed(alg: str) -> None:
    """The signature is checked before the payload is parsed."""
    signer = SIGNERS[alg]
    envelope = sign_payload(NOT_PROTOBUF, LOOKUP_TYPE, signer)
    envelope.signatures[0].sig = sign_payload(b"other", LOOKUP_TYPE, signer).signatures[0].sig
    with pytest.raises(AuthenticationError) as exc:
        open_envelope(envelope, registry_pb2.MemberLookup, _resolver(signer))
    assert exc.value.reason == R.ERROR_REASON_BAD_SIGNATURE


def test_garbage_under_an_unknown_key_is_unknown_key_not_malformed() -> None:
    envelope = sign_payload(NOT_PROTOBUF, LOOKUP_TYPE, OTHER_SIGNERS["ed25519"])
    with pytest.raises(AuthenticationError) as exc:
        open_envelope(envelope, registry_pb2.MemberLookup, _resolver(SIGNERS["ed25519"]))
    assert exc.value.reason == R.ERROR_REASON_UNKNOWN_KEY


def test_payload_is_not_parsed_before_the_signature_verifies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Directly: a bad signature means ParseFromString is never called."""
    signer = SIGNERS["ecdsa-p256"]
    envelope = seal(_lookup(), signer)
    envelope.payload = envelope.payload + b"\x00"
    calls: list[bytes] = []
    original = registry_pb2.MemberLookup.ParseFromString

    def spy(self: registry_pb2.MemberLookup, data: bytes) -> int:
        calls.append(data)
        return original(self, data)

    monkeypatch.setattr(registry_pb2.MemberLookup, "ParseFromString", spy)
    with pytest.raises(AuthenticationError):
        open_envelope(envelope, registry_pb2.MemberLookup, _resolver(signer))
    assert calls == []


@given(alg=algorithms, payload=st.binary(min_size=1, max_size=256))
def test_open_envelope_on_random_payloads_never_leaks_other_errors(
    alg: str, payload: bytes
) -> None:
    """Correctly signed random bytes either open with a full header or are MALFORMED_PAYLOAD."""
    signer = SIGNERS[alg]
    envelope = sign_payload(payload, LOOKUP_TYPE, signer)
    try:
        opened = open_envelope(envelope, registry_pb2.MemberLookup, _resolver(signer))
    except MalformedError as exc:
        assert exc.reason == R.ERROR_REASON_MALFORMED_PAYLOAD
    else:
        header = opened.header
        assert header.message_id and header.sender and header.recipient
        assert header.HasField("issued_at")


def _header_without(field: str) -> envelope_pb2.Header:
    header = new_header("CN.440100.A", "CN.440000.XHUB")
    header.ClearField(field)  # type: ignore[arg-type]
    return header


@pytest.mark.parametrize("missing", ["message_id", "sender", "recipient", "issued_at"])
def test_header_missing_a_required_field_is_malformed_payload(missing: str) -> None:
    signer = SIGNERS["ecdsa-p256"]
    message = registry_pb2.MemberLookup(member_id="x", header=_header_without(missing))
    envelope = seal(message, signer)
    with pytest.raises(MalformedError) as exc:
        open_envelope(envelope, registry_pb2.MemberLookup, _resolver(signer))
    assert exc.value.reason == R.ERROR_REASON_MALFORMED_PAYLOAD
    assert exc.value.metadata["missing"] == missing


def test_payload_without_header_is_malformed_payload() -> None:
    signer = SIGNERS["ed25519"]
    envelope = seal(registry_pb2.MemberLookup(member_id="CN.440103.X"), signer)
    with pytest.raises(MalformedError) as exc:
        open_envelope(envelope, registry_pb2.MemberLookup, _resolver(signer))
    assert exc.value.reason == R.ERROR_REASON_MALFORMED_PAYLOAD


# -- open_signed: the same sequence for signed objects without a header --------------------


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_open_signed_opens_a_message_without_header(alg: str) -> None:
    """A certificate carries no header: open_signed opens it, open_envelope refuses it."""
    signer = SIGNERS[alg]
    message = certificate_pb2.CertificateRef(identifier="x")
    envelope = seal(message, signer)
    verified = open_signed(envelope, certificate_pb2.CertificateRef, _resolver(signer))
    assert verified.message == message
    assert verified.key_id == signer.key_id
    assert verified.envelope is envelope
    with pytest.raises(MalformedError) as exc:
        open_envelope(envelope, certificate_pb2.CertificateRef, _resolver(signer))
    assert exc.value.reason == R.ERROR_REASON_MALFORMED_PAYLOAD


@pytest.mark.parametrize(
    ("tamper", "error", "reason"),
    [
        ("type", MalformedError, R.ERROR_REASON_WRONG_PAYLOAD_TYPE),
        ("key", AuthenticationError, R.ERROR_REASON_UNKNOWN_KEY),
        ("payload", AuthenticationError, R.ERROR_REASON_BAD_SIGNATURE),
        ("garbage", MalformedError, R.ERROR_REASON_MALFORMED_PAYLOAD),
    ],
)
def test_open_signed_refuses_in_the_order_open_envelope_does(
    tamper: str, error: type[Exception], reason: int
) -> None:
    signer = SIGNERS["ed25519"]
    ref_type = payload_type_of(certificate_pb2.CertificateRef)
    envelope = seal(certificate_pb2.CertificateRef(identifier="x"), signer)
    resolve = _resolver(signer)
    if tamper == "type":
        envelope = seal(_lookup(), signer)
    elif tamper == "key":
        resolve = _resolver(OTHER_SIGNERS["ed25519"])
    elif tamper == "payload":
        envelope.payload += b"\x00"
    else:
        envelope = sign_payload(NOT_PROTOBUF, ref_type, signer)
    with pytest.raises(error) as caught:
        open_signed(envelope, certificate_pb2.CertificateRef, resolve)
    assert getattr(caught.value, "reason") == reason  # noqa: B009


def test_parse_verified_keeps_optional_header_fields_and_times() -> None:
    now = datetime(2025, 3, 1, 8, 30, tzinfo=UTC)
    header = new_header("CN.440100.A", "CN.440000.XHUB", case_id="C1", purpose="办理", now=now)
    envelope = seal(registry_pb2.MemberLookup(member_id="m", header=header), SIGNERS["ed25519"])
    message = parse_verified(envelope, registry_pb2.MemberLookup)
    assert message.header.case_id == "C1"
    assert message.header.purpose == "办理"
    assert message.header.issued_at.ToDatetime(tzinfo=UTC) == now
    assert len(message.header.nonce) == 16


# -- check_shape: before any crypto -------------------------------------------------------


def _valid_envelope() -> envelope_pb2.Envelope:
    return seal(_lookup(), SIGNERS["ecdsa-p256"])


def _no_payload(e: envelope_pb2.Envelope) -> None:
    e.payload = b""


def _no_signatures(e: envelope_pb2.Envelope) -> None:
    del e.signatures[:]


def _empty_key_id(e: envelope_pb2.Envelope) -> None:
    e.signatures[0].key_id = ""


def _empty_sig(e: envelope_pb2.Envelope) -> None:
    e.signatures[0].sig = b""


def _second_sig_incomplete(e: envelope_pb2.Envelope) -> None:
    e.signatures.add(key_id="k", sig=b"")


def _oversize(e: envelope_pb2.Envelope) -> None:
    e.payload = b"\x00" * (MAX_PAYLOAD_BYTES + 1)


def _wrong_type(e: envelope_pb2.Envelope) -> None:
    e.payload_type = "xhub.v1.MemberListQuery"


def _no_type(e: envelope_pb2.Envelope) -> None:
    e.payload_type = ""


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (_no_payload, R.ERROR_REASON_MALFORMED_ENVELOPE),
        (_no_signatures, R.ERROR_REASON_MALFORMED_ENVELOPE),
        (_empty_key_id, R.ERROR_REASON_MALFORMED_ENVELOPE),
        (_empty_sig, R.ERROR_REASON_MALFORMED_ENVELOPE),
        (_second_sig_incomplete, R.ERROR_REASON_MALFORMED_ENVELOPE),
        (_oversize, R.ERROR_REASON_MALFORMED_ENVELOPE),
        (_wrong_type, R.ERROR_REASON_WRONG_PAYLOAD_TYPE),
        (_no_type, R.ERROR_REASON_WRONG_PAYLOAD_TYPE),
    ],
    ids=lambda v: getattr(v, "__name__", "").strip("_") or R.ErrorReason.Name(v),
)
def test_shape_errors_come_before_any_key_lookup(
    mutate: Callable[[envelope_pb2.Envelope], None], reason: int
) -> None:
    envelope = _valid_envelope()
    mutate(envelope)
    looked_up: list[str] = []

    def resolve(key_id: str) -> KeyVerifier:
        looked_up.append(key_id)
        return SIGNERS["ecdsa-p256"].verifier()

    with pytest.raises(MalformedError) as exc:
        open_envelope(envelope, registry_pb2.MemberLookup, resolve)
    assert exc.value.reason == reason
    assert looked_up == []
    with pytest.raises(MalformedError):
        check_shape(envelope, LOOKUP_TYPE)


def test_missing_envelope_is_malformed() -> None:
    with pytest.raises(MalformedError) as exc:
        open_envelope(None, registry_pb2.MemberLookup, _resolver())
    assert exc.value.reason == R.ERROR_REASON_MALFORMED_ENVELOPE


def test_wrong_type_error_names_both_types() -> None:
    envelope = _valid_envelope()
    with pytest.raises(MalformedError) as exc:
        check_shape(envelope, "xhub.v1.MemberListQuery")
    assert exc.value.metadata == {"expected": "xhub.v1.MemberListQuery", "received": LOOKUP_TYPE}
