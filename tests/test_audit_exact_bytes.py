"""The log stores and hashes the exact envelope bytes the hub received, not a re-encoding.

A valid envelope sent with its fields in another order than protobuf writes them (hand-built
wire bytes over a real channel, no serializer) is admitted; its audit entry's digest and the
stored envelope equal what was sent byte for byte, and the offline evidence bundle verifies
with them. ``protocol.wire`` cuts the field out of the request.
"""

from __future__ import annotations

import hashlib

import grpc
import pytest
from audit_world import log_key, lookup_header, wait_all_sequenced
from hubkit import HubKit

from xhub.connectors.sdk.auditor import export_evidence
from xhub.connectors.sdk.client import secure_channel
from xhub.protocol.log import merkle
from xhub.protocol.log.evidence import verify_bundle
from xhub.protocol.log.note import NoteVerifier
from xhub.protocol.wire import WireError, field_parts
from xhub.v1 import audit_pb2, envelope_pb2, registry_pb2

GET_MEMBER = "/xhub.v1.RegistryService/GetMember"


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _len_field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _reordered(envelope: envelope_pb2.Envelope) -> bytes:
    """The envelope's fields written last to first (protobuf writes them by number)."""
    out = b"".join(_len_field(3, s.SerializeToString()) for s in envelope.signatures)
    out += _len_field(2, envelope.payload_type.encode())
    return out + _len_field(1, envelope.payload)


def test_field_parts_cuts_fields_in_any_order_and_every_occurrence() -> None:
    data = _varint(2 << 3) + _varint(300) + _len_field(1, b"ab") + _len_field(5, b"x")
    data += _varint(7 << 3 | 5) + b"\x00\x01\x02\x03" + _len_field(1, b"cd")
    assert field_parts(data, 1) == [b"ab", b"cd"]
    assert field_parts(data, 5) == [b"x"]
    assert field_parts(data, 4) == []
    with pytest.raises(WireError):
        field_parts(_varint(1 << 3 | 2) + _varint(10) + b"short", 1)


@pytest.mark.parametrize(
    "kit_name", ["hub_kit", pytest.param("hub_kit_pg", marks=pytest.mark.postgres)]
)
def test_reordered_envelope_is_logged_byte_for_byte(
    request: pytest.FixtureRequest, kit_name: str
) -> None:
    kit: HubKit = request.getfixturevalue(kit_name)
    platform = kit.client("platform")
    envelope = lookup_header(platform, kit.member_id("issuer"))
    sent = _reordered(envelope)
    assert sent != envelope.SerializeToString()
    assert envelope_pb2.Envelope.FromString(sent) == envelope
    # The envelope field after an unknown field, as another encoder might write it.
    wire_request = _varint(9 << 3) + _varint(1) + _len_field(1, sent)
    with secure_channel(kit.bundle("platform")) as channel:
        answer = channel.unary_unary(
            GET_MEMBER, request_serializer=None, response_deserializer=None
        )(wire_request, timeout=10)
    response = registry_pb2.GetMemberResponse.FromString(answer)
    leaf = _receipt_leaf(response.envelope)
    wait_all_sequenced(kit)

    auditor = kit.client("auditor")
    (record,) = [
        r
        for r in auditor.query_audit(method=GET_MEMBER, include_envelopes=True)
        if merkle.leaf_hash(r.entry) == leaf
    ]
    entry = audit_pb2.AuditEntry.FromString(record.entry)
    assert entry.decision == audit_pb2.AUDIT_DECISION_ALLOWED
    assert entry.envelope_sha256 == hashlib.sha256(sent).digest()
    assert record.envelope == sent

    bundle, _ = export_evidence(auditor, method=GET_MEMBER)
    (logged,) = [e for _, e, _, _ in bundle.entries if merkle.leaf_hash(e) == leaf]
    (stored,) = [env for _, e, env, _ in bundle.entries if merkle.leaf_hash(e) == leaf]
    assert logged == record.entry and stored == sent
    verifier = NoteVerifier.from_vkey(log_key(kit))
    report = verify_bundle(bundle, verifier)
    assert report.envelopes_checked >= 1


def _receipt_leaf(response_envelope: envelope_pb2.Envelope) -> bytes:
    answer = registry_pb2.MemberLookupResult.FromString(response_envelope.payload)
    return bytes(answer.header.receipt.leaf_hash)


def test_an_envelope_field_repeated_across_a_oneof_member_is_malformed(
    shared_hub_kit: HubKit,
) -> None:
    """UploadRequest{manifest | chunk}: manifest, chunk, manifest parses to the last manifest
    alone, so no exact bytes of the admitted envelope exist: refused, not guessed."""
    kit = shared_hub_kit
    first = lookup_header(kit.client("platform"), kit.member_id("issuer")).SerializeToString()
    data = _len_field(1, first) + _len_field(2, b"chunk") + _len_field(1, first)
    with secure_channel(kit.bundle("platform")) as channel, pytest.raises(grpc.RpcError) as caught:
        channel.stream_unary(
            "/xhub.v1.MaterialService/Upload",
            request_serializer=None,
            response_deserializer=None,
        )(iter([data]), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "does not parse as this method's request message" in (caught.value.details() or "")
