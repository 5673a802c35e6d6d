"""Bounded by construction (消息上限): the field limits of the case payloads, and why every
event the hub streams fits in what the SDK accepts.

The SDK receives at most ``SDK_RECEIVE_LIMIT`` bytes per message
(``grpc.max_receive_message_length`` in ``connectors/sdk/_internal/transport.py``). What the
hub streams is one of three bodies, hub-signed:

- ``StatusEvent``: ids, the author's note (``NOTE``) and missing items, and the author's own
  signed request byte for byte (``origin``, at most ``REQUEST_BYTES[type]`` — 64 KiB);
- ``DispatchedCase``: the platform's submission (at most 512 KiB, its form copied once more),
  the catalogue item, references, and at most ``MAX_RESUBMISSIONS`` resubmissions of 64 KiB;
- ``SupervisionEvent``: ids and two dates.

Every body is checked once more when it is made (``check_event``: at most
``MAX_EVENT_BYTES``, 6 MiB, else the request is refused and nothing is written), and a
hub-signed wrapper adds at most ``WRAP_BYTES`` (the header: hub id, the subscriber's id,
its case_id and purpose as the kernel bounds them, message ids; one signature). So every
streamed message is at most ``MAX_EVENT_BYTES + WRAP_BYTES`` < ``SDK_RECEIVE_LIMIT``;
``tests/test_cases_limits.py`` builds the largest legitimate bodies from these tables and
checks each step of this sum.
"""

from __future__ import annotations

from collections.abc import Mapping

from google.protobuf.message import Message

from xhub.hub.binding import limits as fields
from xhub.hub.binding.limits import (
    CASE_NUMBER,
    CERTIFICATE_ID,
    EVENT_ID,
    MATERIAL_ID,
    REFERENCES,
    Fields,
    Many,
    Text,
)
from xhub.hub.binding.rules import Refusal, RuleError
from xhub.v1 import case_pb2, envelope_pb2

KIB, MIB = 1024, 1024 * 1024
SDK_RECEIVE_LIMIT = 8 * MIB  # the SDK's grpc.max_receive_message_length
MAX_EVENT_BYTES = 6 * MIB  # one streamed body, before the hub signs it
WRAP_BYTES = 16 * KIB  # what signing adds: header, payload type, one signature, framing
MAX_RESUBMISSIONS = 10  # 补正 rounds one case may take (each adds its request to the case)

NOTE = Text(2000)  # 办理意见, 补正说明, 撤回原因
MISSING_ITEMS = Many(50, Text(200))
FORM = Many(100, Text(64), Text(1000))  # 申请表: 100 fields of 1000 characters
APPLICANT_NAME = Text(200)

PAYLOADS: Mapping[type[Message], Fields] = {
    case_pb2.CaseSubmission: {
        "certificate_identifiers": Many(REFERENCES, CERTIFICATE_ID),
        "material_ids": Many(REFERENCES, MATERIAL_ID),
        "applicant_name": APPLICANT_NAME,
        "form": FORM,
    },
    case_pb2.StatusPush: {
        "case_number": CASE_NUMBER,
        "event_id": EVENT_ID,
        "note": NOTE,
        "missing_items": MISSING_ITEMS,
        "certificate_identifier": CERTIFICATE_ID,
    },
    case_pb2.CaseWithdrawal: {"case_number": CASE_NUMBER, "event_id": EVENT_ID, "reason": NOTE},
    case_pb2.CaseResubmission: {
        "case_number": CASE_NUMBER,
        "event_id": EVENT_ID,
        "certificate_identifiers": Many(REFERENCES, CERTIFICATE_ID),
        "material_ids": Many(REFERENCES, MATERIAL_ID),
        "note": NOTE,
    },
    case_pb2.CaseLookup: {"prepared_case_id": fields.CASE_ID},
    case_pb2.CaseSubscription: {},
}
"""The bounded fields of each case payload."""

REQUEST_BYTES: Mapping[type[Message], int] = {
    case_pb2.CaseSubmission: 512 * KIB,  # the form (≤ 426 kB) and 100 references fit
    case_pb2.StatusPush: 64 * KIB,  # note 8 kB, missing items 40 kB, ids
    case_pb2.CaseWithdrawal: 64 * KIB,
    case_pb2.CaseResubmission: 64 * KIB,  # note 8 kB, 100 references 40 kB
    case_pb2.CaseLookup: 16 * KIB,
    case_pb2.CaseSubscription: 16 * KIB,
}
"""The whole signed request (header, unknown fields, signatures): stored and forwarded as is."""


def check_request(envelope: envelope_pb2.Envelope, message: Message) -> None:
    """A case request's payload fields, then its whole envelope, are within their bounds."""
    kind = type(message)
    fields.check(message, PAYLOADS[kind])  # first: a field's name says more than a size
    fields.check_envelope(envelope, REQUEST_BYTES[kind])


def check_event(body: Message) -> None:
    """A body to stream is at most ``MAX_EVENT_BYTES`` (a case grown past it by its
    references or its catalogue item is refused rather than stored unsendable)."""
    if (size := body.ByteSize()) > MAX_EVENT_BYTES:
        raise RuleError(
            Refusal.PRECONDITION,
            f"the case would reach {size} bytes, over the hub's {MAX_EVENT_BYTES}",
            field="case",
            limit=str(MAX_EVENT_BYTES),
        )
