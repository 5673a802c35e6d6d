"""Helpers for the refusal tests over a running hub: sealed lookups, headers, still serving."""

from __future__ import annotations

from datetime import datetime

import grpc
from hubkit import HubKit

from xhub.connectors import HubClient
from xhub.protocol.codes import make_uscc
from xhub.protocol.envelope import new_header, seal
from xhub.v1 import envelope_pb2, registry_pb2, registry_pb2_grpc

Envelope = envelope_pb2.Envelope
Code = grpc.StatusCode

# A valid member id (real USCC check characters) that is never registered.
UNKNOWN_BUT_VALID_ID = f"CN.440106.{make_uscc('1', '1', '440106', 'MB2C9088')}"


# -- helpers ------------------------------------------------------------------------------


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
