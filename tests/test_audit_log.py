"""The audit log at the storage level (DESIGN.md §7), on SQLite and on a real PostgreSQL.

An ``AuditLog`` is built directly on a migrated database: entries are appended in sessions,
sequenced in small batches, and the stored tree, checkpoints and proofs are checked against an
independent recomputation.  Then every kind of tampering an operator with database access could
do (raw SQL, no log key) must make ``check_integrity`` raise ``TamperedLogError``, and several
sequencers running at once (threads, and on PostgreSQL separate engines as two hub processes
would) must still index every entry exactly once.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Connection, Engine, text
from sqlalchemy.orm import Session, sessionmaker

from xhub.hub.audit.service import query_log
from xhub.hub.core.audit_log import (
    ALLOWED,
    DENIED,
    AuditDraft,
    AuditLog,
    SqlNodeReader,
    TamperedLogError,
)
from xhub.hub.core.db import make_engine, migrate, session_factory
from xhub.protocol.log import merkle
from xhub.protocol.log.note import Checkpoint, NoteSigner, open_checkpoint
from xhub.v1 import audit_pb2

ORIGIN = "test.xhub.example/audit"
HUB_ID = "CN.440000.XHUB"
METHOD = "/xhub.v1.RegistryService/GetMember"


# -- helpers ----------------------------------------------------------------------------------


def subject_of(i: int) -> str:
    """A data subject's code (USCC-like, unique per entry and easy to search for)."""
    return f"91440101MA5C{i:04d}XZ"


def draft_for(i: int, *, subject: bool = True) -> AuditDraft:
    return AuditDraft(
        method=METHOD if i % 3 else "/xhub.v1.RegistryService/ListMembers",
        sender=f"CN.440100.SENDER{i % 4}",
        recipient=HUB_ID,
        payload_type="xhub.v1.MemberLookup",
        envelope_bytes=b"envelope-%d-" % i + os.urandom(24),
        signature=os.urandom(64),
        message_id=str(uuid.uuid4()),
        case_id=f"CASE-{i:05d}",
        purpose="行政许可" if i % 2 else "",
        subject=subject_of(i) if subject else "",
        time=datetime(2025, 1, 1, tzinfo=UTC) + timedelta(seconds=i),
    )


@dataclass
class LogKit:
    engine: Engine
    log: AuditLog
    sessions: sessionmaker[Session]
    subject_key: bytes
    subjects: dict[int, str] = field(default_factory=dict)  # leaf index → clear subject
    counter: int = 0

    def append(self, count: int, *, per_session: int = 5) -> None:
        """Append ``count`` entries, ``per_session`` per transaction; every 4th is DENIED."""
        done = 0
        while done < count:
            with self.sessions.begin() as session:
                for _ in range(min(per_session, count - done)):
                    i = self.counter
                    decision = DENIED if i % 4 == 3 else ALLOWED
                    reason = "BAD_SIGNATURE" if decision == DENIED else ""
                    self.log.append(session, draft_for(i, subject=i % 5 != 4), decision, reason)
                    self.counter += 1
                    done += 1

    def sequence_all(self, max_batch: int) -> list[int]:
        batches = []
        while (count := self.log.sequence(max_batch)) > 0:
            batches.append(count)
        return batches

    def rows(self) -> list[tuple[int, int | None, bytes, bytes]]:
        """(id, leaf_index, entry, leaf_hash) of every entry, by id."""
        with self.engine.connect() as connection:
            return [
                (int(r[0]), None if r[1] is None else int(r[1]), bytes(r[2]), bytes(r[3]))
                for r in connection.execute(
                    text("SELECT id, leaf_index, entry, leaf_hash FROM audit_entries ORDER BY id")
                )
            ]

    def sequenced_entries(self) -> list[bytes]:
        """Entry bytes in leaf-index order."""
        with self.engine.connect() as connection:
            return [
                bytes(r[0])
                for r in connection.execute(
                    text(
                        "SELECT entry FROM audit_entries WHERE leaf_index IS NOT NULL "
                        "ORDER BY leaf_index"
                    )
                )
            ]

    def checkpoints(self) -> list[tuple[int, bytes, bytes]]:
        with self.engine.connect() as connection:
            return [
                (int(r[0]), bytes(r[1]), bytes(r[2]))
                for r in connection.execute(
                    text(
                        "SELECT tree_size, root_hash, note FROM audit_checkpoints "
                        "ORDER BY tree_size"
                    )
                )
            ]


def new_log(engine: Engine, *, signer: NoteSigner | None = None, key: bytes = b"") -> LogKit:
    subject_key = key or os.urandom(32)
    log = AuditLog(
        engine,
        hub_id=HUB_ID,
        origin=ORIGIN,
        signer=signer or NoteSigner.generate(ORIGIN),
        subject_key=subject_key,
    )
    return LogKit(engine, log, session_factory(engine), subject_key)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url, pool_size=8)
    migrate(engine)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def kit(engine: Engine) -> LogKit:
    return new_log(engine)


def prefix_roots(entries: list[bytes]) -> list[bytes]:
    """roots[s] = MTH of the first s entries, recomputed without any stored node."""
    builder = merkle.RootBuilder()
    roots = [builder.root()]
    for entry in entries:
        builder.add(merkle.leaf_hash(entry))
        roots.append(builder.root())
    return roots


def parse(entry_bytes: bytes) -> audit_pb2.AuditEntry:
    entry = audit_pb2.AuditEntry()
    entry.ParseFromString(entry_bytes)
    return entry


# -- appending and sequencing ---------------------------------------------------------------


def test_empty_log_checks_and_gets_an_initial_checkpoint(kit: LogKit) -> None:
    assert kit.log.check_integrity() == (0, merkle.EMPTY_ROOT)
    kit.log.publish_initial_checkpoint()
    kit.log.publish_initial_checkpoint()  # idempotent
    [(size, root, note)] = kit.checkpoints()
    assert (size, root) == (0, merkle.EMPTY_ROOT)
    assert open_checkpoint(note, kit.log.verifier) == Checkpoint(ORIGIN, 0, merkle.EMPTY_ROOT)
    assert kit.log.check_integrity() == (0, merkle.EMPTY_ROOT)
    assert kit.log.sequence(4) == 0
    assert len(kit.checkpoints()) == 1, "an empty batch publishes no checkpoint"


def test_batches_give_contiguous_indexes_and_signed_checkpoints(kit: LogKit) -> None:
    kit.log.publish_initial_checkpoint()
    kit.append(13, per_session=5)
    with kit.engine.connect() as connection:
        assert kit.log.pending_count(connection) == 13
        assert kit.log.latest_checkpoint(connection)[0] == 0
    # Pending entries do not disturb the check: the checkpoint still covers 0.
    assert kit.log.check_integrity() == (0, merkle.EMPTY_ROOT)

    assert kit.sequence_all(max_batch=4) == [4, 4, 4, 1]
    rows = kit.rows()
    assert [index for _, index, _, _ in rows] == list(range(13)), "indexes follow append order"
    for _, _, entry, leaf in rows:
        assert leaf == merkle.leaf_hash(entry)
    with kit.engine.connect() as connection:
        assert kit.log.pending_count(connection) == 0

    # One checkpoint per batch, kept as history, each signed and each over the right prefix.
    roots = prefix_roots(kit.sequenced_entries())
    history = kit.checkpoints()
    assert [size for size, _, _ in history] == [0, 4, 8, 12, 13]
    for size, root, note in history:
        checkpoint = open_checkpoint(note, kit.log.verifier)
        assert checkpoint == Checkpoint(ORIGIN, size, roots[size])
        assert root == roots[size]
        assert note.startswith(f"{ORIGIN}\n{size}\n".encode())
    with kit.engine.connect() as connection:
        assert kit.log.latest_checkpoint(connection)[:2] == (13, roots[13])
        assert kit.log.checkpoint_at(connection, 8) == history[2][2]
        assert kit.log.checkpoint_at(connection, 7) is None
        state = connection.execute(text("SELECT size, root_hash FROM audit_tree")).one()
    assert (int(state[0]), bytes(state[1])) == (13, roots[13])
    assert kit.log.check_integrity() == (13, roots[13])


def test_entries_record_the_call(kit: LogKit) -> None:
    kit.append(4)
    kit.sequence_all(max_batch=10)
    with kit.engine.connect() as connection:
        envelopes = dict(
            (int(r[0]), bytes(r[1]))
            for r in connection.execute(text("SELECT entry_id, envelope FROM audit_envelopes"))
        )
    for (entry_id, index, entry_bytes, _), i in zip(kit.rows(), range(4), strict=True):
        entry = parse(entry_bytes)
        expected = draft_for(i)
        assert index == i
        assert entry.method == expected.method
        assert entry.sender == expected.sender
        assert entry.recipient == HUB_ID
        assert entry.case_id == expected.case_id
        assert entry.hub_id == HUB_ID
        assert entry.time.ToDatetime(tzinfo=UTC) == expected.time
        assert entry.decision == (DENIED if i == 3 else ALLOWED)
        assert entry.reason == ("BAD_SIGNATURE" if i == 3 else "")
        # The exact envelope is kept aside, its digest is in the leaf.
        assert hashlib.sha256(envelopes[entry_id]).digest() == entry.envelope_sha256
        assert envelopes[entry_id].startswith(b"envelope-%d-" % i)


def test_subject_enters_the_leaf_only_as_a_keyed_hash(kit: LogKit) -> None:
    kit.append(10)
    kit.sequence_all(max_batch=3)
    notes = b"".join(note for _, _, note in kit.checkpoints())
    with kit.engine.connect() as connection:
        nodes = b"".join(
            bytes(r[0]) for r in connection.execute(text("SELECT hash FROM merkle_nodes"))
        )
    for _, index, entry_bytes, _ in kit.rows():
        assert index is not None
        entry = parse(entry_bytes)
        if index % 5 == 4:  # appended without a subject
            assert entry.subject_hmac == b""
            continue
        subject = subject_of(index)
        expected = hmac.new(kit.subject_key, subject.encode(), hashlib.sha256).digest()
        assert entry.subject_hmac == expected == kit.log.subject_hmac(subject)
        assert entry.subject_hmac != hashlib.sha256(subject.encode()).digest(), "must be keyed"
        for encoding in ("utf-8", "utf-16-le"):
            assert subject.encode(encoding) not in entry_bytes
            assert subject.encode(encoding) not in notes
        assert subject[-8:].encode() not in entry_bytes
        assert subject.encode() not in nodes
    # Another subject key gives another digest: the leaf alone cannot be brute-forced.
    other = new_log(kit.engine, signer=kit.log.signer)
    assert other.log.subject_hmac(subject_of(0)) != kit.log.subject_hmac(subject_of(0))
    # The clear value sits in the auditor-only index, found by the keyed hash.
    with kit.sessions() as session:
        records, token = query_log(kit.log, session, audit_pb2.AuditQuery(subject=subject_of(6)))
    assert token == ""
    assert [(r.leaf_index, r.subject) for r in records] == [(6, subject_of(6))]
    assert parse(records[0].entry).subject_hmac == kit.log.subject_hmac(subject_of(6))


# -- proofs from the stored nodes -------------------------------------------------------------


def test_stored_nodes_serve_every_inclusion_and_consistency_proof(kit: LogKit) -> None:
    n = 11
    kit.append(n, per_session=2)
    assert kit.sequence_all(max_batch=3) == [3, 3, 3, 2]
    entries = kit.sequenced_entries()
    leaves = [merkle.leaf_hash(e) for e in entries]
    roots = prefix_roots(entries)
    memory = merkle.MemoryNodeStore()
    memory.append(leaves)
    with kit.engine.connect() as connection:
        stored = {
            (int(level), int(index)): bytes(value)
            for level, index, value in connection.execute(
                text('SELECT level, "index", hash FROM merkle_nodes')
            )
        }
        assert stored == memory.nodes(), "exactly the complete subtrees are stored"
        reader = SqlNodeReader(connection)
        for size in range(1, n + 1):
            assert merkle.root_hash(size, reader) == roots[size]
            for index in range(size):
                proof = merkle.inclusion_proof(index, size, reader)
                merkle.verify_inclusion(leaves[index], index, size, proof, roots[size])
            for old in range(1, size + 1):
                proof = merkle.consistency_proof(old, size, reader)
                merkle.verify_consistency(old, size, roots[old], roots[size], proof)
        with pytest.raises(KeyError):
            reader.get_node(0, n)  # not appended yet


# -- tampering --------------------------------------------------------------------------------

N = 13  # sequenced in batches of 4: checkpoints at 4, 8, 12, 13
VICTIM = 5


def _entry(c: Connection, index: int) -> tuple[bytes, bytes]:
    row = c.execute(
        text("SELECT entry, leaf_hash FROM audit_entries WHERE leaf_index = :i"), {"i": index}
    ).one()
    return bytes(row[0]), bytes(row[1])


def _set_entry(c: Connection, index: int, entry: bytes, leaf: bytes | None = None) -> None:
    if leaf is None:
        c.execute(
            text("UPDATE audit_entries SET entry = :e WHERE leaf_index = :i"),
            {"e": entry, "i": index},
        )
    else:
        c.execute(
            text("UPDATE audit_entries SET entry = :e, leaf_hash = :h WHERE leaf_index = :i"),
            {"e": entry, "h": leaf, "i": index},
        )


def _set_node(c: Connection, level: int, index: int, value: bytes) -> None:
    result = c.execute(
        text('UPDATE merkle_nodes SET hash = :h WHERE level = :l AND "index" = :i'),
        {"h": value, "l": level, "i": index},
    )
    assert result.rowcount == 1


def _flip_bit(data: bytes, at: int | None = None) -> bytes:
    at = len(data) // 2 if at is None else at
    return data[:at] + bytes([data[at] ^ 0x10]) + data[at + 1 :]


def _forged_entry(index: int) -> bytes:
    """What a forger would want the entry to say: the refusal turned into an allowed call."""
    entry = parse(b"")
    entry.method = METHOD
    entry.sender = "CN.440100.FORGER"
    entry.decision = ALLOWED
    entry.hub_id = HUB_ID
    entry.case_id = f"FORGED-{index}"
    return entry.SerializeToString()


def t_edit_entry_bytes(c: Connection, kit: LogKit) -> None:
    entry, _ = _entry(c, VICTIM)
    _set_entry(c, VICTIM, _flip_bit(entry))


def t_rewrite_decision(c: Connection, kit: LogKit) -> None:
    """A refused call's entry rewritten as allowed, as a parsed protobuf (still a BLOB)."""
    entry = parse(_entry(c, 3)[0])
    assert entry.decision == DENIED
    entry.decision = ALLOWED
    entry.reason = ""
    _set_entry(c, 3, entry.SerializeToString())


def t_edit_entry_and_leaf_hash(c: Connection, kit: LogKit) -> None:
    entry = _flip_bit(_entry(c, VICTIM)[0])
    _set_entry(c, VICTIM, entry, merkle.leaf_hash(entry))


def t_edit_entry_leaf_hash_and_leaf_node(c: Connection, kit: LogKit) -> None:
    entry = _flip_bit(_entry(c, VICTIM)[0])
    _set_entry(c, VICTIM, entry, merkle.leaf_hash(entry))
    _set_node(c, 0, VICTIM, merkle.leaf_hash(entry))


def t_rewrite_everything_but_the_signature(c: Connection, kit: LogKit) -> None:
    """Entry, leaf hash, every stored node, tree state and checkpoint columns all rewritten
    consistently: only the signed note (which needs the log key) still tells."""
    entries = kit.sequenced_entries()
    entries[VICTIM] = _forged_entry(VICTIM)
    _set_entry(c, VICTIM, entries[VICTIM], merkle.leaf_hash(entries[VICTIM]))
    memory = merkle.MemoryNodeStore()
    memory.append([merkle.leaf_hash(e) for e in entries])
    for (level, index), value in memory.nodes().items():
        _set_node(c, level, index, value)
    roots = prefix_roots(entries)
    c.execute(text("UPDATE audit_tree SET root_hash = :r"), {"r": roots[N]})
    for size in (4, 8, 12, 13):
        c.execute(
            text("UPDATE audit_checkpoints SET root_hash = :r WHERE tree_size = :s"),
            {"r": roots[size], "s": size},
        )


def t_delete_row(c: Connection, kit: LogKit) -> None:
    c.execute(text("DELETE FROM audit_entries WHERE leaf_index = :i"), {"i": VICTIM})


def t_delete_last_row(c: Connection, kit: LogKit) -> None:
    c.execute(text("DELETE FROM audit_entries WHERE leaf_index = :i"), {"i": N - 1})


def t_unsequence_row(c: Connection, kit: LogKit) -> None:
    c.execute(text("UPDATE audit_entries SET leaf_index = NULL WHERE leaf_index = :i"), {"i": 7})


def t_swap_rows(c: Connection, kit: LogKit) -> None:
    """Reorder: two rows exchange their entry bytes and leaf hashes."""
    a, b = _entry(c, 3), _entry(c, 4)
    _set_entry(c, 3, *b)
    _set_entry(c, 4, *a)


def t_swap_leaf_indexes(c: Connection, kit: LogKit) -> None:
    """Reorder the other way: two rows exchange their leaf indexes."""
    c.execute(text("UPDATE audit_entries SET leaf_index = -1 WHERE leaf_index = 3"))
    c.execute(text("UPDATE audit_entries SET leaf_index = 3 WHERE leaf_index = 4"))
    c.execute(text("UPDATE audit_entries SET leaf_index = 4 WHERE leaf_index = -1"))


def _insert_row(c: Connection, index: int | None) -> None:
    entry = _forged_entry(N)
    c.execute(
        text(
            "INSERT INTO audit_entries (leaf_index, entry, leaf_hash, logged_at, sender, "
            "recipient, method, case_id, decision) VALUES (:i, :e, :h, :t, :s, :r, :m, :c, :d)"
        ),
        {
            "i": index,
            "e": entry,
            "h": merkle.leaf_hash(entry),
            "t": datetime(2025, 1, 2),
            "s": "CN.440100.FORGER",
            "r": HUB_ID,
            "m": METHOD,
            "c": f"FORGED-{N}",
            "d": int(ALLOWED),
        },
    )


def t_insert_sequenced_row(c: Connection, kit: LogKit) -> None:
    _insert_row(c, N)


def t_insert_row_in_a_gap(c: Connection, kit: LogKit) -> None:
    """Delete one row, and insert a forged one at its index."""
    c.execute(text("DELETE FROM audit_entries WHERE leaf_index = :i"), {"i": VICTIM})
    _insert_row(c, VICTIM)


def _node(level: int, index: int) -> Callable[[Connection, LogKit], None]:
    def tamper(c: Connection, kit: LogKit) -> None:
        value = c.execute(
            text('SELECT hash FROM merkle_nodes WHERE level = :l AND "index" = :i'),
            {"l": level, "i": index},
        ).scalar_one()
        _set_node(c, level, index, _flip_bit(bytes(value), 0))

    return tamper


def t_delete_latest_checkpoint(c: Connection, kit: LogKit) -> None:
    c.execute(text("DELETE FROM audit_checkpoints WHERE tree_size = :s"), {"s": N})


def t_delete_all_checkpoints(c: Connection, kit: LogKit) -> None:
    c.execute(text("DELETE FROM audit_checkpoints"))


def t_edit_latest_checkpoint_note(c: Connection, kit: LogKit) -> None:
    note = c.execute(
        text("SELECT note FROM audit_checkpoints WHERE tree_size = :s"), {"s": N}
    ).scalar_one()
    tampered = bytes(note).replace(f"\n{N}\n".encode(), f"\n{N + 1}\n".encode(), 1)
    assert tampered != bytes(note)
    c.execute(
        text("UPDATE audit_checkpoints SET note = :n WHERE tree_size = :s"), {"n": tampered, "s": N}
    )


def t_roll_back_to_older_checkpoint(c: Connection, kit: LogKit) -> None:
    """Truncate the log to its checkpoint at 12 (entry, nodes, tree state and checkpoint)."""
    c.execute(text("DELETE FROM audit_entries WHERE leaf_index = 12"))
    c.execute(text('DELETE FROM merkle_nodes WHERE level = 0 AND "index" = 12'))
    c.execute(text("DELETE FROM audit_checkpoints WHERE tree_size = 13"))
    # ...but keeps the tree state row the sequencer wrote: it still says 13.


# case → (tamper, text the error must contain, or "" when any message will do)
TAMPERING: dict[str, tuple[Callable[[Connection, LogKit], None], str]] = {
    "edit-entry-bytes": (t_edit_entry_bytes, f"entry #{VICTIM}"),
    "rewrite-denied-as-allowed": (t_rewrite_decision, "entry #3"),
    "edit-entry-and-leaf-hash": (t_edit_entry_and_leaf_hash, f"entry #{VICTIM}"),
    "edit-entry-leaf-hash-and-leaf-node": (t_edit_entry_leaf_hash_and_leaf_node, ""),
    "rewrite-everything-but-the-signature": (t_rewrite_everything_but_the_signature, ""),
    "delete-row": (t_delete_row, ""),
    "delete-last-row": (t_delete_last_row, ""),
    "unsequence-row": (t_unsequence_row, ""),
    "swap-two-rows": (t_swap_rows, "entry #3"),
    "swap-two-leaf-indexes": (t_swap_leaf_indexes, "entry #3"),
    "insert-sequenced-row": (t_insert_sequenced_row, ""),
    "insert-row-in-a-gap": (t_insert_row_in_a_gap, ""),
    "change-leaf-node": (_node(0, VICTIM), f"entry #{VICTIM}"),
    "change-root-path-node": (_node(3, 0), ""),  # MTH(0..8): part of every root from 8 on
    "change-last-leaf-node": (_node(0, 12), ""),
    # (1, 0) = MTH(0..2) is in no root from size 4 on, but it serves inclusion proofs.
    "change-interior-node-off-the-root-path": (_node(1, 0), ""),
    "change-level-2-node": (_node(2, 1), ""),
    "delete-latest-checkpoint": (t_delete_latest_checkpoint, ""),
    "delete-all-checkpoints": (t_delete_all_checkpoints, ""),
    "edit-latest-checkpoint-note": (t_edit_latest_checkpoint_note, ""),
    "roll-back-to-older-checkpoint": (t_roll_back_to_older_checkpoint, ""),
}


@pytest.mark.parametrize("case", list(TAMPERING))
def test_tampering_is_detected(kit: LogKit, case: str) -> None:
    tamper, says = TAMPERING[case]
    kit.log.publish_initial_checkpoint()
    kit.append(N, per_session=4)
    assert kit.sequence_all(max_batch=4) == [4, 4, 4, 1]
    assert kit.log.check_integrity()[0] == N

    with kit.engine.begin() as connection:
        tamper(connection, kit)

    with pytest.raises(TamperedLogError) as caught:
        kit.log.check_integrity()
    assert says in str(caught.value)


def test_checkpoints_signed_by_another_key_are_refused(kit: LogKit) -> None:
    kit.append(5)
    kit.sequence_all(max_batch=2)
    impostor = new_log(kit.engine, signer=NoteSigner.generate(ORIGIN), key=kit.subject_key)
    with pytest.raises(TamperedLogError, match="does not verify"):
        impostor.log.check_integrity()


def test_pending_entries_are_not_tampering(kit: LogKit) -> None:
    """Entries appended but not yet sequenced are outside the checkpoint: no alarm."""
    kit.append(6)
    kit.sequence_all(max_batch=4)
    kit.append(3)
    assert kit.log.check_integrity()[0] == 6
    assert kit.log.sequence(10) == 3
    assert kit.log.check_integrity()[0] == 9


# -- one sequencer at a time ------------------------------------------------------------------

APPENDERS = 3
PER_APPENDER = 24


def _run_concurrently(
    kit: LogKit, sequencers: list[AuditLog], *, max_batch: int = 4
) -> tuple[list[int], list[BaseException]]:
    """Appender threads add entries while every sequencer loops; returns all batch sizes."""
    appending_done = threading.Event()
    batches: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def appender(worker: int) -> None:
        sessions = kit.sessions
        try:
            for i in range(PER_APPENDER):
                with sessions.begin() as session:
                    draft = draft_for(worker * 1000 + i)
                    kit.log.append(session, draft, ALLOWED if i % 5 else DENIED, "")
                if i % 6 == 0:
                    time.sleep(0.002)
        except BaseException as exc:
            errors.append(exc)

    def sequencer(log: AuditLog) -> None:
        try:
            while True:
                count = log.sequence(max_batch)
                with lock:
                    if count:
                        batches.append(count)
                if count == 0:
                    if appending_done.is_set():
                        with log.engine.connect() as connection:
                            if log.pending_count(connection) == 0:
                                return
                    time.sleep(0.001)
        except BaseException as exc:
            errors.append(exc)

    appenders = [threading.Thread(target=appender, args=(w,)) for w in range(APPENDERS)]
    workers = [threading.Thread(target=sequencer, args=(log,)) for log in sequencers]
    for thread in appenders + workers:
        thread.start()
    for thread in appenders:
        thread.join(timeout=60)
    appending_done.set()
    for thread in workers:
        thread.join(timeout=60)
    assert not any(t.is_alive() for t in appenders + workers), "a thread hung"
    return batches, errors


def _assert_sequenced_once(kit: LogKit, batches: list[int]) -> None:
    total = APPENDERS * PER_APPENDER
    rows = kit.rows()
    assert len(rows) == total
    indexes = [index for _, index, _, _ in rows]
    assert None not in indexes
    assert sorted(i for i in indexes if i is not None) == list(range(total))
    assert sum(batches) == total, "every entry was indexed by exactly one sequencer batch"
    # Every batch published its own checkpoint, and each is a prefix of the final tree.
    history = kit.checkpoints()
    assert len(history) == len(batches)
    roots = prefix_roots(kit.sequenced_entries())
    for size, root, note in history:
        assert open_checkpoint(note, kit.log.verifier) == Checkpoint(ORIGIN, size, roots[size])
        assert root == roots[size]
    assert kit.log.check_integrity() == (total, roots[total])


def test_concurrent_sequencers_in_one_process(kit: LogKit) -> None:
    batches, errors = _run_concurrently(kit, [kit.log] * 4)
    assert errors == []
    _assert_sequenced_once(kit, batches)


@pytest.mark.postgres
def test_two_processes_sequencing_one_postgres_database(pg_url: str) -> None:
    """Two engines (as two hub processes have) with their own AuditLog on one database."""
    first = make_engine(pg_url, pool_size=8)
    second = make_engine(pg_url, pool_size=8)
    try:
        migrate(first)
        kit = new_log(first)
        other = AuditLog(
            second,
            hub_id=HUB_ID,
            origin=ORIGIN,
            signer=kit.log.signer,
            subject_key=kit.subject_key,
            sequencer_id="second-process",
        )
        batches, errors = _run_concurrently(kit, [kit.log, kit.log, other, other])
        assert errors == []
        _assert_sequenced_once(kit, batches)
        with first.connect() as connection:
            sequencer = connection.execute(text("SELECT sequencer FROM audit_tree")).scalar_one()
        assert sequencer in (HUB_ID, "second-process")
    finally:
        first.dispose()
        second.dispose()


def test_integrity_check_on_a_live_log_raises_no_false_alarm(kit: LogKit) -> None:
    """``xhub audit check`` and a second hub's start-up check run while another hub appends
    and sequences: an honest log must never be reported as tampered."""
    kit.append(8)
    kit.sequence_all(max_batch=4)
    stop = threading.Event()
    errors: list[BaseException] = []

    def busy() -> None:
        try:
            while not stop.is_set():
                kit.append(1)
                kit.log.sequence(1)
        except BaseException as exc:
            errors.append(exc)

    writer = threading.Thread(target=busy)
    writer.start()
    alarms: list[str] = []
    checks = 0
    deadline = time.monotonic() + 2.0
    try:
        while time.monotonic() < deadline:
            try:
                kit.log.check_integrity()
            except TamperedLogError as exc:
                alarms.append(str(exc))
            checks += 1
    finally:
        stop.set()
        writer.join(timeout=30)
    assert errors == []
    assert checks > 0
    assert alarms == [], f"{len(alarms)} of {checks} checks of an honest log failed: {alarms[0]}"
    assert kit.log.check_integrity()[0] == kit.counter
