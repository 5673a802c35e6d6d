"""The audit log at the storage level (DESIGN.md §7), on SQLite and on a real PostgreSQL.

An ``AuditLog`` is built directly on a migrated database: entries are appended in sessions,
sequenced in small batches, and the stored tree, checkpoints and proofs are checked against an
independent recomputation.  Several sequencers running at once (threads, and on PostgreSQL
separate engines as two hub processes would) must still index every entry exactly once.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from datetime import UTC

import pytest
from audit_log_world import (
    HUB_ID,
    ORIGIN,
    LogKit,
    draft_for,
    engine_fixture,  # noqa: F401  (the engine fixture)
    kit_fixture,  # noqa: F401  (the kit fixture)
    new_log,
    parse,
    prefix_roots,
    subject_of,
)
from sqlalchemy import text

from xhub.hub.audit.service import query_log
from xhub.hub.core.audit_log import (
    ALLOWED,
    DENIED,
    AuditLog,
    SqlNodeReader,
    TamperedLogError,
)
from xhub.hub.core.db import make_engine, migrate
from xhub.protocol.log import merkle
from xhub.protocol.log.note import Checkpoint, open_checkpoint
from xhub.v1 import audit_pb2

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
