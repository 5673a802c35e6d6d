"""The audit log key's history (日志密钥交接): hand-over checkpoints and a verifier that
follows them.

A log key rotates by a hand-over checkpoint: a checkpoint of the tree as it stands, whose
extension line ``xhub-log-key-handover <vkey>`` names the incoming key, signed by BOTH the
outgoing and the incoming key (a C2SP signed note carries several signatures). Checkpoints
after it are signed by the incoming key only. A verifier that pinned an older key follows
the hand-overs (``LogKeys.following``): each must be signed by the key reached so far and by
the key it names. An outgoing key stays good for the trees it signed — no checkpoint
signed only by it may be larger than its hand-over — and a checkpoint signed by a key no
hand-over reaches is refused.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from xhub.protocol.log.note import (
    Checkpoint,
    NoteError,
    NoteSigner,
    NoteVerifier,
    UnknownKeyError,
    format_checkpoint_body,
    open_checkpoint,
    sign_note,
)

HANDOVER_EXTENSION = "xhub-log-key-handover"


class HandoverNoteError(NoteError):
    """A log key hand-over does not verify; the message names which and why."""


def handover_note(checkpoint: Checkpoint, outgoing: NoteSigner, incoming: NoteSigner) -> bytes:
    """The hand-over: ``checkpoint``'s tree, naming ``incoming``, signed by both keys."""
    named = Checkpoint(
        checkpoint.origin,
        checkpoint.size,
        checkpoint.root_hash,
        (f"{HANDOVER_EXTENSION} {incoming.verifier_key()}",),
    )
    return sign_note(format_checkpoint_body(named), outgoing, incoming)


def named_successor(checkpoint: Checkpoint) -> str:
    """The vkey a hand-over checkpoint names ("" for an ordinary checkpoint)."""
    for line in checkpoint.extensions:
        word, _, vkey = line.partition(" ")
        if word == HANDOVER_EXTENSION:
            return vkey
    return ""


@dataclass(frozen=True)
class _Key:
    verifier: NoteVerifier
    max_size: int | None  # the largest tree it may sign alone (None: the current key)


@dataclass(frozen=True)
class LogKeys:
    """The log keys a verifier accepts, oldest first; the last one is current."""

    keys: tuple[_Key, ...]

    @classmethod
    def pinned(cls, verifier: NoteVerifier) -> LogKeys:
        return cls((_Key(verifier, None),))

    @classmethod
    def following(cls, pinned: NoteVerifier, handovers: Iterable[bytes]) -> LogKeys:
        """The keys reached from ``pinned`` through ``handovers`` (oldest first). Hand-overs
        the pinned key did not sign are older than it and skipped; from the first one it
        signed on, each must be signed by the key reached so far and by the key it names.

        Raises: HandoverNoteError naming the hand-over and what disagreed.
        """
        keys = [_Key(pinned, None)]
        started = False
        for number, note in enumerate(handovers, start=1):
            current = keys[-1].verifier
            try:
                checkpoint = open_checkpoint(note, current)
            except UnknownKeyError:
                if not started:
                    continue  # a hand-over older than the pinned key
                raise HandoverNoteError(
                    f"log key hand-over #{number} is not signed by the key it must hand over "
                    f"from ({current.name}+{current.key_id:08x})"
                ) from None
            except NoteError as exc:
                raise HandoverNoteError(f"log key hand-over #{number}: {exc}") from exc
            vkey = named_successor(checkpoint)
            if not started and vkey == current.vkey():
                continue  # the hand-over to the pinned key itself (it signed it as successor)
            started = True
            try:
                successor = NoteVerifier.from_vkey(vkey)
                again = open_checkpoint(note, successor)
            except NoteError as exc:
                raise HandoverNoteError(
                    f"log key hand-over #{number} names {vkey[:80]!r}, which did not sign it: {exc}"
                ) from exc
            if again != checkpoint or successor.name != current.name:
                raise HandoverNoteError(
                    f"log key hand-over #{number}: the incoming key {successor.name!r} must "
                    f"be named like the outgoing one ({current.name!r})"
                )
            keys[-1] = _Key(current, checkpoint.size)
            keys.append(_Key(successor, None))
        return cls(tuple(keys))

    @property
    def current(self) -> NoteVerifier:
        return self.keys[-1].verifier

    def open(self, note: bytes) -> Checkpoint:
        """The checkpoint of ``note``, signed by a key of this history inside its range: the
        current key, or a handed-over key for a tree no larger than its hand-over.

        Raises: NoteError (UnknownKeyError when no key of the history signed it, naming
        the keys tried).
        """
        for key in reversed(self.keys):
            try:
                checkpoint = open_checkpoint(note, key.verifier)
            except UnknownKeyError:
                continue
            if key.max_size is not None and checkpoint.size > key.max_size:
                raise HandoverNoteError(
                    f"checkpoint of size {checkpoint.size} is signed only by the log key "
                    f"{key.verifier.name}+{key.verifier.key_id:08x}, which was handed over at "
                    f"size {key.max_size}"
                )
            return checkpoint
        tried = ", ".join(f"{k.verifier.name}+{k.verifier.key_id:08x}" for k in self.keys)
        raise UnknownKeyError(f"note has no signature by a log key of the history ({tried})")
