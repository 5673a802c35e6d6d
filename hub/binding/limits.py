"""Field limits (字段上限): every id, free-text and repeated field of a case or intake request
is bounded, and checked before anything is read or written. (The header's fields and the
payload's size are the kernel's: ``xhub.protocol.envelope.HEADER_LIMITS`` and
``MAX_PAYLOAD_BYTES``, checked when the envelope is opened.)

A table maps a field name to its bound: ``Id`` (an identifier: at most ``chars`` characters,
no control character — PostgreSQL text cannot hold NUL, and no id needs one), ``Text`` (free
text: at most ``chars`` characters; tab and line breaks allowed, no other control character)
and ``Many`` (a repeated field: at most ``count`` elements, each bounded by ``each``; a map's
keys and values are bounded by ``each`` and ``value``). ``check`` raises the pure rules'
``RuleError`` (MALFORMED, so ``INVALID_ARGUMENT INVALID_FIELD``) with
``metadata={"field": name, "limit": str(n)}``.

Limits count characters; one character is at most 4 bytes in UTF-8, so a field bounded by
``n`` characters takes at most ``4 n`` bytes on the wire (``max_bytes``). The tables of the
case payloads and the arithmetic that keeps every event the hub streams below the SDK's
receive limit are in ``hub.cases.limits``; those of intake are below.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from google.protobuf.message import Message

from xhub.hub.binding.rules import Refusal, RuleError
from xhub.v1 import envelope_pb2, intake_pb2

UTF8_MAX = 4  # bytes per character, at most


@dataclass(frozen=True)
class Id:
    """An identifier: at most ``chars`` characters, none of them a control character."""

    chars: int


@dataclass(frozen=True)
class Text:
    """Free text: at most ``chars`` characters; tab, CR and LF are its only control characters."""

    chars: int


@dataclass(frozen=True)
class Many:
    """A repeated field (or a map: ``each`` bounds the keys, ``value`` the values)."""

    count: int
    each: Id | Text
    value: Id | Text | None = None


Limit = Id | Text | Many
Fields = Mapping[str, Limit]

# Shared ids and texts (their columns: prepared_cases.case_id 64, cases.case_number 40,
# certificates.identifier 160, materials.material_id 40, case_events.event_id 64).
CASE_ID = Id(64)  # a prepared case id, or the case a header names (Header.case_id)
CASE_NUMBER = Id(40)
EVENT_ID = Id(64)
CERTIFICATE_ID = Id(160)
MATERIAL_ID = Id(40)
HOLDER_CODE = Id(32)  # USCC (18) or citizen id (18)
CODE = Id(64)  # an item code or certificate type code
REFERENCES = 50  # certificates or materials one request names

INTAKE: Mapping[type[Message], Fields] = {
    intake_pb2.ItemLookup: {"code": CODE},
    intake_pb2.CasePreparation: {
        "item_code": CODE,
        "applicant_code": HOLDER_CODE,
        "legal_representative_code": HOLDER_CODE,
    },
    intake_pb2.CertificatePull: {"holder_code": HOLDER_CODE, "type_codes": Many(20, Id(32))},
    intake_pb2.CaseCertificatePull: {"certificate_identifiers": Many(REFERENCES, CERTIFICATE_ID)},
    intake_pb2.CertificateCheck: {
        "identifier": CERTIFICATE_ID,
        "number": Id(64),  # certificates.number; also a probed person's id (audit subject)
        "type_code": Id(32),
    },
}


def max_bytes(limit: Id | Text) -> int:
    """The most UTF-8 bytes a bounded string takes."""
    return limit.chars * UTF8_MAX


def _refuse(field: str, limit: int, what: str) -> RuleError:
    return RuleError(Refusal.MALFORMED, f"{field}: {what}", field=field, limit=str(limit))


def check_string(value: str, field: str, limit: Id | Text) -> None:
    """One bounded string (see the module docstring)."""
    if len(value) > limit.chars:
        raise _refuse(field, limit.chars, f"longer than {limit.chars} characters")
    allowed = "" if isinstance(limit, Id) else "\t\n\r"
    if any((ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0) and c not in allowed for c in value):
        raise _refuse(field, limit.chars, "contains a control character")


def check(message: Message, fields: Fields) -> None:
    """Every field of ``message`` that ``fields`` names is within its bound."""
    for field, limit in fields.items():
        value = getattr(message, field)
        if not isinstance(limit, Many):
            check_string(value, field, limit)
            continue
        if len(value) > limit.count:
            raise _refuse(field, limit.count, f"more than {limit.count} elements")
        if limit.value is None:
            for element in value:
                check_string(element, field, limit.each)
            continue
        for key, element in value.items():
            check_string(key, field, limit.each)
            check_string(element, field, limit.value)


def check_envelope(envelope: envelope_pb2.Envelope, limit_bytes: int) -> None:
    """The whole signed request, as received, is at most ``limit_bytes`` (it is stored and
    forwarded byte for byte, so its size — header, unknown fields and countersignatures
    included — is what a recipient receives)."""
    if envelope.ByteSize() > limit_bytes:
        raise _refuse("envelope", limit_bytes, f"larger than {limit_bytes} bytes")
