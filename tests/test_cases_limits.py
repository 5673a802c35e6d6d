"""Bounded by construction (issue 12): every field of a case request has a limit checked
before any write, so no member can poison another's stream; the arithmetic that keeps every
streamed message below the SDK's receive limit; an undeliverable (legacy) event is skipped,
reported, and the rest keep flowing; control characters in ids refused on both backends."""

from __future__ import annotations

import inspect
import math
import re
from datetime import UTC, datetime
from itertools import islice
from typing import Any

import grpc
import pytest
from cases_world import (
    ACCEPTED,
    SUPPLEMENT,
    UNDER_REVIEW,
    Code,
    Desk,
    count_events,
    event_id,
)
from helpers import refused
from sqlalchemy import insert

from xhub.connectors.sdk._internal import transport
from xhub.hub.binding.limits import UTF8_MAX, Id, Many, Text
from xhub.hub.cases import limits
from xhub.hub.core.db import CaseEventRow
from xhub.protocol.envelope import HEADER_LIMITS, MAX_PAYLOAD_BYTES, new_header, seal
from xhub.protocol.errors import RefusedError, typed_error
from xhub.protocol.signing import KeySigner, generate_private_key
from xhub.v1 import audit_pb2, case_pb2, certificate_pb2, envelope_pb2, intake_pb2, material_pb2

WIDE = "\U00020000"  # a 4-byte UTF-8 character: the widest a limit lets through


def _widest(limit: Id | Text) -> str:
    return WIDE * limit.chars


def maximal(message_type: type[Any]) -> Any:
    """A payload whose every bounded field is at its limit, in the widest characters."""
    message = message_type()
    for name, limit in limits.PAYLOADS[message_type].items():
        if isinstance(limit, Many) and limit.value is not None:
            getattr(message, name).update(
                {
                    f"{i:03d}" + WIDE * (limit.each.chars - 3): _widest(limit.value)
                    for i in range(limit.count)
                }
            )
        elif isinstance(limit, Many):
            getattr(message, name).extend(_widest(limit.each) for _ in range(limit.count))
        else:
            setattr(message, name, _widest(limit))
    return message


def _envelope_of(size: int) -> envelope_pb2.Envelope:
    """A signed request of exactly ``size`` bytes (its envelope limit)."""
    envelope = envelope_pb2.Envelope(payload_type="xhub.v1.X", signatures=[{"key_id": "k"}])
    envelope.payload = b"x" * (size - envelope.ByteSize())
    envelope.payload = b"x" * (len(envelope.payload) - (envelope.ByteSize() - size))
    assert envelope.ByteSize() == size
    return envelope


def _column_max(message: Any, **widths: int) -> Any:
    for name, chars in widths.items():
        setattr(message, name, WIDE * chars)
    return message


# -- the arithmetic ------------------------------------------------------------------------


def test_the_sdk_receive_limit_is_the_one_the_hub_plans_for() -> None:
    source = inspect.getsource(transport.secure_channel)
    (found,) = re.findall(r'"grpc.max_receive_message_length", ([\d *]+)\)', source)
    assert math.prod(int(factor) for factor in found.split("*")) == limits.SDK_RECEIVE_LIMIT


def test_every_field_fits_its_request_envelope() -> None:
    """The largest legitimate payload, with a maximal header, fits its envelope limit."""
    header = envelope_pb2.Header(
        message_id="m" * 64, sender="s" * 128, recipient="h" * 128, nonce=b"n" * 32,
        case_id="c" * 64, purpose=WIDE * HEADER_LIMITS["purpose"], in_reply_to="",
    )  # fmt: skip
    header.issued_at.FromDatetime(datetime.now(UTC))
    signer = KeySigner(generate_private_key())
    for message_type, bound in limits.REQUEST_BYTES.items():
        payload = maximal(message_type)
        payload.header.CopyFrom(header)
        assert seal(payload, signer).ByteSize() <= bound, message_type.__name__


def test_the_largest_events_and_their_wrapping_stay_below_the_sdk_limit() -> None:
    certificate = _column_max(
        certificate_pb2.CertificateRef(valid_from="2024-01-01", valid_until="2044-01-01"),
        identifier=160, type_code=32, type_name=100, issuer_name=200, issuer_member_id=128,
    )  # fmt: skip
    material = _column_max(
        material_pb2.MaterialRef(sha256=b"s" * 32, size=2**63, valid_until="2044-01-01"),
        material_id=40, material_type=64, name=200, media_type=100, source_case=64, uploader=128,
    )  # fmt: skip
    material.uploaded_at.FromDatetime(datetime.now(UTC))
    submission = maximal(case_pb2.CaseSubmission)
    rounds = 1 + limits.MAX_RESUBMISSIONS
    references = limits.PAYLOADS[case_pb2.CaseSubmission]["certificate_identifiers"]
    assert isinstance(references, Many)
    item_room = 256 * 1024  # a catalogue item of up to 256 KiB
    dispatched = case_pb2.DispatchedCase(
        cursor=2**64 - 1,
        case_number=WIDE * 40,
        item=intake_pb2.Item(name="i" * item_room),
        applicant_code="c" * 32,
        applicant_name=submission.applicant_name,
        certificates=[certificate] * (references.count * rounds),
        materials=[material] * (references.count * rounds),
        form=submission.form,
        submission=_envelope_of(limits.REQUEST_BYTES[case_pb2.CaseSubmission]),
        platform="p" * 128,
        stage=case_pb2.CASE_STAGE_SUBMITTED,
        resubmissions=[_envelope_of(limits.REQUEST_BYTES[case_pb2.CaseResubmission])]
        * limits.MAX_RESUBMISSIONS,
    )
    dispatched.submitted_at.FromDatetime(datetime.now(UTC))
    push = maximal(case_pb2.StatusPush)
    status = case_pb2.StatusEvent(
        cursor=2**64 - 1, case_number=push.case_number, department="d" * 128,
        stage=case_pb2.CASE_STAGE_SUPPLEMENT_REQUIRED, overall=case_pb2.CASE_STAGE_SUBMITTED,
        event_id=push.event_id, note=push.note, missing_items=push.missing_items,
        certificate_identifier=push.certificate_identifier,
        origin=_envelope_of(limits.REQUEST_BYTES[case_pb2.StatusPush]),
    )  # fmt: skip
    status.recorded_at.FromDatetime(datetime.now(UTC))
    supervision = case_pb2.SupervisionEvent(
        cursor=2**64 - 1, case_number=WIDE * 40, department="d" * 128,
        kind=case_pb2.SUPERVISION_KIND_OVERDUE, deadline="2026-12-31", accepted_on="2026-12-01",
    )  # fmt: skip
    for body in (dispatched, status, supervision):
        assert body.ByteSize() <= limits.MAX_EVENT_BYTES, (type(body).__name__, body.ByteSize())
    # The widest body the hub stores, wrapped as a stream message with the widest header.
    widest = case_pb2.DispatchedCase(cursor=2**64 - 1)
    widest.applicant_name = "a" * (limits.MAX_EVENT_BYTES - widest.ByteSize())
    widest.applicant_name = "a" * (
        len(widest.applicant_name) - (widest.ByteSize() - limits.MAX_EVENT_BYTES)
    )
    assert widest.ByteSize() == limits.MAX_EVENT_BYTES
    widest.header.CopyFrom(
        new_header(
            "h" * 128,
            "s" * 128,
            case_id="c" * 64,
            purpose=WIDE * HEADER_LIMITS["purpose"],
            in_reply_to="m" * 64,
        )
    )
    for algorithm_signer in (KeySigner(generate_private_key()),):
        wrapped = case_pb2.SubscribeCasesResponse(envelope=seal(widest, algorithm_signer))
        assert wrapped.ByteSize() <= limits.MAX_EVENT_BYTES + limits.WRAP_BYTES
    assert limits.MAX_EVENT_BYTES + limits.WRAP_BYTES < limits.SDK_RECEIVE_LIMIT
    assert len(WIDE.encode()) == UTF8_MAX


# -- over a running hub ----------------------------------------------------------------------


def test_a_huge_status_note_no_longer_poisons_the_platforms_stream(desk: Desk) -> None:
    """Before the limits a note as large as a payload may be (4 MiB) was stored twice — as
    a field and inside the signed origin — so the event, once signed, exceeded the SDK's
    receive limit and the platform's follow() never got past it. Now it is refused."""
    number = desk.submit().case_number
    department = desk.department
    push = case_pb2.StatusPush(case_number=number, stage=ACCEPTED, event_id=event_id())
    push.note = "x" * MAX_PAYLOAD_BYTES
    while (
        size := len(department.transport.seal(push, case_id=number).payload)
    ) > MAX_PAYLOAD_BYTES - 8:
        push.note = push.note[: len(push.note) - (size - MAX_PAYLOAD_BYTES + 8)]
    envelope = department.transport.seal(push, case_id=number)
    poisoned = case_pb2.StatusEvent(
        cursor=1, case_number=number, department=desk.kit.member_id("department"),
        stage=ACCEPTED, overall=ACCEPTED, event_id=push.event_id, note=push.note, origin=envelope,
    )  # fmt: skip
    poisoned.header.CopyFrom(new_header(desk.kit.hub_id, desk.kit.member_id("platform")))
    signed = seal(poisoned, KeySigner(generate_private_key()))
    assert case_pb2.SubscribeStatusResponse(envelope=signed).ByteSize() > limits.SDK_RECEIVE_LIMIT
    with pytest.raises(grpc.RpcError) as caught:
        department.transport.cases.PushStatus(
            case_pb2.PushStatusRequest(envelope=envelope), timeout=30
        )
    error = typed_error(caught.value)
    assert isinstance(error, RefusedError), error
    assert (error.code, error.reason_name) == (Code.INVALID_ARGUMENT, "INVALID_FIELD")
    assert (error.metadata["field"], error.metadata["limit"]) == ("note", "2000")
    assert count_events(desk.kit, CaseEventRow.kind == "status") == 0
    department.push_status(number, ACCEPTED, event_id=event_id(), note="意" * 2000)
    department.push_status(number, UNDER_REVIEW, event_id=event_id())
    events = list(islice(desk.platform.follow(desk.platform.subscribe_status, window=5), 2))
    assert [e.stage for e in events] == [ACCEPTED, UNDER_REVIEW]


def test_an_undeliverable_event_is_skipped_reported_and_the_rest_flow(desk: Desk) -> None:
    """A row stored before the limits, too large to send, between two deliverable ones."""
    number = desk.submit().case_number
    desk.department.push_status(number, ACCEPTED, event_id=event_id())
    platform = desk.kit.member_id("platform")
    huge = case_pb2.StatusEvent(case_number=number, note="x" * (8 * 1024 * 1024 + 10))
    with desk.kit.session() as session:
        session.execute(
            insert(CaseEventRow).values(
                case_number=number, kind="status", recipient=platform, author="legacy",
                event_id=None, department=desk.kit.member_id("department"),
                stage=int(UNDER_REVIEW), overall=int(UNDER_REVIEW),
                body=huge.SerializeToString(), created_at=datetime.now(UTC),
            )
        )  # fmt: skip
    desk.department.push_status(number, UNDER_REVIEW, event_id=event_id())
    events = list(islice(desk.platform.follow(desk.platform.subscribe_status, window=5), 2))
    assert [e.stage for e in events] == [ACCEPTED, UNDER_REVIEW]
    assert events[1].cursor > events[0].cursor + 1  # the legacy row's cursor was skipped
    reports = [
        audit_pb2.AuditEntry.FromString(r.entry)
        for r in desk.auditor.query_audit(case_id=number, decision=audit_pb2.AUDIT_DECISION_DENIED)
    ]
    assert any(
        (e.method, e.reason, e.recipient)
        == ("/xhub.v1.CaseService/SubscribeStatus", "TOO_LARGE", platform)
        for e in reports
    ), reports


SHARED_REFUSALS = [
    ("push", "note", "2000", {"note": "x" * 2001}),
    ("push", "missing_items", "50", {"missing_items": ["x"] * 51}),
    ("push", "missing_items", "200", {"missing_items": ["x" * 201]}),
    ("push", "event_id", "64", {"event_id": "E\tX"}),
    ("push", "certificate_identifier", "160", {"certificate_identifier": "c" * 161}),
    ("withdraw", "reason", "2000", {"reason": "x" * 2001}),
    ("resubmit", "note", "2000", {"note": "x\x00"}),
    ("resubmit", "material_ids", "50", {"material_ids": ["m"] * 51}),
    ("resubmit", "certificate_identifiers", "160", {"certificate_identifiers": ["c" * 161]}),
    ("submit", "form", "100", {"form": {f"k{i}": "v" for i in range(101)}}),
    ("submit", "form", "1000", {"form": {"k": "v" * 1001}}),
    ("submit", "form", "64", {"form": {"k" * 65: "v"}}),
    ("submit", "applicant_name", "200", {"applicant_name": "名" * 201}),
    ("submit", "material_ids", "40", {"material_ids": ["m" * 41]}),
]


@pytest.mark.parametrize(
    ("call", "field", "limit", "fields"),
    SHARED_REFUSALS,
    ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in SHARED_REFUSALS],
)
def test_each_field_over_its_limit_is_refused_naming_it(
    shared_desk: Desk, call: str, field: str, limit: str, fields: dict[str, Any]
) -> None:
    desk = shared_desk
    before = count_events(desk.kit)
    calls = {
        "push": lambda: desk.department.push_status(
            "20260101CASE", SUPPLEMENT, **{"event_id": event_id(), "missing_items": ["a"], **fields}
        ),
        "withdraw": lambda: desk.platform.withdraw_case(
            "20260101CASE", **{"event_id": event_id(), "reason": "r", **fields}
        ),
        "resubmit": lambda: desk.platform.resubmit_case(
            "20260101CASE", **{"event_id": event_id(), **fields}
        ),
        "submit": lambda: desk.platform.submit_case("PC-ANY", **{"purpose": "p", **fields}),
    }
    error = refused(calls[call], Code.INVALID_ARGUMENT, "INVALID_FIELD")
    assert (error.metadata["field"], error.metadata["limit"]) == (field, limit)
    assert count_events(desk.kit) == before


def test_an_envelope_over_its_limit_is_refused(shared_desk: Desk) -> None:
    """Unknown fields (or a huge header) pass the field checks but not the envelope's size:
    what is forwarded byte for byte is bounded as a whole."""
    desk = shared_desk
    push = case_pb2.StatusPush(case_number="20260101CASE", stage=ACCEPTED, event_id=event_id())
    push.MergeFromString(b"\xfa\x3e" + _varint(70_000) + b"u" * 70_000)  # field 999, unknown
    envelope = desk.department.transport.seal(push, case_id="20260101CASE")
    with pytest.raises(Exception) as caught:
        desk.department.transport.cases.PushStatus(
            case_pb2.PushStatusRequest(envelope=envelope), timeout=10
        )
    error = typed_error(caught.value)  # type: ignore[arg-type]
    assert (error.code, error.reason_name) == (Code.INVALID_ARGUMENT, "INVALID_FIELD")
    assert error.metadata == {**error.metadata, "field": "envelope", "limit": str(64 * 1024)}


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


@pytest.mark.parametrize("where", ["event_id", "case_number", "missing_items", "note"])
def test_control_characters_in_ids_are_refused_on_both_backends(any_desk: Desk, where: str) -> None:
    """PostgreSQL text cannot hold NUL: once an INTERNAL error, now INVALID_FIELD (free text
    keeps tab and line breaks, and refuses NUL too)."""
    desk = any_desk
    number = desk.submit().case_number
    fields: dict[str, Any] = {
        "case_number": number,
        "stage": SUPPLEMENT,
        "event_id": event_id(),
        "missing_items": ["营业执照"],
        "note": "第一行\n\t第二行",
    }
    fields[where] = (
        [fields[where][0] + "\x00"] if where == "missing_items" else fields[where] + "\x00"
    )
    envelope = desk.department.transport.seal(case_pb2.StatusPush(**fields), case_id=number)
    with pytest.raises(grpc.RpcError) as caught:
        desk.department.transport.cases.PushStatus(
            case_pb2.PushStatusRequest(envelope=envelope), timeout=10
        )
    error = typed_error(caught.value)
    assert (error.code, error.reason_name) == (Code.INVALID_ARGUMENT, "INVALID_FIELD"), error
    assert isinstance(error, RefusedError) and error.metadata["field"] == where
    assert count_events(desk.kit, CaseEventRow.kind == "status") == 0
    # The case itself is untouched: a clean push (tab and line break in its note) goes through.
    fields[where] = {"missing_items": ["营业执照"], "case_number": number}.get(where, event_id())
    if where == "note":
        fields["note"] = "第一行\n\t第二行"
    desk.department.push_status(**{k: v for k, v in fields.items()})
