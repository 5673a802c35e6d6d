"""Audit evidence bundles (审计证据包): export through the hub, verify fully offline.

A bundle is one JSON file: the signed checkpoint, optionally an older checkpoint
with a consistency proof, the exact entry bytes with their inclusion proofs, the
original request envelopes, and the member certificates and keys needed to check
those envelopes' signatures. ``verify_bundle`` trusts nothing in the file except
what the log key given on the command line signed.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509

from xhub.protocol.envelope import pae
from xhub.protocol.key_rotation import KeyWindow, outside_window
from xhub.protocol.log import merkle
from xhub.protocol.log.key_history import LogKeys
from xhub.protocol.log.note import Checkpoint, NoteError, NoteVerifier
from xhub.protocol.pki import CertificateError, load_certificate, verify_member_certificate
from xhub.protocol.signing import KeyVerifier, SignatureMismatch
from xhub.v1 import audit_pb2, envelope_pb2

FORMAT = "xhub-audit-bundle/1"
# The hub keeps at most this many leading bytes of a refused call's envelope (the entry's
# digest names them all); a bundle carries what the hub kept.
REFUSED_ENVELOPE_PREFIX_BYTES = 4096
# Refusals whose envelope is expected NOT to carry a valid signature by the sender.
SIGNATURE_REFUSALS = {"BAD_SIGNATURE", "UNKNOWN_KEY", "SENDER_NOT_PEER", "MALFORMED_ENVELOPE"}


class BundleInvalid(Exception):
    """The bundle fails verification; ``entry`` names the first failing leaf index, if any."""

    def __init__(self, message: str, *, entry: int | None = None) -> None:
        super().__init__(message)
        self.entry = entry


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


@dataclass
class MemberKeys:
    certificate_der: bytes
    signing_keys: dict[str, bytes] = field(default_factory=dict)  # key id → SPKI DER
    # key id → when it could sign (a key with no window: any time, as bundles before
    # key rotation were written)
    windows: dict[str, KeyWindow] = field(default_factory=dict)


def _window_json(window: KeyWindow) -> list[str | None]:
    return [window.since.isoformat(), window.until.isoformat() if window.until else None]


def _window_of(value: list[str | None]) -> KeyWindow:
    since, until = value
    if since is None:
        raise ValueError("a key window needs its start")
    return KeyWindow(
        datetime.fromisoformat(since), datetime.fromisoformat(until) if until else None
    )


@dataclass
class EvidenceBundle:
    origin: str
    checkpoint_note: bytes
    ca_certificate_der: bytes
    entries: list[tuple[int, bytes, bytes, list[bytes]]]  # index, entry, envelope, proof
    members: dict[str, MemberKeys]
    older_checkpoint_note: bytes = b""
    consistency_proof: list[bytes] = field(default_factory=list)
    # The log key's hand-over checkpoints, oldest first: they lead from the key the auditor
    # trusts to the key that signed the checkpoints (``protocol.log.key_history``).
    log_key_handovers: list[bytes] = field(default_factory=list)
    # Further CA roots of a hub that renewed its CA (根证书更新), beside ``ca_certificate_der``.
    more_ca_certificates_der: list[bytes] = field(default_factory=list)

    def to_json(self) -> str:
        document: dict[str, Any] = {
            "format": FORMAT,
            "origin": self.origin,
            "checkpoint": self.checkpoint_note.decode("utf-8"),
            "ca_certificate": _b64(self.ca_certificate_der),
            "members": {
                member_id: {
                    "certificate": _b64(keys.certificate_der),
                    "signing_keys": {k: _b64(v) for k, v in keys.signing_keys.items()},
                    "key_windows": {k: _window_json(w) for k, w in keys.windows.items()},
                }
                for member_id, keys in sorted(self.members.items())
            },
            "entries": [
                {
                    "leaf_index": index,
                    "entry": _b64(entry),
                    "envelope": _b64(envelope),
                    "inclusion_proof": [_b64(h) for h in proof],
                }
                for index, entry, envelope, proof in self.entries
            ],
        }
        if self.more_ca_certificates_der:
            document["more_ca_certificates"] = [_b64(c) for c in self.more_ca_certificates_der]
        if self.log_key_handovers:
            document["log_key_handovers"] = [n.decode("utf-8") for n in self.log_key_handovers]
        if self.older_checkpoint_note:
            document["older_checkpoint"] = {
                "checkpoint": self.older_checkpoint_note.decode("utf-8"),
                "consistency_proof": [_b64(h) for h in self.consistency_proof],
            }
        return json.dumps(document, ensure_ascii=False, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> EvidenceBundle:
        try:
            document = json.loads(text)
            if document.get("format") != FORMAT:
                raise BundleInvalid(f"not an {FORMAT} bundle")
            older = document.get("older_checkpoint") or {}
            return cls(
                origin=document["origin"],
                checkpoint_note=document["checkpoint"].encode("utf-8"),
                ca_certificate_der=_unb64(document["ca_certificate"]),
                more_ca_certificates_der=[
                    _unb64(c) for c in document.get("more_ca_certificates", [])
                ],
                members={
                    member_id: MemberKeys(
                        _unb64(value["certificate"]),
                        {k: _unb64(v) for k, v in value.get("signing_keys", {}).items()},
                        {k: _window_of(w) for k, w in value.get("key_windows", {}).items()},
                    )
                    for member_id, value in document["members"].items()
                },
                entries=[
                    (
                        int(item["leaf_index"]),
                        _unb64(item["entry"]),
                        _unb64(item.get("envelope", "")),
                        [_unb64(h) for h in item["inclusion_proof"]],
                    )
                    for item in document["entries"]
                ],
                older_checkpoint_note=older.get("checkpoint", "").encode("utf-8"),
                consistency_proof=[_unb64(h) for h in older.get("consistency_proof", [])],
                log_key_handovers=[
                    n.encode("utf-8") for n in document.get("log_key_handovers", [])
                ],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleInvalid(f"malformed bundle: {exc}") from exc


@dataclass(frozen=True)
class VerifyReport:
    checkpoint: Checkpoint
    entries: int
    envelopes_checked: int
    refused_signatures: int
    # Refused entries whose bundle carries only the envelope's first bytes (the hub keeps no
    # more of a refusal): their entries are proven, the envelope cannot be checked further.
    refused_prefixes: int = 0


def verify_bundle(
    bundle: EvidenceBundle,
    log_key: NoteVerifier,
    *,
    progress: Callable[[int], None] | None = None,
) -> VerifyReport:
    """Check a bundle offline; raise BundleInvalid naming the first failure."""
    # 1. The checkpoint must be signed by the log key given by the auditor, or by a key
    #    its hand-overs lead to (a rotated log key).
    try:
        log_keys = LogKeys.following(log_key, bundle.log_key_handovers)
        checkpoint = log_keys.open(bundle.checkpoint_note)
    except NoteError as exc:
        raise BundleInvalid(
            f"checkpoint signature does not verify with the log key: {exc}"
        ) from exc
    if checkpoint.origin != bundle.origin:
        raise BundleInvalid(f"checkpoint origin {checkpoint.origin!r} ≠ bundle {bundle.origin!r}")
    # 2. An older checkpoint, if present, must be a prefix of this one.
    if bundle.older_checkpoint_note:
        try:
            older = log_keys.open(bundle.older_checkpoint_note)
            merkle.verify_consistency(
                older.size,
                checkpoint.size,
                older.root_hash,
                checkpoint.root_hash,
                bundle.consistency_proof,
            )
        except (NoteError, merkle.ProofError) as exc:
            raise BundleInvalid(
                f"older checkpoint is not consistent with the newer: {exc}"
            ) from exc
    # 3. Member certificates must chain to the hub CA (one of its roots, after a renewal).
    ca = [
        load_certificate(der)
        for der in (bundle.ca_certificate_der, *bundle.more_ca_certificates_der)
    ]
    certificates: dict[str, x509.Certificate] = {}
    for member_id, keys in bundle.members.items():
        cert = load_certificate(keys.certificate_der)
        try:
            named = verify_member_certificate(cert, ca, at=cert.not_valid_before_utc)
        except CertificateError as exc:
            raise BundleInvalid(
                f"certificate of {member_id} does not chain to the CA: {exc}"
            ) from exc
        if named != member_id:
            raise BundleInvalid(f"certificate listed for {member_id} names {named}")
        certificates[member_id] = cert
    # 4. Every entry: in the tree, envelope matches, signature as the entry says.
    seen: set[int] = set()
    envelopes_checked = refused_signatures = refused_prefixes = 0
    for count, (index, entry_bytes, envelope_bytes, proof) in enumerate(
        sorted(bundle.entries, key=lambda item: item[0]), start=1
    ):
        if index in seen:
            raise BundleInvalid(f"entry #{index} appears twice", entry=index)
        seen.add(index)
        leaf = merkle.leaf_hash(entry_bytes)
        try:
            merkle.verify_inclusion(leaf, index, checkpoint.size, proof, checkpoint.root_hash)
        except merkle.ProofError as exc:
            raise BundleInvalid(
                f"entry #{index}: not in the checkpointed tree — the entry bytes were "
                f"edited, or it was reordered or inserted ({exc})",
                entry=index,
            ) from exc
        entry = audit_pb2.AuditEntry()
        entry.ParseFromString(entry_bytes)
        if not envelope_bytes and entry.envelope_sha256 != hashlib.sha256(b"").digest():
            raise BundleInvalid(
                f"entry #{index}: the original envelope is missing from the bundle", entry=index
            )
        if _is_refused_prefix(entry, envelope_bytes):
            refused_prefixes += 1
        elif envelope_bytes:
            envelopes_checked += 1
            refused_signatures += _check_envelope(
                index, entry, envelope_bytes, bundle, certificates
            )
        if progress is not None:
            progress(count)
    return VerifyReport(
        checkpoint, len(seen), envelopes_checked, refused_signatures, refused_prefixes
    )


def _is_refused_prefix(entry: audit_pb2.AuditEntry, envelope_bytes: bytes) -> bool:
    """A refused entry's kept prefix: exactly the prefix length, and not the whole envelope
    (an allowed entry always carries its whole envelope)."""
    return (
        entry.decision == audit_pb2.AUDIT_DECISION_DENIED
        and len(envelope_bytes) == REFUSED_ENVELOPE_PREFIX_BYTES
        and hashlib.sha256(envelope_bytes).digest() != entry.envelope_sha256
    )


def _check_envelope(
    index: int,
    entry: audit_pb2.AuditEntry,
    envelope_bytes: bytes,
    bundle: EvidenceBundle,
    certificates: dict[str, x509.Certificate],
) -> int:
    """1 if the envelope's signature is (as the entry says) not valid, else 0."""
    label = f"entry #{index} ({entry.method} by {entry.sender or 'unknown'})"
    if hashlib.sha256(envelope_bytes).digest() != entry.envelope_sha256:
        raise BundleInvalid(f"{label}: envelope does not match the logged digest", entry=index)
    envelope = envelope_pb2.Envelope()
    envelope.ParseFromString(envelope_bytes)
    problem = _sender_signature_problem(envelope, entry, bundle, certificates)
    valid = not problem
    if entry.decision == audit_pb2.AUDIT_DECISION_ALLOWED and not valid:
        raise BundleInvalid(
            f"{label}: logged as allowed but the envelope is not validly signed by the "
            f"sender: {problem}",
            entry=index,
        )
    if not valid and entry.reason not in SIGNATURE_REFUSALS:
        raise BundleInvalid(
            f"{label}: envelope signature fails but the entry says {entry.reason or 'allowed'}",
            entry=index,
        )
    return 0 if valid else 1


def _sender_signature_problem(
    envelope: envelope_pb2.Envelope,
    entry: audit_pb2.AuditEntry,
    bundle: EvidenceBundle,
    certificates: dict[str, x509.Certificate],
) -> str:
    """ "" if the envelope is signed by the sender with a key valid when the hub logged it;
    else what is wrong. A listed key is checked inside its window at the entry's time (the
    hub admits only a key valid then); the certificate's key counts only if not listed."""
    if not envelope.signatures:
        return "it carries no signature"
    if entry.sender not in bundle.members:
        return f"the bundle carries no keys of {entry.sender or 'an unknown sender'}"
    signature = envelope.signatures[0]
    member = bundle.members[entry.sender]
    verifier: KeyVerifier | None = None
    if signature.key_id in member.signing_keys:
        window = member.windows.get(signature.key_id)
        if window is not None:
            problem = outside_window(
                entry.sender, signature.key_id, window, entry.time.ToDatetime(tzinfo=UTC)
            )
            if problem:
                return problem
        verifier = KeyVerifier.from_der(member.signing_keys[signature.key_id])
    else:
        with contextlib.suppress(ValueError):
            cert_key = KeyVerifier(certificates[entry.sender].public_key())  # type: ignore[arg-type]
            verifier = cert_key if cert_key.key_id == signature.key_id else None
    if verifier is None:
        return f"key {signature.key_id[:16]!r} is no key of {entry.sender}"
    try:
        verifier.verify(signature.sig, pae(envelope.payload_type, envelope.payload))
    except SignatureMismatch:
        return f"the signature by key {signature.key_id[:16]}… does not verify"
    return ""


def entry_time(entry_bytes: bytes) -> str:
    entry = audit_pb2.AuditEntry()
    entry.ParseFromString(entry_bytes)
    return entry.time.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%S")


def load_bundle(path: Path) -> EvidenceBundle:
    try:
        return EvidenceBundle.from_json(path.read_text("utf-8"))
    except OSError as exc:
        raise BundleInvalid(f"cannot read {path}: {exc}") from exc


def senders(entries: Iterable[bytes]) -> set[str]:
    out: set[str] = set()
    for entry_bytes in entries:
        entry = audit_pb2.AuditEntry()
        entry.ParseFromString(entry_bytes)
        if entry.sender:
            out.add(entry.sender)
    return out
