"""Audit log key rotation (日志密钥轮换): ``xhub keys rotate-log`` re-signs the latest
checkpoint with the old and the new key — the hand-over — and later checkpoints are signed
by the new key only; members, auditors and ``xhub audit verify`` follow the hand-over from
the key they pinned, and refuse a checkpoint signed by a key no hand-over reaches.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from audit_world import wait_all_sequenced
from hubkit import HubKit

from xhub.cli import main as cli
from xhub.connectors.sdk._internal.proofs import verify_checkpoint
from xhub.connectors.sdk.auditor import export_evidence
from xhub.hub.core.log_keys import log_key_history
from xhub.protocol.errors import BadResponseError
from xhub.protocol.log import merkle
from xhub.protocol.log.evidence import BundleInvalid, EvidenceBundle, verify_bundle
from xhub.protocol.log.key_history import (
    HandoverNoteError,
    LogKeys,
    handover_note,
    named_successor,
)
from xhub.protocol.log.note import (
    Checkpoint,
    NoteSigner,
    NoteVerifier,
    UnknownKeyError,
    format_checkpoint_body,
    open_note,
    sign_checkpoint,
    sign_note,
)
from xhub.v1 import audit_pb2

ORIGIN = "xhub/CN.440000.XHUB/audit"


def _rotate_log(kit: HubKit) -> None:
    assert cli.main(["keys", "rotate-log", "--data-dir", str(kit.config.data_dir)]) == 0


def test_members_and_auditors_follow_the_log_key_hand_over(
    kit: HubKit, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    platform, auditor = kit.client("platform"), kit.client("auditor")
    pinned = platform.bundle.log_key
    before, _ = platform.prove_logged(
        platform.lookup_member(kit.member_id("issuer")).header.receipt
    )
    wait_all_sequenced(kit)
    _rotate_log(kit)
    kit.restart()

    handed = platform.checkpoint()  # the hand-over: the same tree, signed by both keys
    assert len(handed.log_key_handovers) == 1
    new_vkey = named_successor(handed.checkpoint)
    assert new_vkey and new_vkey != pinned
    open_note(handed.note, NoteVerifier.from_vkey(pinned))
    open_note(handed.note, NoteVerifier.from_vkey(new_vkey))

    receipt = platform.lookup_member(kit.member_id("issuer")).header.receipt
    after, _ = platform.prove_logged(receipt)  # a later checkpoint: the new key only
    assert after.size > before.size
    with pytest.raises(UnknownKeyError):
        open_note(after.note, NoteVerifier.from_vkey(pinned))
    platform.prove_consistent(before, after)
    # The hub's own history verifies its stored checkpoints, old key and new.
    history = log_key_history(kit.config.paths.log_handovers, NoteVerifier.from_vkey(new_vkey))
    assert history.open(before.note) == before.checkpoint
    assert history.open(after.note) == after.checkpoint

    # An evidence bundle exported after the rotation verifies with the OLD pinned key.
    wait_all_sequenced(kit)
    bundle, _ = export_evidence(auditor, previous_checkpoint=before.note)
    report = verify_bundle(
        EvidenceBundle.from_json(bundle.to_json()), NoteVerifier.from_vkey(pinned)
    )
    assert report.checkpoint.size >= after.size
    path = tmp_path / "evidence.json"
    path.write_text(bundle.to_json(), "utf-8")
    assert cli.main(["audit", "verify", str(path), "--log-key", pinned]) == 0
    # Without the hand-over, the old key does not vouch for the new checkpoint.
    bundle.log_key_handovers = []
    with pytest.raises(BundleInvalid, match="log key"):
        verify_bundle(bundle, NoteVerifier.from_vkey(pinned))
    capsys.readouterr()


# -- offline: the hand-over rules --------------------------------------------------------------


def _tree(size: int) -> Checkpoint:
    return Checkpoint(ORIGIN, size, bytes([size]) * 32 if size else merkle.EMPTY_ROOT)


def test_a_checkpoint_by_an_unknown_key_without_hand_over_is_refused() -> None:
    pinned, stranger = NoteSigner.generate(ORIGIN), NoteSigner.generate(ORIGIN)
    answer = audit_pb2.CheckpointResult(
        checkpoint_note=sign_checkpoint(_tree(5), stranger), log_key=stranger.verifier_key()
    )
    with pytest.raises(BadResponseError, match="no signature by a log key of the history"):
        verify_checkpoint(answer, pinned.verifier_key())


@pytest.mark.parametrize(
    "forge, says",
    [
        ("signed by the new key only", "not signed by the key it must hand over from"),
        ("names a key that did not sign", "which did not sign it"),
    ],
)
def test_a_forged_hand_over_is_refused(forge: str, says: str) -> None:
    old, new, other = (NoteSigner.generate(ORIGIN) for _ in range(3))
    genuine = handover_note(_tree(3), old, new)
    if forge == "signed by the new key only":
        notes = [genuine, handover_note(_tree(4), other, other)]
    else:
        named = Checkpoint(
            ORIGIN, 3, _tree(3).root_hash, (f"xhub-log-key-handover {other.verifier_key()}",)
        )
        notes = [sign_note(format_checkpoint_body(named), old, new)]
    with pytest.raises(HandoverNoteError, match=says):
        LogKeys.following(old.verifier(), notes)


def test_a_handed_over_key_signs_no_larger_tree() -> None:
    old, new = NoteSigner.generate(ORIGIN), NoteSigner.generate(ORIGIN)
    keys = LogKeys.following(old.verifier(), [handover_note(_tree(3), old, new)])
    assert keys.open(sign_checkpoint(_tree(2), old)).size == 2  # from before the rotation
    assert keys.open(sign_checkpoint(_tree(7), new)).size == 7
    with pytest.raises(HandoverNoteError, match="handed over at size 3"):
        keys.open(sign_checkpoint(_tree(4), old))
    # A bundle that pinned the new key skips the older hand-over.
    later = LogKeys.following(new.verifier(), [handover_note(_tree(3), old, new)])
    assert [k.verifier.key_id for k in later.keys] == [new.verifier().key_id]
