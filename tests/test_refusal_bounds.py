"""Refusals stay small (issue 12, items 2, 3, 5): a refused call stores its digest and a
bounded prefix, the size check comes first, a sender that keeps being refused is counted
rather than logged call by call, and no refusal echoes back more than a bounded value.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from audit_world import parse, record_of, send, wait_all_sequenced
from helpers import refused_on_the_wire
from hubkit import HubKit
from sqlalchemy import text

from xhub.connectors import HubClient
from xhub.connectors.sdk.auditor import export_evidence
from xhub.hub.core.refusals import SUMMARY_METHOD, RefusalBudget
from xhub.protocol.envelope import MAX_PAYLOAD_BYTES, sign_payload
from xhub.protocol.errors import error_info_of
from xhub.protocol.log import merkle
from xhub.protocol.log.evidence import (
    REFUSED_ENVELOPE_PREFIX_BYTES,
    BundleInvalid,
    EvidenceBundle,
    verify_bundle,
)
from xhub.protocol.log.note import NoteVerifier
from xhub.v1 import audit_pb2, envelope_pb2, registry_pb2

Code = grpc.StatusCode
DENIED = audit_pb2.AUDIT_DECISION_DENIED
LOOKUP = "xhub.v1.MemberLookup"
GET_MEMBER = "/xhub.v1.RegistryService/GetMember"
PER_REFUSAL = 64 * 1024
# The tables a refusal writes to: its entry, its envelope (prefix), a subject, a replay record.
AUDIT_TABLES = ("audit_entries", "audit_envelopes", "audit_subjects", "seen_messages")


@pytest.fixture(
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
    ids=["sqlite", "postgres"],
)
def database_url(request: pytest.FixtureRequest) -> str:
    return "" if request.param == "sqlite" else str(request.getfixturevalue("pg_url"))


def _started(root: Path, database_url: str, **settings: object) -> HubKit:
    kit = HubKit(root, database_url=database_url)
    kit.config = dataclasses.replace(kit.config, **settings)  # type: ignore[arg-type]
    return kit.start()


@pytest.fixture
def budget_kit(tmp_path: Path, database_url: str) -> Iterator[HubKit]:
    """A hub that audits at most 5 refusals per member a minute one by one."""
    kit = _started(tmp_path, database_url, refusals_logged_per_minute=5)
    try:
        yield kit
    finally:
        kit.close()


def storage_bytes(kit: HubKit) -> int:
    """What the audit tables take on disk (PostgreSQL: relations with TOAST and indexes;
    SQLite: the database's pages, WAL included)."""
    with kit.engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            return sum(
                int(
                    connection.execute(
                        text("SELECT pg_total_relation_size(:t)"), {"t": table}
                    ).scalar_one()
                )
                for table in AUDIT_TABLES
            )
        pages = connection.exec_driver_sql("PRAGMA page_count").scalar_one()
        page_size = connection.exec_driver_sql("PRAGMA page_size").scalar_one()
        return int(pages) * int(page_size)


def stored_row_bytes(kit: HubKit) -> int:
    """The bytes the audit rows hold (entry and envelope blobs), on either backend."""
    with kit.engine.connect() as connection:
        entries = connection.execute(
            text("SELECT COALESCE(SUM(LENGTH(entry)), 0) FROM audit_entries")
        ).scalar_one()
        envelopes = connection.execute(
            text("SELECT COALESCE(SUM(LENGTH(envelope)), 0) FROM audit_envelopes")
        ).scalar_one()
    return int(entries) + int(envelopes)


def _big(client: HubClient, size: int, *, corrupt: bool = False) -> envelope_pb2.Envelope:
    """A lookup-typed envelope of ``size`` random payload bytes signed by ``client``."""
    envelope = sign_payload(os.urandom(size), LOOKUP, client.bundle.signer)
    if corrupt:
        envelope.signatures[0].sig = bytes([envelope.signatures[0].sig[0] ^ 1]) + bytes(
            envelope.signatures[0].sig[1:]
        )
    return envelope


def _refused(
    client: HubClient, envelope: envelope_pb2.Envelope, code: Code, reason: str
) -> grpc.Call:
    return refused_on_the_wire(lambda: send(client, envelope), code, reason)


# -- 3. refusals stay small ---------------------------------------------------------------------


def test_refused_large_envelopes_each_leave_under_64_kib(tmp_path: Path, database_url: str) -> None:
    kit = _started(tmp_path, database_url)
    try:
        platform, revoked, auditor = (
            kit.client("platform"),
            kit.client("department"),
            kit.client("auditor"),
        )
        kit.revoke("department")
        # Warm the tables up (first pages, TOAST, indexes), then measure.
        _refused(revoked, _big(revoked, 10), Code.UNAUTHENTICATED, "MEMBER_REVOKED")
        cases = [
            # ~7 MiB, over the payload bound: refused by size before the member is looked up.
            (revoked, _big(revoked, 7 * 1024 * 1024), Code.INVALID_ARGUMENT, "MALFORMED_ENVELOPE"),
            (
                platform,
                _big(platform, 7 * 1024 * 1024),
                Code.INVALID_ARGUMENT,
                "MALFORMED_ENVELOPE",
            ),
            # Just within the payload bound: refused by the member check and the signature.
            (
                revoked,
                _big(revoked, MAX_PAYLOAD_BYTES - 1024),
                Code.UNAUTHENTICATED,
                "MEMBER_REVOKED",
            ),
            (
                platform,
                _big(platform, MAX_PAYLOAD_BYTES - 1024, corrupt=True),
                Code.UNAUTHENTICATED,
                "BAD_SIGNATURE",
            ),
        ]
        before, rows_before = storage_bytes(kit), stored_row_bytes(kit)
        leaves: list[tuple[bytes, bytes, str]] = []
        for client, envelope, code, reason in cases:
            error = _refused(client, envelope, code, reason)
            info = error_info_of(error)
            assert info is not None
            sent = envelope.SerializeToString()
            leaves.append((bytes.fromhex(info.metadata["audit_leaf"]), sent, reason))
        grown, rows_grown = storage_bytes(kit) - before, stored_row_bytes(kit) - rows_before
        assert grown < len(cases) * PER_REFUSAL, f"{grown} bytes for {len(cases)} refusals"
        assert rows_grown < len(cases) * (REFUSED_ENVELOPE_PREFIX_BYTES + 1024)
        # Each entry still names the digest of every byte sent; the envelope kept is a prefix.
        for leaf, sent, reason in leaves:
            record = record_of(auditor, leaf, decision=DENIED)
            entry = parse(record.entry)
            assert entry.reason == reason
            assert entry.envelope_sha256 == hashlib.sha256(sent).digest()
            assert record.envelope == sent[:REFUSED_ENVELOPE_PREFIX_BYTES]
        # The oversized one was refused for its size, naming the bound.
        info = error_info_of(_refused(revoked, cases[0][1], *cases[0][2:]))
        assert info is not None and info.metadata["field"] == "payload"
        kit.client("issuer").get_member(kit.member_id("platform"))  # still serving
    finally:
        kit.close()


def test_evidence_of_a_refused_large_call_carries_its_prefix(hub_kit: HubKit) -> None:
    platform, auditor = hub_kit.client("platform"), hub_kit.client("auditor")
    envelope = _big(platform, MAX_PAYLOAD_BYTES - 1024, corrupt=True)
    info = error_info_of(_refused(platform, envelope, Code.UNAUTHENTICATED, "BAD_SIGNATURE"))
    assert info is not None
    leaf = bytes.fromhex(info.metadata["audit_leaf"])
    allowed = platform.lookup_member(hub_kit.member_id("issuer")).header.receipt.leaf_hash
    platform.prove_logged(envelope_pb2.AuditReceipt(leaf_hash=leaf))
    platform.prove_logged(envelope_pb2.AuditReceipt(leaf_hash=allowed))
    wait_all_sequenced(hub_kit)

    bundle, _ = export_evidence(auditor)
    verifier = NoteVerifier.from_vkey(auditor.bundle.log_key)
    report = verify_bundle(EvidenceBundle.from_json(bundle.to_json()), verifier)
    assert report.refused_prefixes == 1
    by_leaf = {merkle.leaf_hash(e): i for i, (_, e, _, _) in enumerate(bundle.entries)}
    position = by_leaf[leaf]
    assert bundle.entries[position][2] == envelope.SerializeToString()[:4096]

    # A prefix is accepted only where the hub keeps one: on a refused entry, at full length.
    def tampered(at: int, envelope_bytes: bytes) -> EvidenceBundle:
        copy = EvidenceBundle.from_json(bundle.to_json())
        index, entry, _, proof = copy.entries[at]
        copy.entries[at] = (index, entry, envelope_bytes, proof)
        return copy

    cut = bundle.entries[position][2][:-1]
    with pytest.raises(BundleInvalid, match="logged digest"):
        verify_bundle(tampered(position, cut), verifier)
    allowed_at = by_leaf[bytes(allowed)]
    with pytest.raises(BundleInvalid, match="logged digest"):
        verify_bundle(tampered(allowed_at, os.urandom(REFUSED_ENVELOPE_PREFIX_BYTES)), verifier)


def test_too_many_signatures_are_refused_before_the_member_check(hub_kit: HubKit) -> None:
    revoked = hub_kit.client("department")
    hub_kit.revoke("department")
    envelope = revoked.transport.seal(registry_pb2.MemberLookup(member_id="x"))
    for _ in range(9):
        envelope.signatures.add(key_id="k" * 40, sig=b"s" * 64)
    info = error_info_of(_refused(revoked, envelope, Code.INVALID_ARGUMENT, "MALFORMED_ENVELOPE"))
    assert info is not None and info.metadata["field"] == "signatures"


# -- 2. a sender that keeps being refused is counted -------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_refusal_budget_counts_beyond_its_cap_and_summarises_each_minute() -> None:
    clock = FakeClock()
    budget = RefusalBudget(3, clock=clock)
    taken = [budget.take("A", "BAD_SIGNATURE")[0] for _ in range(5)]
    assert taken == [True, True, True, False, False]
    assert budget.take("B", "BAD_SIGNATURE") == (True, [])  # per sender
    assert budget.take("A", "MEMBER_REVOKED") == (False, [])
    assert budget.sweep() == []  # the minute is not over
    clock.now += 61
    alone, ended = budget.take("A", "BAD_SIGNATURE")
    assert alone
    [summary] = ended
    assert (summary.sender, dict(summary.counts), summary.total) == (
        "A",
        {"BAD_SIGNATURE": 2, "MEMBER_REVOKED": 1},
        3,
    )
    assert summary.reason == "COUNTED 3: BAD_SIGNATURE=2 MEMBER_REVOKED=1"
    assert budget.sweep() == []  # B counted nothing, A's new minute is open
    assert all(RefusalBudget(0).take("A", "X")[0] for _ in range(1000))  # 0: no cap


def test_a_member_refused_over_and_over_is_counted_not_logged(
    budget_kit: HubKit, caplog: pytest.LogCaptureFixture
) -> None:
    kit = budget_kit
    runtime = kit.running.runtime if kit.running else None
    assert runtime is not None
    clock = FakeClock()
    runtime.refusals = RefusalBudget(runtime.config.refusals_logged_per_minute, clock=clock)
    revoked, platform, auditor = (
        kit.client("department"),
        kit.client("platform"),
        kit.client("auditor"),
    )
    kit.revoke("department")
    caplog.set_level(logging.INFO, logger="xhub.runtime")
    audited = 0
    for _ in range(40):
        info = error_info_of(
            _refused(revoked, _big(revoked, 64), Code.UNAUTHENTICATED, "MEMBER_REVOKED")
        )
        assert info is not None  # every refusal is still answered with its reason
        audited += "audit_leaf" in info.metadata
    assert audited == 5
    # Another member's refusals are its own budget's.
    info = error_info_of(
        _refused(platform, _big(platform, 64, corrupt=True), Code.UNAUTHENTICATED, "BAD_SIGNATURE")
    )
    assert info is not None and "audit_leaf" in info.metadata
    lines = [r.getMessage() for r in caplog.records if r.name == "xhub.runtime"]
    revoked_id = kit.member_id("department")
    assert len([m for m in lines if m.startswith(f"refused {GET_MEMBER} from {revoked_id}")]) == 5

    # The minute ends: the prune loop's pass writes one summary entry and one log line.
    clock.now += 61
    runtime.prune()
    warnings = [m for m in (r.getMessage() for r in caplog.records) if "were counted" in m]
    assert len(warnings) == 1 and "35 refused calls from " + revoked_id in warnings[0]
    wait_all_sequenced(kit)
    entries = [
        parse(record.entry) for record in auditor.query_audit(member_id=revoked_id, decision=DENIED)
    ]
    assert len([e for e in entries if e.method == GET_MEMBER]) == 5
    [summary] = [e for e in entries if e.method == SUMMARY_METHOD]
    assert (summary.sender, summary.reason) == (revoked_id, "COUNTED 35: MEMBER_REVOKED=35")
    assert runtime.prune() == 0 and not runtime.refusals.sweep()  # nothing left to summarise


def test_the_refusal_cap_is_a_setting_written_by_init(tmp_path: Path) -> None:
    kit = HubKit(tmp_path)
    try:
        text_ = kit.config.paths.config_file.read_text("utf-8")
        assert "refusals_logged_per_minute = 120" in text_
    finally:
        kit.close()
