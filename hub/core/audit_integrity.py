"""Reading the audit log's checkpoints and checking the stored log against them.

``LogIntegrity`` is the half of ``AuditLog`` that only reads: the stored checkpoints and the
integrity check run at startup and by ``xhub audit check``. The check verifies

* the whole checkpoint **history**: every stored checkpoint's signature (through
  ``protocol.log.note``, so a key history can slot in), each one linked to the one before it
  (a row deleted from the middle is named) and consistent with the next by an RFC 9162
  consistency proof computed from the stored nodes — O(checkpoints × log n) node reads, in
  batches, no entry rehashed for it;
* the **entries**: every stored entry hashes to its leaf, the leaves to the latest root, and
  every stored interior node to its children.
"""

from __future__ import annotations

import abc
import contextlib
import itertools
from collections.abc import Callable, Iterator, Sequence

from sqlalchemy import Connection, Engine, and_, func, or_, select
from sqlalchemy.exc import SQLAlchemyError

from xhub.hub.core.db import (
    AuditCheckpointRow,
    AuditEntryRow,
    AuditTreeRow,
    MerkleNodeRow,
    table_of,
)
from xhub.protocol.log import merkle
from xhub.protocol.log.key_history import LogKeys
from xhub.protocol.log.note import Checkpoint, NoteVerifier, open_checkpoint

TREE_ROW = 1
# Checkpoints whose consistency proofs are read with one node query.
HISTORY_BATCH = 200

entries = table_of(AuditEntryRow)
nodes_table = table_of(MerkleNodeRow)
tree_table = table_of(AuditTreeRow)
checkpoints_table = table_of(AuditCheckpointRow)


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


class LogIntegrity(abc.ABC):
    """Checkpoints and the integrity check over ``engine`` (see the module docstring); the
    writing side (``AuditLog``) supplies the engine, the origin and the current log key."""

    engine: Engine
    origin: str

    # Every key the log has had (after a log key rotation older checkpoints are signed by
    # older keys); None: the current key alone.
    log_keys: LogKeys | None = None

    @property
    @abc.abstractmethod
    def verifier(self) -> NoteVerifier:
        """The log's current note verifier (the key new checkpoints are signed with)."""

    def open_stored(self, note: bytes) -> Checkpoint:
        """A stored checkpoint, opened with the log key that signed it (NoteError if none)."""
        if self.log_keys is not None:
            return self.log_keys.open(note)
        return open_checkpoint(note, self.verifier)

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

    def check_integrity(
        self, *, progress: Callable[[int, int], None] | None = None
    ) -> tuple[int, bytes]:
        """Recompute the tree from the stored entry bytes and compare with the last checkpoint.

        Detects edited, deleted, reordered and inserted rows, stored nodes that disagree,
        and a checkpoint history that was edited or cut (see the module docstring).
        Returns (size, root) on success; raises TamperedLogError naming the first entry
        or checkpoint that fails.
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
                checkpoint = self.open_stored(note)
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
            # 5. The history: every checkpoint ever published, each extending the one before.
            self._check_history(connection)
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

    def _check_history(self, connection: Connection) -> int:
        """Every stored checkpoint, oldest first: signed by the log key, its row equal to its
        note, linked to the one before it, and consistent with it by a consistency proof
        from the stored nodes. Returns how many were checked; raises TamperedLogError
        naming the checkpoint that breaks."""
        rows = connection.execute(
            select(
                checkpoints_table.c.tree_size,
                checkpoints_table.c.root_hash,
                checkpoints_table.c.note,
                checkpoints_table.c.previous_size,
            ).order_by(checkpoints_table.c.tree_size)
        ).all()
        signed: list[Checkpoint] = []
        for tree_size, root_hash, note, previous_size in rows:
            size = int(tree_size)
            before = signed[-1].size if signed else None
            if previous_size != before:
                if previous_size is not None and (before is None or previous_size > before):
                    raise TamperedLogError(
                        f"checkpoint size {previous_size} is missing from the stored history "
                        f"(checkpoint size {size} names it as the one before)"
                    )
                raise TamperedLogError(
                    f"checkpoint size {size} names size {previous_size} as the one before it, "
                    f"but the stored history has {before}"
                )
            try:
                checkpoint = self.open_stored(bytes(note))
            except ValueError as exc:
                raise TamperedLogError(
                    f"checkpoint size {size} does not verify with the log key: {exc}"
                ) from exc
            if (checkpoint.origin, checkpoint.size, checkpoint.root_hash) != (
                self.origin,
                size,
                bytes(root_hash),
            ):
                raise TamperedLogError(
                    f"checkpoint size {size}: its row disagrees with its signed note "
                    f"(signed: {checkpoint.origin} size {checkpoint.size})"
                )
            signed.append(checkpoint)
        reader = _PrefetchingReader(SqlNodeReader(connection))
        pairs = list(itertools.pairwise(signed))
        for start in range(0, len(pairs), HISTORY_BATCH):
            batch = pairs[start : start + HISTORY_BATCH]
            reader.prefetch(
                key
                for old, new in batch
                for key in merkle.consistency_proof_keys(old.size, new.size)
            )
            for old, new in batch:
                try:
                    proof = merkle.consistency_proof(old.size, new.size, reader)
                    merkle.verify_consistency(
                        old.size, new.size, old.root_hash, new.root_hash, proof
                    )
                except (merkle.ProofError, KeyError) as exc:
                    raise TamperedLogError(
                        f"checkpoint size {new.size} is not consistent with checkpoint size "
                        f"{old.size}: the consistency proof from the stored nodes fails ({exc})"
                    ) from exc
        return len(signed)


class _PrefetchingReader:
    """A NodeReader that answers from nodes read ahead in one query, then from ``inner``."""

    def __init__(self, inner: SqlNodeReader) -> None:
        self._inner = inner
        self._cache: dict[merkle.NodeKey, bytes] = {}

    def prefetch(self, keys: Iterator[merkle.NodeKey] | Sequence[merkle.NodeKey]) -> None:
        self._cache.clear()
        wanted = list(dict.fromkeys(keys))
        self._cache.update(zip(wanted, self._inner.get_nodes(wanted), strict=True))

    def get_node(self, level: int, index: int) -> bytes:
        return self.get_nodes([(level, index)])[0]

    def get_nodes(self, keys: Sequence[merkle.NodeKey]) -> Sequence[bytes]:
        missing = [key for key in keys if key not in self._cache]
        if missing:
            self._cache.update(zip(missing, self._inner.get_nodes(missing), strict=True))
        return [self._cache[key] for key in keys]
