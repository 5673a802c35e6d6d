"""Auditor tools over the SDK (效能监察): query the log and export offline evidence."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding
from tqdm import tqdm

from xhub.connectors.sdk._internal.verify import of_unknown_root
from xhub.connectors.sdk.client import HubClient, VerifiedCheckpoint
from xhub.protocol.errors import NotFoundError
from xhub.protocol.key_rotation import KeyWindow
from xhub.protocol.log.evidence import EvidenceBundle, MemberKeys, senders
from xhub.protocol.log.key_history import LogKeys
from xhub.protocol.log.note import NoteVerifier
from xhub.v1 import audit_pb2


def query(
    client: HubClient, **filters: Any
) -> Iterator[tuple[audit_pb2.AuditRecord, audit_pb2.AuditEntry]]:
    """Matching records with their parsed entries."""
    for record in client.query_audit(**filters):
        entry = audit_pb2.AuditEntry()
        entry.ParseFromString(record.entry)
        yield record, entry


def export_evidence(
    client: HubClient,
    *,
    previous_checkpoint: bytes = b"",
    show_progress: bool = False,
    **filters: Any,
) -> tuple[EvidenceBundle, int]:
    """Build an evidence bundle for the matching entries; returns it and the count left out
    because they are not yet in the latest checkpoint."""
    checkpoint: VerifiedCheckpoint = client.checkpoint()
    records = [r for r in client.query_audit(include_envelopes=True, **filters)]
    included = [r for r in records if r.sequenced and r.leaf_index < checkpoint.size]
    entries = []
    for record in tqdm(included, desc="inclusion proofs", unit="entry", disable=not show_progress):
        proof = client.inclusion_proof(leaf_index=record.leaf_index, tree_size=checkpoint.size)
        entries.append((record.leaf_index, record.entry, record.envelope, list(proof.hashes)))
    members: dict[str, MemberKeys] = {}
    for member_id in sorted(senders(r.entry for r in included)):
        try:
            member = client.get_member(member_id)
        except NotFoundError:
            continue  # e.g. a caller with a certificate naming no registered member
        if of_unknown_root(member, client.bundle.ca_certs):
            client.learn_ca_roots()  # the hub renewed its CA: carry the new root too
        members[member_id] = MemberKeys(
            bytes(member.certificate_der),
            {key.key_id: bytes(key.public_key_der) for key in member.signing_keys},
            {key.key_id: KeyWindow.of(key) for key in member.signing_keys},
        )
    bundle = EvidenceBundle(
        origin=checkpoint.checkpoint.origin,
        checkpoint_note=checkpoint.note,
        ca_certificate_der=client.bundle.ca_cert.public_bytes(Encoding.DER),
        more_ca_certificates_der=[c.public_bytes(Encoding.DER) for c in client.bundle.ca_certs[1:]],
        entries=entries,
        members=members,
        log_key_handovers=list(checkpoint.log_key_handovers),
    )
    if previous_checkpoint:
        keys = LogKeys.following(
            NoteVerifier.from_vkey(client.bundle.log_key), checkpoint.log_key_handovers
        )
        older = keys.open(previous_checkpoint)
        if 0 < older.size < checkpoint.size:
            consistency = client.consistency_proof(older.size, checkpoint.size)
            bundle.older_checkpoint_note = previous_checkpoint
            bundle.consistency_proof = list(consistency.hashes)
    return bundle, len(records) - len(included)
