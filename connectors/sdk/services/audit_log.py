"""HubClient's audit log operations: checkpoints, proofs, the auditor's query."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc

from xhub.connectors.sdk._internal.proofs import (
    LogState,
    VerifiedCheckpoint,
    needs_consistency_proof,
    verify_checkpoint,
    verify_consistency_proof,
    verify_inclusion_proof,
)
from xhub.connectors.sdk.services.base import Calls
from xhub.protocol.errors import MalformedError, TransportError, XhubError
from xhub.v1 import audit_pb2, envelope_pb2


class AuditLogCalls(Calls):
    """HubClient's audit log operations: checkpoints, proofs, the auditor's query."""

    # -- audit log ------------------------------------------------------------

    _log_state: LogState
    _log_state_path: Path | None

    def log_state(self) -> LogState:
        """The last checkpoint this client verified (every newer one must extend it)."""
        return self._log_state

    def use_log_state_file(self, path: Path) -> None:
        """Keep the last verified checkpoint in ``path`` (a small JSON file holding its signed
        note and the log key's hand-overs), so a restarted connector goes on checking
        consistency from where it was. A saved checkpoint larger than the one in hand replaces it.

        Raises: BadResponseError (the saved note does not verify with the bundle's log
        key), OSError.
        """
        saved = path.read_bytes() if path.exists() else b""
        loaded = LogState.from_saved(saved, self.bundle.log_key)
        if loaded.latest is not None:
            self.see_checkpoint(loaded.latest)
        self._log_state_path = path
        self._save_log_state()

    def see_checkpoint(self, new: VerifiedCheckpoint) -> None:
        """Check a verified checkpoint against the last one (fetching the consistency proof
        between them), then remember the larger.

        Raises: BadResponseError (inconsistent with the last verified checkpoint: the log
        was rewritten or forked), MalformedError, TransportError.
        """
        sizes = self._log_state.proof_sizes(new)
        hashes = list(self.consistency_proof(*sizes).hashes) if sizes else []
        before = self._log_state.latest
        self._log_state.advance(new, hashes)
        if self._log_state.latest is not before:
            self._save_log_state()

    def _save_log_state(self) -> None:
        if self._log_state_path is None or self._log_state.latest is None:
            return
        partial = self._log_state_path.with_name(self._log_state_path.name + ".part")
        partial.write_bytes(self._log_state.saved())
        os.replace(partial, self._log_state_path)

    def checkpoint(self) -> VerifiedCheckpoint:
        """The latest checkpoint, its signature checked with the log key pinned in the
        bundle, and consistent with the last checkpoint this client verified
        (``see_checkpoint``).

        Raises: BadResponseError (the note does not verify, or the log was rewritten or
        forked since the last checkpoint verified), TransportError.
        """
        answer = self.transport.call(
            self.transport.audit.GetCheckpoint,
            audit_pb2.GetCheckpointRequest,
            audit_pb2.CheckpointQuery(),
            audit_pb2.CheckpointResult,
            idempotent=True,
        )
        verified = verify_checkpoint(answer, self.bundle.log_key)
        self.see_checkpoint(verified)
        return verified

    def inclusion_proof(
        self, *, leaf_hash: bytes = b"", leaf_index: int = 0, tree_size: int = 0
    ) -> audit_pb2.InclusionProofResult:
        """The hub's inclusion proof for a leaf (by hash or index), unchecked.

        Raises: NotFoundError (no such leaf), UnavailableError (NOT_YET_SEQUENCED),
        MalformedError (beyond the latest checkpoint).
        """
        return self.transport.call(
            self.transport.audit.GetInclusionProof,
            audit_pb2.GetInclusionProofRequest,
            audit_pb2.InclusionProofQuery(
                leaf_hash=leaf_hash, leaf_index=leaf_index, tree_size=tree_size
            ),
            audit_pb2.InclusionProofResult,
            idempotent=True,
        )

    def consistency_proof(self, old_size: int, new_size: int) -> audit_pb2.ConsistencyProofResult:
        """The hub's consistency proof between two tree sizes, unchecked.

        Raises: MalformedError (sizes out of order or beyond the latest checkpoint).
        """
        return self.transport.call(
            self.transport.audit.GetConsistencyProof,
            audit_pb2.GetConsistencyProofRequest,
            audit_pb2.ConsistencyProofQuery(old_size=old_size, new_size=new_size),
            audit_pb2.ConsistencyProofResult,
            idempotent=True,
        )

    def prove_logged(
        self, receipt: envelope_pb2.AuditReceipt, *, timeout: float = 15.0
    ) -> tuple[VerifiedCheckpoint, int]:
        """Prove a receipt's entry is in a signed checkpoint; returns it and the leaf index.

        Waits (bounded by ``timeout``) while the entry is still waiting for the sequencer.

        Raises: TransportError (DEADLINE_EXCEEDED: still not sequenced), NotFoundError (the
        hub knows no such entry), BadResponseError (the proof or checkpoint does not verify).
        """
        deadline = time.monotonic() + timeout
        while True:
            checkpoint = self.checkpoint()
            if checkpoint.size == 0:  # nothing sequenced yet
                if time.monotonic() > deadline:
                    raise TransportError(grpc.StatusCode.DEADLINE_EXCEEDED, "log still empty")
                time.sleep(0.2)
                continue
            try:
                proof = self.inclusion_proof(leaf_hash=receipt.leaf_hash, tree_size=checkpoint.size)
            except XhubError as exc:
                # Not yet sequenced (retryable), or a replica behind this checkpoint.
                pending = exc.retryable or isinstance(exc, MalformedError)
                if not pending or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
                continue
            return checkpoint, verify_inclusion_proof(receipt.leaf_hash, proof, checkpoint)

    def prove_consistent(self, old: VerifiedCheckpoint, new: VerifiedCheckpoint) -> None:
        """Prove ``new`` extends ``old``: the log was appended to, never rewritten.

        Raises: BadResponseError (a rewritten history), MalformedError.
        """
        hashes: list[bytes] = []
        if needs_consistency_proof(old, new):
            hashes = list(self.consistency_proof(old.size, new.size).hashes)
        verify_consistency_proof(old, new, hashes)
        self.see_checkpoint(new)

    def audit_pages(
        self, *, page_size: int = 100, **filters: Any
    ) -> Iterator[audit_pb2.AuditQueryResult]:
        """Auditor members only: every page of matching audit records, each a signed answer
        with its receipt. ``filters`` are ``xhub.v1.AuditQuery`` fields.

        Raises: PermissionDeniedError (not an auditor), MalformedError (a bad filter or token).
        """
        query = audit_pb2.AuditQuery(page_size=page_size, **filters)
        return self.transport.pages(
            self.transport.audit.Query, audit_pb2.QueryRequest, query, audit_pb2.AuditQueryResult
        )

    def query_audit(
        self, *, page_size: int = 100, **filters: Any
    ) -> Iterator[audit_pb2.AuditRecord]:
        """Every matching audit record (the items of ``audit_pages``), page after page.

        Raises: as ``audit_pages``.
        """
        for page in self.audit_pages(page_size=page_size, **filters):
            yield from page.records
