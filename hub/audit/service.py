"""AuditService (审计服务): checkpoints and proofs for every member, Query for auditors."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import Table, select
from sqlalchemy.orm import Session

from xhub.hub.core.audit_log import (
    AuditLog,
    SqlNodeReader,
    entries,
    envelopes_table,
    subjects_table,
)
from xhub.hub.core.log_keys import read_log_handovers
from xhub.hub.core.rpc import Service, Unary
from xhub.hub.core.runtime import Call, HubRuntime
from xhub.protocol.errors import MalformedError, NotFoundError, UnavailableError
from xhub.protocol.log import merkle
from xhub.v1 import audit_pb2, envelope_pb2, registry_pb2

DEFAULT_PAGE = 100
MAX_PAGE = 1000


class AuditService(Service):
    descriptor = audit_pb2.DESCRIPTOR.services_by_name["AuditService"]

    def __init__(self, runtime: HubRuntime) -> None:
        super().__init__(runtime)
        self.log = runtime.audit

    def unary(self) -> Sequence[Unary[Any]]:
        return [
            Unary("GetCheckpoint", audit_pb2.CheckpointQuery, self._checkpoint),
            Unary("GetInclusionProof", audit_pb2.InclusionProofQuery, self._inclusion),
            Unary("GetConsistencyProof", audit_pb2.ConsistencyProofQuery, self._consistency),
            Unary("Query", audit_pb2.AuditQuery, self._query, role=registry_pb2.ROLE_AUDITOR),
        ]

    # -- handlers (worker threads) --------------------------------------------

    def _checkpoint(self, call: Call[audit_pb2.CheckpointQuery]) -> audit_pb2.CheckpointResult:
        size, _, note = self.log.latest_checkpoint(call.session.connection())
        return audit_pb2.CheckpointResult(
            checkpoint_note=note,
            tree_size=size,
            log_key=self.log.signer.verifier_key(),
            log_key_handovers=read_log_handovers(self.runtime.config.paths.log_handovers),
        )

    def _inclusion(
        self, call: Call[audit_pb2.InclusionProofQuery]
    ) -> audit_pb2.InclusionProofResult:
        query = call.message
        connection = call.session.connection()
        latest = self.log.latest_checkpoint(connection)[0]
        if query.leaf_hash:
            if len(query.leaf_hash) != 32:
                raise MalformedError(
                    "leaf_hash must be 32 bytes (SHA-256)", metadata={"field": "leaf_hash"}
                )
            try:
                located = self.log.locate(connection, query.leaf_hash)
            except LookupError as exc:
                raise NotFoundError("no audit entry with that leaf hash") from exc
            if located is None or located >= latest:
                raise UnavailableError(
                    "the entry is logged but not yet in a checkpoint; retry shortly",
                    reason=envelope_pb2.ERROR_REASON_NOT_YET_SEQUENCED,
                )
            index = located
        else:
            index = query.leaf_index
        size = query.tree_size or latest
        if size > latest:
            raise MalformedError(
                f"tree_size {size} is beyond the latest checkpoint ({latest})",
                metadata={"field": "tree_size", "latest": str(latest)},
            )
        if index >= size:
            raise MalformedError(
                f"leaf index {index} is not in a tree of size {size}",
                metadata={"field": "leaf_index"},
            )
        reader = SqlNodeReader(connection)
        return audit_pb2.InclusionProofResult(
            leaf_index=index,
            tree_size=size,
            hashes=merkle.inclusion_proof(index, size, reader),
            leaf_hash=reader.get_node(0, index),
        )

    def _consistency(
        self, call: Call[audit_pb2.ConsistencyProofQuery]
    ) -> audit_pb2.ConsistencyProofResult:
        query = call.message
        connection = call.session.connection()
        latest = self.log.latest_checkpoint(connection)[0]
        new_size = query.new_size or latest
        if not 0 < query.old_size <= new_size <= latest:
            raise MalformedError(
                f"need 0 < old_size ≤ new_size ≤ {latest}; got {query.old_size}, {new_size}",
                metadata={"field": "old_size", "latest": str(latest)},
            )
        return audit_pb2.ConsistencyProofResult(
            old_size=query.old_size,
            new_size=new_size,
            hashes=merkle.consistency_proof(query.old_size, new_size, SqlNodeReader(connection)),
        )

    def _query(self, call: Call[audit_pb2.AuditQuery]) -> audit_pb2.AuditQueryResult:
        query = call.message
        checked_query(query)  # refused before the subject is noted: it must be storable
        if query.subject:
            call.audit.subject = query.subject  # whose records an auditor looked at is audited
        records, token = query_log(self.log, call.session, query)
        return audit_pb2.AuditQueryResult(records=records, next_page_token=token)


# The longest each text filter may be (the columns' widths; a subject is a holder's code).
FILTER_LIMITS = {"member_id": 128, "subject": 64, "case_id": 64, "method": 128}
_CURSOR = re.compile(r"[0-9]{1,19}")
_MAX_CURSOR = 2**63 - 1  # entry ids are signed 64-bit integers


def _invalid(field_name: str, message: str) -> MalformedError:
    return MalformedError(message, metadata={"field": field_name})


def _bounded_time(query: audit_pb2.AuditQuery, name: Literal["since", "until"]) -> datetime | None:
    if not query.HasField(name):
        return None
    try:
        moment: datetime = getattr(query, name).ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError) as exc:
        raise _invalid(name, f"{name} is not a time between 0001 and 9999") from exc
    return moment


def checked_query(query: audit_pb2.AuditQuery) -> tuple[int, int, datetime | None, datetime | None]:
    """(limit, cursor, since, until) of an auditor's query; refused INVALID_FIELD, naming the
    field, for any value the database could not take (before any of it reaches SQL)."""
    if query.page_size < 0:
        raise _invalid("page_size", "page_size must not be negative")
    limit = min(query.page_size or DEFAULT_PAGE, MAX_PAGE)
    after = 0
    if query.page_token:
        if not _CURSOR.fullmatch(query.page_token) or int(query.page_token) > _MAX_CURSOR:
            raise _invalid("page_token", "page_token is not one this hub issued")
        after = int(query.page_token)
    for name, width in FILTER_LIMITS.items():
        value: str = getattr(query, name)
        if len(value) > width or not value.isprintable():
            raise _invalid(name, f"{name} must be at most {width} printable characters")
    return limit, after, _bounded_time(query, "since"), _bounded_time(query, "until")


def query_log(
    log: AuditLog, session: Session, query: audit_pb2.AuditQuery
) -> tuple[list[audit_pb2.AuditRecord], str]:
    """One page of entries matching ``query``, oldest first, with clear subjects."""
    limit, after, since, until = checked_query(query)
    subjects: Table = subjects_table
    columns = [entries.c.id, entries.c.leaf_index, entries.c.entry, subjects.c.subject]
    statement = (
        select(*columns)
        .outerjoin(subjects, subjects.c.entry_id == entries.c.id)
        .where(entries.c.id > after)
        .order_by(entries.c.id)
        .limit(limit + 1)
    )
    if query.member_id:
        statement = statement.where(
            (entries.c.sender == query.member_id) | (entries.c.recipient == query.member_id)
        )
    if query.subject:
        statement = statement.where(entries.c.subject_hmac == log.subject_hmac(query.subject))
    if query.case_id:
        statement = statement.where(entries.c.case_id == query.case_id)
    if query.method:
        statement = statement.where(entries.c.method == query.method)
    if query.decision:
        statement = statement.where(entries.c.decision == int(query.decision))
    if since is not None:
        statement = statement.where(entries.c.logged_at >= since)
    if until is not None:
        statement = statement.where(entries.c.logged_at < until)
    connection = session.connection()
    rows = connection.execute(statement).all()
    more = len(rows) > limit
    rows = rows[:limit]
    envelopes: dict[int, bytes] = {}
    if query.include_envelopes and rows:
        envelopes = {
            entry_id: bytes(blob)
            for entry_id, blob in connection.execute(
                select(envelopes_table.c.entry_id, envelopes_table.c.envelope).where(
                    envelopes_table.c.entry_id.in_([row.id for row in rows])
                )
            )
        }
    records = [
        audit_pb2.AuditRecord(
            leaf_index=row.leaf_index or 0,
            sequenced=row.leaf_index is not None,
            entry=bytes(row.entry),
            subject=row.subject or "",
            envelope=envelopes.get(row.id, b""),
        )
        for row in rows
    ]
    return records, str(rows[-1].id) if more else ""
