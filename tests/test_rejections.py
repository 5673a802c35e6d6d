"""Every refusal of DESIGN.md §4 over a real mTLS connection to a running hub.

Each refused call must carry the right gRPC status code *and* the machine-readable
``google.rpc.ErrorInfo`` reason (domain ``xhub.v1``), and the hub must keep serving.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from helpers import refused_on_the_wire as refused
from hubkit import HubKit, MemberDef

from xhub.connectors import AuthenticationError, HubClient, MalformedError, NotFoundError
from xhub.hub.core.ca import CertificateAuthority
from xhub.hub.core.db import MemberRow
from xhub.protocol.codes import make_uscc
from xhub.protocol.envelope import new_header, seal, sign_payload
from xhub.protocol.errors import error_info_of
from xhub.protocol.pki import load_certificate
from xhub.protocol.signing import (
    ECDSA_P256,
    ED25519,
    KeySigner,
    generate_private_key,
    load_private_key,
)
from xhub.v1 import envelope_pb2, registry_pb2, registry_pb2_grpc

Envelope = envelope_pb2.Envelope
Code = grpc.StatusCode

# A valid member id (real USCC check characters) that is never registered.
UNKNOWN_BUT_VALID_ID = f"CN.440106.{make_uscc('1', '1', '440106', 'MB2C9088')}"


# -- helpers ------------------------------------------------------------------------------


@pytest.fixture(
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
    ids=["sqlite", "postgres"],
)
def kit(request: pytest.FixtureRequest) -> HubKit:
    """The running hub, once on SQLite and once on PostgreSQL."""
    name = "hub_kit" if request.param == "sqlite" else "hub_kit_pg"
    fixture: HubKit = request.getfixturevalue(name)
    return fixture


def get_member(
    client: HubClient,
    envelope: Envelope | None,
    stub: registry_pb2_grpc.RegistryServiceStub | None = None,
) -> registry_pb2.GetMemberResponse:
    request = (
        registry_pb2.GetMemberRequest()
        if envelope is None
        else registry_pb2.GetMemberRequest(envelope=envelope)
    )
    response: registry_pb2.GetMemberResponse = (stub or client.transport.registry).GetMember(
        request, timeout=5
    )
    return response


def lookup(member_id: str) -> registry_pb2.MemberLookup:
    return registry_pb2.MemberLookup(member_id=member_id)


def sealed_lookup(client: HubClient, member_id: str) -> Envelope:
    return client.transport.seal(lookup(member_id))


def signed_with_header(
    client: HubClient,
    member_id: str,
    *,
    sender: str | None = None,
    recipient: str | None = None,
    issued_at: datetime | None = None,
    message_id: str | None = None,
) -> Envelope:
    """A lookup signed by ``client``'s key with a hand-made header."""
    header = new_header(
        client.member_id if sender is None else sender,
        client.hub_id if recipient is None else recipient,
        now=issued_at,
    )
    if message_id is not None:
        header.message_id = message_id
    return seal(registry_pb2.MemberLookup(header=header, member_id=member_id), client.bundle.signer)


def flip_last(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 0x01])


def assert_still_serving(kit: HubKit, key: str = "platform") -> None:
    member = kit.client(key).get_member(kit.member_id("issuer"))
    assert member.member_id == kit.member_id("issuer")


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


# -- replay ----------------------------------------------------------------------------------


def test_replayed_envelope_is_refused(kit: HubKit) -> None:
    client = kit.client("platform")
    envelope = sealed_lookup(client, kit.member_id("issuer"))
    get_member(client, envelope)
    error = refused(lambda: get_member(client, envelope), Code.ALREADY_EXISTS, "REPLAYED_MESSAGE")
    info = error_info_of(error)
    assert info is not None
    assert info.metadata["message_id"] == lookup_message_id(envelope)


def lookup_message_id(envelope: Envelope) -> str:
    message = registry_pb2.MemberLookup()
    message.ParseFromString(envelope.payload)
    return message.header.message_id


def test_replay_is_refused_after_restart(kit: HubKit) -> None:
    """The replay store lives in the database: a restart forgets nothing."""
    client = kit.client("department")
    envelope = sealed_lookup(client, kit.member_id("platform"))
    get_member(client, envelope)
    before = kit.running
    kit.restart()
    assert kit.running is not before
    refused(lambda: get_member(client, envelope), Code.ALREADY_EXISTS, "REPLAYED_MESSAGE")
    # a fresh message from the same member still goes through on the new server
    assert client.get_member(kit.member_id("platform")).member_id == kit.member_id("platform")


def test_concurrent_copies_of_one_message_are_admitted_once(kit: HubKit) -> None:
    """The same envelope sent eight times at once: one answer, seven replays."""
    client = kit.client("platform")
    envelope = sealed_lookup(client, kit.member_id("issuer"))
    outcomes: list[str] = []

    def send() -> str:
        try:
            get_member(client, envelope)
        except grpc.RpcError as exc:
            assert isinstance(exc, grpc.Call)
            info = error_info_of(exc)
            return f"{exc.code().name} {info.reason if info else None}"
        return "OK"

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(lambda _i: send(), range(8)))
    assert sorted(outcomes) == ["ALREADY_EXISTS REPLAYED_MESSAGE"] * 7 + ["OK"]


def test_replica_sharing_the_database_refuses_replays_and_revoked_members(kit: HubKit) -> None:
    """Two hub servers on one database: a message admitted by one is a replay at the other,
    and a revocation is seen by both on the next call."""
    replica = kit.start_replica()
    kit.add_member(REVOKEE)
    here, there = kit.client("revokee"), kit.client("revokee", address=replica)
    envelope = sealed_lookup(here, kit.member_id("issuer"))
    get_member(here, envelope)
    refused(lambda: get_member(there, envelope), Code.ALREADY_EXISTS, "REPLAYED_MESSAGE")
    assert there.get_member(kit.member_id("issuer"))

    kit.revoke("revokee", "replica check")
    for client in (here, there):
        envelope = sealed_lookup(client, kit.member_id("issuer"))
        refused(
            functools.partial(get_member, client, envelope), Code.UNAUTHENTICATED, "MEMBER_REVOKED"
        )


def test_reused_message_id_with_new_signature_is_refused(hub_kit: HubKit) -> None:
    """Same message id, fresh nonce and signature: still a replay."""
    client = hub_kit.client("platform")
    first = sealed_lookup(client, hub_kit.member_id("issuer"))
    get_member(client, first)
    again = signed_with_header(
        client, hub_kit.member_id("auditor"), message_id=lookup_message_id(first)
    )
    assert again.payload != first.payload
    refused(lambda: get_member(client, again), Code.ALREADY_EXISTS, "REPLAYED_MESSAGE")


def test_message_ids_are_per_sender(hub_kit: HubKit) -> None:
    """Another member's message with the same id is not a replay of ours."""
    platform, auditor = hub_kit.client("platform"), hub_kit.client("auditor")
    first = sealed_lookup(platform, hub_kit.member_id("issuer"))
    get_member(platform, first)
    theirs = signed_with_header(
        auditor, hub_kit.member_id("issuer"), message_id=lookup_message_id(first)
    )
    assert get_member(auditor, theirs).envelope.payload


def test_refused_message_does_not_burn_its_id(hub_kit: HubKit) -> None:
    """A message refused at admission (wrong recipient) can be re-sent correctly."""
    client = hub_kit.client("platform")
    message_id = "7f0c3c1e-retry-after-fix"
    wrong = signed_with_header(
        client, hub_kit.member_id("issuer"), recipient="CN.440100.XHUB", message_id=message_id
    )
    refused(lambda: get_member(client, wrong), Code.INVALID_ARGUMENT, "WRONG_RECIPIENT")
    fixed = signed_with_header(client, hub_kit.member_id("issuer"), message_id=message_id)
    assert get_member(client, fixed).envelope.payload


# -- member status: revoked, superseded, expired --------------------------------------------


REVOKEE = MemberDef(
    "revokee", "广州市天河区行政审批局", "440106", ("department",), "MB2C9099", "approval"
)


def test_revoked_member_is_refused_on_the_very_next_call(kit: HubKit) -> None:
    kit.add_member(REVOKEE)
    client = kit.client("revokee")
    assert client.get_member(kit.member_id("issuer")).member_id == kit.member_id("issuer")
    running = kit.running

    kit.revoke("revokee", "部门撤并")

    error = refused(
        lambda: get_member(client, sealed_lookup(client, kit.member_id("issuer"))),
        Code.UNAUTHENTICATED,
        "MEMBER_REVOKED",
    )
    info = error_info_of(error)
    assert info is not None and info.metadata["member_id"] == kit.member_id("revokee")
    assert "部门撤并" in (error.details() or "")
    assert kit.running is running, "revocation must not need a restart"
    # the SDK surfaces it as a typed, non-retried error
    with pytest.raises(AuthenticationError) as typed:
        client.get_member(kit.member_id("issuer"))
    assert typed.value.reason_name == "MEMBER_REVOKED"
    # everyone else keeps working, and sees the revoked member only when asking for it
    platform = kit.client("platform")
    assert platform.get_member(kit.member_id("revokee")).status == (
        registry_pb2.MEMBER_STATUS_REVOKED
    )
    listed = {m.member_id for m in platform.list_members()}
    assert kit.member_id("revokee") not in listed
    everyone = {m.member_id for m in platform.list_members(include_revoked=True)}
    assert kit.member_id("revokee") in everyone


def test_superseded_certificate_is_refused(hub_kit: HubKit) -> None:
    """A certificate from the hub CA for a member, but not its registered one."""
    key = ec.generate_private_key(ec.SECP256R1())
    member_id = hub_kit.member_id("platform")
    cert = hub_kit.ca().issue(key.public_key(), "stale copy", member_id=member_id)
    channel = hub_kit.channel(private_key=key, cert=cert)
    try:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        client = hub_kit.client("platform")
        envelope = sealed_lookup(client, hub_kit.member_id("issuer"))
        refused(lambda: get_member(client, envelope, stub), Code.UNAUTHENTICATED, "MEMBER_REVOKED")
    finally:
        channel.close()
    assert_still_serving(hub_kit)


def test_hub_ca_certificate_for_unregistered_member_is_refused(hub_kit: HubKit) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = hub_kit.ca().issue(key.public_key(), "ghost", member_id=UNKNOWN_BUT_VALID_ID)
    channel = hub_kit.channel(private_key=key, cert=cert)
    try:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        signer = KeySigner(key)
        header = new_header(UNKNOWN_BUT_VALID_ID, hub_kit.hub_id)
        envelope = seal(registry_pb2.MemberLookup(header=header, member_id="x"), signer)
        refused(
            lambda: stub.GetMember(registry_pb2.GetMemberRequest(envelope=envelope), timeout=5),
            Code.UNAUTHENTICATED,
            "UNKNOWN_KEY",
        )
    finally:
        channel.close()


def test_hub_ca_certificate_naming_no_member_is_refused(hub_kit: HubKit) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = hub_kit.ca().issue(key.public_key(), "no member", dns_names=("client.example",))
    channel = hub_kit.channel(private_key=key, cert=cert)
    try:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        client = hub_kit.client("platform")
        envelope = sealed_lookup(client, hub_kit.member_id("issuer"))
        refused(lambda: get_member(client, envelope, stub), Code.UNAUTHENTICATED, "SENDER_NOT_PEER")
    finally:
        channel.close()


def test_expired_member_is_refused(kit: HubKit) -> None:
    """The registry's not_after has passed (the TLS certificate itself still validates)."""
    client = kit.client("department")
    assert client.get_member(kit.member_id("issuer"))
    kit.expire("department")
    error = refused(
        lambda: get_member(client, sealed_lookup(client, kit.member_id("issuer"))),
        Code.UNAUTHENTICATED,
        "MEMBER_EXPIRED",
    )
    info = error_info_of(error)
    assert info is not None and info.metadata["member_id"] == kit.member_id("department")
    assert_still_serving(kit)


def test_member_added_with_short_validity_is_admitted_until_it_expires(hub_kit: HubKit) -> None:
    member = hub_kit.add_member(
        MemberDef("shortlived", "临时接入单位", "440100", ("auditor",), "MB2C9077", days=1)
    )
    client = hub_kit.client("shortlived")
    assert client.get_member(hub_kit.member_id("issuer"))
    with hub_kit.session() as session:
        row = session.get(MemberRow, member.member_id)
        assert row is not None
        assert timedelta(hours=23) < row.not_after - datetime.now(UTC) <= timedelta(days=1)


def test_certificate_past_its_validity_cannot_handshake(hub_kit: HubKit) -> None:
    """A hub-CA certificate whose notAfter passed is refused by TLS itself."""
    key = ec.generate_private_key(ec.SECP256R1())
    long_ago = datetime.now(UTC) - timedelta(days=30)
    cert = hub_kit.ca().issue(
        key.public_key(), "expired", member_id=hub_kit.member_id("platform"), days=1, now=long_ago
    )
    _assert_no_handshake(hub_kit, key, cert)


# -- transport: only hub-issued client certificates ------------------------------------------


def _assert_no_handshake(
    kit: HubKit, key: ec.EllipticCurvePrivateKey | None, cert: x509.Certificate | None
) -> None:
    channel = kit.channel(private_key=key, cert=cert)
    try:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        client = kit.client("platform")
        envelope = sealed_lookup(client, kit.member_id("issuer"))
        with pytest.raises(grpc.RpcError) as caught:
            get_member(client, envelope, stub)
        assert isinstance(caught.value, grpc.Call)
        assert caught.value.code() == Code.UNAVAILABLE
        assert error_info_of(caught.value) is None, "no xhub decision: the call never arrived"
    finally:
        channel.close()
    assert_still_serving(kit)


def test_certificate_from_another_ca_cannot_handshake(hub_kit: HubKit) -> None:
    rogue = CertificateAuthority.create("rogue CA")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = rogue.issue(key.public_key(), "impostor", member_id=hub_kit.member_id("platform"))
    _assert_no_handshake(hub_kit, key, cert)


def test_client_without_certificate_cannot_connect(hub_kit: HubKit) -> None:
    _assert_no_handshake(hub_kit, None, None)


def test_hub_server_certificate_is_not_a_client_identity(hub_kit: HubKit) -> None:
    """The hub's own TLS server certificate (serverAuth only) is refused as a client."""
    paths = hub_kit.config.paths
    key = load_private_key(paths.tls_key)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    _assert_no_handshake(hub_kit, key, load_certificate(paths.tls_cert.read_bytes()))


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
