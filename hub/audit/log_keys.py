"""Rotation of the audit log key (日志密钥轮换) and publication of its hand-overs.

``rotate_log_key`` re-signs the log's latest checkpoint as a hand-over
(``protocol.log.key_history.handover_note``: same tree, an extension line naming the new
key, signed by the old and the new key) and stores it in place of that checkpoint's note,
so the log's newest checkpoint is the hand-over and the restarted hub's own check finds it
signed by its new key. The hand-overs are kept in the data directory and served with every
GetCheckpoint answer. A running hub signs with the key it loaded at start: restart it.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from xhub.hub.core.audit_log import load_log_signer
from xhub.hub.core.config import HubConfig
from xhub.hub.core.data_dir import replace_file
from xhub.hub.core.db import AuditCheckpointRow
from xhub.hub.core.log_keys import log_key_document, read_log_handovers
from xhub.protocol.log import merkle
from xhub.protocol.log.key_history import LogKeys, handover_note
from xhub.protocol.log.note import Checkpoint, NoteSigner
from xhub.protocol.signing import private_key_pem, write_secret


@dataclass(frozen=True)
class LogRotation:
    """A log key rotation whose checkpoint is in a session; ``switch`` writes the files."""

    config: HubConfig
    old_vkey: str
    new_vkey: str
    new_key_pem: bytes
    handovers: tuple[bytes, ...]
    tree_size: int

    def switch(self) -> Path:
        """Keep the old key beside the new one, write the hand-overs, then the new key;
        returns where the old key was kept."""
        paths = self.config.paths
        old_id = self.old_vkey.split("+")[1]
        kept = paths.log_key.with_name(f"log.{old_id}.key.old")
        write_secret(kept, paths.log_key.read_bytes())
        document = {
            "first_key": log_key_document(paths.log_handovers)["first_key"] or self.old_vkey,
            "handovers": [base64.b64encode(note).decode("ascii") for note in self.handovers],
        }
        replace_file(paths.log_handovers, (json.dumps(document, indent=1) + "\n").encode())
        replace_file(paths.log_key, self.new_key_pem, secret=True)
        return kept


def rotate_log_key(config: HubConfig, session: Session) -> LogRotation:
    """Sign the hand-over with the old and a new log key and store it as the latest
    checkpoint's note (in ``session``: the caller commits, then calls ``switch``)."""
    paths = config.paths
    origin = config.effective_log_origin
    outgoing = load_log_signer(origin, paths.log_key)
    new_key = Ed25519PrivateKey.generate()
    incoming = NoteSigner(origin, new_key)
    latest = session.scalars(
        select(AuditCheckpointRow).order_by(AuditCheckpointRow.tree_size.desc()).limit(1)
    ).first()
    size, root = (latest.tree_size, bytes(latest.root_hash)) if latest else (0, merkle.EMPTY_ROOT)
    note = handover_note(Checkpoint(origin, size, root), outgoing, incoming)
    handovers = (*read_log_handovers(paths.log_handovers), note)
    # The chain must lead from the outgoing key to the new one before anything changes.
    if (
        LogKeys.following(outgoing.verifier(), handovers).current.key_id
        != incoming.verifier().key_id
    ):
        raise ValueError("the log key hand-overs do not reach the new key")
    if latest is None:
        session.execute(
            insert(AuditCheckpointRow).values(
                tree_size=0, root_hash=root, note=note, created_at=datetime.now(UTC)
            )
        )
    else:
        session.execute(
            update(AuditCheckpointRow).where(AuditCheckpointRow.tree_size == size).values(note=note)
        )
    return LogRotation(
        config=config,
        old_vkey=outgoing.verifier_key(),
        new_vkey=incoming.verifier_key(),
        new_key_pem=private_key_pem(new_key),
        handovers=handovers,
        tree_size=size,
    )
