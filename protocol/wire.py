"""The protobuf wire format, read just far enough to cut out one field's exact bytes.

A request arrives as bytes; parsing and re-serializing them may change them (fields in
another order, unknown fields, a field repeated). Whoever must keep *the bytes that came* —
the audit log hashes the envelope a member sent — cuts them out of the received message with
``field_parts`` instead of re-encoding the parsed one.
"""

from __future__ import annotations

_VARINT, _I64, _LEN, _SGROUP, _EGROUP, _I32 = 0, 1, 2, 3, 4, 5


class WireError(ValueError):
    """The bytes are not a well-formed protobuf message."""


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data) or shift > 63:
            raise WireError("truncated or overlong varint")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7


def _skip(data: bytes, at: int, wire_type: int, number: int) -> int:
    """The offset after a field's value of ``wire_type`` starting at ``at``."""
    if wire_type == _VARINT:
        return _varint(data, at)[1]
    if wire_type == _I64:
        end = at + 8
    elif wire_type == _I32:
        end = at + 4
    elif wire_type == _LEN:
        length, at = _varint(data, at)
        end = at + length
    elif wire_type == _SGROUP:
        while True:
            tag, at = _varint(data, at)
            if tag & 7 == _EGROUP:
                if tag >> 3 != number:
                    raise WireError("a group ends with another field's number")
                return at
            at = _skip(data, at, tag & 7, tag >> 3)
    else:
        raise WireError(f"wire type {wire_type} where a field starts")
    if end > len(data):
        raise WireError("a field runs past the end of the message")
    return end


def field_parts(data: bytes, number: int) -> list[bytes]:
    """The exact bytes of every occurrence of length-delimited field ``number`` of the
    message ``data``, in order; empty if the field is absent.

    Fields may come in any order. A singular message field that occurs more than once is
    *merged* by protobuf parsing, which is the same as parsing its occurrences' bytes one
    after the other: their concatenation parses to the field's value as the parser saw it
    (unless a member of the same oneof came between them, which a caller that cares checks).
    Raises ``WireError`` on malformed bytes.
    """
    parts: list[bytes] = []
    at = 0
    while at < len(data):
        tag, at = _varint(data, at)
        wire_type, field = tag & 7, tag >> 3
        if field == 0:
            raise WireError("field number 0")
        if field == number and wire_type == _LEN:
            length, start = _varint(data, at)
            at = start + length
            if at > len(data):
                raise WireError("a field runs past the end of the message")
            parts.append(data[start:at])
        else:
            at = _skip(data, at, wire_type, field)
    return parts
