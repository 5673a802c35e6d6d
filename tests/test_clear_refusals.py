"""Clear statuses only (issue 12, item 5): an auditor query the database could not take is
refused INVALID_FIELD naming the field (never INTERNAL), no refusal echoes back more than a
bounded value, and the hub log has one line per refused call naming member, method, reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from audit_world import send
from google.protobuf.timestamp_pb2 import Timestamp
from helpers import refused, refused_on_the_wire
from hubkit import HubKit

from xhub.protocol.envelope import sign_payload
from xhub.protocol.errors import ECHO_LIMIT, clip, error_info_of, shown
from xhub.v1 import audit_pb2, registry_pb2

Code = grpc.StatusCode
GET_MEMBER = "/xhub.v1.RegistryService/GetMember"


def _query(kit: HubKit, **fields: Any) -> list[audit_pb2.AuditRecord]:
    auditor = kit.client("auditor")
    return list(auditor.query_audit(**fields))


BAD_QUERIES: list[tuple[str, dict[str, Any], str]] = [
    ("cursor-2^63", {"page_token": str(2**63)}, "page_token"),
    ("cursor-2^64", {"page_token": str(2**64)}, "page_token"),
    ("cursor-negative", {"page_token": "-1"}, "page_token"),
    ("cursor-text", {"page_token": "1 OR 1=1"}, "page_token"),
    ("page-size-negative", {"page_size": -1}, "page_size"),
    ("since-beyond-9999", {"since": Timestamp(seconds=2**62)}, "since"),
    ("until-before-0001", {"until": Timestamp(seconds=-(2**62))}, "until"),
    ("until-bad-nanos", {"until": Timestamp(seconds=0, nanos=2_000_000_000)}, "until"),
    ("member-id-nul", {"member_id": "CN.440100.\x00"}, "member_id"),
    ("case-id-too-long", {"case_id": "C" * 65}, "case_id"),
    ("method-too-long", {"method": "/" + "m" * 200}, "method"),
    ("subject-nul", {"subject": "44010319800101\x00"}, "subject"),
]


@pytest.mark.parametrize(
    ("fields", "field"), [c[1:] for c in BAD_QUERIES], ids=[c[0] for c in BAD_QUERIES]
)
def test_out_of_range_auditor_query_names_the_field(
    kit: HubKit, fields: dict[str, Any], field: str
) -> None:
    error = refused(lambda: _query(kit, **fields), Code.INVALID_ARGUMENT, "INVALID_FIELD")
    assert error.metadata["field"] == field
    assert "audit_leaf" in error.metadata  # refused, and audited like any refusal


def test_auditor_query_at_the_bounds_is_answered(kit: HubKit) -> None:
    kit.client("platform").get_member(kit.member_id("issuer"))
    assert _query(kit, page_token=str(2**63 - 1)) == []
    everything = _query(
        kit,
        since=Timestamp(seconds=-62135596800),  # 0001-01-01
        until=Timestamp(seconds=253402300799),  # 9999-12-31 23:59:59
    )
    assert everything


def test_proof_query_with_a_wrong_length_leaf_hash_names_the_field(hub_kit: HubKit) -> None:
    platform = hub_kit.client("platform")
    for leaf_hash in (b"\x01" * 31, b"\x01" * 20_000):
        error = refused(
            lambda leaf=leaf_hash: platform.inclusion_proof(leaf_hash=leaf),  # type: ignore[misc]
            Code.INVALID_ARGUMENT,
            "INVALID_FIELD",
        )
        assert error.metadata["field"] == "leaf_hash"
    error = refused(
        lambda: platform.inclusion_proof(leaf_index=2**64 - 1, tree_size=2**64 - 1),
        Code.INVALID_ARGUMENT,
        "INVALID_FIELD",
    )
    assert error.metadata["field"] == "tree_size"


# -- bounded echoes ------------------------------------------------------------------------------


def test_shown_and_clip_bound_what_is_echoed() -> None:
    assert shown("CN.440100.X") == "CN.440100.X"
    long = shown("x" * 20_000)
    assert len(long) == ECHO_LIMIT and long.endswith("…")
    assert shown("a\x00b\n") == "a\\x00b\\x0a"
    assert len(shown("\x00" * 1000)) == ECHO_LIMIT
    assert clip("营业执照" * 10, 5) == "营业执照…"


def _echo_checks(error: grpc.Call, sent: str) -> None:
    details = error.details() or ""
    info = error_info_of(error)
    assert info is not None
    assert len(details) < 300, details
    assert sent not in details
    for key, value in info.metadata.items():
        assert len(value) <= ECHO_LIMIT, (key, value)


def test_a_20kb_payload_type_is_not_echoed(shared_hub_kit: HubKit) -> None:
    platform = shared_hub_kit.client("platform")
    long_type = "xhub.v1." + "T" * 20_000
    envelope = platform.transport.seal(registry_pb2.MemberLookup(member_id="x"))
    envelope.payload_type = long_type
    error = refused_on_the_wire(
        lambda: send(platform, envelope), Code.INVALID_ARGUMENT, "WRONG_PAYLOAD_TYPE"
    )
    _echo_checks(error, long_type)
    info = error_info_of(error)
    assert info is not None and info.metadata["field"] == "payload_type"
    # Just within the type bound but the wrong type: the received type is shown, cut.
    near = "xhub.v1." + "T" * 110
    envelope = sign_payload(envelope.payload, near, platform.bundle.signer)
    error = refused_on_the_wire(
        lambda: send(platform, envelope), Code.INVALID_ARGUMENT, "WRONG_PAYLOAD_TYPE"
    )
    _echo_checks(error, near)
    info = error_info_of(error)
    assert info is not None and info.metadata["received"] == shown(near)


ECHOES: list[tuple[str, Callable[[HubKit, str], Any], str]] = [
    (
        "key-id",
        lambda kit, value: _with_key_id(kit, value),
        "UNKNOWN_KEY",
    ),
    (
        "member-id",
        lambda kit, value: send(
            kit.client("platform"),
            kit.client("platform").transport.seal(registry_pb2.MemberLookup(member_id=value)),
        ),
        "INVALID_FIELD",
    ),
]


def _with_key_id(kit: HubKit, key_id: str) -> Any:
    platform = kit.client("platform")
    envelope = platform.transport.seal(registry_pb2.MemberLookup(member_id="x"))
    envelope.signatures[0].key_id = key_id
    return send(platform, envelope)


@pytest.mark.parametrize(("call", "reason"), [c[1:] for c in ECHOES], ids=[c[0] for c in ECHOES])
def test_long_values_are_echoed_bounded(
    shared_hub_kit: HubKit, call: Callable[[HubKit, str], Any], reason: str
) -> None:
    value = "Z" * 5000
    error = refused_on_the_wire(
        lambda: call(shared_hub_kit, value),
        Code.UNAUTHENTICATED if reason == "UNKNOWN_KEY" else Code.INVALID_ARGUMENT,
        reason,
    )
    _echo_checks(error, value)


# -- one log line per refused call ------------------------------------------------------------


def test_one_log_line_per_refused_call_names_member_method_reason(
    shared_hub_kit: HubKit, caplog: pytest.LogCaptureFixture
) -> None:
    platform = shared_hub_kit.client("platform")
    envelope = platform.transport.seal(registry_pb2.MemberLookup(member_id="x"))
    envelope.payload = envelope.payload[:-1] + bytes([envelope.payload[-1] ^ 1])
    caplog.set_level(logging.DEBUG, logger="xhub")
    refused_on_the_wire(lambda: send(platform, envelope), Code.UNAUTHENTICATED, "BAD_SIGNATURE")
    lines = [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("xhub") and "BAD_SIGNATURE" in r.getMessage()
    ]
    assert lines == [
        f"refused {GET_MEMBER} from {platform.member_id}: UNAUTHENTICATED BAD_SIGNATURE: "
        "signature does not verify over the payload"
    ]
