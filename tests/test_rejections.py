"""Every refusal of DESIGN.md §4 over a real mTLS connection to a running hub.

Each refused call must carry the right gRPC status code *and* the machine-readable
``google.rpc.ErrorInfo`` reason (domain ``xhub.v1``), and the hub must keep serving.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from helpers import refused_on_the_wire as refused
from hubkit import HubKit
from rejections_world import (
    UNKNOWN_BUT_VALID_ID,
    Code,
    Envelope,
    assert_still_serving,
    flip_last,
    get_member,
    lookup,
    sealed_lookup,
    signed_with_header,
)

from xhub.connectors import HubClient, MalformedError, NotFoundError
from xhub.protocol.envelope import new_header, seal, sign_payload
from xhub.protocol.signing import (
    ECDSA_P256,
    ED25519,
    KeySigner,
    generate_private_key,
)
from xhub.v1 import envelope_pb2, registry_pb2

# -- the rejection table --------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """Build an envelope as member ``sender`` and send it over ``sender``'s connection."""

    build: Callable[[HubKit, HubClient], Envelope | None]
    code: Code
    reason: str
    sender: str = "platform"


def _no_envelope(kit: HubKit, c: HubClient) -> Envelope | None:
    return None


def _empty_payload(kit: HubKit, c: HubClient) -> Envelope:
    envelope = sealed_lookup(c, kit.member_id("issuer"))
    envelope.payload = b""
    return envelope


def _no_signatures(kit: HubKit, c: HubClient) -> Envelope:
    envelope = sealed_lookup(c, kit.member_id("issuer"))
    del envelope.signatures[:]
    return envelope


def _empty_signature_bytes(kit: HubKit, c: HubClient) -> Envelope:
    envelope = sealed_lookup(c, kit.member_id("issuer"))
    envelope.signatures[0].sig = b""
    return envelope


def _unknown_key(
    algorithm: registry_pb2.KeyAlgorithm.ValueType,
) -> Callable[[HubKit, HubClient], Envelope]:
    def build(kit: HubKit, c: HubClient) -> Envelope:
        envelope = sealed_lookup(c, kit.member_id("issuer"))
        stranger = KeySigner(generate_private_key(algorithm))
        return sign_payload(envelope.payload, envelope.payload_type, stranger)

    return build


def _flipped_payload_byte(kit: HubKit, c: HubClient) -> Envelope:
    envelope = sealed_lookup(c, kit.member_id("issuer"))
    envelope.payload = flip_last(envelope.payload)
    return envelope


def _flipped_signature_byte(kit: HubKit, c: HubClient) -> Envelope:
    envelope = sealed_lookup(c, kit.member_id("issuer"))
    envelope.signatures[0].sig = flip_last(envelope.signatures[0].sig)
    return envelope


def _list_query(kit: HubKit, c: HubClient) -> Envelope:
    return c.transport.seal(registry_pb2.MemberListQuery(page_size=1))


def _list_query_relabelled(kit: HubKit, c: HubClient) -> Envelope:
    """Type bound by the signature: relabelling a signed query as a lookup breaks it."""
    envelope = c.transport.seal(registry_pb2.MemberListQuery(page_size=1))
    envelope.payload_type = "xhub.v1.MemberLookup"
    return envelope


def _signed_by(other: str) -> Callable[[HubKit, HubClient], Envelope]:
    """Envelope sealed by another member's SDK (its key, its header) on our connection."""

    def build(kit: HubKit, c: HubClient) -> Envelope:
        return sealed_lookup(kit.client(other), kit.member_id("issuer"))

    return build


def _header_names(other: str) -> Callable[[HubKit, HubClient], Envelope]:
    """Our own key, but the header claims to come from another member."""

    def build(kit: HubKit, c: HubClient) -> Envelope:
        return signed_with_header(c, kit.member_id("issuer"), sender=kit.member_id(other))

    return build


def _issued(delta: timedelta) -> Callable[[HubKit, HubClient], Envelope]:
    def build(kit: HubKit, c: HubClient) -> Envelope:
        return signed_with_header(c, kit.member_id("issuer"), issued_at=datetime.now(UTC) + delta)

    return build


def _recipient(recipient: Callable[[HubKit], str]) -> Callable[[HubKit, HubClient], Envelope]:
    def build(kit: HubKit, c: HubClient) -> Envelope:
        return signed_with_header(c, kit.member_id("issuer"), recipient=recipient(kit))

    return build


def _signed_garbage(kit: HubKit, c: HubClient) -> Envelope:
    return sign_payload(b"\xff\xff\xff", "xhub.v1.MemberLookup", c.bundle.signer)


def _no_header(kit: HubKit, c: HubClient) -> Envelope:
    return seal(lookup(kit.member_id("issuer")), c.bundle.signer)


def _long_message_id(kit: HubKit, c: HubClient) -> Envelope:
    return signed_with_header(c, kit.member_id("issuer"), message_id="m" * 65)


def _invalid_issued_at(seconds: int, nanos: int) -> Callable[[HubKit, HubClient], Envelope]:
    """Correctly signed, but issued_at is not a valid Timestamp (outside year 1–9999)."""

    def build(kit: HubKit, c: HubClient) -> Envelope:
        header = new_header(c.member_id, c.hub_id)
        header.issued_at.seconds = seconds
        header.issued_at.nanos = nanos
        message = registry_pb2.MemberLookup(header=header, member_id=kit.member_id("issuer"))
        return seal(message, c.bundle.signer)

    return build


def _nul_in(field: str) -> Callable[[HubKit, HubClient], Envelope]:
    """A header text field carrying a NUL character (valid proto3 string, not valid text)."""

    def build(kit: HubKit, c: HubClient) -> Envelope:
        header = new_header(c.member_id, c.hub_id)
        setattr(header, field, "case\x00" + header.message_id[:20])
        message = registry_pb2.MemberLookup(header=header, member_id=kit.member_id("issuer"))
        return seal(message, c.bundle.signer)

    return build


def _lookup_of(member_id: Callable[[HubKit], str]) -> Callable[[HubKit, HubClient], Envelope]:
    def build(kit: HubKit, c: HubClient) -> Envelope:
        return sealed_lookup(c, member_id(kit))

    return build


CASES: dict[str, Case] = {
    # malformed envelope
    "no-envelope": Case(_no_envelope, Code.INVALID_ARGUMENT, "MALFORMED_ENVELOPE"),
    "empty-payload": Case(_empty_payload, Code.INVALID_ARGUMENT, "MALFORMED_ENVELOPE"),
    "no-signatures": Case(_no_signatures, Code.INVALID_ARGUMENT, "MALFORMED_ENVELOPE"),
    "empty-signature": Case(_empty_signature_bytes, Code.INVALID_ARGUMENT, "MALFORMED_ENVELOPE"),
    # unknown key
    "unknown-p256-key": Case(_unknown_key(ECDSA_P256), Code.UNAUTHENTICATED, "UNKNOWN_KEY"),
    "unknown-ed25519-key": Case(_unknown_key(ED25519), Code.UNAUTHENTICATED, "UNKNOWN_KEY"),
    # bad signature
    "flipped-payload-byte": Case(_flipped_payload_byte, Code.UNAUTHENTICATED, "BAD_SIGNATURE"),
    "flipped-payload-byte-ed25519": Case(
        _flipped_payload_byte, Code.UNAUTHENTICATED, "BAD_SIGNATURE", sender="department"
    ),
    "flipped-signature-byte": Case(_flipped_signature_byte, Code.UNAUTHENTICATED, "BAD_SIGNATURE"),
    "relabelled-payload-type": Case(_list_query_relabelled, Code.UNAUTHENTICATED, "BAD_SIGNATURE"),
    # wrong payload type
    "list-query-to-get-member": Case(_list_query, Code.INVALID_ARGUMENT, "WRONG_PAYLOAD_TYPE"),
    # sender is not the TLS peer
    "signed-by-other-member-p256": Case(
        _signed_by("issuer"), Code.UNAUTHENTICATED, "SENDER_NOT_PEER"
    ),
    "signed-by-other-member-ed25519": Case(
        _signed_by("department"), Code.UNAUTHENTICATED, "SENDER_NOT_PEER"
    ),
    "header-names-other-member": Case(
        _header_names("auditor"), Code.UNAUTHENTICATED, "SENDER_NOT_PEER"
    ),
    "header-names-other-member-ed25519": Case(
        _header_names("issuer"), Code.UNAUTHENTICATED, "SENDER_NOT_PEER", sender="department"
    ),
    # clock skew (window ±5 min)
    "issued-6-min-ago": Case(_issued(timedelta(minutes=-6)), Code.UNAUTHENTICATED, "CLOCK_SKEW"),
    "issued-6-min-ahead": Case(_issued(timedelta(minutes=6)), Code.UNAUTHENTICATED, "CLOCK_SKEW"),
    "issued-a-day-ago": Case(_issued(timedelta(days=-1)), Code.UNAUTHENTICATED, "CLOCK_SKEW"),
    "issued-a-year-ahead": Case(_issued(timedelta(days=365)), Code.UNAUTHENTICATED, "CLOCK_SKEW"),
    # recipient is not this hub
    "recipient-another-member": Case(
        _recipient(lambda k: k.member_id("issuer")), Code.INVALID_ARGUMENT, "WRONG_RECIPIENT"
    ),
    "recipient-another-hub": Case(
        _recipient(lambda k: "CN.440100.XHUB"), Code.INVALID_ARGUMENT, "WRONG_RECIPIENT"
    ),
    # signed, but the payload is not a usable message
    "signed-garbage-payload": Case(_signed_garbage, Code.INVALID_ARGUMENT, "MALFORMED_PAYLOAD"),
    "payload-without-header": Case(_no_header, Code.INVALID_ARGUMENT, "MALFORMED_PAYLOAD"),
    "empty-recipient": Case(_recipient(lambda k: ""), Code.INVALID_ARGUMENT, "MALFORMED_PAYLOAD"),
    "message-id-too-long": Case(_long_message_id, Code.INVALID_ARGUMENT, "MALFORMED_PAYLOAD"),
    "nul-in-message-id": Case(_nul_in("message_id"), Code.INVALID_ARGUMENT, "MALFORMED_PAYLOAD"),
    "nul-in-case-id": Case(_nul_in("case_id"), Code.INVALID_ARGUMENT, "MALFORMED_PAYLOAD"),
    "issued-at-year-10000": Case(
        _invalid_issued_at(253_402_300_800, 0), Code.INVALID_ARGUMENT, "MALFORMED_PAYLOAD"
    ),
    "issued-at-nanos-out-of-range": Case(
        _invalid_issued_at(int(datetime.now(UTC).timestamp()), 2_000_000_000),
        Code.INVALID_ARGUMENT,
        "MALFORMED_PAYLOAD",
    ),
    # admitted, but the lookup itself is refused
    "unknown-member-id": Case(
        _lookup_of(lambda k: UNKNOWN_BUT_VALID_ID), Code.NOT_FOUND, "NOT_FOUND"
    ),
    "hub-own-id-is-not-a-member": Case(
        _lookup_of(lambda k: k.hub_id), Code.INVALID_ARGUMENT, "INVALID_FIELD"
    ),
    "empty-member-id": Case(_lookup_of(lambda k: ""), Code.INVALID_ARGUMENT, "INVALID_FIELD"),
    "garbage-member-id": Case(
        _lookup_of(lambda k: "not a member id"), Code.INVALID_ARGUMENT, "INVALID_FIELD"
    ),
    "lowercase-uscc-member-id": Case(
        _lookup_of(lambda k: k.member_id("issuer").lower()), Code.INVALID_ARGUMENT, "INVALID_FIELD"
    ),
    "bad-subsystem-member-id": Case(
        _lookup_of(lambda k: k.member_id("auditor") + ".Bad_Sub"),
        Code.INVALID_ARGUMENT,
        "INVALID_FIELD",
    ),
}

# The part of the table that also runs on PostgreSQL (one case per admission step).
CORE = [
    "empty-payload",
    "unknown-p256-key",
    "flipped-payload-byte",
    "list-query-to-get-member",
    "signed-by-other-member-ed25519",
    "header-names-other-member",
    "issued-6-min-ago",
    "issued-6-min-ahead",
    "recipient-another-hub",
    "signed-garbage-payload",
    "nul-in-message-id",
    "nul-in-case-id",
    "issued-at-year-10000",
    "unknown-member-id",
    "garbage-member-id",
]


def _run_case(kit: HubKit, case: Case) -> None:
    client = kit.client(case.sender)
    envelope = case.build(kit, client)
    refused(lambda: get_member(client, envelope), case.code, case.reason)
    assert_still_serving(kit, case.sender)


@pytest.mark.parametrize("name", list(CASES))
def test_rejection(shared_hub_kit: HubKit, name: str) -> None:
    _run_case(shared_hub_kit, CASES[name])


@pytest.mark.postgres
@pytest.mark.parametrize("name", CORE)
def test_rejection_on_postgres(shared_hub_kit_pg: HubKit, name: str) -> None:
    _run_case(shared_hub_kit_pg, CASES[name])


# DESIGN.md §4's rejections and the NOT_FOUND / INVALID_FIELD answers of the lookup itself.
SECTION_4_REASONS = {
    "MALFORMED_ENVELOPE",
    "MALFORMED_PAYLOAD",
    "WRONG_PAYLOAD_TYPE",
    "UNKNOWN_KEY",
    "BAD_SIGNATURE",
    "SENDER_NOT_PEER",
    "CLOCK_SKEW",
    "WRONG_RECIPIENT",
    "NOT_FOUND",
    "INVALID_FIELD",
}


def test_every_reason_of_section_4_is_in_the_table() -> None:
    """Guard against the table silently losing a row (MEMBER_REVOKED, MEMBER_EXPIRED and
    REPLAYED_MESSAGE need state and have their own tests below)."""
    assert {case.reason for case in CASES.values()} == SECTION_4_REASONS
    for reason in SECTION_4_REASONS:
        assert envelope_pb2.ErrorReason.Value("ERROR_REASON_" + reason)


# -- skew window boundary ------------------------------------------------------------------


@pytest.mark.parametrize("minutes", [-4, -1, 1, 4])
def test_issued_at_inside_the_window_is_accepted(shared_hub_kit: HubKit, minutes: int) -> None:
    client = shared_hub_kit.client("platform")
    envelope = signed_with_header(
        client,
        shared_hub_kit.member_id("issuer"),
        issued_at=datetime.now(UTC) + timedelta(minutes=minutes),
    )
    response = get_member(client, envelope)
    assert response.envelope.payload_type == "xhub.v1.MemberLookupResult"


# -- typed errors through the SDK -------------------------------------------------------------


@pytest.mark.parametrize(
    ("member_id", "error_type", "reason"),
    [
        (UNKNOWN_BUT_VALID_ID, NotFoundError, "NOT_FOUND"),
        ("CN.44.bad", MalformedError, "INVALID_FIELD"),
    ],
)
def test_sdk_raises_typed_errors(
    shared_hub_kit: HubKit, member_id: str, error_type: type[Exception], reason: str
) -> None:
    client = shared_hub_kit.client("platform")
    with pytest.raises(error_type) as caught:
        client.get_member(member_id)
    assert caught.value.reason_name == reason  # type: ignore[attr-defined]
