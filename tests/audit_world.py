"""Helpers for the audit log's tests over a running hub (DESIGN.md §7): sending a lookup,
the leaf hash of a refused call, the auditor's record of an entry, waiting for the sequencer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from hubkit import HubKit
from sqlalchemy import text

from xhub.connectors import HubClient
from xhub.protocol.codes import make_uscc
from xhub.protocol.envelope import new_header, seal, sign_payload
from xhub.protocol.errors import (
    error_info_of,
)
from xhub.protocol.log import merkle
from xhub.protocol.signing import ECDSA_P256, KeySigner, generate_private_key
from xhub.v1 import audit_pb2, envelope_pb2, registry_pb2

Envelope = envelope_pb2.Envelope
ALLOWED = audit_pb2.AUDIT_DECISION_ALLOWED
DENIED = audit_pb2.AUDIT_DECISION_DENIED
GET_MEMBER = "/xhub.v1.RegistryService/GetMember"
LIST_MEMBERS = "/xhub.v1.RegistryService/ListMembers"
AUDIT = "/xhub.v1.AuditService/"


# -- helpers ----------------------------------------------------------------------------------


def parse(entry_bytes: bytes) -> audit_pb2.AuditEntry:
    entry = audit_pb2.AuditEntry()
    entry.ParseFromString(entry_bytes)
    return entry


def send(client: HubClient, envelope: Envelope | None) -> registry_pb2.GetMemberResponse:
    request = (
        registry_pb2.GetMemberRequest()
        if envelope is None
        else registry_pb2.GetMemberRequest(envelope=envelope)
    )
    response: registry_pb2.GetMemberResponse = client.transport.registry.GetMember(
        request, timeout=5
    )
    return response


def refused_leaf(send_call: Callable[[], object], reason: str) -> bytes:
    """Run a call that must be refused with ``reason``; the leaf hash of its audit entry."""
    with pytest.raises(grpc.RpcError) as caught:
        send_call()
    assert isinstance(caught.value, grpc.Call)
    info = error_info_of(caught.value)
    assert info is not None and info.reason == reason, caught.value.details()
    assert "audit_leaf" in info.metadata, f"no audit_leaf in {dict(info.metadata)}"
    leaf = bytes.fromhex(info.metadata["audit_leaf"])
    assert len(leaf) == 32
    return leaf


def lookup_header(
    client: HubClient,
    member_id: str,
    *,
    recipient: str | None = None,
    issued_at: datetime | None = None,
) -> Envelope:
    header = new_header(
        client.member_id, client.hub_id if recipient is None else recipient, now=issued_at
    )
    return seal(registry_pb2.MemberLookup(header=header, member_id=member_id), client.bundle.signer)


def header_of(envelope: Envelope) -> envelope_pb2.Header:
    return registry_pb2.MemberLookup.FromString(envelope.payload).header


def record_of(auditor: HubClient, leaf: bytes, **filters: Any) -> audit_pb2.AuditRecord:
    """The auditor's view of the entry whose leaf hash is ``leaf``."""
    for record in auditor.query_audit(include_envelopes=True, **filters):
        if merkle.leaf_hash(record.entry) == leaf:
            return record
    raise AssertionError(f"no audit record with leaf hash {leaf.hex()}")


def receipt_for(leaf: bytes) -> envelope_pb2.AuditReceipt:
    return envelope_pb2.AuditReceipt(leaf_hash=leaf)


def wait_all_sequenced(kit: HubKit, timeout: float = 15.0) -> int:
    """Wait (no calls in flight) until the sequencer indexed every entry; the entry count."""
    deadline = time.monotonic() + timeout
    while True:
        with kit.engine.connect() as connection:
            pending, total = connection.execute(
                text(
                    "SELECT SUM(CASE WHEN leaf_index IS NULL THEN 1 ELSE 0 END), COUNT(*) "
                    "FROM audit_entries"
                )
            ).one()
        if not pending:
            return int(total)
        assert time.monotonic() < deadline, f"{pending} entries still pending"
        time.sleep(0.05)


def stamp(moment: datetime) -> Timestamp:
    value = Timestamp()
    value.FromDatetime(moment)
    return value


def log_key(kit: HubKit) -> str:
    return kit.client("auditor").bundle.log_key


# -- the refusals the tests send -------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    build: Callable[[HubKit, HubClient], Envelope | None]
    reason: str


def _bad_signature(kit: HubKit, c: HubClient) -> Envelope:
    envelope = c.transport.seal(registry_pb2.MemberLookup(member_id=kit.member_id("issuer")))
    envelope.payload = envelope.payload[:-1] + bytes([envelope.payload[-1] ^ 1])
    return envelope


def _unknown_key(kit: HubKit, c: HubClient) -> Envelope:
    envelope = c.transport.seal(registry_pb2.MemberLookup(member_id=kit.member_id("issuer")))
    return sign_payload(
        envelope.payload, envelope.payload_type, KeySigner(generate_private_key(ECDSA_P256))
    )


def _signed_by_issuer(kit: HubKit, c: HubClient) -> Envelope:
    return kit.client("issuer").transport.seal(
        registry_pb2.MemberLookup(member_id=kit.member_id("issuer"))
    )


def _wrong_recipient(kit: HubKit, c: HubClient) -> Envelope:
    return lookup_header(c, kit.member_id("issuer"), recipient="CN.440100.XHUB")


def _stale(kit: HubKit, c: HubClient) -> Envelope:
    return lookup_header(
        c, kit.member_id("issuer"), issued_at=datetime.now(UTC) - timedelta(minutes=6)
    )


def _replay(kit: HubKit, c: HubClient) -> Envelope:
    envelope = c.transport.seal(registry_pb2.MemberLookup(member_id=kit.member_id("issuer")))
    send(c, envelope)  # accepted once
    return envelope


def _no_envelope(kit: HubKit, c: HubClient) -> None:
    return None


def _signed_garbage(kit: HubKit, c: HubClient) -> Envelope:
    return sign_payload(b"\xff\xff\xff", "xhub.v1.MemberLookup", c.bundle.signer)


def _bad_member_id(kit: HubKit, c: HubClient) -> Envelope:
    return c.transport.seal(registry_pb2.MemberLookup(member_id="not a member id"))


def _unknown_member(kit: HubKit, c: HubClient) -> Envelope:
    unknown = f"CN.440106.{make_uscc('1', '1', '440106', 'MB2C9088')}"  # valid, not registered
    return c.transport.seal(registry_pb2.MemberLookup(member_id=unknown))


REFUSALS: dict[str, Refusal] = {
    "bad-signature": Refusal(_bad_signature, "BAD_SIGNATURE"),
    "unknown-key": Refusal(_unknown_key, "UNKNOWN_KEY"),
    "signed-by-another-member": Refusal(_signed_by_issuer, "SENDER_NOT_PEER"),
    "wrong-recipient": Refusal(_wrong_recipient, "WRONG_RECIPIENT"),
    "clock-skew": Refusal(_stale, "CLOCK_SKEW"),
    "replay": Refusal(_replay, "REPLAYED_MESSAGE"),
    "no-envelope": Refusal(_no_envelope, "MALFORMED_ENVELOPE"),
    "signed-garbage": Refusal(_signed_garbage, "MALFORMED_PAYLOAD"),
    "bad-member-id": Refusal(_bad_member_id, "INVALID_FIELD"),
    "unknown-member": Refusal(_unknown_member, "NOT_FOUND"),
}


def _tamper_entry_sql(kit: HubKit, index: int) -> None:
    with kit.engine.begin() as connection:
        entry = connection.execute(
            text("SELECT entry FROM audit_entries WHERE leaf_index = :i"), {"i": index}
        ).scalar_one()
        edited = bytes(entry)
        edited = edited[:-1] + bytes([edited[-1] ^ 0x01])
        connection.execute(
            text("UPDATE audit_entries SET entry = :e WHERE leaf_index = :i"),
            {"e": edited, "i": index},
        )


def _allowed_index(kit: HubKit) -> int:
    platform = kit.client("platform")
    receipt = platform.lookup_member(kit.member_id("issuer")).header.receipt
    assert receipt.leaf_hash
    _, index = platform.prove_logged(receipt)
    return index
