"""The audit log over a running hub (DESIGN.md §7): receipts, proofs, Query, evidence, checks.

Every call (accepted or refused) lands in the log; accepted calls get a receipt in the
hub-signed response header that ``prove_logged`` proves against a signed checkpoint; refused
calls carry the leaf hash of their entry in the ErrorInfo metadata (``audit_leaf``).  Proof
RPCs are open to every member, Query to auditors only.  An auditor's evidence bundle verifies
offline and every tampering of it names the failing entry; the hub refuses to start on a
database whose log was altered; two hub processes on one PostgreSQL database share one log.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from hubkit import HubKit, free_port
from sqlalchemy import event, text

from xhub.cli import main as cli
from xhub.connectors import HubClient
from xhub.connectors.sdk.auditor import export_evidence
from xhub.connectors.sdk.client import VerifiedCheckpoint
from xhub.hub.core.runtime import HubRuntime
from xhub.hub.server import StartupError, check_database, start_hub
from xhub.protocol.codes import make_uscc
from xhub.protocol.envelope import new_header, seal, sign_payload
from xhub.protocol.errors import (
    BadResponseError,
    MalformedError,
    NotFoundError,
    PermissionDeniedError,
    error_info_of,
)
from xhub.protocol.log import merkle
from xhub.protocol.log.evidence import BundleInvalid, EvidenceBundle, verify_bundle
from xhub.protocol.log.note import Checkpoint, NoteSigner, NoteVerifier, open_note, sign_note
from xhub.protocol.signing import ECDSA_P256, KeySigner, generate_private_key
from xhub.v1 import audit_pb2, envelope_pb2, registry_pb2

Envelope = envelope_pb2.Envelope
ALLOWED = audit_pb2.AUDIT_DECISION_ALLOWED
DENIED = audit_pb2.AUDIT_DECISION_DENIED
GET_MEMBER = "/xhub.v1.RegistryService/GetMember"
LIST_MEMBERS = "/xhub.v1.RegistryService/ListMembers"
AUDIT = "/xhub.v1.AuditService/"


@pytest.fixture(
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
    ids=["sqlite", "postgres"],
)
def kit(request: pytest.FixtureRequest) -> HubKit:
    """The running hub, once on SQLite and once on PostgreSQL."""
    fixture: HubKit = request.getfixturevalue(
        "hub_kit" if request.param == "sqlite" else "hub_kit_pg"
    )
    return fixture


# -- helpers ----------------------------------------------------------------------------------


def parse(entry_bytes: bytes) -> audit_pb2.AuditEntry:
    entry = audit_pb2.AuditEntry()
    entry.ParseFromString(entry_bytes)
    return entry


def send(client: HubClient, envelope: Envelope | None) -> registry_pb2.GetMemberResponse:
    request = (
        registry_pb2.GetMemberRequest()
        if envelope is None
        else registry_pb2.GetMemberRequest(envelope=envelope)
    )
    response: registry_pb2.GetMemberResponse = client.transport.registry.GetMember(
        request, timeout=5
    )
    return response


def refused_leaf(send_call: Callable[[], object], reason: str) -> bytes:
    """Run a call that must be refused with ``reason``; the leaf hash of its audit entry."""
    with pytest.raises(grpc.RpcError) as caught:
        send_call()
    assert isinstance(caught.value, grpc.Call)
    info = error_info_of(caught.value)
    assert info is not None and info.reason == reason, caught.value.details()
    assert "audit_leaf" in info.metadata, f"no audit_leaf in {dict(info.metadata)}"
    leaf = bytes.fromhex(info.metadata["audit_leaf"])
    assert len(leaf) == 32
    return leaf


def lookup_header(
    client: HubClient,
    member_id: str,
    *,
    recipient: str | None = None,
    issued_at: datetime | None = None,
) -> Envelope:
    header = new_header(
        client.member_id, client.hub_id if recipient is None else recipient, now=issued_at
    )
    return seal(registry_pb2.MemberLookup(header=header, member_id=member_id), client.bundle.signer)


def header_of(envelope: Envelope) -> envelope_pb2.Header:
    return registry_pb2.MemberLookup.FromString(envelope.payload).header


def record_of(auditor: HubClient, leaf: bytes, **filters: Any) -> audit_pb2.AuditRecord:
    """The auditor's view of the entry whose leaf hash is ``leaf``."""
    for record in auditor.query_audit(include_envelopes=True, **filters):
        if merkle.leaf_hash(record.entry) == leaf:
            return record
    raise AssertionError(f"no audit record with leaf hash {leaf.hex()}")


def receipt_for(leaf: bytes) -> envelope_pb2.AuditReceipt:
    return envelope_pb2.AuditReceipt(leaf_hash=leaf)


def wait_all_sequenced(kit: HubKit, timeout: float = 15.0) -> int:
    """Wait (no calls in flight) until the sequencer indexed every entry; the entry count."""
    deadline = time.monotonic() + timeout
    while True:
        with kit.engine.connect() as connection:
            pending, total = connection.execute(
                text(
                    "SELECT SUM(CASE WHEN leaf_index IS NULL THEN 1 ELSE 0 END), COUNT(*) "
                    "FROM audit_entries"
                )
            ).one()
        if not pending:
            return int(total)
        assert time.monotonic() < deadline, f"{pending} entries still pending"
        time.sleep(0.05)


def stamp(moment: datetime) -> Timestamp:
    value = Timestamp()
    value.FromDatetime(moment)
    return value


def log_key(kit: HubKit) -> str:
    return kit.client("auditor").bundle.log_key


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


@dataclass(frozen=True)
class Refusal:
    build: Callable[[HubKit, HubClient], Envelope | None]
    reason: str


def _bad_signature(kit: HubKit, c: HubClient) -> Envelope:
    envelope = c.transport.seal(registry_pb2.MemberLookup(member_id=kit.member_id("issuer")))
    envelope.payload = envelope.payload[:-1] + bytes([envelope.payload[-1] ^ 1])
    return envelope


def _unknown_key(kit: HubKit, c: HubClient) -> Envelope:
    envelope = c.transport.seal(registry_pb2.MemberLookup(member_id=kit.member_id("issuer")))
    return sign_payload(
        envelope.payload, envelope.payload_type, KeySigner(generate_private_key(ECDSA_P256))
    )


def _signed_by_issuer(kit: HubKit, c: HubClient) -> Envelope:
    return kit.client("issuer").transport.seal(
        registry_pb2.MemberLookup(member_id=kit.member_id("issuer"))
    )


def _wrong_recipient(kit: HubKit, c: HubClient) -> Envelope:
    return lookup_header(c, kit.member_id("issuer"), recipient="CN.440100.XHUB")


def _stale(kit: HubKit, c: HubClient) -> Envelope:
    return lookup_header(
        c, kit.member_id("issuer"), issued_at=datetime.now(UTC) - timedelta(minutes=6)
    )


def _replay(kit: HubKit, c: HubClient) -> Envelope:
    envelope = c.transport.seal(registry_pb2.MemberLookup(member_id=kit.member_id("issuer")))
    send(c, envelope)  # accepted once
    return envelope


def _no_envelope(kit: HubKit, c: HubClient) -> None:
    return None


def _signed_garbage(kit: HubKit, c: HubClient) -> Envelope:
    return sign_payload(b"\xff\xff\xff", "xhub.v1.MemberLookup", c.bundle.signer)


def _bad_member_id(kit: HubKit, c: HubClient) -> Envelope:
    return c.transport.seal(registry_pb2.MemberLookup(member_id="not a member id"))


def _unknown_member(kit: HubKit, c: HubClient) -> Envelope:
    unknown = f"CN.440106.{make_uscc('1', '1', '440106', 'MB2C9088')}"  # valid, not registered
    return c.transport.seal(registry_pb2.MemberLookup(member_id=unknown))


REFUSALS: dict[str, Refusal] = {
    "bad-signature": Refusal(_bad_signature, "BAD_SIGNATURE"),
    "unknown-key": Refusal(_unknown_key, "UNKNOWN_KEY"),
    "signed-by-another-member": Refusal(_signed_by_issuer, "SENDER_NOT_PEER"),
    "wrong-recipient": Refusal(_wrong_recipient, "WRONG_RECIPIENT"),
    "clock-skew": Refusal(_stale, "CLOCK_SKEW"),
    "replay": Refusal(_replay, "REPLAYED_MESSAGE"),
    "no-envelope": Refusal(_no_envelope, "MALFORMED_ENVELOPE"),
    "signed-garbage": Refusal(_signed_garbage, "MALFORMED_PAYLOAD"),
    "bad-member-id": Refusal(_bad_member_id, "INVALID_FIELD"),
    "unknown-member": Refusal(_unknown_member, "NOT_FOUND"),
}


def _refuse(kit: HubKit, name: str) -> tuple[Envelope | None, bytes, audit_pb2.AuditRecord]:
    """Send refusal ``name`` as the platform; (envelope, leaf hash, auditor's record)."""
    platform, auditor = kit.client("platform"), kit.client("auditor")
    refusal = REFUSALS[name]
    envelope = refusal.build(kit, platform)
    leaf = refused_leaf(lambda: send(platform, envelope), refusal.reason)
    record = record_of(auditor, leaf, member_id=platform.member_id, decision=DENIED)
    return envelope, leaf, record


@pytest.mark.parametrize("name", list(REFUSALS))
def test_refused_call_is_logged_as_denied_with_its_reason(hub_kit: HubKit, name: str) -> None:
    envelope, leaf, record = _refuse(hub_kit, name)
    platform = hub_kit.client("platform")
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
def test_refused_call_is_logged_on_postgres(hub_kit_pg: HubKit, name: str) -> None:
    _, leaf, record = _refuse(hub_kit_pg, name)
    assert parse(record.entry).reason == REFUSALS[name].reason
    hub_kit_pg.client("platform").prove_logged(receipt_for(leaf))


@pytest.mark.parametrize("name", ["replay", "wrong-recipient", "clock-skew"])
def test_refusal_after_the_signature_verified_records_the_header(
    hub_kit: HubKit, name: str
) -> None:
    """The proto says message_id is empty only "if the request did not verify": these did
    (signature and payload verified; the header's content was refused), so the entry must
    name the refused message and its recipient."""
    envelope, _, record = _refuse(hub_kit, name)
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


# -- evidence bundles -------------------------------------------------------------------------


@dataclass
class Evidence:
    bundle: EvidenceBundle
    verifier: NoteVerifier
    index: dict[str, int]  # what the entry is → its leaf index
    older: VerifiedCheckpoint


def _export(kit: HubKit) -> Evidence:
    platform, department = kit.client("platform"), kit.client("department")
    auditor = kit.client("auditor")
    receipt = platform.lookup_member(kit.member_id("issuer")).header.receipt
    assert receipt.leaf_hash
    leaves = {"allowed": bytes(receipt.leaf_hash)}
    older, _ = platform.prove_logged(receipt)
    for name in ("bad-signature", "signed-by-another-member", "wrong-recipient", "no-envelope"):
        envelope = REFUSALS[name].build(kit, platform)
        leaves[name] = refused_leaf(
            functools.partial(send, platform, envelope), REFUSALS[name].reason
        )
    receipt = department.lookup_member(kit.member_id("platform")).header.receipt  # Ed25519 signer
    assert receipt.leaf_hash
    leaves["ed25519"] = bytes(receipt.leaf_hash)
    for leaf in leaves.values():
        platform.prove_logged(receipt_for(leaf))

    bundle, pending = export_evidence(auditor, previous_checkpoint=older.note)
    assert pending >= 0
    by_leaf = {merkle.leaf_hash(entry): index for index, entry, _, _ in bundle.entries}
    index = {name: by_leaf[leaf] for name, leaf in leaves.items()}
    verifier = NoteVerifier.from_vkey(log_key(kit))
    return Evidence(EvidenceBundle.from_json(bundle.to_json()), verifier, index, older)


@pytest.fixture
def evidence(hub_kit: HubKit) -> Evidence:
    return _export(hub_kit)


def test_exported_evidence_verifies_offline(evidence: Evidence) -> None:
    bundle = evidence.bundle
    report = verify_bundle(bundle, evidence.verifier)
    assert report.entries == len(bundle.entries) >= 7
    assert report.checkpoint.size >= max(evidence.index.values()) + 1
    assert bundle.older_checkpoint_note == evidence.older.note
    assert bundle.consistency_proof
    # Refused calls whose envelope is not validly signed by the sender are counted as such.
    assert report.refused_signatures >= 2
    assert report.envelopes_checked >= 6
    indexes = [index for index, _, _, _ in bundle.entries]
    assert len(set(indexes)) == len(indexes)


def _find(bundle: EvidenceBundle, index: int) -> int:
    return next(i for i, item in enumerate(bundle.entries) if item[0] == index)


def _flip(data: bytes, at: int | None = None) -> bytes:
    at = len(data) // 2 if at is None else at
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def _with_entry(
    bundle: EvidenceBundle,
    index: int,
    *,
    entry: bytes | None = None,
    envelope: bytes | None = None,
    proof: list[bytes] | None = None,
) -> None:
    pos = _find(bundle, index)
    old_index, old_entry, old_envelope, old_proof = bundle.entries[pos]
    bundle.entries[pos] = (
        old_index,
        old_entry if entry is None else entry,
        old_envelope if envelope is None else envelope,
        old_proof if proof is None else proof,
    )


def b_flip_entry(name: str) -> Callable[[Evidence], int]:
    def tamper(ev: Evidence) -> int:
        index = ev.index[name]
        entry = ev.bundle.entries[_find(ev.bundle, index)][1]
        _with_entry(ev.bundle, index, entry=_flip(entry))
        return index

    return tamper


def b_denied_as_allowed(ev: Evidence) -> int:
    index = ev.index["bad-signature"]
    entry = parse(ev.bundle.entries[_find(ev.bundle, index)][1])
    entry.decision = ALLOWED
    entry.reason = ""
    _with_entry(ev.bundle, index, entry=entry.SerializeToString())
    return index


def b_swap_entries(ev: Evidence) -> int:
    a, b = sorted((ev.index["allowed"], ev.index["ed25519"]))
    entry_a = ev.bundle.entries[_find(ev.bundle, a)][1]
    entry_b = ev.bundle.entries[_find(ev.bundle, b)][1]
    envelope_a = ev.bundle.entries[_find(ev.bundle, a)][2]
    envelope_b = ev.bundle.entries[_find(ev.bundle, b)][2]
    _with_entry(ev.bundle, a, entry=entry_b, envelope=envelope_b)
    _with_entry(ev.bundle, b, entry=entry_a, envelope=envelope_a)
    return a


def b_drop_proof_hash(ev: Evidence) -> int:
    index = ev.index["wrong-recipient"]
    proof = ev.bundle.entries[_find(ev.bundle, index)][3]
    assert proof
    _with_entry(ev.bundle, index, proof=proof[1:])
    return index


def b_extra_proof_hash(ev: Evidence) -> int:
    index = ev.index["allowed"]
    proof = ev.bundle.entries[_find(ev.bundle, index)][3]
    _with_entry(ev.bundle, index, proof=[*proof, b"\x00" * 32])
    return index


def _forged(ev: Evidence) -> bytes:
    entry = parse(ev.bundle.entries[_find(ev.bundle, ev.index["allowed"])][1])
    entry.case_id = "FORGED-CASE"
    return entry.SerializeToString()


def b_forged_entry_beyond_the_tree(ev: Evidence) -> int:
    size = int(ev.bundle.checkpoint_note.split(b"\n")[1])
    _, _, envelope, proof = ev.bundle.entries[_find(ev.bundle, ev.index["allowed"])]
    ev.bundle.entries.append((size, _forged(ev), envelope, proof))
    return size


def b_forged_entry_at_a_taken_index(ev: Evidence) -> int:
    index = ev.index["ed25519"]
    _, _, envelope, proof = ev.bundle.entries[_find(ev.bundle, index)]
    ev.bundle.entries.append((index, _forged(ev), envelope, proof))
    return index


def b_forged_entry_in_place(ev: Evidence) -> int:
    """A logged entry dropped and a forged one put at its index with its proof."""
    index = ev.index["allowed"]
    _with_entry(ev.bundle, index, entry=_forged(ev))
    return index


def b_replace_envelope(ev: Evidence) -> int:
    index = ev.index["allowed"]
    other = ev.bundle.entries[_find(ev.bundle, ev.index["ed25519"])][2]
    _with_entry(ev.bundle, index, envelope=other)
    return index


def b_envelope_for_an_empty_one(ev: Evidence) -> int:
    """The malformed call sent no envelope; planting one there is caught too."""
    index = ev.index["no-envelope"]
    assert ev.bundle.entries[_find(ev.bundle, index)][2] == b""
    other = ev.bundle.entries[_find(ev.bundle, ev.index["allowed"])][2]
    _with_entry(ev.bundle, index, envelope=other)
    return index


def b_edit_envelope(ev: Evidence) -> int:
    index = ev.index["ed25519"]
    envelope = ev.bundle.entries[_find(ev.bundle, index)][2]
    _with_entry(ev.bundle, index, envelope=_flip(envelope, len(envelope) - 3))
    return index


def _resign(note: bytes, signer: NoteSigner) -> bytes:
    body = note[: note.index(b"\n\n") + 1]
    return sign_note(body, signer)


def b_checkpoint_by_another_key(ev: Evidence) -> None:
    ev.bundle.checkpoint_note = _resign(
        ev.bundle.checkpoint_note, NoteSigner.generate(ev.verifier.name)
    )


def b_checkpoint_root_edited(ev: Evidence) -> None:
    lines = ev.bundle.checkpoint_note.split(b"\n")
    lines[2] = lines[2][:-6] + (b"AAAAA=" if not lines[2].endswith(b"AAAAA=") else b"BBBBB=")
    ev.bundle.checkpoint_note = b"\n".join(lines)


def b_origin_changed(ev: Evidence) -> None:
    ev.bundle.origin = ev.bundle.origin + "/other"


def b_consistency_hash_flipped(ev: Evidence) -> None:
    assert ev.bundle.consistency_proof
    ev.bundle.consistency_proof[0] = _flip(ev.bundle.consistency_proof[0], 0)


def b_consistency_hash_dropped(ev: Evidence) -> None:
    ev.bundle.consistency_proof = ev.bundle.consistency_proof[:-1]


def b_older_checkpoint_by_another_key(ev: Evidence) -> None:
    ev.bundle.older_checkpoint_note = _resign(
        ev.bundle.older_checkpoint_note, NoteSigner.generate(ev.verifier.name)
    )


def b_older_checkpoint_forked(ev: Evidence) -> None:
    """An older checkpoint the log key never signed for this history (a fork)."""
    body = open_note(ev.bundle.older_checkpoint_note, ev.verifier).split(b"\n")
    body[2] = b"A" * 43 + b"="
    ev.bundle.older_checkpoint_note = b"\n".join(body)


BUNDLE_TAMPERING: dict[str, Callable[[Evidence], int | None]] = {
    "flip-bit-of-allowed-entry": b_flip_entry("allowed"),
    "flip-bit-of-refused-entry": b_flip_entry("bad-signature"),
    "refused-entry-rewritten-as-allowed": b_denied_as_allowed,
    "swap-two-entries": b_swap_entries,
    "drop-a-proof-hash": b_drop_proof_hash,
    "add-a-proof-hash": b_extra_proof_hash,
    "forged-entry-beyond-the-tree": b_forged_entry_beyond_the_tree,
    "forged-entry-at-a-taken-index": b_forged_entry_at_a_taken_index,
    "forged-entry-in-place": b_forged_entry_in_place,
    "replace-an-envelope-with-another": b_replace_envelope,
    "plant-an-envelope-on-a-call-without-one": b_envelope_for_an_empty_one,
    "edit-an-envelope": b_edit_envelope,
    "checkpoint-signed-by-another-key": b_checkpoint_by_another_key,
    "checkpoint-root-edited": b_checkpoint_root_edited,
    "bundle-origin-changed": b_origin_changed,
    "consistency-proof-hash-flipped": b_consistency_hash_flipped,
    "consistency-proof-hash-dropped": b_consistency_hash_dropped,
    "older-checkpoint-signed-by-another-key": b_older_checkpoint_by_another_key,
    "older-checkpoint-unsigned-fork": b_older_checkpoint_forked,
}


def test_bundle_tampering_names_the_failing_entry(evidence: Evidence) -> None:
    """One exported bundle, every tampering applied to its own fresh copy."""
    pristine = evidence.bundle.to_json()
    for case, tamper in BUNDLE_TAMPERING.items():
        copy = Evidence(
            EvidenceBundle.from_json(pristine), evidence.verifier, evidence.index, evidence.older
        )
        expected = tamper(copy)
        # Also through the JSON file format the CLI reads.
        reloaded = EvidenceBundle.from_json(copy.bundle.to_json())
        for bundle in (copy.bundle, reloaded):
            with pytest.raises(BundleInvalid) as caught:
                verify_bundle(bundle, evidence.verifier)
            assert caught.value.entry == expected, f"{case}: {caught.value}"
            if expected is not None:
                assert f"entry #{expected}" in str(caught.value), case
    verify_bundle(EvidenceBundle.from_json(pristine), evidence.verifier)


def test_bundle_needs_the_right_log_key(evidence: Evidence) -> None:
    stranger = NoteSigner.generate(evidence.verifier.name).verifier()
    with pytest.raises(BundleInvalid) as caught:
        verify_bundle(evidence.bundle, stranger)
    assert caught.value.entry is None


# -- the CLI ----------------------------------------------------------------------------------


def test_cli_export_and_verify(
    hub_kit: HubKit, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    evidence = _export(hub_kit)
    data_dir = str(hub_kit.config.data_dir)
    assert cli.main(["audit", "log-key", "--data-dir", data_dir]) == 0
    vkey = capsys.readouterr().out.strip()
    assert vkey == log_key(hub_kit)

    exported = tmp_path / "evidence.json"
    auditor_dir = str(hub_kit.members["auditor"].bundle_dir)
    code = cli.main(
        [
            "audit",
            "export",
            "--bundle",
            auditor_dir,
            "--hub",
            hub_kit.address,
            "--out",
            str(exported),
        ]
    )
    assert code == 0, capsys.readouterr()
    capsys.readouterr()
    assert cli.main(["audit", "verify", str(exported), "--log-key", vkey]) == 0
    assert capsys.readouterr().out.startswith("OK:")
    key_file = tmp_path / "log.vkey"
    key_file.write_text(vkey + "\n", "utf-8")
    assert cli.main(["audit", "verify", str(exported), "--log-key", str(key_file)]) == 0
    capsys.readouterr()

    tampered = EvidenceBundle.from_json(evidence.bundle.to_json())
    index = b_flip_entry("bad-signature")(
        Evidence(tampered, evidence.verifier, evidence.index, evidence.older)
    )
    bad = tmp_path / "tampered.json"
    bad.write_text(tampered.to_json(), "utf-8")
    assert cli.main(["audit", "verify", str(bad), "--log-key", vkey]) == 1
    captured = capsys.readouterr()
    assert f"entry #{index}" in captured.err + captured.out

    stranger = NoteSigner.generate(evidence.verifier.name).verifier_key()
    assert cli.main(["audit", "verify", str(exported), "--log-key", stranger]) == 1
    assert "FAILED" in capsys.readouterr().err


def _tamper_entry_sql(kit: HubKit, index: int) -> None:
    with kit.engine.begin() as connection:
        entry = connection.execute(
            text("SELECT entry FROM audit_entries WHERE leaf_index = :i"), {"i": index}
        ).scalar_one()
        edited = bytes(entry)
        edited = edited[:-1] + bytes([edited[-1] ^ 0x01])
        connection.execute(
            text("UPDATE audit_entries SET entry = :e WHERE leaf_index = :i"),
            {"e": edited, "i": index},
        )


def _allowed_index(kit: HubKit) -> int:
    platform = kit.client("platform")
    receipt = platform.lookup_member(kit.member_id("issuer")).header.receipt
    assert receipt.leaf_hash
    _, index = platform.prove_logged(receipt)
    return index


def test_cli_check_passes_then_fails_after_tampering(
    hub_kit: HubKit, capsys: pytest.CaptureFixture[str]
) -> None:
    index = _allowed_index(hub_kit)
    hub_kit.client("platform").get_member(hub_kit.member_id("auditor"))
    hub_kit.stop()  # nothing in flight; the stop sequences what is left
    data_dir = str(hub_kit.config.data_dir)
    assert cli.main(["audit", "check", "--data-dir", data_dir]) == 0
    assert capsys.readouterr().out.startswith("OK:")

    _tamper_entry_sql(hub_kit, index)
    assert cli.main(["audit", "check", "--data-dir", data_dir]) == 1
    assert f"entry #{index}" in capsys.readouterr().err


# -- the start-up check -----------------------------------------------------------------------


def _delete_latest_checkpoint(kit: HubKit, index: int) -> None:
    with kit.engine.begin() as connection:
        connection.execute(
            text(
                "DELETE FROM audit_checkpoints WHERE tree_size = "
                "(SELECT MAX(tree_size) FROM audit_checkpoints)"
            )
        )


def _swap_with_next(kit: HubKit, index: int) -> None:
    with kit.engine.begin() as connection:
        rows = {
            int(r[0]): (bytes(r[1]), bytes(r[2]))
            for r in connection.execute(
                text(
                    "SELECT leaf_index, entry, leaf_hash FROM audit_entries "
                    "WHERE leaf_index IN (:a, :b)"
                ),
                {"a": index, "b": index + 1},
            )
        }
        for mine, theirs in ((index, index + 1), (index + 1, index)):
            connection.execute(
                text("UPDATE audit_entries SET entry = :e, leaf_hash = :h WHERE leaf_index = :i"),
                {"e": rows[theirs][0], "h": rows[theirs][1], "i": mine},
            )


STARTUP_TAMPERING: dict[str, tuple[Callable[[HubKit, int], None], bool]] = {
    "edit-an-entry": (_tamper_entry_sql, True),
    "reorder-two-entries": (_swap_with_next, True),
    "delete-the-latest-checkpoint": (_delete_latest_checkpoint, False),
}


@pytest.mark.parametrize("case", list(STARTUP_TAMPERING))
def test_hub_refuses_to_start_on_a_tampered_log(
    kit: HubKit, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    tamper, names_entry = STARTUP_TAMPERING[case]
    index = _allowed_index(kit)
    kit.client("platform").get_member(kit.member_id("auditor"))  # so index + 1 exists
    kit.restart()  # an honest log starts fine
    kit.client("platform").get_member(kit.member_id("issuer"))
    kit.stop()

    tamper(kit, index)
    with pytest.raises(StartupError) as caught:
        kit.run(start_hub(kit.config, port_override=free_port()))
    message = str(caught.value)
    assert "audit log integrity check failed" in message
    if names_entry:
        assert f"entry #{index}" in message
    # `xhub serve` refuses too, with its own exit status.
    port = free_port()
    assert (
        cli.main(["serve", "--data-dir", str(kit.config.data_dir), "--listen", f"127.0.0.1:{port}"])
        == 4
    )
    assert "refused to start" in capsys.readouterr().err


def test_startup_check_on_a_live_log_raises_no_false_alarm(kit: HubKit) -> None:
    """A second hub process starting (check_database) while the first one serves and
    sequences: an honest log must not make it refuse to start."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def traffic(key: str) -> None:
        client = kit.client(key)
        try:
            while not stop.is_set():
                client.get_member(kit.member_id("issuer"))
        except BaseException as exc:
            errors.append(exc)

    def eager_sequencer() -> None:
        """The serving hub's sequencer, without its 0.2 s pause (a busy hub keeps it busy)."""
        assert kit.running is not None
        audit = kit.running.runtime.audit
        try:
            while not stop.is_set():
                if audit.sequence(2) == 0:
                    time.sleep(0.001)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=traffic, args=(k,)) for k in ("platform", "department")]
    threads.append(threading.Thread(target=eager_sequencer))
    for thread in threads:
        thread.start()
    runtime = HubRuntime(kit.config)
    # A large log or a remote database makes every statement of the check take a while.
    event.listen(runtime.engine, "before_cursor_execute", lambda *_: time.sleep(0.005))
    failures: list[str] = []
    checks = 0
    try:
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            try:
                check_database(runtime)
            except StartupError as exc:
                failures.append(str(exc))
            checks += 1
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        runtime.close()
    assert errors == []
    assert failures == [], f"{len(failures)} of {checks} start-up checks failed: {failures[0]}"


# -- two hub processes on one PostgreSQL database ---------------------------------------------


@pytest.mark.postgres
def test_two_hubs_share_one_log_on_postgres(hub_kit_pg: HubKit) -> None:
    kit = hub_kit_pg
    replica = kit.start_replica()
    addresses = [kit.address, replica]

    def drive(job: int) -> list[bytes]:
        key = ("platform", "department", "issuer")[job % 3]
        client = kit.client(key, address=addresses[job % 2])
        leaves = []
        for i in range(6):
            answer = client.lookup_member(kit.member_id("auditor" if i % 2 else "platform"))
            assert answer.header.receipt.leaf_hash
            leaves.append(bytes(answer.header.receipt.leaf_hash))
        leaves.append(
            refused_leaf(lambda: send(client, _bad_signature(kit, client)), "BAD_SIGNATURE")
        )
        return leaves

    with ThreadPoolExecutor(max_workers=8) as pool:
        leaves = [leaf for batch in pool.map(drive, range(8)) for leaf in batch]
    assert len(set(leaves)) == len(leaves) == 8 * 7

    # Every receipt is proven by the *other* hub.
    here, there = kit.client("auditor"), kit.client("auditor", address=replica)
    for n, leaf in enumerate(leaves):
        (here if n % 2 else there).prove_logged(receipt_for(leaf))

    total = wait_all_sequenced(kit)
    with kit.engine.connect() as connection:
        indexes = [
            int(r[0])
            for r in connection.execute(
                text("SELECT leaf_index FROM audit_entries ORDER BY leaf_index")
            )
        ]
        sizes = [
            int(r[0])
            for r in connection.execute(
                text("SELECT tree_size FROM audit_checkpoints ORDER BY tree_size")
            )
        ]
    assert indexes == list(range(total)), "every entry sequenced exactly once"
    assert sizes[-1] == total and len(set(sizes)) == len(sizes)
    assert kit.running is not None
    assert kit.running.runtime.audit.check_integrity()[0] == total
    assert kit.replicas[0].runtime.audit.check_integrity()[0] == total

    # Both hubs serve the same checkpoint (each GetCheckpoint is itself logged, so retry).
    deadline = time.monotonic() + 10
    while True:
        first, second = here.checkpoint(), there.checkpoint()
        if first.note == second.note:
            break
        assert time.monotonic() < deadline, "the hubs never served the same checkpoint"
        time.sleep(0.3)
    older, newer = sorted((first, second), key=lambda cp: cp.size)
    there.prove_consistent(older, here.checkpoint())
    here.prove_consistent(newer, there.checkpoint())
