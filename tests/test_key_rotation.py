"""Member signing-key rotation (签名密钥轮换): a member registers a new key signed with its
current one, the registry keeps every key with its window, the hub admits only a key valid
now, and every verifier checks an old message with the key valid when it was signed — at
the department (``verify_submission``), in the hub, and in offline evidence bundles.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from audit_world import wait_all_sequenced
from cases_world import COMPANY, ITEM, PURPOSE, Desk, drain, make_kit
from hubkit import HubKit
from sqlalchemy import select, update

from xhub.connectors import HubClient
from xhub.connectors import cli as connector_cli
from xhub.connectors.sdk._internal import key_files
from xhub.connectors.sdk.auditor import export_evidence
from xhub.hub.core.db import MemberKeyRow
from xhub.protocol.bundle import SIGNING_KEY, MemberBundle
from xhub.protocol.errors import (
    AlreadyExistsError,
    AuthenticationError,
    BadResponseError,
)
from xhub.protocol.key_rotation import possession_statement
from xhub.protocol.log.evidence import BundleInvalid, EvidenceBundle, verify_bundle
from xhub.protocol.log.note import NoteVerifier
from xhub.protocol.signing import ED25519, KeySigner, generate_private_key, public_key_der
from xhub.v1 import case_pb2, envelope_pb2, registry_pb2

R = envelope_pb2


def _start(root: Path, url: str = "", overlap: int = 0) -> HubKit:
    kit = make_kit(root, url)
    kit.config = dataclasses.replace(kit.config, key_rotation_overlap_seconds=overlap)
    return kit.start()


@pytest.fixture(
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
    ids=["sqlite", "postgres"],
)
def rkit(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[HubKit]:
    url = "" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    with _start(tmp_path, url) as running:
        yield running


def _submit(platform: HubClient) -> case_pb2.CaseReceipt:
    checklist = platform.prepare_case(ITEM, COMPANY, purpose=PURPOSE)
    return platform.submit_case(checklist.case_id, purpose=PURPOSE, applicant_name="示例餐饮")


def _keys(kit: HubKit, member: str) -> list[MemberKeyRow]:
    with kit.session() as session:
        rows = session.scalars(
            select(MemberKeyRow)
            .where(MemberKeyRow.member_id == kit.member_id(member))
            .order_by(MemberKeyRow.valid_from)
        ).all()
        session.expunge_all()
        return list(rows)


def test_old_case_still_verifies_and_new_ones_use_the_new_key(rkit: HubKit) -> None:
    desk = Desk(rkit)
    before = _submit(desk.platform)
    old_key = desk.platform.bundle.signer.key_id

    answer = desk.platform.rotate_signing_key()

    new_key = desk.platform.bundle.signer.key_id
    assert new_key != old_key
    windows = {k.key_id: k for k in answer.member.signing_keys}
    assert windows[old_key].HasField("valid_until")
    assert not windows[new_key].HasField("valid_until")
    assert windows[new_key].valid_from.ToDatetime() >= windows[old_key].valid_from.ToDatetime()
    after = _submit(desk.platform)

    cases = {c.case_number: c for c in drain(desk.department.subscribe_cases)}
    old_case, new_case = cases[before.case_number], cases[after.case_number]
    assert desk.department.verify_submission(old_case).header.sender == rkit.member_id("platform")
    desk.department.verify_submission(new_case)
    assert old_case.submission.signatures[0].key_id == old_key
    assert new_case.submission.signatures[0].key_id == new_key
    # The registry kept the old key with its window closed at the rotation.
    rows = {r.key_id: r for r in _keys(rkit, "platform")}
    assert rows[old_key].valid_until is not None and rows[new_key].valid_until is None


def test_the_bundle_directory_switches_over(rkit: HubKit) -> None:
    directory = rkit.members["department"].bundle_dir  # Ed25519: a separate signing.key
    client = rkit.client("department")
    old_key = client.bundle.signer.key_id
    client.rotate_signing_key()
    new_key = client.bundle.signer.key_id

    manifest = json.loads((directory / "member.json").read_text("utf-8"))
    assert manifest["signing_key"] == SIGNING_KEY
    assert (directory / f"{SIGNING_KEY}.{old_key}.old").exists()
    assert not (directory / key_files.PENDING).exists()
    reloaded = MemberBundle.load(directory)
    assert reloaded.signer.key_id == new_key
    # A fresh client from the directory signs with the new key and is admitted.
    rkit.client("department").get_member(rkit.member_id("platform"))


def test_a_message_signed_with_the_retired_key_is_refused(rkit: HubKit) -> None:
    old_bundle = rkit.bundle("platform")
    rkit.client("platform").rotate_signing_key()
    stale = HubClient(old_bundle)
    try:
        with pytest.raises(AuthenticationError) as refused:
            stale.get_member(rkit.member_id("issuer"))
    finally:
        stale.close()
    assert refused.value.reason == R.ERROR_REASON_UNKNOWN_KEY
    assert "until" in refused.value.message and "issued at" in refused.value.message


def _rotation(
    client: HubClient, *, proof_by: KeySigner | None = None, new: KeySigner | None = None
) -> registry_pb2.SigningKeyRotationResult:
    """A hand-made rotation: ``new`` is the key registered, ``proof_by`` signs the proof."""
    new = new or KeySigner(generate_private_key())
    prover = proof_by or new

    def prove(rotation: registry_pb2.SigningKeyRotation) -> None:
        statement = possession_statement(client.member_id, new.key_id, rotation.header.message_id)
        rotation.proof_of_possession = prover.sign(statement)

    return client.transport.call(
        client.transport.registry.RotateSigningKey,
        registry_pb2.RotateSigningKeyRequest,
        registry_pb2.SigningKeyRotation(
            new_key=registry_pb2.PublicKey(
                key_id=new.key_id,
                algorithm=new.algorithm,
                public_key_der=public_key_der(new.private_key.public_key()),
            )
        ),
        registry_pb2.SigningKeyRotationResult,
        idempotent=False,
        complete=prove,
    )


@pytest.mark.parametrize(
    "break_it, error, reason",
    [
        ("proof by another key", AuthenticationError, R.ERROR_REASON_BAD_SIGNATURE),
        ("no proof", AuthenticationError, R.ERROR_REASON_BAD_SIGNATURE),
        ("key already registered", AlreadyExistsError, R.ERROR_REASON_INVALID_FIELD),
    ],
)
def test_a_rotation_without_valid_proof_is_refused(
    rkit: HubKit, break_it: str, error: type[Exception], reason: int
) -> None:
    client = rkit.client("platform")
    before = [(k.key_id, k.valid_until) for k in _keys(rkit, "platform")]
    with pytest.raises(error) as refused:
        if break_it == "proof by another key":
            _rotation(client, proof_by=KeySigner(generate_private_key()))
        elif break_it == "no proof":
            _rotation(client, proof_by=_Silent())  # type: ignore[arg-type]
        else:
            _rotation(client, new=client.bundle.signer)
    assert getattr(refused.value, "reason") == reason  # noqa: B009
    assert [(k.key_id, k.valid_until) for k in _keys(rkit, "platform")] == before


class _Silent:
    def sign(self, data: bytes) -> bytes:
        return b""


def test_a_rotation_signed_by_a_key_that_is_not_current_is_refused(tmp_path: Path) -> None:
    # With an overlap the old key still signs for a while, but it can rotate no more.
    with _start(tmp_path, overlap=600) as kit:
        old_bundle = kit.bundle("platform")
        kit.client("platform").rotate_signing_key()
        stale = HubClient(old_bundle)
        try:
            stale.get_member(kit.member_id("issuer"))  # inside the overlap: admitted
            with pytest.raises(AuthenticationError) as refused:
                _rotation(stale)
        finally:
            stale.close()
        assert refused.value.reason == R.ERROR_REASON_UNKNOWN_KEY
        assert "current key" in refused.value.message


def test_the_department_refuses_a_case_signed_outside_the_key_window(rkit: HubKit) -> None:
    desk = Desk(rkit)
    receipt = _submit(desk.platform)
    old_key = desk.platform.bundle.signer.key_id
    desk.platform.rotate_signing_key()
    # The hub's database claims the old key was retired a day before the case was signed.
    with rkit.session() as session:
        session.execute(
            update(MemberKeyRow)
            .where(MemberKeyRow.key_id == old_key)
            .values(valid_until=datetime.now(UTC) - timedelta(days=1))
        )
    department = rkit.client("department")
    case = next(
        c for c in drain(department.subscribe_cases) if c.case_number == receipt.case_number
    )
    with pytest.raises(BadResponseError) as refused:
        department.verify_submission(case)
    assert old_key[:16] in refused.value.message and "issued at" in refused.value.message


def test_a_rotation_without_an_answer_resumes(rkit: HubKit) -> None:
    """The hub registered the staged key but the answer never came: a second call finds
    the key registered and finishes the switch without sending another rotation."""
    directory = rkit.members["platform"].bundle_dir
    client = rkit.client("platform")
    staged = generate_private_key()
    key_files.stage(directory, staged)
    _rotation(client, new=KeySigner(staged))  # registered; the files were not switched

    resumed = rkit.client("platform")  # still the old, now retired, key on disk
    answer = resumed.rotate_signing_key()
    assert resumed.bundle.signer.key_id == KeySigner(staged).key_id
    assert len(answer.member.signing_keys) == len(_keys(rkit, "platform"))
    assert MemberBundle.load(directory).signer.key_id == KeySigner(staged).key_id
    rkit.client("platform").get_member(rkit.member_id("issuer"))


def test_a_refused_rotation_leaves_the_bundle_as_it_was(rkit: HubKit) -> None:
    directory = rkit.members["platform"].bundle_dir
    manifest = (directory / "member.json").read_bytes()
    rkit.revoke("platform")
    with pytest.raises(AuthenticationError):
        rkit.client("platform").rotate_signing_key()
    assert (directory / "member.json").read_bytes() == manifest
    assert not (directory / key_files.PENDING).exists()


def test_connector_cli_rotates_the_bundle(rkit: HubKit, capsys: pytest.CaptureFixture[str]) -> None:
    directory = rkit.members["issuer"].bundle_dir
    old_key = MemberBundle.load(directory).signer.key_id
    code = connector_cli.main(
        ["rotate-key", str(directory), "--hub-address", rkit.address, "--ed25519"]
    )
    assert code == 0
    new = MemberBundle.load(directory)
    assert new.signer.key_id != old_key and new.signer.algorithm == ED25519
    out = capsys.readouterr().out
    assert new.signer.key_id[:16] in out and "current" in out


def test_evidence_checks_each_entry_with_the_key_valid_when_logged(hub_kit: HubKit) -> None:
    platform = hub_kit.client("platform")
    platform.get_member(hub_kit.member_id("issuer"))  # signed with the old key
    old_key = platform.bundle.signer.key_id
    platform.rotate_signing_key()
    platform.get_member(hub_kit.member_id("issuer"))  # signed with the new key
    auditor = hub_kit.client("auditor")
    wait_all_sequenced(hub_kit)
    bundle, _ = export_evidence(auditor)
    verifier = NoteVerifier.from_vkey(auditor.bundle.log_key)
    report = verify_bundle(EvidenceBundle.from_json(bundle.to_json()), verifier)
    assert report.envelopes_checked >= 3

    # Claim the old key was retired before the hub logged anything it signed.
    member = bundle.members[hub_kit.member_id("platform")]
    window = member.windows[old_key]
    member.windows[old_key] = dataclasses.replace(window, until=window.since)
    with pytest.raises(BundleInvalid) as invalid:
        verify_bundle(EvidenceBundle.from_json(bundle.to_json()), verifier)
    assert old_key[:16] in str(invalid.value)
