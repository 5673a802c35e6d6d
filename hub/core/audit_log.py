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

import contextlib
import hashlib
import hmac
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import (
    Connection,
    Engine,
    and_,
    bindparam,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError as DBIntegrityError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from xhub.hub.core.db import (
    AuditCheckpointRow,
    AuditEntryRow,
    AuditEnvelopeRow,
    AuditSubjectRow,
    AuditTreeRow,
    MerkleNodeRow,
    bulk_execute,
    table_of,
)
from xhub.protocol.envelope import MAX_PAYLOAD_TYPE_CHARS
from xhub.protocol.log import merkle
from xhub.protocol.log.evidence import REFUSED_ENVELOPE_PREFIX_BYTES
from xhub.protocol.log.note import (
    Checkpoint,
    NoteSigner,
    NoteVerifier,
    open_checkpoint,
    sign_checkpoint,
)
from xhub.protocol.signing import load_private_key
from xhub.v1 import audit_pb2, envelope_pb2

log = logging.getLogger("xhub.audit")

ALLOWED = audit_pb2.AUDIT_DECISION_ALLOWED
DENIED = audit_pb2.AUDIT_DECISION_DENIED
TREE_ROW = 1
DEFAULT_BATCH = 10_000

entries = table_of(AuditEntryRow)
nodes_table = table_of(MerkleNodeRow)
tree_table = table_of(AuditTreeRow)
envelopes_table = table_of(AuditEnvelopeRow)
subjects_table = table_of(AuditSubjectRow)
checkpoints_table = table_of(AuditCheckpointRow)

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


class TamperedLogError(RuntimeError):
    """The stored log disagrees with its last signed checkpoint."""


class SqlNodeReader:
    """NodeReader over ``merkle_nodes``: one query per proof."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def get_node(self, level: int, index: int) -> bytes:
        return self.get_nodes([(level, index)])[0]

    def get_nodes(self, keys: Sequence[merkle.NodeKey]) -> Sequence[bytes]:
        found: dict[merkle.NodeKey, bytes] = {}
        wanted = list(dict.fromkeys(keys))
        for start in range(0, len(wanted), 500):
            by_level: dict[int, list[int]] = {}
            for level, index in wanted[start : start + 500]:
                by_level.setdefault(level, []).append(index)
            # One primary-key probe per level; a row-value IN would scan on SQLite.
            condition = or_(
                *(
                    and_(nodes_table.c.level == level, nodes_table.c.index.in_(indexes))
                    for level, indexes in by_level.items()
                )
            )
            rows = self._connection.execute(
                select(nodes_table.c.level, nodes_table.c.index, nodes_table.c.hash).where(
                    condition
                )
            )
            found.update({(level, index): value for level, index, value in rows})
        try:
            return [found[key] for key in keys]
        except KeyError as exc:
            raise KeyError(f"merkle node {exc.args[0]} is not stored") from exc


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
        cls, method: str, envelope: envelope_pb2.Envelope | None, sender: str
    ) -> AuditDraft:
        draft = cls(method=method, sender=sender)
        if envelope is not None:
            draft.envelope_bytes = envelope.SerializeToString()
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


class AuditLog:
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
    ) -> None:
        self.engine = engine
        self.hub_id = hub_id
        self.origin = origin
        self.signer = signer
        self._subject_key = subject_key
        self.merge_delay = merge_delay
        self.sequencer_id = sequencer_id or hub_id

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
                return 0
            bulk_execute(
                connection,
                _SET_LEAF_INDEX,
                [{"entry_id": row.id, "new_index": size + i} for i, row in enumerate(pending)],
            )
            reader = SqlNodeReader(connection)
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
                {"tree_size": new_size, "root_hash": root, "note": note, "created_at": now},
            )
        return len(pending)

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

    # -- reading --------------------------------------------------------------

    def latest_checkpoint(self, connection: Connection) -> tuple[int, bytes, bytes]:
        """(size, root, signed note) of the newest checkpoint; size 0 if none yet."""
        row = connection.execute(
            select(
                AuditCheckpointRow.tree_size, AuditCheckpointRow.root_hash, AuditCheckpointRow.note
            )
            .order_by(AuditCheckpointRow.tree_size.desc())
            .limit(1)
        ).first()
        if row is None:
            return 0, merkle.EMPTY_ROOT, b""
        return int(row[0]), bytes(row[1]), bytes(row[2])

    def checkpoint_at(self, connection: Connection, size: int) -> bytes | None:
        note = connection.execute(
            select(AuditCheckpointRow.note).where(AuditCheckpointRow.tree_size == size)
        ).scalar()
        return None if note is None else bytes(note)

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

    # -- integrity ------------------------------------------------------------

    def check_integrity(
        self, *, progress: Callable[[int, int], None] | None = None
    ) -> tuple[int, bytes]:
        """Recompute the tree from the stored entry bytes and compare with the last checkpoint.

        Detects edited, deleted, reordered and inserted rows, and stored nodes that
        disagree. Returns (size, root) on success; raises TamperedLogError naming the
        first entry that fails.
        """
        with self._snapshot() as connection:
            # 1. The latest checkpoint must carry a valid signature by the log key.
            size, root, note = self.latest_checkpoint(connection)
            sequenced = int(
                connection.execute(
                    select(func.count())
                    .select_from(entries)
                    .where(entries.c.leaf_index.is_not(None))
                ).scalar_one()
            )
            if not note:
                if sequenced:
                    raise TamperedLogError(f"{sequenced} sequenced entries but no checkpoint")
                return 0, merkle.EMPTY_ROOT
            try:
                checkpoint = open_checkpoint(note, self.verifier)
            except ValueError as exc:
                raise TamperedLogError(f"latest checkpoint does not verify: {exc}") from exc
            if (checkpoint.size, checkpoint.root_hash, checkpoint.origin) != (
                size,
                root,
                self.origin,
            ):
                raise TamperedLogError("checkpoint row disagrees with its signed note")
            # 2. The tree state row must match the checkpoint.
            state = connection.execute(
                select(tree_table.c.size, tree_table.c.root_hash).where(tree_table.c.id == TREE_ROW)
            ).one()
            if (int(state[0]), bytes(state[1])) != (size, root):
                raise TamperedLogError(
                    f"tree state (size {state[0]}) differs from the checkpoint (size {size})"
                )
            if sequenced != size:
                raise TamperedLogError(
                    f"{sequenced} sequenced entries but the checkpoint covers {size}"
                )
            # 3. Every entry, in index order, hashes to the tree the checkpoint signed.
            builder = merkle.RootBuilder()
            rows = connection.execution_options(yield_per=5000).execute(
                select(
                    entries.c.leaf_index, entries.c.entry, entries.c.leaf_hash, nodes_table.c.hash
                )
                .outerjoin(
                    nodes_table,
                    and_(nodes_table.c.level == 0, nodes_table.c.index == entries.c.leaf_index),
                )
                .where(entries.c.leaf_index.is_not(None))
                .order_by(entries.c.leaf_index)
            )
            try:
                for leaf_index, entry_bytes, stored_leaf, tree_leaf in rows:
                    if leaf_index != builder.size:
                        raise TamperedLogError(
                            f"entry #{builder.size} is missing (next stored index is {leaf_index})"
                        )
                    leaf = merkle.leaf_hash(bytes(entry_bytes))
                    if leaf != bytes(stored_leaf) or tree_leaf is None or leaf != bytes(tree_leaf):
                        raise TamperedLogError(
                            f"entry #{leaf_index}: its bytes do not hash to the leaf in the tree "
                            "(edited, reordered or inserted)"
                        )
                    builder.add(leaf)
                    if progress is not None and builder.size % 10_000 == 0:
                        progress(builder.size, size)
            except SQLAlchemyError as exc:
                raise TamperedLogError(
                    f"audit rows after entry #{builder.size - 1} cannot be read "
                    f"({type(exc).__name__}: a column holds data of the wrong type)"
                ) from exc
            if builder.root() != root:
                raise TamperedLogError(
                    "the entries do not hash to the checkpointed root "
                    "(an entry was edited, reordered or inserted)"
                )
            # 4. Every stored interior node must be the hash of its two children (level 0
            #    was checked against the entries above), so every proof served is honest.
            self._check_nodes(connection, size)
            if merkle.root_hash(size, SqlNodeReader(connection)) != root:
                raise TamperedLogError("stored Merkle nodes disagree with the checkpoint")
            return size, root

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[Connection]:
        """A read transaction that sees one consistent state while the sequencer commits."""
        with self.engine.connect() as connection:
            if connection.dialect.name == "sqlite":
                # pysqlite runs SELECTs outside transactions; an explicit BEGIN pins one
                # WAL snapshot for all the reads below (ended by the rollback on close).
                connection.exec_driver_sql("BEGIN")
                yield connection
            else:
                connection = connection.execution_options(isolation_level="REPEATABLE READ")
                with connection.begin():
                    yield connection

    @staticmethod
    def _check_nodes(connection: Connection, size: int) -> None:
        counts: dict[int, int] = dict(
            connection.execute(
                select(nodes_table.c.level, func.count()).group_by(nodes_table.c.level)
            ).all()
        )
        for level in range(max(size.bit_length(), 1)):
            found = counts.pop(level, 0)
            if found != size >> level:
                raise TamperedLogError(f"level {level} holds {found} nodes, not {size >> level}")
        if any(counts.values()):
            raise TamperedLogError("stored Merkle nodes beyond the checkpointed tree")
        parent, left, right = (nodes_table.alias(n) for n in ("parent", "left", "right"))
        rows = connection.execution_options(yield_per=5000).execute(
            select(parent.c.level, parent.c.index, parent.c.hash, left.c.hash, right.c.hash)
            .join(
                left,
                and_(left.c.level == parent.c.level - 1, left.c.index == 2 * parent.c.index),
            )
            .join(
                right,
                and_(right.c.level == parent.c.level - 1, right.c.index == 2 * parent.c.index + 1),
            )
            .where(parent.c.level >= 1)
        )
        checked = 0
        for level, index, value, left_hash, right_hash in rows:
            if merkle.node_hash(bytes(left_hash), bytes(right_hash)) != bytes(value):
                first = index << level
                raise TamperedLogError(
                    f"stored node (level {level}, index {index}) over entries "
                    f"#{first}–#{first + (1 << level) - 1} is not the hash of its children"
                )
            checked += 1
        if checked != sum(size >> level for level in range(1, max(size.bit_length(), 1))):
            raise TamperedLogError("a stored Merkle node is missing one of its children")
