"""Key lifecycle rules both sides share (密钥轮换): validity windows and the statement a
new signing key signs to prove its holder possesses it.

A member's signing key is valid inside ``[valid_from, valid_until)``; ``valid_until`` is
unset while the key is current. A message is checked with the key that was valid when it
was issued (its header's ``issued_at``), so messages signed before a rotation keep
verifying after it, and the hub admits a message only with a key valid now.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from xhub.protocol.envelope import pae
from xhub.v1 import registry_pb2

POSSESSION_TYPE = "xhub.v1.SigningKeyPossession"


def possession_statement(member_id: str, new_key_id: str, message_id: str) -> bytes:
    """What the new key signs (持有证明): binds it to the member and to one rotation request,
    so the proof cannot be replayed for another member or another request."""
    body = "\n".join(["xhub signing-key rotation v1", member_id, new_key_id, message_id])
    return pae(POSSESSION_TYPE, body.encode("utf-8"))


EVER = datetime(1970, 1, 1, tzinfo=UTC)  # the start of a key registered with no window


@dataclass(frozen=True)
class KeyWindow:
    """When a signing key may sign (``until`` None: still current)."""

    since: datetime
    until: datetime | None = None

    def holds(self, at: datetime, slack: timedelta = timedelta(0)) -> bool:
        """``at`` inside the window, widened by ``slack`` at both ends (the clocks of the
        signer and of whoever set the window may differ by that much)."""
        return self.since - slack <= at and (self.until is None or at < self.until + slack)

    def describe(self) -> str:
        end = self.until.isoformat() if self.until else "now (current)"
        return f"valid from {self.since.isoformat()} until {end}"

    @classmethod
    def of(cls, key: registry_pb2.PublicKey) -> KeyWindow:
        """The window a registry answer gives ``key`` (no valid_from: valid since ever)."""
        since = key.valid_from.ToDatetime(tzinfo=UTC) if key.HasField("valid_from") else EVER
        until = key.valid_until.ToDatetime(tzinfo=UTC) if key.HasField("valid_until") else None
        return cls(since, until)


def outside_window(
    owner: str, key_id: str, window: KeyWindow, at: datetime, slack: timedelta = timedelta(0)
) -> str:
    """The message a refusal gives when ``at`` is outside the key's window ("" if inside)."""
    if window.holds(at, slack):
        return ""
    return (
        f"key {key_id[:16]}… of {owner} is {window.describe()}; "
        f"the message was issued at {at.isoformat()}"
    )
