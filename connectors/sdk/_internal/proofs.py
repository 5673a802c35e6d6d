"""Offline checks of the audit log (RFC 9162): signed checkpoints, inclusion, consistency.

Pure: the client fetches a checkpoint or a proof, these functions check it against what the
member trusts (the log key pinned in its bundle, an earlier checkpoint). A failed check is a
``BadResponseError``.
"""

from __future__ import annotations

import base64
import json
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


class LogState:
    """The last checkpoint this member verified, and the rule that every newer one extends
    it (after Tessera's ``LogStateTracker``): a hub that shows two members — or one member
    at two times — different histories is caught the next time the member looks.

    ``proof_sizes`` says which consistency proof checking a new checkpoint needs (None: no
    proof, e.g. the same size, or nothing verified yet); ``advance`` checks it and moves
    on. A smaller checkpoint (a lagging replica) must be a prefix of the latest, which
    stays. Persist with ``note`` / ``from_note`` (the signed note is the whole state).
    """

    def __init__(self, latest: VerifiedCheckpoint | None = None) -> None:
        self.latest = latest

    def proof_sizes(self, new: VerifiedCheckpoint) -> tuple[int, int] | None:
        old = self.latest
        if old is None:
            return None
        smaller, larger = sorted((old, new), key=lambda c: c.size)
        return (smaller.size, larger.size) if needs_consistency_proof(smaller, larger) else None

    def advance(self, new: VerifiedCheckpoint, hashes: list[bytes]) -> None:
        """Take ``new`` if it is consistent with the last verified checkpoint (BadResponseError
        naming both sizes and roots if not)."""
        old = self.latest
        if old is None:
            self.latest = new
            return
        if new.checkpoint.origin != old.checkpoint.origin:
            raise BadResponseError(
                f"checkpoint of log {new.checkpoint.origin!r}, not {old.checkpoint.origin!r}"
            )
        smaller, larger = sorted((old, new), key=lambda c: c.size)
        try:
            if smaller.size == larger.size and smaller.root_hash != larger.root_hash:
                raise BadResponseError("same size, another root")
            verify_consistency_proof(smaller, larger, hashes)
        except BadResponseError as exc:
            raise BadResponseError(
                f"checkpoint {new.size} (root {new.root_hash.hex()[:16]}…) is inconsistent "
                f"with the last verified checkpoint {old.size} (root "
                f"{old.root_hash.hex()[:16]}…): the log was rewritten or forked ({exc.message})"
            ) from exc
        if new.size > old.size:
            self.latest = new

    def note(self) -> bytes:
        """The latest checkpoint's signed note (b"" if none yet)."""
        return self.latest.note if self.latest is not None else b""

    def saved(self) -> bytes:
        """What to persist: the latest checkpoint's signed note and the log key's hand-overs
        that lead to the key that signed it, as JSON (b"" if nothing verified yet)."""
        if self.latest is None:
            return b""
        record = {
            "checkpoint": base64.b64encode(self.latest.note).decode(),
            "log_key_handovers": [
                base64.b64encode(n).decode() for n in self.latest.log_key_handovers
            ],
        }
        return json.dumps(record, indent=1).encode() + b"\n"

    @classmethod
    def from_saved(cls, data: bytes, log_key: str) -> LogState:
        """The state ``saved`` (or a bare note) gives back, checked from the pinned
        ``log_key`` through the saved hand-overs. Raises: BadResponseError."""
        if not data.lstrip().startswith(b"{"):
            return cls.from_note(data, log_key)
        try:
            record = json.loads(data)
            note = base64.b64decode(record["checkpoint"], validate=True)
            handovers = [base64.b64decode(n, validate=True) for n in record["log_key_handovers"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise BadResponseError(f"saved log state is not readable: {exc}") from exc
        return cls.from_note(note, log_key, handovers)

    @classmethod
    def from_note(cls, note: bytes, log_key: str, handovers: list[bytes] | None = None) -> LogState:
        """The state a persisted note gives back, its signature checked with ``log_key`` or
        a key the ``handovers`` lead to from it."""
        if not note:
            return cls()
        try:
            keys = LogKeys.following(NoteVerifier.from_vkey(log_key), handovers or [])
            checkpoint = keys.open(note)
        except NoteError as exc:
            raise BadResponseError(f"saved checkpoint does not verify: {exc}") from exc
        return cls(VerifiedCheckpoint(checkpoint, note, None, tuple(handovers or [])))
