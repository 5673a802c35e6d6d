"""Key lifecycle rules both sides share (密钥轮换): validity windows and the statement a
new signing key signs to prove its holder possesses it.

The hub's own signing key rotates by hand-over: the outgoing key signs a statement naming
its successor and the time (``handover``); a member that pinned an older key follows the
chain (``follow_handovers``) and so learns the new key without a new bundle.

A member's signing key is valid inside ``[valid_from, valid_until)``; ``valid_until`` is
unset while the key is current. A message is checked with the key that was valid when it
was issued (its header's ``issued_at``), so messages signed before a rotation keep
verifying after it, and the hub admits a message only with a key valid now.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from xhub.protocol.envelope import new_header, open_envelope, pae, seal
from xhub.protocol.errors import AuthenticationError, MalformedError
from xhub.protocol.pki import (
    CertificateError,
    Roots,
    load_certificate,
    verify_member_certificate,
)
from xhub.protocol.signing import KeyVerifier, Signer, Verifier, public_key_der
from xhub.v1 import envelope_pb2, registry_pb2

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


# -- the hub's signing-key history (平台签名密钥交接) ------------------------------------------


class HandoverError(ValueError):
    """A hand-over of the hub signing key does not verify; the message names what disagreed."""


@dataclass(frozen=True)
class HubKey:
    """A hub signing key reached through the hand-overs, with its window."""

    verifier: KeyVerifier
    window: KeyWindow


def handover(
    outgoing: Signer, new_certificate: x509.Certificate, *, hub_id: str, at: datetime
) -> envelope_pb2.Envelope:
    """The statement ``outgoing`` signs to hand the hub's signing over to the certificate's
    key from ``at`` on."""
    new_key = KeyVerifier(new_certificate.public_key())  # type: ignore[arg-type]
    statement = registry_pb2.HubKeyHandover(
        header=new_header(hub_id, hub_id, now=at),
        previous_key_id=outgoing.key_id,
        new_key=registry_pb2.PublicKey(
            key_id=new_key.key_id,
            algorithm=new_key.algorithm,
            public_key_der=public_key_der(new_key.public_key),
        ),
        new_certificate_der=new_certificate.public_bytes(Encoding.DER),
    )
    return seal(statement, outgoing)


def _only(verifier: KeyVerifier) -> Callable[[str], Verifier]:
    return lambda _key_id: verifier


def follow_handovers(
    pinned: KeyVerifier,
    handovers: Sequence[envelope_pb2.Envelope],
    *,
    hub_id: str,
    ca_cert: Roots,
) -> dict[str, HubKey]:
    """The hub keys reachable from ``pinned`` (the key in a member's bundle), each valid from
    its hand-over until the next. Hand-overs before the pinned key are skipped; from the
    first one the pinned key signed on, each must be signed by the key the previous one
    named, come from the hub, and name a key whose certificate the hub CA issued to the hub.

    Raises: HandoverError naming the hand-over and what disagreed.
    """
    keys = {pinned.key_id: HubKey(pinned, KeyWindow(EVER))}
    current = pinned
    started = False
    for number, envelope in enumerate(handovers, start=1):
        signer_id = envelope.signatures[0].key_id if envelope.signatures else ""
        if not started and signer_id != pinned.key_id:
            continue  # a hand-over older than the key this bundle pinned
        started = True
        label = f"hand-over #{number}"
        if signer_id != current.key_id:
            raise HandoverError(
                f"{label} is signed by key {signer_id[:16]!r}, not by the key it must hand "
                f"over from ({current.key_id[:16]}…)"
            )
        try:
            opened = open_envelope(envelope, registry_pb2.HubKeyHandover, _only(current))
        except (MalformedError, AuthenticationError) as exc:
            raise HandoverError(f"{label} does not verify: {exc.message}") from exc
        statement, header = opened.message, opened.header
        if header.sender != hub_id or statement.previous_key_id != current.key_id:
            raise HandoverError(
                f"{label} is from {header.sender!r} handing over from "
                f"{statement.previous_key_id[:16]!r}; expected {hub_id} from "
                f"{current.key_id[:16]}…"
            )
        try:
            cert = load_certificate(statement.new_certificate_der)
            at = header.issued_at.ToDatetime(tzinfo=UTC)
            named = verify_member_certificate(cert, ca_cert, at=at)
            successor = KeyVerifier(cert.public_key())  # type: ignore[arg-type]
        except (CertificateError, ValueError) as exc:
            raise HandoverError(f"{label}: the new key's certificate is not valid: {exc}") from exc
        if named != hub_id or successor.key_id != statement.new_key.key_id:
            raise HandoverError(
                f"{label}: the certificate names {named} with key {successor.key_id[:16]}…; "
                f"the statement names {hub_id} with key {statement.new_key.key_id[:16]!r}"
            )
        keys[current.key_id] = HubKey(current, KeyWindow(keys[current.key_id].window.since, at))
        keys[successor.key_id] = HubKey(successor, KeyWindow(at))
        current = successor
    return keys
