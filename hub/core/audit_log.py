"""The audit log on the hub's database: append, sequencer, proof serving, integrity check.

Split as Trillian/Tessera do it:

* **append** (every RPC, allowed or refused) inserts the exact leaf bytes as a
  *pending* row in the caller's transaction, and hands back a receipt;
* the **sequencer** (one at a time: it first locks the single ``audit_tree`` row)
  gives pending rows their indexes in batches, stores the completed Merkle
  nodes and publishes a signed checkpoint, all in one transaction;
* **proofs** read O(log n) stored nodes; nothing is rebuilt.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import (
    Connection,
    Engine,
    bindparam,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError as DBIntegrityError
from sqlalchemy.orm import Session

# Re-exported: the log's readers and tests name them from here.
from xhub.hub.core.audit_integrity import TREE_ROW as TREE_ROW
from xhub.hub.core.audit_integrity import LogIntegrity
from xhub.hub.core.audit_integrity import SqlNodeReader as SqlNodeReader
from xhub.hub.core.audit_integrity import TamperedLogError as TamperedLogError
from xhub.hub.core.audit_integrity import checkpoints_table as checkpoints_table
from xhub.hub.core.audit_integrity import entries as entries
from xhub.hub.core.audit_integrity import nodes_table as nodes_table
from xhub.hub.core.audit_integrity import tree_table as tree_table
from xhub.hub.core.db import (
    AuditEnvelopeRow,
    AuditSubjectRow,
    bulk_execute,
    table_of,
)
from xhub.hub.core.metrics import SequencerProgress
from xhub.protocol.envelope import MAX_PAYLOAD_TYPE_CHARS
from xhub.protocol.log import merkle
from xhub.protocol.log.evidence import REFUSED_ENVELOPE_PREFIX_BYTES
from xhub.protocol.log.key_history import LogKeys
from xhub.protocol.log.note import (
    Checkpoint,
    NoteSigner,
    NoteVerifier,
    sign_checkpoint,
)
from xhub.protocol.signing import load_private_key
from xhub.v1 import audit_pb2, envelope_pb2

log = logging.getLogger("xhub.audit")

ALLOWED = audit_pb2.AUDIT_DECISION_ALLOWED
DENIED = audit_pb2.AUDIT_DECISION_DENIED
DEFAULT_BATCH = 10_000

envelopes_table = table_of(AuditEnvelopeRow)
subjects_table = table_of(AuditSubjectRow)
# Built once: the append path runs on every call, and building a statement costs more
# than executing it. New ids come back matched by leaf hash, not by position: asking for
# parameter order makes SQLAlchemy insert one row at a time on SQLite. Entries with the
# same leaf hash have the same bytes (so the same envelope hash and subject): either id
# serves either.
_INSERT_ENTRIES = insert(entries).returning(entries.c.id, entries.c.leaf_hash)
_INSERT_ENVELOPES = insert(envelopes_table)
_INSERT_SUBJECTS = insert(subjects_table)
_INSERT_NODES = insert(nodes_table)
_SET_LEAF_INDEX = (
    update(entries)
    .where(entries.c.id == bindparam("entry_id"))
    .values(leaf_index=bindparam("new_index"))
)


def load_log_signer(origin: str, key_path: Path) -> NoteSigner:
    """The hub's Ed25519 log key, named by the log origin (the C2SP key name)."""
    key = load_private_key(key_path)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{key_path}: the log key must be Ed25519")
    return NoteSigner(origin, key)


@dataclass
class AuditDraft:
    """What the runtime learns about a call as admission proceeds."""

    method: str
    sender: str = ""
    recipient: str = ""
    payload_type: str = ""
    envelope_bytes: bytes = b""
    # The digest of the exact bytes received, when only a prefix of them is kept.
    envelope_digest: bytes = b""
    signature: bytes = b""
    message_id: str = ""
    case_id: str = ""
    purpose: str = ""
    subject: str = ""
    time: datetime = field(default_factory=lambda: datetime.now(UTC))

    @classmethod
    def for_request(
        cls,
        method: str,
        envelope: envelope_pb2.Envelope | None,
        sender: str,
        envelope_bytes: bytes = b"",
    ) -> AuditDraft:
        """The draft of a request: ``envelope_bytes`` are its envelope's bytes exactly as
        received; only a caller without them (in process) gets the envelope re-encoded."""
        draft = cls(method=method, sender=sender)
        if envelope is not None:
            draft.envelope_bytes = envelope_bytes or envelope.SerializeToString()
            draft.payload_type = envelope.payload_type[:MAX_PAYLOAD_TYPE_CHARS]
            draft.signature = envelope.signatures[0].sig if envelope.signatures else b""
        return draft

    def note_header(self, header: envelope_pb2.Header) -> None:
        self.recipient = header.recipient
        self.message_id = header.message_id
        self.case_id = header.case_id
        self.purpose = header.purpose


def stored_envelope(draft: AuditDraft, decision: audit_pb2.AuditDecision.ValueType) -> bytes:
    """What the envelope table keeps of a call's request: all of it for an allowed call (its
    evidence), at most the first ``REFUSED_ENVELOPE_PREFIX_BYTES`` of a refused one — the
    entry's ``envelope_sha256`` still names every byte that arrived — so refusals cannot fill
    the disk."""
    if decision == ALLOWED:
        return draft.envelope_bytes
    return draft.envelope_bytes[:REFUSED_ENVELOPE_PREFIX_BYTES]


@dataclass(frozen=True)
class LoggedEntry:
    entry_id: int
    leaf_hash: bytes
    logged_at: datetime
    include_by: datetime
    log_origin: str

    @property
    def receipt(self) -> envelope_pb2.AuditReceipt:
        """The signed-response receipt (built on demand: batch appends rarely need one)."""
        receipt = envelope_pb2.AuditReceipt(leaf_hash=self.leaf_hash, log_origin=self.log_origin)
        receipt.logged_at.FromDatetime(self.logged_at)
        receipt.include_by.FromDatetime(self.include_by)
        return receipt


class AuditLog(LogIntegrity):
    def __init__(
        self,
        engine: Engine,
        *,
        hub_id: str,
        origin: str,
        signer: NoteSigner,
        subject_key: bytes,
        merge_delay: timedelta = timedelta(seconds=5),
        sequencer_id: str = "",
        log_keys: LogKeys | None = None,
    ) -> None:
        self.engine = engine
        self.log_keys = log_keys
        self.hub_id = hub_id
        self.origin = origin
        self.signer = signer
        self._subject_key = subject_key
        self.merge_delay = merge_delay
        self.sequencer_id = sequencer_id or hub_id
        self.progress = SequencerProgress()  # read by metric scrapes, never queried for

    @property
    def verifier(self) -> NoteVerifier:
        return self.signer.verifier()

    def subject_hmac(self, subject: str) -> bytes:
        return hmac.new(self._subject_key, subject.encode("utf-8"), hashlib.sha256).digest()

    # -- append ---------------------------------------------------------------

    def append(
        self,
        session: Session,
        draft: AuditDraft,
        decision: audit_pb2.AuditDecision.ValueType,
        reason: str = "",
    ) -> LoggedEntry:
        """Add one pending entry in ``session``'s transaction (the caller commits)."""
        return self.append_many(session, [(draft, decision, reason)])[0]

    def append_many(
        self,
        session: Session,
        items: Sequence[tuple[AuditDraft, audit_pb2.AuditDecision.ValueType, str]],
    ) -> list[LoggedEntry]:
        """Add pending entries with one multi-row INSERT per table (the caller commits)."""
        rows: list[dict[str, object]] = []
        stored_envelopes: list[bytes] = []
        for draft, decision, reason in items:
            stored_envelopes.append(stored_envelope(draft, decision))
            entry = audit_pb2.AuditEntry(
                sender=draft.sender,
                recipient=draft.recipient,
                method=draft.method,
                payload_type=draft.payload_type,
                envelope_sha256=draft.envelope_digest
                or hashlib.sha256(draft.envelope_bytes).digest(),
                signature_sha256=hashlib.sha256(draft.signature).digest(),
                message_id=draft.message_id,
                case_id=draft.case_id,
                purpose=draft.purpose,
                decision=decision,
                reason=reason,
                subject_hmac=self.subject_hmac(draft.subject) if draft.subject else b"",
                hub_id=self.hub_id,
            )
            entry.time.FromDatetime(draft.time)
            entry_bytes = entry.SerializeToString()
            rows.append(
                {
                    "entry": entry_bytes,
                    "leaf_hash": merkle.leaf_hash(entry_bytes),
                    "logged_at": draft.time,
                    "sender": draft.sender,
                    "recipient": draft.recipient[:128],
                    "method": draft.method,
                    "case_id": draft.case_id[:64],
                    "decision": int(decision),
                    "subject_hmac": entry.subject_hmac or None,
                }
            )
        connection = session.connection()
        ids_by_leaf: dict[bytes, list[int]] = {}
        # One row (every call) as a plain execute, several (batches) as one multi-row insert.
        for entry_id, leaf in connection.execute(
            _INSERT_ENTRIES, rows[0] if len(rows) == 1 else rows
        ):
            ids_by_leaf.setdefault(bytes(leaf), []).append(int(entry_id))
        entry_ids = [ids_by_leaf[cast(bytes, row["leaf_hash"])].pop() for row in rows]
        self.progress.appended_id = max(self.progress.appended_id, *entry_ids)
        envelopes = [
            {"entry_id": entry_id, "envelope": envelope}
            for entry_id, envelope in zip(entry_ids, stored_envelopes, strict=True)
            if envelope
        ]
        if envelopes:
            bulk_execute(connection, _INSERT_ENVELOPES, envelopes)
        subjects = [
            {"entry_id": entry_id, "subject": draft.subject}
            for entry_id, (draft, _, _) in zip(entry_ids, items, strict=True)
            if draft.subject
        ]
        if subjects:
            bulk_execute(connection, _INSERT_SUBJECTS, subjects)
        return [
            LoggedEntry(
                entry_id,
                cast(bytes, row["leaf_hash"]),
                draft.time,
                draft.time + self.merge_delay,
                self.origin,
            )
            for entry_id, row, (draft, _, _) in zip(entry_ids, rows, items, strict=True)
        ]

    # -- sequencer ------------------------------------------------------------

    def sequence(self, max_batch: int = DEFAULT_BATCH) -> int:
        """Index one batch of pending entries and publish a checkpoint; returns the count."""
        now = datetime.now(UTC)
        appended = self.progress.appended_id
        with self.engine.begin() as connection:
            # The lock: on PostgreSQL a row lock until commit, on SQLite the write lock.
            connection.execute(
                update(tree_table)
                .where(tree_table.c.id == TREE_ROW)
                .values(sequencer=self.sequencer_id)
            )
            size = connection.execute(
                select(tree_table.c.size).where(tree_table.c.id == TREE_ROW)
            ).scalar_one()
            pending = connection.execute(
                select(entries.c.id, entries.c.leaf_hash)
                .where(entries.c.leaf_index.is_(None))
                .order_by(entries.c.id)
                .limit(max_batch)
            ).all()
            if not pending:
                # Everything committed before this round is in a checkpoint.
                self.progress.tree_size = int(size)
                self.progress.sequenced_id = max(self.progress.sequenced_id, appended)
                return 0
            reader = SqlNodeReader(connection)
            # Nothing is signed over nodes the last signed checkpoint does not vouch for.
            previous = self._check_frontier(connection, int(size), reader)
            bulk_execute(
                connection,
                _SET_LEAF_INDEX,
                [{"entry_id": row.id, "new_index": size + i} for i, row in enumerate(pending)],
            )
            new_nodes = merkle.nodes_to_store(size, [row.leaf_hash for row in pending], reader)
            bulk_execute(
                connection,
                _INSERT_NODES,
                [{"level": lv, "index": ix, "hash": h} for lv, ix, h in new_nodes],
            )
            new_size = size + len(pending)
            root = merkle.root_hash(new_size, reader)
            note = sign_checkpoint(Checkpoint(self.origin, new_size, root), self.signer)
            connection.execute(
                update(tree_table)
                .where(tree_table.c.id == TREE_ROW)
                .values(size=new_size, root_hash=root, updated_at=now)
            )
            connection.execute(
                insert(checkpoints_table),
                {
                    "tree_size": new_size,
                    "root_hash": root,
                    "note": note,
                    "created_at": now,
                    "previous_size": previous,
                },
            )
        progress = self.progress
        progress.tree_size, progress.checkpoint_at = new_size, now
        last = int(pending[-1].id) if len(pending) == max_batch else max(pending[-1].id, appended)
        progress.sequenced_id = max(progress.sequenced_id, last)
        return len(pending)

    def _check_frontier(
        self, connection: Connection, size: int, reader: SqlNodeReader
    ) -> int | None:
        """Before extending: the stored tree of ``size`` leaves (the O(log n) nodes its root
        is made of, which the new nodes are built on) must hash to the root of the last
        checkpoint the log key signed. An entry edited together with its recomputed Merkle
        path would otherwise be covered by the next checkpoint; raises TamperedLogError."""
        _, _, note = self.latest_checkpoint(connection)
        if not note:
            if size:
                raise TamperedLogError(
                    f"the tree holds {size} entries but no signed checkpoint covers them; "
                    "the sequencer will not sign"
                )
            return None
        try:
            checkpoint = self.open_stored(note)
        except ValueError as exc:
            raise TamperedLogError(
                f"the last stored checkpoint does not verify ({exc}); the sequencer will not sign"
            ) from exc
        if checkpoint.origin != self.origin or checkpoint.size != size:
            raise TamperedLogError(
                f"the tree state says {size} entries but the last signed checkpoint covers "
                f"{checkpoint.size}; the sequencer will not sign"
            )
        try:
            stored_root = merkle.root_hash(size, reader)
        except KeyError as exc:
            raise TamperedLogError(f"{exc.args[0]}; the sequencer will not sign") from exc
        if stored_root != checkpoint.root_hash:
            raise TamperedLogError(
                f"the stored Merkle nodes of the first {size} entries hash to "
                f"{stored_root.hex()[:16]}…, not to the root {checkpoint.root_hash.hex()[:16]}… "
                f"of the last signed checkpoint (size {size}): an entry and its Merkle path "
                "were edited; the sequencer will not sign"
            )
        return size

    def publish_initial_checkpoint(self) -> None:
        """An empty log still has a signed checkpoint (size 0), so clients can start from it."""
        try:
            with self.engine.begin() as connection:
                if self.latest_checkpoint(connection)[2]:
                    return
                note = sign_checkpoint(Checkpoint(self.origin, 0, merkle.EMPTY_ROOT), self.signer)
                connection.execute(
                    insert(checkpoints_table),
                    {
                        "tree_size": 0,
                        "root_hash": merkle.EMPTY_ROOT,
                        "note": note,
                        "created_at": datetime.now(UTC),
                    },
                )
        except DBIntegrityError:
            pass  # another hub process published it first

    def observe_progress(self) -> None:
        """Start ``progress`` from the database (once, at startup)."""
        with self.engine.connect() as connection:
            latest = connection.execute(
                select(checkpoints_table.c.tree_size, checkpoints_table.c.created_at)
                .order_by(checkpoints_table.c.tree_size.desc())
                .limit(1)
            ).first()
            sequenced = connection.execute(
                select(func.max(entries.c.id)).where(entries.c.leaf_index.is_not(None))
            ).scalar_one()
            appended = connection.execute(select(func.max(entries.c.id))).scalar_one()
        if latest is not None:
            at = latest[1]
            self.progress.tree_size = int(latest[0])
            self.progress.checkpoint_at = at if at.tzinfo else at.replace(tzinfo=UTC)
        self.progress.sequenced_id = int(sequenced or 0)
        self.progress.appended_id = max(self.progress.appended_id, int(appended or 0))

    # -- reading --------------------------------------------------------------

    def locate(self, connection: Connection, leaf_hash: bytes) -> int | None:
        """Leaf index of an entry by its leaf hash; None while it is pending."""
        row = connection.execute(
            select(entries.c.leaf_index).where(entries.c.leaf_hash == leaf_hash).limit(1)
        ).first()
        if row is None:
            raise LookupError("no entry with that leaf hash")
        return None if row[0] is None else int(row[0])

    def pending_count(self, connection: Connection) -> int:
        return int(
            connection.execute(
                select(func.count()).select_from(entries).where(entries.c.leaf_index.is_(None))
            ).scalar_one()
        )
