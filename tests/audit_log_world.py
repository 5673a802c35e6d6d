"""The audit log at the storage level, for its tests: a migrated database on either backend,
an ``AuditLog`` over it, and an independent recomputation of the tree.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from xhub.hub.core.audit_log import (
    ALLOWED,
    DENIED,
    AuditDraft,
    AuditLog,
)
from xhub.hub.core.db import make_engine, migrate, session_factory
from xhub.protocol.log import merkle
from xhub.protocol.log.note import NoteSigner
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


@pytest.fixture(name="engine")
def engine_fixture(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url, pool_size=8)
    migrate(engine)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture(name="kit")
def kit_fixture(engine: Engine) -> LogKit:
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
