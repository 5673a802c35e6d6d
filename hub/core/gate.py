"""Admission of a signed request (验签准入), written as numbered steps.

``Gate.admit`` is synchronous (it runs on a worker thread) and is the only
place a request is authenticated. It reads member state from the database on
every call, so a revocation takes effect on the next call, on every hub
process sharing the database.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

from cryptography import x509
from google.protobuf.message import Message
from sqlalchemy import Connection, and_, bindparam, delete, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from xhub.hub.core.db import MemberCertificateRow, MemberRoleRow, MemberRow, SeenMessageRow
from xhub.hub.core.keys import KEYS
from xhub.protocol.envelope import Opened, check_size, open_envelope
from xhub.protocol.errors import AuthenticationError, MalformedError, ReplayError, shown
from xhub.protocol.pki import CertificateError, member_id_of, when
from xhub.protocol.signing import KeyVerifier
from xhub.v1 import envelope_pb2, registry_pb2

M = TypeVar("M", bound=Message)

R = envelope_pb2  # reason constants


@dataclass(frozen=True)
class Caller:
    """The authenticated member behind a request."""

    member_id: str
    name: str
    roles: frozenset[int]
    enrolment: int = 1

    def has(self, role: registry_pb2.Role.ValueType) -> bool:
        return int(role) in self.roles


@dataclass(frozen=True)
class Admitted(Generic[M]):
    """A request that passed every admission step."""

    opened: Opened[M]
    caller: Caller
    # The envelope's bytes exactly as received: what the audit log stores and hashes.
    envelope_bytes: bytes = b""
    # The TLS client certificate the call came on (``Gate.recheck`` checks it again).
    peer_pem: bytes | None = None

    @property
    def message(self) -> M:
        return self.opened.message

    @property
    def header(self) -> envelope_pb2.Header:
        return self.opened.header


@dataclass(frozen=True)
class PeerIdentity:
    member_id: str
    serial: str


@functools.lru_cache(maxsize=4096)
def peer_identity(pem: bytes) -> PeerIdentity:
    """Member id and serial of a TLS client certificate (parsed once per certificate)."""
    cert = x509.load_pem_x509_certificate(pem)
    return PeerIdentity(member_id=member_id_of(cert), serial=format(cert.serial_number, "x"))


def peer_member_id(pem: bytes | None) -> str:
    """The member id a connection claims, for the audit entry of a refused call; "" if none."""
    try:
        return peer_identity(pem).member_id if pem else ""
    except (CertificateError, ValueError):
        return ""


# Built once: constructing a statement costs ten times more than running it on SQLite,
# and these run on every call.
_CERTIFICATE = and_(
    MemberCertificateRow.member_id == MemberRow.member_id,
    MemberCertificateRow.serial == bindparam("serial"),
)
_ACTIVE_MEMBER = (
    select(
        MemberRow.name,
        MemberRow.status,
        MemberRow.enrolment,
        MemberRow.revoke_reason,
        MemberCertificateRow.serial,
        MemberCertificateRow.not_before,
        MemberCertificateRow.not_after,
        MemberCertificateRow.revoked_at,
        MemberRoleRow.role,
    )
    .outerjoin(MemberCertificateRow, _CERTIFICATE)
    .outerjoin(MemberRoleRow, MemberRoleRow.member_id == MemberRow.member_id)
    .where(MemberRow.member_id == bindparam("member_id"))
)
_REMEMBER = insert(SeenMessageRow)


class Gate:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        hub_id: str,
        *,
        clock_skew: timedelta = timedelta(minutes=5),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._sessions = sessions
        self.hub_id = hub_id
        self.clock_skew = clock_skew
        self._clock = clock

    def admit(
        self,
        envelope: envelope_pb2.Envelope | None,
        message_type: type[M],
        peer_pem: bytes | None,
        *,
        on_verified: Callable[[envelope_pb2.Header], None] | None = None,
        session: Session | None = None,
        envelope_bytes: bytes = b"",
    ) -> Admitted[M]:
        """Run every admission step; ``on_verified`` sees the header as soon as it verified
        (so a refusal after that point is still recorded with its message id).

        With ``session`` the reads use the caller's session and step 10 is left to the
        caller: it calls ``record`` at the end of its transaction, so the call's effect and
        its replay record commit together and SQLite's write lock is held only briefly.
        ``envelope_bytes`` (the envelope as received) are carried on to the admitted call.
        """
        if session is None:
            with self._sessions.begin() as own:
                admitted = self._admit(
                    own, envelope, message_type, peer_pem, on_verified, envelope_bytes
                )
                self.record(own, admitted)
                return admitted
        return self._admit(session, envelope, message_type, peer_pem, on_verified, envelope_bytes)

    def record(self, session: Session, admitted: Admitted[Any]) -> None:
        """10. The message id must be new inside the window (stored: survives restarts)."""
        self._remember(
            admitted.caller.member_id,
            admitted.header.message_id,
            admitted.header.issued_at.ToDatetime(tzinfo=UTC),
            self._clock(),
            session=session,
        )

    def _admit(
        self,
        session: Session,
        envelope: envelope_pb2.Envelope | None,
        message_type: type[M],
        peer_pem: bytes | None,
        on_verified: Callable[[envelope_pb2.Header], None] | None,
        envelope_bytes: bytes,
    ) -> Admitted[M]:
        now = self._clock()
        # 0. Within its bounds (size, signatures, type): before anything is looked up, so an
        #    oversized envelope is refused as such, whoever sends it.
        check_size(envelope)
        # 1. The TLS peer must present a hub-issued certificate naming a member.
        peer = self._peer(peer_pem)
        # 2. The peer must be a registered, active member presenting one of its certificates
        #    that is neither revoked nor expired.
        caller = self._active_member(session.connection(), peer, now)

        # 3–6. Shape, payload type, key (the peer's, valid now: a rotated-out key signs
        #      nothing new), signature over the exact bytes; then parse.
        def resolve(key_id: str) -> KeyVerifier:
            bound = KEYS.lookup(session, key_id)
            if bound.member_id != peer.member_id:
                raise AuthenticationError(
                    "message is signed by another member's key",
                    reason=R.ERROR_REASON_SENDER_NOT_PEER,
                    metadata={"peer": peer.member_id, "key_owner": bound.member_id},
                )
            if bound.enrolment != caller.enrolment:
                raise AuthenticationError(
                    f"key {key_id[:16]}… of {peer.member_id} belongs to an earlier enrolment "
                    "and is retired",
                    reason=R.ERROR_REASON_UNKNOWN_KEY,
                    metadata={"key_id": shown(key_id), "member_id": peer.member_id},
                )
            return bound.require_valid_at(now)

        opened = open_envelope(envelope, message_type, resolve)
        if on_verified is not None:
            on_verified(opened.header)
        self._check_header(opened.header, peer, now)
        return Admitted(
            opened=opened, caller=caller, envelope_bytes=envelope_bytes, peer_pem=peer_pem
        )

    def recheck(self, connection: Connection, peer_pem: bytes | None) -> Caller:
        """Steps 1–2 again, for a call that is still running (an open stream, an upload):
        the member behind the connection must still be registered, active, on its current
        certificate and unexpired. Raises ``AuthenticationError`` (``MEMBER_REVOKED``,
        ``MEMBER_EXPIRED``) when it no longer is; any other condition for staying connected
        belongs here too."""
        return self._active_member(connection, self._peer(peer_pem), self._clock())

    def remember(self, sender: str, header: envelope_pb2.Header) -> None:
        """Record an admitted message id whose call was refused later (its transaction
        rolled back), so the same envelope cannot be replayed once circumstances change."""
        with contextlib.suppress(ReplayError):
            self._remember(
                sender, header.message_id, header.issued_at.ToDatetime(tzinfo=UTC), self._clock()
            )

    def _check_header(self, header: envelope_pb2.Header, peer: PeerIdentity, now: datetime) -> None:
        # 7. The header's sender must be the TLS peer.
        if header.sender != peer.member_id:
            raise AuthenticationError(
                f"header sender {shown(header.sender)!r} is not the TLS peer {peer.member_id!r}",
                reason=R.ERROR_REASON_SENDER_NOT_PEER,
                metadata={"peer": peer.member_id, "sender": shown(header.sender)},
            )
        # 8. The message must be addressed to this hub.
        if header.recipient != self.hub_id:
            raise MalformedError(
                f"recipient {shown(header.recipient)!r} is not this hub ({self.hub_id})",
                reason=R.ERROR_REASON_WRONG_RECIPIENT,
                metadata={"expected": self.hub_id, "recipient": shown(header.recipient)},
            )
        # 9. issued_at must be inside the clock-skew window.
        issued_at = header.issued_at.ToDatetime(tzinfo=UTC)
        if abs(now - issued_at) > self.clock_skew:
            raise AuthenticationError(
                f"issued_at {issued_at.isoformat()} is outside ±{self.clock_skew} of hub time "
                f"{now.isoformat()}",
                reason=R.ERROR_REASON_CLOCK_SKEW,
                metadata={"hub_time": now.isoformat(), "issued_at": issued_at.isoformat()},
            )

    def _peer(self, peer_pem: bytes | None) -> PeerIdentity:
        if not peer_pem:
            raise AuthenticationError(
                "no client certificate on the connection", reason=R.ERROR_REASON_SENDER_NOT_PEER
            )
        try:
            return peer_identity(peer_pem)
        except (CertificateError, ValueError) as exc:
            raise AuthenticationError(
                f"client certificate names no member: {shown(str(exc), 200)}",
                reason=R.ERROR_REASON_SENDER_NOT_PEER,
            ) from exc

    def _active_member(self, connection: Connection, peer: PeerIdentity, now: datetime) -> Caller:
        # One Core round trip: this runs on every call, so no ORM loading here.
        rows = connection.execute(
            _ACTIVE_MEMBER, {"member_id": peer.member_id, "serial": peer.serial}
        ).all()
        if not rows:
            raise AuthenticationError(
                f"{peer.member_id} is not a registered member",
                reason=R.ERROR_REASON_UNKNOWN_KEY,
                metadata={"member_id": peer.member_id},
            )
        name, status, enrolment, revoke_reason, serial, not_before, not_after, revoked_at, _ = rows[
            0
        ]
        if status != registry_pb2.MEMBER_STATUS_ACTIVE:
            raise AuthenticationError(
                f"member {peer.member_id} was revoked: {revoke_reason}",
                reason=R.ERROR_REASON_MEMBER_REVOKED,
                metadata={"member_id": peer.member_id},
            )
        # Any certificate the registry issued the member and has not revoked, inside its own
        # validity: a renewal overlaps the certificate it renews until that one expires.
        if serial is None or revoked_at is not None:
            raise AuthenticationError(
                f"certificate {peer.serial} of {peer.member_id} has been superseded or revoked",
                reason=R.ERROR_REASON_MEMBER_REVOKED,
                metadata={"member_id": peer.member_id, "serial": peer.serial},
            )
        if not_after <= now:
            raise AuthenticationError(
                f"certificate {peer.serial} of {peer.member_id} expired on {when(not_after)}; "
                "renew it with `xhub member renew`",
                reason=R.ERROR_REASON_MEMBER_EXPIRED,
                metadata={"member_id": peer.member_id, "not_after": not_after.isoformat()},
            )
        if not_before > now:
            raise AuthenticationError(
                f"certificate {peer.serial} of {peer.member_id} is not valid before "
                f"{when(not_before)}",
                reason=R.ERROR_REASON_MEMBER_EXPIRED,
                metadata={"member_id": peer.member_id, "not_before": not_before.isoformat()},
            )
        roles = frozenset(int(row[8]) for row in rows if row[8] is not None)
        return Caller(member_id=peer.member_id, name=name, roles=roles, enrolment=enrolment)

    def _remember(
        self,
        sender: str,
        message_id: str,
        issued_at: datetime,
        now: datetime,
        *,
        session: Session | None = None,
    ) -> None:
        if len(message_id) > 64:
            raise MalformedError(
                "message_id is longer than 64 characters",
                reason=R.ERROR_REASON_MALFORMED_PAYLOAD,
            )
        row = {"sender": sender, "message_id": message_id, "seen_at": now, "issued_at": issued_at}
        try:
            if session is None:
                with self._sessions.begin() as own:
                    own.execute(_REMEMBER, row)
            else:
                # A savepoint would cost a round trip; the caller's transaction ends here anyway.
                session.connection().execute(_REMEMBER, row)
        except IntegrityError as exc:
            raise ReplayError(
                f"message {shown(message_id)} from {sender} was already received",
                metadata={"message_id": shown(message_id)},
            ) from exc

    def prune_seen(self) -> int:
        """Forget message ids older than the window; a replay of one fails the skew check."""
        cutoff = self._clock() - 2 * self.clock_skew
        with self._sessions.begin() as session:
            result = session.execute(
                delete(SeenMessageRow).where(SeenMessageRow.issued_at < cutoff)
            )
            return int(result.rowcount)  # type: ignore[attr-defined]
