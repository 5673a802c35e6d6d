"""Offline checks of the audit log (RFC 9162): signed checkpoints, inclusion, consistency.

Pure: the client fetches a checkpoint or a proof, these functions check it against what the
member trusts (the log key pinned in its bundle, an earlier checkpoint). A failed check is a
``BadResponseError``.
"""

from __future__ import annotations

from dataclasses import dataclass

from xhub.protocol.errors import BadResponseError
from xhub.protocol.log.key_history import LogKeys
from xhub.protocol.log.merkle import ProofError, verify_consistency, verify_inclusion
from xhub.protocol.log.note import Checkpoint, NoteError, NoteVerifier
from xhub.v1 import audit_pb2, envelope_pb2


@dataclass(frozen=True)
class VerifiedCheckpoint:
    """A checkpoint whose signature verified with the pinned log key.

    ``receipt`` is the audit receipt of the GetCheckpoint call that fetched it (None for a
    checkpoint rebuilt from a stored note).
    """

    checkpoint: Checkpoint
    note: bytes
    receipt: envelope_pb2.AuditReceipt | None = None
    # The log key's hand-overs the answer carried (oldest first), for evidence bundles.
    log_key_handovers: tuple[bytes, ...] = ()

    @property
    def size(self) -> int:
        return self.checkpoint.size

    @property
    def root_hash(self) -> bytes:
        return self.checkpoint.root_hash


def verify_checkpoint(
    answer: audit_pb2.CheckpointResult, pinned_log_key: str
) -> VerifiedCheckpoint:
    """The checkpoint of a GetCheckpoint answer, its note signed by the log key.

    The pinned key wins; an old bundle without one falls back to the key in the hub-signed
    answer. After a log key rotation the answer's hand-overs lead from the pinned key to the
    current one (``protocol.log.key_history``); a checkpoint signed by a key no hand-over
    reaches, or by a handed-over key for a larger tree than its hand-over, is refused.
    """
    try:
        keys = log_keys(answer, pinned_log_key)
        checkpoint = keys.open(answer.checkpoint_note)
    except NoteError as exc:
        raise BadResponseError(f"checkpoint does not verify with the log key: {exc}") from exc
    return VerifiedCheckpoint(
        checkpoint,
        bytes(answer.checkpoint_note),
        answer.header.receipt,
        tuple(bytes(note) for note in answer.log_key_handovers),
    )


def log_keys(answer: audit_pb2.CheckpointResult, pinned_log_key: str) -> LogKeys:
    """The log keys reached from the pinned one through the answer's hand-overs.
    Raises: NoteError (a hand-over that does not verify)."""
    pinned = NoteVerifier.from_vkey(pinned_log_key or answer.log_key)
    return LogKeys.following(pinned, list(answer.log_key_handovers))


def verify_inclusion_proof(
    leaf_hash: bytes, proof: audit_pb2.InclusionProofResult, checkpoint: VerifiedCheckpoint
) -> int:
    """The leaf index at which ``proof`` places ``leaf_hash`` under ``checkpoint``'s root."""
    if proof.tree_size != checkpoint.size:
        raise BadResponseError("inclusion proof is for another tree size")
    try:
        verify_inclusion(
            leaf_hash, proof.leaf_index, checkpoint.size, proof.hashes, checkpoint.root_hash
        )
    except ProofError as exc:
        raise BadResponseError(f"inclusion proof does not verify: {exc}") from exc
    return proof.leaf_index


def needs_consistency_proof(old: VerifiedCheckpoint, new: VerifiedCheckpoint) -> bool:
    """An empty or identical older tree is checked without a proof from the hub."""
    return not (old.size == 0 or old.size == new.size)


def verify_consistency_proof(
    old: VerifiedCheckpoint, new: VerifiedCheckpoint, hashes: list[bytes]
) -> None:
    """``new`` extends ``old``: the log was appended to, never rewritten."""
    try:
        verify_consistency(old.size, new.size, old.root_hash, new.root_hash, hashes)
    except ProofError as exc:
        raise BadResponseError(f"consistency proof does not verify: {exc}") from exc
