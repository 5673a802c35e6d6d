"""Audit evidence (DESIGN.md §7): an auditor's evidence bundle verifies offline, every
tampering of it names the failing entry, and the CLI exports, verifies and checks it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from audit_world import (
    ALLOWED,
    REFUSALS,
    _allowed_index,
    _tamper_entry_sql,
    log_key,
    parse,
    receipt_for,
    refused_leaf,
    send,
)
from hubkit import HubKit

from xhub.cli import main as cli
from xhub.connectors.sdk.auditor import export_evidence
from xhub.connectors.sdk.client import VerifiedCheckpoint
from xhub.protocol.log import merkle
from xhub.protocol.log.evidence import BundleInvalid, EvidenceBundle, verify_bundle
from xhub.protocol.log.note import NoteSigner, NoteVerifier, open_note, sign_note

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
