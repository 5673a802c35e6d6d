"""Audit log rows: append rate with batching, and proof time as the log grows.

Baselines, measured in the same run on the same database file:
* append: a bare INSERT of the same bytes into a plain table, batched the same way;
* proofs: one primary-key read of a single node (the unit a proof is made of).
"""

from __future__ import annotations

import os
import random
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import Column, Integer, LargeBinary, MetaData, Table, insert, select

from bench.harness import Row, ratio_row
from xhub.hub.core.audit_log import AuditDraft, AuditLog, SqlNodeReader, nodes_table, tree_table
from xhub.hub.core.db import make_engine, migrate, session_factory
from xhub.protocol.log import merkle
from xhub.protocol.log.note import NoteSigner
from xhub.v1 import audit_pb2

APPEND_BATCH = 500


def _log(path: Path) -> AuditLog:
    engine = make_engine(f"sqlite:///{path}")
    migrate(engine)
    return AuditLog(
        engine,
        hub_id="CN.440000.XHUB",
        origin="xhub/bench/audit",
        signer=NoteSigner.generate("xhub/bench/audit"),
        subject_key=os.urandom(32),
        merge_delay=timedelta(seconds=5),
    )


def _draft(i: int) -> AuditDraft:
    return AuditDraft(
        method="/xhub.v1.RegistryService/GetMember",
        sender="CN.440103.11440103300000045D.onewindow",
        recipient="CN.440000.XHUB",
        payload_type="xhub.v1.MemberLookup",
        envelope_bytes=os.urandom(330),
        signature=os.urandom(72),
        message_id=f"{i:032x}",
        subject="91440103MA5ABCDE1X" if i % 3 == 0 else "",
    )


def bench_append(root: Path, entries: int) -> list[Row]:
    """Entries/s through append (batched commits) plus sequencing, vs bare inserts."""
    log = _log(root / "append.db")
    sessions = session_factory(log.engine)
    drafts = [_draft(i) for i in range(entries)]

    started = time.perf_counter()
    for start in range(0, entries, APPEND_BATCH):
        with sessions.begin() as session:
            log.append_many(
                session,
                [
                    (d, audit_pb2.AUDIT_DECISION_ALLOWED, "")
                    for d in drafts[start : start + APPEND_BATCH]
                ],
            )
    appended = time.perf_counter() - started
    sequenced_started = time.perf_counter()
    while log.sequence(10_000):
        pass
    sequenced = time.perf_counter() - sequenced_started
    total = appended + sequenced

    bare = Table(
        "bare", MetaData(), Column("id", Integer, primary_key=True), Column("data", LargeBinary)
    )
    bare.create(log.engine)
    payloads = [os.urandom(len(d.envelope_bytes) + 150) for d in drafts]
    started = time.perf_counter()
    for start in range(0, entries, APPEND_BATCH):
        with log.engine.begin() as connection:
            connection.execute(
                insert(bare), [{"data": p} for p in payloads[start : start + APPEND_BATCH]]
            )
    bare_time = time.perf_counter() - started
    log.engine.dispose()
    return [
        ratio_row(
            "audit_append_and_sequence_sqlite", entries / total, "entries/s", entries / bare_time
        ),
        Row("audit_sequencer_only_sqlite", round(entries / sequenced, 1), "entries/s"),
    ]


def _grow_tree(log: AuditLog, size: int) -> None:
    """Store the nodes of a tree of ``size`` synthetic leaves (no entry rows needed)."""
    with log.engine.begin() as connection:
        current = connection.execute(select(tree_table.c.size)).scalar_one()
        reader = SqlNodeReader(connection)
        chunk = 50_000
        while current < size:
            count = min(chunk, size - current)
            leaves = [
                merkle.leaf_hash(i.to_bytes(8, "big")) for i in range(current, current + count)
            ]
            nodes = merkle.nodes_to_store(current, leaves, reader)
            connection.execute(
                insert(nodes_table), [{"level": lv, "index": ix, "hash": h} for lv, ix, h in nodes]
            )
            current += count
        connection.execute(tree_table.update().values(size=current))


def bench_proofs(root: Path, sizes: list[int], samples: int = 300) -> list[Row]:
    log = _log(root / "proofs.db")
    rows: list[Row] = []
    rng = random.Random(7)
    for size in sizes:
        _grow_tree(log, size)
        with log.engine.connect() as connection:
            reader = SqlNodeReader(connection)
            indexes = [rng.randrange(size) for _ in range(samples)]
            started = time.perf_counter()
            for index in indexes:
                merkle.inclusion_proof(index, size, reader)
            proof_ms = (time.perf_counter() - started) / samples * 1000
            started = time.perf_counter()
            for index in indexes:
                reader.get_node(0, index)
            read_ms = (time.perf_counter() - started) / samples * 1000
            root_hash = merkle.root_hash(size, reader)
            for index in indexes[:20]:  # the proofs timed are real ones
                proof = merkle.inclusion_proof(index, size, reader)
                merkle.verify_inclusion(reader.get_node(0, index), index, size, proof, root_hash)
        label = f"1e{len(str(size)) - 1}"
        rows.append(ratio_row(f"inclusion_proof_{label}_entries", proof_ms, "ms", read_ms))
    log.engine.dispose()
    return rows
