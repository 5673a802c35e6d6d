"""Signing-key rotation (签名密钥轮换): a member replaces its message-signing key.

``check_rotation`` is the rule over what the request carries and the member's keys read
once; ``apply_rotation`` writes its effect: every current key of the member gets its
window closed (after the configured overlap), the new key is registered valid from now.
Keys are never deleted, so what an old key signed while it was current stays verifiable.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from cryptography.exceptions import UnsupportedAlgorithm
from sqlalchemy import select
from sqlalchemy.orm import Session

from xhub.hub.core.db import MemberKeyRow
from xhub.protocol.errors import AlreadyExistsError, AuthenticationError, MalformedError
from xhub.protocol.key_rotation import possession_statement
from xhub.protocol.signing import KeyVerifier, SignatureMismatch, public_key_der
from xhub.v1 import envelope_pb2, registry_pb2

R = envelope_pb2


def member_keys(session: Session, member_id: str) -> list[MemberKeyRow]:
    """Every key ``member_id`` ever registered, oldest first."""
    query = (
        select(MemberKeyRow)
        .where(MemberKeyRow.member_id == member_id)
        .order_by(MemberKeyRow.valid_from, MemberKeyRow.key_id)
    )
    return list(session.scalars(query))


def check_rotation(
    rotation: registry_pb2.SigningKeyRotation,
    *,
    member_id: str,
    signed_with: str,
    keys: Sequence[MemberKeyRow],
    taken: bool,
) -> KeyVerifier:
    """The new key, if the rotation may be applied; a RefusedError naming why not.

    1. The request is signed with the member's current key (not one already rotated out,
       even inside its overlap).
    2. The new key parses, and its id and algorithm are those of its DER.
    3. It is registered to nobody yet (``taken``: the id exists in the registry).
    4. The new key's signature over the possession statement (member id, new key id, this
       request's message id) holds.
    """
    # 1.
    current = {k.key_id for k in keys if k.valid_until is None}
    if signed_with not in current:
        raise AuthenticationError(
            f"a rotation must be signed with the current key of {member_id}; "
            f"{signed_with[:16]}… is not (it was rotated out)",
            reason=R.ERROR_REASON_UNKNOWN_KEY,
            metadata={"key_id": signed_with},
        )
    # 2.
    new_key = rotation.new_key
    try:
        verifier = KeyVerifier.from_der(new_key.public_key_der)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise MalformedError(
            "new_key.public_key_der is not a supported public key",
            metadata={"field": "new_key.public_key_der"},
        ) from exc
    if new_key.key_id != verifier.key_id or new_key.algorithm != verifier.algorithm:
        raise MalformedError(
            "new_key.key_id and algorithm must be those of new_key.public_key_der",
            metadata={"field": "new_key.key_id", "expected": verifier.key_id},
        )
    # 3.
    if taken:
        raise AlreadyExistsError(
            f"key {verifier.key_id[:16]}… is already registered",
            reason=R.ERROR_REASON_INVALID_FIELD,
            metadata={"field": "new_key", "key_id": verifier.key_id},
        )
    # 4.
    statement = possession_statement(member_id, verifier.key_id, rotation.header.message_id)
    try:
        verifier.verify(rotation.proof_of_possession, statement)
    except SignatureMismatch as exc:
        raise AuthenticationError(
            "proof_of_possession is not the new key's signature over the possession "
            "statement (member id, new key id, this request's message id)",
            reason=R.ERROR_REASON_BAD_SIGNATURE,
            metadata={"field": "proof_of_possession"},
        ) from exc
    return verifier


def apply_rotation(
    session: Session,
    member_id: str,
    verifier: KeyVerifier,
    keys: Sequence[MemberKeyRow],
    *,
    now: datetime,
    overlap: timedelta,
) -> None:
    """Close every current key of the member at ``now + overlap``; register the new one
    valid from ``now`` (caller commits)."""
    for key in keys:
        if key.valid_until is None:
            key.valid_until = now + overlap
    session.add(
        MemberKeyRow(
            key_id=verifier.key_id,
            member_id=member_id,
            algorithm=int(verifier.algorithm),
            public_key_der=public_key_der(verifier.public_key),
            created_at=now,
            valid_from=now,
            # The enrolment the member is in (its newest key's), or the gate retires it.
            enrolment=max((k.enrolment for k in keys), default=1),
        )
    )
    session.flush()
