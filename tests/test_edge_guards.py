"""The RPC edge (hub/core/rpc.py): garbage bytes and internal failures get clear statuses.

Bytes that do not parse as a method's request get INVALID_ARGUMENT MALFORMED_ENVELOPE with
ErrorInfo (not gRPC's bare UNKNOWN) and an audit entry; a streaming method that breaks gives
INTERNAL with a fixed text, never the exception's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from helpers import refused_on_the_wire
from hubkit import HubKit

from xhub.connectors.sdk.client import secure_channel
from xhub.hub.cases.service import CaseService
from xhub.hub.core.rpc import INTERNAL_ERROR
from xhub.v1 import audit_pb2

Code = grpc.StatusCode
GARBAGE = b"\xff\xff\xff\xff garbage that is no protobuf"
DENIED = audit_pb2.AUDIT_DECISION_DENIED


def raw(channel: grpc.Channel, path: str, shape: str) -> Callable[[bytes], object]:
    """Send raw bytes to ``path`` as a unary, server-streaming or client-streaming call."""
    identity: dict[str, Any] = {"request_serializer": None, "response_deserializer": None}
    if shape == "unary":
        return lambda data: channel.unary_unary(path, **identity)(data, timeout=10)
    if shape == "server_stream":
        return lambda data: list(channel.unary_stream(path, **identity)(data, timeout=10))
    return lambda data: channel.stream_unary(path, **identity)(iter([data]), timeout=10)


@pytest.mark.parametrize(
    ("path", "shape"),
    [
        ("/xhub.v1.RegistryService/GetMember", "unary"),
        ("/xhub.v1.IntakeService/PullCertificates", "unary"),
        ("/xhub.v1.CaseService/SubscribeStatus", "server_stream"),
        ("/xhub.v1.MaterialService/Download", "server_stream"),
        ("/xhub.v1.MaterialService/Upload", "client_stream"),
    ],
)
def test_undecodable_requests_are_malformed_envelopes_and_audited(
    shared_hub_kit: HubKit, path: str, shape: str
) -> None:
    kit = shared_hub_kit
    with secure_channel(kit.bundle("platform")) as channel:
        error = refused_on_the_wire(
            lambda: raw(channel, path, shape)(GARBAGE), Code.INVALID_ARGUMENT, "MALFORMED_ENVELOPE"
        )
    assert "Errno" not in (error.details() or "")
    auditor = kit.client("auditor")
    entries = [
        audit_pb2.AuditEntry.FromString(record.entry)
        for record in auditor.query_audit(method=path, decision=DENIED)
    ]
    assert any(
        e.reason == "MALFORMED_ENVELOPE" and e.sender == kit.member_id("platform") for e in entries
    ), entries


def test_a_broken_streaming_method_says_internal_error_and_nothing_else(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(self: CaseService, request: Any, context: Any) -> AsyncIterator[Any]:
        raise OSError(28, "No space left on device", "/var/lib/xhub/secret-path")
        yield  # an async generator, like the real method

    monkeypatch.setattr(CaseService, "SubscribeStatus", broken)
    with HubKit(tmp_path).start() as kit, secure_channel(kit.bundle("platform")) as channel:
        stream = channel.unary_stream(
            "/xhub.v1.CaseService/SubscribeStatus",
            request_serializer=None,
            response_deserializer=None,
        )
        with pytest.raises(grpc.RpcError) as caught:
            list(stream(b"", timeout=10))
    assert caught.value.code() == Code.INTERNAL
    assert caught.value.details() == INTERNAL_ERROR
