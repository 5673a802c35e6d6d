"""Seeded mutations of a valid request, each with the refusal it must get (tests/test_fuzz.py).

A ``Base`` is a request the hub accepted once (recorded by ``fuzz_world.play_story``). Each
mutation kind below changes it in one way and says which ErrorInfo reasons the hub may
answer with (``None``: any refusal, when the outcome depends on where random bytes land):

- **raw**: bit flips, byte changes, truncation, extension, insertion, garbage in the request
  message's bytes. Bytes that no longer parse as the request must get MALFORMED_ENVELOPE.
- **envelope**: the same in the payload, the signature, the key id or the payload type
  (never re-signed): BAD_SIGNATURE, UNKNOWN_KEY, WRONG_PAYLOAD_TYPE, MALFORMED_ENVELOPE;
  another method's envelope; the payload signed by another member's key or a stranger's.
- **header**: one header field changed and the payload re-signed with the member's own key,
  so the signature verifies and the later checks must catch it (sender, recipient, times,
  message id, case id, purpose; the header missing; bounded and printable fields).

Nothing may be accepted: a change of the signed bytes breaks the signature, a re-signed
header is invalid, and what stays semantically identical (an extra signature, a duplicate,
an unknown field, the byte-identical replay) reuses the base's message id, which the hub has
seen: REPLAYED_MESSAGE (or the method's own refusal, which comes first for some writes).
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from fuzz_world import Method
from google.protobuf import descriptor_pool
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass

from xhub.protocol.envelope import seal, sign_payload
from xhub.protocol.signing import Signer
from xhub.v1 import envelope_pb2

Envelope = envelope_pb2.Envelope

MALFORMED_ENVELOPE = frozenset({"MALFORMED_ENVELOPE"})
MALFORMED_PAYLOAD = frozenset({"MALFORMED_PAYLOAD"})
BAD_SIGNATURE = frozenset({"BAD_SIGNATURE"})
UNKNOWN_KEY = frozenset({"UNKNOWN_KEY"})
WRONG_PAYLOAD_TYPE = frozenset({"WRONG_PAYLOAD_TYPE"})
SENDER_NOT_PEER = frozenset({"SENDER_NOT_PEER"})
WRONG_RECIPIENT = frozenset({"WRONG_RECIPIENT"})
CLOCK_SKEW = frozenset({"CLOCK_SKEW"})
REPLAYED = frozenset({"REPLAYED_MESSAGE"})

# Characters a fuzzer likes: ASCII, C0 and C1 controls, NUL, CJK, combining marks, BOM,
# line separators, emoji (no lone surrogates: those are no UTF-8 and never reach the wire).
_ODD = "\x00\x01\x09\x0a\x0d\x1b\x7f\x85\xa0\u0301\u200b\u2028\ufeff\uffff中证照𝕏😀'\"\\%_;"
_PRINTABLE = "".join(chr(c) for c in range(0x20, 0x7F)) + "\xa0\u0301\u2028\ufeff中证照𝕏😀"
_CONTROL = "".join(chr(c) for c in range(0x20)) + "\x7f"


@dataclass(frozen=True)
class Mutation:
    kind: str
    messages: tuple[bytes, ...]
    expect: frozenset[str] | None  # the reasons allowed; None: any refusal
    undecodable: bool = False  # no request message at all (audited within a budget)


@dataclass(frozen=True)
class World:
    """What mutations draw on: the hub's and members' ids, every member's signer, the
    envelopes of the other methods."""

    hub_id: str
    member_ids: dict[str, str]  # kit key -> member id
    signers: dict[str, Signer]  # kit key -> the member's message-signing key
    stranger: Signer  # a key no member holds
    envelopes: dict[str, Envelope]  # method path -> its base envelope
    clock_skew: timedelta


@dataclass(frozen=True)
class Base:
    method: Method
    member: str
    messages: tuple[bytes, ...]
    world: World
    replay: frozenset[str] = REPLAYED  # what a semantically identical replay gets
    bound: bool = False  # case id and purpose must name the prepared case

    @property
    def envelope(self) -> Envelope:
        return self.method.envelope_of(self.messages[0])

    @property
    def payload_class(self) -> type[Message]:
        descriptor = descriptor_pool.Default().FindMessageTypeByName(self.envelope.payload_type)
        return GetMessageClass(descriptor)

    def payload(self) -> Message:
        return self.payload_class.FromString(self.envelope.payload)

    @property
    def signer(self) -> Signer:
        return self.world.signers[self.member]

    @property
    def message_id(self) -> str:
        return str(getattr(self.payload(), "header").message_id)  # noqa: B009

    def others(self) -> list[str]:
        return [key for key in self.world.member_ids if key != self.member]


Outcome = tuple[bytes, frozenset[str] | None]
Kind = Callable[[Base, random.Random], Outcome | None]  # None: not applicable, draw again


# -- byte and text helpers ---------------------------------------------------------------------


def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    """One random change: bit flips, a byte set, truncation, extension, insertion, a cut."""
    buffer = bytearray(data)
    how = rng.randrange(6)
    if how == 0 and buffer:
        for _ in range(rng.randint(1, 4)):
            buffer[rng.randrange(len(buffer))] ^= 1 << rng.randrange(8)
    elif how == 1 and buffer:
        buffer[rng.randrange(len(buffer))] = rng.randrange(256)
    elif how == 2:
        del buffer[rng.randrange(len(buffer) + 1) :]
    elif how == 3:
        buffer += rng.randbytes(rng.randint(1, 64))
    elif how == 4:
        at = rng.randrange(len(buffer) + 1)
        buffer[at:at] = rng.randbytes(rng.randint(1, 16))
    elif buffer:
        at = rng.randrange(len(buffer))
        del buffer[at : at + rng.randint(1, 16)]
    return bytes(buffer)


def mutate_text(rng: random.Random, text: str) -> str:
    """One random change of a string, keeping it a string (odd characters included)."""
    chars = list(text)
    how = rng.randrange(6)
    if how == 0 and chars:
        at = rng.randrange(len(chars))
        flipped = ord(chars[at]) ^ (1 << rng.randrange(7))
        chars[at] = chr(flipped) if not 0xD800 <= flipped <= 0xDFFF else "?"
    elif how == 1 and chars:
        del chars[rng.randrange(len(chars))]
    elif how == 2:
        chars.insert(rng.randrange(len(chars) + 1), rng.choice(_ODD))
    elif how == 3:
        del chars[rng.randrange(len(chars) + 1) :]
    elif how == 4:
        chars += rng.choices(_ODD + _PRINTABLE, k=rng.randint(1, 40))
    else:
        chars = rng.choices(_ODD + _PRINTABLE, k=rng.randint(0, 80))
    return "".join(chars)


def printable(rng: random.Random, low: int, high: int) -> str:
    return "".join(rng.choices(_PRINTABLE, k=rng.randint(low, high)))


def with_control(rng: random.Random, text: str) -> str:
    at = rng.randrange(len(text) + 1)
    return text[:at] + rng.choice(_CONTROL) + text[at:]


def parses(message_class: type[Message], data: bytes) -> Message | None:
    try:
        return message_class.FromString(data)
    except DecodeError:
        return None


# -- raw request bytes ---------------------------------------------------------------------------


def raw_bytes(base: Base, rng: random.Random) -> Outcome:
    return base.messages[0], None  # replaced in ``draw``: the expectation needs the bytes


# -- the envelope, not re-signed -----------------------------------------------------------------


def _envelope(base: Base, change: Callable[[Envelope], None]) -> bytes:
    envelope = base.envelope
    change(envelope)
    return base.method.wrap(envelope)


def payload_bytes(base: Base, rng: random.Random) -> Outcome | None:
    payload = mutate_bytes(rng, base.envelope.payload)
    if payload == base.envelope.payload:
        return None
    expect = BAD_SIGNATURE if payload else MALFORMED_ENVELOPE
    return _envelope(base, lambda e: setattr(e, "payload", payload)), expect


def signature_bytes(base: Base, rng: random.Random) -> Outcome | None:
    sig = mutate_bytes(rng, base.envelope.signatures[0].sig)
    if sig == base.envelope.signatures[0].sig:
        return None
    expect = BAD_SIGNATURE if sig else MALFORMED_ENVELOPE
    return _envelope(base, lambda e: setattr(e.signatures[0], "sig", sig)), expect


def key_id_text(base: Base, rng: random.Random) -> Outcome | None:
    key_ids = {s.key_id: key for key, s in base.world.signers.items()}
    original = base.envelope.signatures[0].key_id
    key_id = mutate_text(rng, original)
    if key_id == original:
        return None
    if not key_id:
        expect = MALFORMED_ENVELOPE
    elif key_id in key_ids:
        expect = SENDER_NOT_PEER
    else:  # no key has this id; one that can be no key id at all may be called malformed
        expect = UNKNOWN_KEY | MALFORMED_ENVELOPE
    return _envelope(base, lambda e: setattr(e.signatures[0], "key_id", key_id)), expect


def key_id_of_another_member(base: Base, rng: random.Random) -> Outcome:
    key_id = base.world.signers[rng.choice(base.others())].key_id
    return _envelope(base, lambda e: setattr(e.signatures[0], "key_id", key_id)), SENDER_NOT_PEER


def payload_type_text(base: Base, rng: random.Random) -> Outcome | None:
    original = base.envelope.payload_type
    payload_type = mutate_text(rng, original)
    if rng.random() < 0.05:
        payload_type = original + printable(rng, 5_000, 30_000)  # huge: never echoed back
    if payload_type == original:
        return None
    return _envelope(base, lambda e: setattr(e, "payload_type", payload_type)), WRONG_PAYLOAD_TYPE


def payload_type_of_another_method(base: Base, rng: random.Random) -> Outcome | None:
    """Relabelled as another method's payload (signature unchanged)."""
    own = base.envelope.payload_type
    types = sorted({e.payload_type for e in base.world.envelopes.values()} - {own})
    relabel = rng.choice(types)
    return _envelope(base, lambda e: setattr(e, "payload_type", relabel)), WRONG_PAYLOAD_TYPE


def envelope_of_another_method(base: Base, rng: random.Random) -> Outcome | None:
    """Another method's valid envelope (signed by whoever sent it) sent to this method."""
    own = base.envelope.payload_type
    others = [e for e in base.world.envelopes.values() if e.payload_type != own]
    return base.method.wrap(rng.choice(others)), WRONG_PAYLOAD_TYPE


def signatures_changed(base: Base, rng: random.Random) -> Outcome:
    """Signatures dropped, or an odd one added before or after the signer's own."""
    envelope = base.envelope
    own = envelope.signatures[0]
    odd = envelope_pb2.Signature(key_id=printable(rng, 1, 64), sig=rng.randbytes(64))
    how = rng.randrange(5)
    if how == 0:
        del envelope.signatures[:]
        expect = MALFORMED_ENVELOPE
    elif how == 1:  # a stranger's signature first: the first signature names the signer
        envelope.signatures.insert(0, odd)
        expect = UNKNOWN_KEY
    elif how == 2:  # an incomplete signature anywhere
        incomplete = envelope_pb2.Signature(key_id=rng.choice(["", own.key_id]))
        envelope.signatures.insert(rng.randrange(2), incomplete)
        expect = MALFORMED_ENVELOPE
    elif how == 3:  # the same message with an extra signature: semantically identical
        envelope.signatures.append(odd)
        expect = base.replay
    else:  # the signer's signature twice
        envelope.signatures.append(own)
        expect = base.replay
    return base.method.wrap(envelope), expect


def signed_by_another_key(base: Base, rng: random.Random) -> Outcome:
    """The same payload signed by another member's key, or by a key no member holds."""
    envelope = base.envelope
    if rng.random() < 0.7:
        signer, expect = base.world.signers[rng.choice(base.others())], SENDER_NOT_PEER
    else:
        signer, expect = base.world.stranger, UNKNOWN_KEY
    return base.method.wrap(sign_payload(envelope.payload, envelope.payload_type, signer)), expect


def sealed_by_another_member(base: Base, rng: random.Random) -> Outcome:
    """Another member's own message (its header, its key) sent over this member's line."""
    other = rng.choice(base.others())
    payload = base.payload()
    header = getattr(payload, "header")  # noqa: B009
    header.sender = base.world.member_ids[other]
    header.message_id = fresh_id(rng)
    return base.method.wrap(seal(payload, base.world.signers[other])), SENDER_NOT_PEER


def replayed(base: Base, rng: random.Random) -> Outcome:
    """The byte-identical request again."""
    return base.messages[0], base.replay


# -- the header, re-signed with the member's own key ---------------------------------------------


def fresh_id(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _resigned(
    base: Base,
    rng: random.Random,
    change: Callable[[envelope_pb2.Header], None],
    *,
    new_id: bool = True,
) -> bytes:
    """The base's payload with its header changed, signed with the member's own key (a new
    message id and nonce unless ``new_id`` is False)."""
    payload = base.payload()
    header = getattr(payload, "header")  # noqa: B009
    if new_id:
        header.message_id = fresh_id(rng)
        header.nonce = rng.randbytes(16)
    change(header)
    return base.method.wrap(seal(payload, base.signer))


def _text_field(name: str, invalid: frozenset[str]) -> Kind:
    """A header text field: another valid-looking value (``invalid``), empty, too long or
    with a control character (MALFORMED_PAYLOAD)."""

    def kind(base: Base, rng: random.Random) -> Outcome | None:
        original: str = getattr(getattr(base.payload(), "header"), name)  # noqa: B009
        how = rng.randrange(5)
        if how == 0:
            others = [base.world.member_ids[k] for k in base.others()] + [base.world.hub_id]
            value, expect = rng.choice([o for o in others if o != original]), invalid
        elif how == 1:
            value, expect = printable(rng, 1, 128), invalid
        elif how == 2:
            value, expect = "", MALFORMED_PAYLOAD
        elif how == 3:
            value, expect = original + printable(rng, 129, 400), MALFORMED_PAYLOAD
        else:
            value, expect = with_control(rng, original), MALFORMED_PAYLOAD
        if value == original:
            return None
        return _resigned(base, rng, lambda h: setattr(h, name, value)), expect

    return kind


def issued_at(base: Base, rng: random.Random) -> Outcome:
    """Outside the clock window, missing, or no valid timestamp at all."""
    how = rng.randrange(4)
    if how <= 1:
        margin = base.world.clock_skew + timedelta(seconds=30)
        offset = margin + timedelta(seconds=rng.randint(0, 20 * 365 * 86400))
        when = datetime.now(UTC) + (offset if how == 0 else -offset)
        return _resigned(base, rng, lambda h: h.issued_at.FromDatetime(when)), CLOCK_SKEW
    if how == 2:
        return _resigned(base, rng, lambda h: h.ClearField("issued_at")), MALFORMED_PAYLOAD

    def invalid(header: envelope_pb2.Header) -> None:
        if rng.random() < 0.5:
            header.issued_at.seconds = rng.choice([-(2**62), -62135596801, 253402300800, 2**62])
        else:
            header.issued_at.nanos = rng.choice([-1, 1_000_000_000, 2**31 - 1])

    return _resigned(base, rng, invalid), MALFORMED_PAYLOAD


def message_id(base: Base, rng: random.Random) -> Outcome:
    """Empty, too long, a control character, or the base's own id on a fresh nonce."""
    how = rng.randrange(4)
    if how == 0:
        return _resigned(base, rng, lambda h: setattr(h, "message_id", "")), MALFORMED_PAYLOAD
    if how == 1:
        long_id = fresh_id(rng) + printable(rng, 29, 200)
        return _resigned(base, rng, lambda h: setattr(h, "message_id", long_id)), MALFORMED_PAYLOAD
    if how == 2:
        odd = with_control(rng, fresh_id(rng)[:60])
        return _resigned(base, rng, lambda h: setattr(h, "message_id", odd)), MALFORMED_PAYLOAD
    nonce = rng.randbytes(16)
    return _resigned(base, rng, lambda h: setattr(h, "nonce", nonce), new_id=False), base.replay


def bounded_field(base: Base, rng: random.Random) -> Outcome:
    """case_id, purpose or in_reply_to too long or with a control character."""
    name, limit = rng.choice([("case_id", 64), ("purpose", 512), ("in_reply_to", 64)])
    if rng.random() < 0.5:
        value = printable(rng, limit + 1, limit + 300)
    else:
        value = with_control(rng, printable(rng, 0, min(limit - 1, 60)))
    return _resigned(base, rng, lambda h: setattr(h, name, value)), MALFORMED_PAYLOAD


def binding(base: Base, rng: random.Random) -> Outcome | None:
    """A bound request naming a case or purpose that is not its prepared case's."""
    if not base.bound:
        return None
    name = rng.choice(["case_id", "purpose"])
    value = printable(rng, 1, 60)
    return _resigned(base, rng, lambda h: setattr(h, name, value)), None


def header_missing(base: Base, rng: random.Random) -> Outcome:
    payload = base.payload()
    payload.ClearField("header")  # type: ignore[arg-type]
    signed = seal(payload, base.signer)
    # A message of nothing but its header is no payload at all once the header is gone.
    return base.method.wrap(signed), MALFORMED_PAYLOAD if signed.payload else MALFORMED_ENVELOPE


def signed_bytes(base: Base, rng: random.Random) -> Outcome | None:
    """Changed payload bytes, re-signed: what parses keeps the used message id (or draw
    again), so it is refused at the latest as a replay."""
    envelope = base.envelope
    payload = mutate_bytes(rng, envelope.payload) if rng.random() < 0.8 else rng.randbytes(40)
    if not payload:
        return None
    parsed = parses(base.payload_class, payload)
    if parsed is None or not parsed.HasField("header"):  # type: ignore[arg-type]
        expect = MALFORMED_PAYLOAD
    elif getattr(parsed, "header").message_id != base.message_id:  # noqa: B009
        return None  # a new message id: a new message, which may well be valid
    else:
        expect = None
    signed = sign_payload(payload, envelope.payload_type, base.signer)
    return base.method.wrap(signed), expect


# -- drawing ---------------------------------------------------------------------------------------

KINDS: tuple[tuple[str, int, Kind], ...] = (
    ("raw", 30, raw_bytes),
    ("payload", 8, payload_bytes),
    ("signature", 6, signature_bytes),
    ("key-id", 6, key_id_text),
    ("key-id-of-another-member", 2, key_id_of_another_member),
    ("payload-type", 5, payload_type_text),
    ("payload-type-of-another-method", 2, payload_type_of_another_method),
    ("envelope-of-another-method", 2, envelope_of_another_method),
    ("signatures", 4, signatures_changed),
    ("signed-by-another-key", 3, signed_by_another_key),
    ("sealed-by-another-member", 2, sealed_by_another_member),
    ("replayed", 1, replayed),
    ("sender", 4, _text_field("sender", SENDER_NOT_PEER)),
    ("recipient", 4, _text_field("recipient", WRONG_RECIPIENT)),
    ("issued-at", 4, issued_at),
    ("message-id", 4, message_id),
    ("bounded-field", 3, bounded_field),
    ("binding", 3, binding),
    ("header-missing", 1, header_missing),
    ("signed-bytes", 6, signed_bytes),
)


def draw(base: Base, rng: random.Random) -> Mutation:
    """One mutation of ``base``, its kind drawn by weight."""
    names = [name for name, _, _ in KINDS]
    weights = [weight for _, weight, _ in KINDS]
    kinds = {name: kind for name, _, kind in KINDS}
    while True:
        name = rng.choices(names, weights)[0]
        if name == "raw":
            first = mutate_bytes(rng, base.messages[0]) if rng.random() < 0.9 else b""
            if rng.random() < 0.05:
                first = rng.randbytes(rng.randint(1, 300))
            if first == base.messages[0]:
                continue
            undecodable = parses(base.method.request, first) is None
            expect = MALFORMED_ENVELOPE if undecodable else None
            return Mutation(name, (first, *base.messages[1:]), expect, undecodable)
        outcome = kinds[name](base, rng)
        if outcome is not None:
            first, expect = outcome
            return Mutation(name, (first, *base.messages[1:]), expect)


def mutations(base: Base, seed: int, count: int) -> list[Mutation]:
    rng = random.Random(seed)
    return [draw(base, rng) for _ in range(count)]
