"""The audit log over a running hub (DESIGN.md §7): receipts, proofs, refusals, Query.

Every call (accepted or refused) lands in the log; accepted calls get a receipt in the
hub-signed response header that ``prove_logged`` proves against a signed checkpoint; refused
calls carry the leaf hash of their entry in the ErrorInfo metadata (``audit_leaf``).  Proof
RPCs are open to every member, Query to auditors only.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from audit_world import (
    ALLOWED,
    AUDIT,
    DENIED,
    GET_MEMBER,
    LIST_MEMBERS,
    REFUSALS,
    Envelope,
    _bad_signature,
    header_of,
    parse,
    receipt_for,
    record_of,
    refused_leaf,
    send,
    stamp,
    wait_all_sequenced,
)
from hubkit import HubKit
from sqlalchemy import text

from xhub.connectors import HubClient
from xhub.connectors.sdk.client import VerifiedCheckpoint
from xhub.protocol.errors import (
    BadResponseError,
    MalformedError,
    NotFoundError,
    PermissionDeniedError,
)
from xhub.protocol.log import merkle
from xhub.protocol.log.note import Checkpoint
from xhub.v1 import audit_pb2, envelope_pb2, registry_pb2

# -- receipts ---------------------------------------------------------------------------------


def test_accepted_call_returns_a_receipt_that_proves_logged(kit: HubKit) -> None:
    platform, auditor = kit.client("platform"), kit.client("auditor")
    before = datetime.now(UTC)
    answer = platform.lookup_member(kit.member_id("issuer"))
    assert answer.member.member_id == kit.member_id("issuer")
    receipt = answer.header.receipt
    assert answer.header.HasField("receipt") and len(receipt.leaf_hash) == 32
    assert receipt.log_origin == kit.config.effective_log_origin
    logged_at = receipt.logged_at.ToDatetime(tzinfo=UTC)
    assert before - timedelta(seconds=1) <= logged_at <= datetime.now(UTC)
    assert receipt.include_by.ToDatetime(tzinfo=UTC) - logged_at == timedelta(
        seconds=kit.config.audit_merge_delay_seconds
    )

    checkpoint, index = platform.prove_logged(receipt)
    assert 0 <= index < checkpoint.size
    assert checkpoint.checkpoint.origin == receipt.log_origin
    record = record_of(auditor, bytes(receipt.leaf_hash), member_id=platform.member_id)
    assert record.sequenced and record.leaf_index == index
    entry = parse(record.entry)
    assert (entry.method, entry.sender, entry.recipient, entry.decision) == (
        GET_MEMBER,
        platform.member_id,
        kit.hub_id,
        ALLOWED,
    )
    assert entry.hub_id == kit.hub_id
    assert hashlib.sha256(record.envelope).digest() == entry.envelope_sha256
    assert header_of(Envelope.FromString(record.envelope)).message_id == entry.message_id


def test_receipt_is_in_the_hub_signed_response_header(hub_kit: HubKit) -> None:
    platform = hub_kit.client("platform")
    lookup = registry_pb2.MemberLookup(member_id=hub_kit.member_id("issuer"))
    envelope = platform.transport.seal(lookup)
    response = send(platform, envelope)
    result = platform.transport.open_response(
        response.envelope, registry_pb2.MemberLookupResult, lookup.header.message_id
    )
    assert result.header.HasField("receipt")
    assert result.header.sender == hub_kit.hub_id
    platform.prove_logged(result.header.receipt)

    # The receipt is covered by the hub's signature: a changed leaf hash is refused.
    forged = registry_pb2.MemberLookupResult.FromString(response.envelope.payload)
    forged.header.receipt.leaf_hash = b"\x00" * 32
    tampered = Envelope()
    tampered.CopyFrom(response.envelope)
    tampered.payload = forged.SerializeToString()
    with pytest.raises(BadResponseError):
        platform.transport.open_response(
            tampered, registry_pb2.MemberLookupResult, lookup.header.message_id
        )


def test_every_accepted_rpc_is_audited_with_a_receipt(hub_kit: HubKit) -> None:
    platform, auditor = hub_kit.client("platform"), hub_kit.client("auditor")
    first = platform.lookup_member(hub_kit.member_id("issuer")).header.receipt
    assert first.leaf_hash
    platform.prove_logged(first)
    second = platform.lookup_member(hub_kit.member_id("auditor")).header.receipt
    assert second.leaf_hash
    platform.prove_logged(second)

    # Each call returns its own receipt: in its answer's header, or the checkpoint's.
    calls: dict[str, Callable[[HubClient], envelope_pb2.AuditReceipt | None]] = {
        GET_MEMBER: lambda c: c.lookup_member(hub_kit.member_id("department")).header.receipt,
        LIST_MEMBERS: lambda c: (
            list(c.member_pages(registry_pb2.MemberListQuery(page_size=10)))[-1].header.receipt
        ),
        AUDIT + "GetCheckpoint": lambda c: c.checkpoint().receipt,
        AUDIT + "GetInclusionProof": lambda c: c.inclusion_proof(leaf_index=0).header.receipt,
        AUDIT + "GetConsistencyProof": lambda c: c.consistency_proof(1, 2).header.receipt,
        AUDIT + "Query": lambda c: list(c.audit_pages(page_size=1000))[-1].header.receipt,
    }
    receipts: dict[str, bytes] = {}
    before = second
    for method, call in calls.items():
        client = auditor if method.endswith("Query") else platform
        receipt = call(client)
        assert receipt is not None and receipt.leaf_hash and receipt != before, method
        receipts[method] = bytes(receipt.leaf_hash)
        before = receipt
    assert len(set(receipts.values())) == len(receipts)
    for method, leaf in receipts.items():
        _, index = platform.prove_logged(receipt_for(leaf))
        record = record_of(auditor, leaf, method=method)
        entry = parse(record.entry)
        assert (entry.method, entry.decision, entry.reason) == (method, ALLOWED, "")
        assert record.leaf_index == index


# -- proofs, open to every member -------------------------------------------------------------

MEMBERS = ("issuer", "platform", "department", "auditor")


def test_checkpoint_and_proofs_are_open_to_every_member(hub_kit: HubKit) -> None:
    platform = hub_kit.client("platform")
    for _ in range(3):
        receipt = platform.lookup_member(hub_kit.member_id("issuer")).header.receipt
    assert receipt.leaf_hash
    platform.prove_logged(receipt)
    for key in MEMBERS:
        client = hub_kit.client(key)
        checkpoint = client.checkpoint()
        assert checkpoint.size >= 3
        assert checkpoint.checkpoint.origin == hub_kit.config.effective_log_origin
        for index in (0, checkpoint.size - 1):
            proof = client.inclusion_proof(leaf_index=index, tree_size=checkpoint.size)
            assert (proof.leaf_index, proof.tree_size) == (index, checkpoint.size)
            merkle.verify_inclusion(
                proof.leaf_hash, index, checkpoint.size, proof.hashes, checkpoint.root_hash
            )
        consistency = client.consistency_proof(1, checkpoint.size)
        assert (consistency.old_size, consistency.new_size) == (1, checkpoint.size)
        client.prove_consistent(
            VerifiedCheckpoint(checkpoint.checkpoint, checkpoint.note), client.checkpoint()
        )


def test_prove_consistent_between_two_checkpoints(hub_kit: HubKit) -> None:
    platform, department = hub_kit.client("platform"), hub_kit.client("department")
    receipt = platform.lookup_member(hub_kit.member_id("issuer")).header.receipt
    assert receipt.leaf_hash
    old, _ = platform.prove_logged(receipt)
    for _ in range(5):
        receipt = department.lookup_member(hub_kit.member_id("platform")).header.receipt
    assert receipt.leaf_hash
    new, index = department.prove_logged(receipt)
    assert new.size > old.size and index >= old.size
    department.prove_consistent(old, new)
    platform.prove_consistent(old, new)
    # The empty tree and the same checkpoint are trivially consistent.
    empty = VerifiedCheckpoint(Checkpoint(old.checkpoint.origin, 0, merkle.EMPTY_ROOT), b"")
    platform.prove_consistent(empty, new)
    platform.prove_consistent(new, new)
    # A rewritten history (another root at the old size) is caught.
    forked = VerifiedCheckpoint(Checkpoint(old.checkpoint.origin, old.size, b"\x07" * 32), b"")
    with pytest.raises(BadResponseError):
        platform.prove_consistent(forked, new)


def test_bad_proof_requests_are_refused_and_audited(hub_kit: HubKit) -> None:
    platform, auditor = hub_kit.client("platform"), hub_kit.client("auditor")
    for _ in range(3):
        receipt = platform.lookup_member(hub_kit.member_id("issuer")).header.receipt
    assert receipt.leaf_hash
    latest, _ = platform.prove_logged(receipt)

    refusals: list[tuple[Callable[[], object], type[Exception], str]] = [
        (lambda: platform.inclusion_proof(leaf_hash=b"\x42" * 32), NotFoundError, "NOT_FOUND"),
        (
            lambda: platform.inclusion_proof(leaf_index=0, tree_size=latest.size + 1000),
            MalformedError,
            "INVALID_FIELD",
        ),
        (
            lambda: platform.inclusion_proof(leaf_index=latest.size + 5, tree_size=latest.size),
            MalformedError,
            "INVALID_FIELD",
        ),
        (lambda: platform.consistency_proof(0, latest.size), MalformedError, "INVALID_FIELD"),
        (lambda: platform.consistency_proof(3, 2), MalformedError, "INVALID_FIELD"),
        (
            lambda: platform.consistency_proof(1, latest.size + 1000),
            MalformedError,
            "INVALID_FIELD",
        ),
    ]
    for call, family, reason in refusals:
        with pytest.raises(family) as caught:
            call()
        error = caught.value
        assert getattr(error, "reason_name", None) == reason
        expected = (
            grpc.StatusCode.NOT_FOUND
            if family is NotFoundError
            else (grpc.StatusCode.INVALID_ARGUMENT)
        )
        assert getattr(error, "code", None) == expected
        leaf = bytes.fromhex(getattr(error, "metadata", {})["audit_leaf"])
        entry = parse(record_of(auditor, leaf, decision=DENIED).entry)
        assert entry.method.startswith(AUDIT) and entry.reason == reason
        assert entry.sender == platform.member_id


# -- refused calls are logged -----------------------------------------------------------------


def _refuse(kit: HubKit, name: str) -> tuple[Envelope | None, bytes, audit_pb2.AuditRecord]:
    """Send refusal ``name`` as the platform; (envelope, leaf hash, auditor's record)."""
    platform, auditor = kit.client("platform"), kit.client("auditor")
    refusal = REFUSALS[name]
    envelope = refusal.build(kit, platform)
    leaf = refused_leaf(lambda: send(platform, envelope), refusal.reason)
    record = record_of(auditor, leaf, member_id=platform.member_id, decision=DENIED)
    return envelope, leaf, record


@pytest.mark.parametrize("name", list(REFUSALS))
def test_refused_call_is_logged_as_denied_with_its_reason(
    shared_hub_kit: HubKit, name: str
) -> None:
    """A refusal changes no registry state: the rows share one hub (the leaf finds the entry)."""
    envelope, leaf, record = _refuse(shared_hub_kit, name)
    platform = shared_hub_kit.client("platform")
    entry = parse(record.entry)
    assert entry.decision == DENIED
    assert entry.reason == REFUSALS[name].reason
    assert entry.sender == platform.member_id, "the sender is the TLS peer"
    assert entry.method == GET_MEMBER
    sent = b"" if envelope is None else envelope.SerializeToString()
    assert entry.envelope_sha256 == hashlib.sha256(sent).digest()
    assert record.envelope == sent, "the exact envelope is kept for the auditor"
    # The refusal is in the signed tree like any other entry.
    checkpoint, index = platform.prove_logged(receipt_for(leaf))
    assert index < checkpoint.size


@pytest.mark.postgres
@pytest.mark.parametrize("name", ["bad-signature", "replay", "no-envelope", "bad-member-id"])
def test_refused_call_is_logged_on_postgres(shared_hub_kit_pg: HubKit, name: str) -> None:
    _, leaf, record = _refuse(shared_hub_kit_pg, name)
    assert parse(record.entry).reason == REFUSALS[name].reason
    shared_hub_kit_pg.client("platform").prove_logged(receipt_for(leaf))


@pytest.mark.parametrize("name", ["replay", "wrong-recipient", "clock-skew"])
def test_refusal_after_the_signature_verified_records_the_header(
    shared_hub_kit: HubKit, name: str
) -> None:
    """The proto says message_id is empty only "if the request did not verify": these did
    (signature and payload verified; the header's content was refused), so the entry must
    name the refused message and its recipient."""
    envelope, _, record = _refuse(shared_hub_kit, name)
    assert envelope is not None
    header = header_of(envelope)
    entry = parse(record.entry)
    assert entry.message_id == header.message_id
    assert entry.recipient == header.recipient


def test_only_auditors_may_query_and_the_denial_is_logged(hub_kit: HubKit) -> None:
    auditor = hub_kit.client("auditor")
    leaves = {}
    for key in ("issuer", "platform", "department"):
        client = hub_kit.client(key)
        with pytest.raises(PermissionDeniedError) as caught:
            list(client.query_audit())
        assert caught.value.reason_name == "ROLE_REQUIRED"
        assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert caught.value.metadata.get("required_role") == "ROLE_AUDITOR"
        leaves[key] = bytes.fromhex(caught.value.metadata["audit_leaf"])
    for key, leaf in leaves.items():
        record = record_of(auditor, leaf, method=AUDIT + "Query", decision=DENIED)
        entry = parse(record.entry)
        assert entry.sender == hub_kit.member_id(key)
        assert entry.reason == "ROLE_REQUIRED"
    # The auditor's own queries are audited too (allowed).
    mine = [
        parse(r.entry)
        for r in auditor.query_audit(member_id=auditor.member_id, method=AUDIT + "Query")
    ]
    assert mine and all(e.decision == ALLOWED and e.sender == auditor.member_id for e in mine)


def test_clear_subject_is_only_in_the_auditor_query(hub_kit: HubKit) -> None:
    auditor = hub_kit.client("auditor")
    subject = "91440101MA5CQ8XY2K"
    [page] = auditor.audit_pages(subject=subject)  # this query names the subject
    assert list(page.records) == []
    first_query = page.header.receipt
    assert first_query.leaf_hash
    records = list(auditor.query_audit(subject=subject))
    assert [merkle.leaf_hash(r.entry) for r in records] == [first_query.leaf_hash]
    record = records[0]
    assert record.subject == subject, "the auditor sees the clear subject"
    entry = parse(record.entry)
    key = hub_kit.config.paths.subject_key.read_bytes()
    assert entry.subject_hmac == hmac.new(key, subject.encode(), hashlib.sha256).digest()
    auditor.prove_logged(first_query)
    # Nowhere in any leaf or checkpoint is the subject in clear.
    wait_all_sequenced(hub_kit)
    with hub_kit.engine.connect() as connection:
        blobs = [bytes(r[0]) for r in connection.execute(text("SELECT entry FROM audit_entries"))]
        blobs += [
            bytes(r[0]) for r in connection.execute(text("SELECT note FROM audit_checkpoints"))
        ]
    assert blobs and not any(subject.encode() in blob for blob in blobs)
    # A non-auditor cannot ask.
    with pytest.raises(PermissionDeniedError):
        list(hub_kit.client("platform").query_audit(subject=subject))


# -- Query filters ----------------------------------------------------------------------------


def test_query_filters_and_paging(hub_kit: HubKit) -> None:
    platform, issuer = hub_kit.client("platform"), hub_kit.client("issuer")
    department, auditor = hub_kit.client("department"), hub_kit.client("auditor")
    start = datetime.now(UTC)
    for _ in range(3):
        platform.get_member(hub_kit.member_id("issuer"))
    for _ in range(2):
        issuer.get_member(hub_kit.member_id("platform"))
    list(department.list_members(page_size=10))
    refused_leaf(lambda: send(platform, _bad_signature(hub_kit, platform)), "BAD_SIGNATURE")
    time.sleep(0.05)
    middle = datetime.now(UTC)
    time.sleep(0.05)
    for _ in range(2):
        platform.get_member(hub_kit.member_id("department"))

    def entries(**filters: Any) -> list[audit_pb2.AuditEntry]:
        return [parse(r.entry) for r in auditor.query_audit(**filters)]

    mine = entries(member_id=platform.member_id)
    assert len(mine) == 6
    assert all(e.sender == platform.member_id for e in mine)
    assert [e.decision for e in mine].count(DENIED) == 1
    assert [e.reason for e in entries(member_id=platform.member_id, decision=DENIED)] == [
        "BAD_SIGNATURE"
    ]
    assert len(entries(member_id=platform.member_id, decision=ALLOWED)) == 5
    assert {e.sender for e in entries(member_id=issuer.member_id)} == {issuer.member_id}
    assert len(entries(member_id=issuer.member_id)) == 2
    listed = entries(method=LIST_MEMBERS)
    assert [(e.sender, e.method) for e in listed] == [(department.member_id, LIST_MEMBERS)]
    assert len(entries(method=GET_MEMBER, member_id=platform.member_id)) == 6
    # Time window: since inclusive, until exclusive.
    early = entries(member_id=platform.member_id, since=stamp(start), until=stamp(middle))
    late = entries(member_id=platform.member_id, since=stamp(middle))
    assert (len(early), len(late)) == (4, 2)
    assert entries(member_id=platform.member_id, until=stamp(start)) == []
    for entry in late:
        assert entry.time.ToDatetime(tzinfo=UTC) >= middle
    # The recipient side: every allowed call was addressed to the hub.
    assert len(entries(member_id=hub_kit.hub_id, since=stamp(start), until=stamp(middle))) >= 5

    # Paging, page_size=2: the same records, oldest first, over several pages.
    all_at_once = [r.entry for r in auditor.query_audit(member_id=platform.member_id)]
    paged = [r.entry for r in auditor.query_audit(member_id=platform.member_id, page_size=2)]
    assert paged == all_at_once
    times = [parse(e).time.ToDatetime() for e in paged]
    assert times == sorted(times)
    first = auditor.transport.call(
        auditor.transport.audit.Query,
        audit_pb2.QueryRequest,
        audit_pb2.AuditQuery(member_id=platform.member_id, page_size=2),
        audit_pb2.AuditQueryResult,
        idempotent=True,
    )
    assert len(first.records) == 2 and first.next_page_token
    pages, token = [list(first.records)], first.next_page_token
    while token:
        page = auditor.transport.call(
            auditor.transport.audit.Query,
            audit_pb2.QueryRequest,
            audit_pb2.AuditQuery(member_id=platform.member_id, page_size=2, page_token=token),
            audit_pb2.AuditQueryResult,
            idempotent=True,
        )
        pages.append(list(page.records))
        token = page.next_page_token
    assert [len(p) for p in pages] == [2, 2, 2]
    assert [r.entry for p in pages for r in p] == all_at_once

    for bad in (audit_pb2.AuditQuery(page_size=-1), audit_pb2.AuditQuery(page_token="x")):
        with pytest.raises(MalformedError):
            auditor.transport.call(
                auditor.transport.audit.Query,
                audit_pb2.QueryRequest,
                bad,
                audit_pb2.AuditQueryResult,
                idempotent=True,
            )
