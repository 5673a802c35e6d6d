"""Refusals that depend on state, over a running hub: replayed messages, revoked, superseded
and expired members, and client certificates the hub did not issue.
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from helpers import refused_on_the_wire as refused
from hubkit import HubKit, MemberDef
from rejections_world import (
    UNKNOWN_BUT_VALID_ID,
    Code,
    Envelope,
    assert_still_serving,
    get_member,
    sealed_lookup,
    signed_with_header,
)

from xhub.connectors import AuthenticationError
from xhub.hub.core.ca import CertificateAuthority
from xhub.hub.core.db import MemberRow
from xhub.protocol.envelope import new_header, seal
from xhub.protocol.errors import error_info_of
from xhub.protocol.pki import load_certificate
from xhub.protocol.signing import (
    KeySigner,
    load_private_key,
)
from xhub.v1 import registry_pb2, registry_pb2_grpc

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


def test_reused_message_id_with_new_signature_is_refused(shared_hub_kit: HubKit) -> None:
    """Same message id, fresh nonce and signature: still a replay."""
    client = shared_hub_kit.client("platform")
    first = sealed_lookup(client, shared_hub_kit.member_id("issuer"))
    get_member(client, first)
    again = signed_with_header(
        client, shared_hub_kit.member_id("auditor"), message_id=lookup_message_id(first)
    )
    assert again.payload != first.payload
    refused(lambda: get_member(client, again), Code.ALREADY_EXISTS, "REPLAYED_MESSAGE")


def test_message_ids_are_per_sender(shared_hub_kit: HubKit) -> None:
    """Another member's message with the same id is not a replay of ours."""
    platform, auditor = shared_hub_kit.client("platform"), shared_hub_kit.client("auditor")
    first = sealed_lookup(platform, shared_hub_kit.member_id("issuer"))
    get_member(platform, first)
    theirs = signed_with_header(
        auditor, shared_hub_kit.member_id("issuer"), message_id=lookup_message_id(first)
    )
    assert get_member(auditor, theirs).envelope.payload


def test_refused_message_does_not_burn_its_id(shared_hub_kit: HubKit) -> None:
    """A message refused at admission (wrong recipient) can be re-sent correctly."""
    client = shared_hub_kit.client("platform")
    message_id = "7f0c3c1e-retry-after-fix"
    wrong = signed_with_header(
        client,
        shared_hub_kit.member_id("issuer"),
        recipient="CN.440100.XHUB",
        message_id=message_id,
    )
    refused(lambda: get_member(client, wrong), Code.INVALID_ARGUMENT, "WRONG_RECIPIENT")
    fixed = signed_with_header(client, shared_hub_kit.member_id("issuer"), message_id=message_id)
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
