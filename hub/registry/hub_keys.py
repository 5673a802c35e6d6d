"""The hub's own signing-key history (平台签名密钥历史): rotation and publication.

``rotate_hub_signing`` replaces the hub signing key: the outgoing key signs a hand-over
naming the new key and its certificate (``protocol.key_rotation.handover``); the registry
closes the old key's window and registers the new one under the hub's id; the key files
switch over. ``GetHubKeys`` publishes every hand-over, so a member that pinned an older key
in its bundle follows the chain to the current key. A running hub signs with the key it
loaded at start: restart it after a rotation.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy.orm import Session

from xhub.hub.core.ca import CertificateAuthority
from xhub.hub.core.ca_roots import ca_history
from xhub.hub.core.config import HubConfig
from xhub.hub.core.data_dir import replace_file
from xhub.hub.core.db import MemberKeyRow, MemberRow
from xhub.hub.registry import store as registry
from xhub.hub.registry.keys import member_keys
from xhub.protocol.key_rotation import follow_handovers, handover
from xhub.protocol.pki import certificate_pem
from xhub.protocol.signing import (
    KeySigner,
    KeyVerifier,
    load_signer,
    private_key_pem,
    public_key_der,
    write_secret,
)
from xhub.v1 import envelope_pb2, registry_pb2

HUB_KEY_DAYS = 3650


def read_handovers(path: Path) -> list[envelope_pb2.Envelope]:
    """The stored hand-overs, oldest first (none before the first rotation)."""
    if not path.exists():
        return []
    items = json.loads(path.read_text("utf-8"))
    return [envelope_pb2.Envelope.FromString(base64.b64decode(item)) for item in items]


def hub_keys(session: Session, hub_id: str) -> registry_pb2.HubKeysResult:
    """Every hub signing key with its window, oldest first (the GetHubKeys answer)."""
    return registry_pb2.HubKeysResult(keys=list(registry.member_keys_proto(session, hub_id)))


@dataclass(frozen=True)
class HubRotation:
    """A hub signing-key rotation whose registry changes are in a session; ``switch`` writes
    the files once that session committed."""

    config: HubConfig
    old_key_id: str
    new_key_id: str
    new_key_pem: bytes
    new_cert_pem: bytes
    handovers: tuple[envelope_pb2.Envelope, ...]

    def switch(self) -> tuple[Path, Path]:
        """Keep the outgoing key and certificate beside the new ones (``.old``), write the
        hand-overs, then replace key and certificate; returns where the old ones were kept."""
        paths = self.config.paths
        stem = paths.signing_key.parent / f"signing.{self.old_key_id[:16]}"
        kept_key, kept_cert = stem.with_suffix(".key.old"), stem.with_suffix(".pem.old")
        write_secret(kept_key, paths.signing_key.read_bytes())
        kept_cert.write_bytes(paths.signing_cert.read_bytes())
        replace_file(paths.signing_handovers, _handovers_json(self.handovers).encode("utf-8"))
        replace_file(paths.signing_cert, self.new_cert_pem)
        replace_file(paths.signing_key, self.new_key_pem, secret=True)
        return kept_key, kept_cert


def rotate_hub_signing(
    config: HubConfig, ca: CertificateAuthority, session: Session, *, now: datetime
) -> HubRotation:
    """Hand the hub's signing over to a new key: the hand-over is signed by the outgoing key
    and the whole chain is checked from the hub's first key before anything is written; the
    registry (in ``session``, the caller commits, then calls ``switch``) closes the old
    key's window at ``now`` and registers the new key and certificate under the hub id."""
    paths = config.paths
    outgoing = load_signer(paths.signing_key)
    new_key = ec.generate_private_key(ec.SECP256R1())
    cert = ca.issue(
        new_key.public_key(), config.hub_name, member_id=config.hub_id, days=HUB_KEY_DAYS, now=now
    )
    handovers = (
        *read_handovers(paths.signing_handovers),
        handover(outgoing, cert, hub_id=config.hub_id, at=now),
    )
    rows = member_keys(session, config.hub_id)
    first = KeyVerifier.from_der(rows[0].public_key_der)
    history = ca_history(paths)
    reached = follow_handovers(first, handovers, hub_id=config.hub_id, ca_cert=history)
    new_signer = KeySigner(new_key)
    if new_signer.key_id not in reached:
        raise ValueError("the hand-over chain does not reach the new key")
    for row in rows:
        if row.valid_until is None:
            row.valid_until = now
    session.add(
        MemberKeyRow(
            key_id=new_signer.key_id,
            member_id=config.hub_id,
            algorithm=int(new_signer.algorithm),
            public_key_der=public_key_der(new_key.public_key()),
            created_at=now,
            valid_from=now,
        )
    )
    hub = session.get(MemberRow, config.hub_id)
    assert hub is not None
    hub.certificate_der = cert.public_bytes(Encoding.DER)
    hub.certificate_serial = format(cert.serial_number, "x")
    hub.not_after = cert.not_valid_after_utc
    session.flush()
    return HubRotation(
        config=config,
        old_key_id=outgoing.key_id,
        new_key_id=new_signer.key_id,
        new_key_pem=private_key_pem(new_key),
        new_cert_pem=certificate_pem(cert),
        handovers=handovers,
    )


def _handovers_json(handovers: tuple[envelope_pb2.Envelope, ...]) -> str:
    items = [base64.b64encode(h.SerializeToString()).decode("ascii") for h in handovers]
    return json.dumps(items, indent=1) + "\n"
