"""Member signing keys with their validity windows (签名密钥及有效期), as the hub reads them.

One lookup for every place the hub resolves a key id: the gate (a request must be signed
with a key valid now) and the features that re-open stored envelopes (a stored message is
checked with the key that was valid when it was signed).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from xhub.hub.core.db import MemberKeyRow
from xhub.protocol.errors import AuthenticationError, shown
from xhub.protocol.key_rotation import KeyWindow, outside_window
from xhub.protocol.signing import KeyVerifier
from xhub.v1 import envelope_pb2

_KEY_ID = re.compile(r"[0-9a-f]{64}")
# Built once: it runs on every call.
_KEY = select(
    MemberKeyRow.member_id,
    MemberKeyRow.public_key_der,
    MemberKeyRow.valid_from,
    MemberKeyRow.valid_until,
    MemberKeyRow.enrolment,
).where(MemberKeyRow.key_id == bindparam("key_id"))


@dataclass(frozen=True)
class RegisteredKey:
    """A key id's owner, verifier and window, as the registry holds them now."""

    key_id: str
    member_id: str
    verifier: KeyVerifier
    window: KeyWindow
    enrolment: int = 1  # keys of an earlier enrolment than the member's are retired

    def require_valid_at(self, at: datetime) -> KeyVerifier:
        """The verifier if ``at`` is inside the window, else AuthenticationError(UNKNOWN_KEY)
        naming the window and the time."""
        problem = outside_window(self.member_id, self.key_id, self.window, at)
        if problem:
            raise AuthenticationError(
                problem,
                reason=envelope_pb2.ERROR_REASON_UNKNOWN_KEY,
                metadata={"key_id": self.key_id, "window": self.window.describe()},
            )
        return self.verifier


class KeyDirectory:
    """Looks key ids up on every call (a window closes when its member rotates, perhaps in
    another hub process); only the parsed verifier is cached (a key id hashes its key)."""

    def __init__(self) -> None:
        self._verifiers: dict[str, KeyVerifier] = {}

    def lookup(self, session: Session, key_id: str) -> RegisteredKey:
        """The registered key ``key_id`` (AuthenticationError UNKNOWN_KEY if none)."""
        # A key id is 64 hex characters: anything else is unknown without asking the
        # database (PostgreSQL text cannot even hold the NUL a forged id may carry).
        row = (
            session.connection().execute(_KEY, {"key_id": key_id}).first()
            if _KEY_ID.fullmatch(key_id)
            else None
        )
        if row is None:
            raise AuthenticationError(
                f"unknown key {shown(key_id)!r}",
                reason=envelope_pb2.ERROR_REASON_UNKNOWN_KEY,
                metadata={"key_id": shown(key_id)},
            )
        verifier = self._verifiers.get(key_id)
        if verifier is None:
            verifier = KeyVerifier.from_der(row.public_key_der)
            self._verifiers[key_id] = verifier
        return RegisteredKey(
            key_id,
            row.member_id,
            verifier,
            KeyWindow(row.valid_from, row.valid_until),
            row.enrolment,
        )

    def member_key(
        self, session: Session, key_id: str, *, owner: str, at: datetime | None
    ) -> KeyVerifier:
        """``owner``'s key ``key_id``, valid at ``at`` (None: at any time it was registered);
        AuthenticationError(UNKNOWN_KEY) otherwise."""
        key = self.lookup(session, key_id)
        if key.member_id != owner:
            raise AuthenticationError(
                f"key {shown(key_id, 16)} is not a key of {owner}",
                reason=envelope_pb2.ERROR_REASON_UNKNOWN_KEY,
                metadata={"key_id": shown(key_id), "member_id": owner},
            )
        return key.verifier if at is None else key.require_valid_at(at)


# The hub's one directory (stateless but for the verifier cache, which any thread may fill).
KEYS = KeyDirectory()
