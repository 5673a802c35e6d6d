"""Originator checks (issue 11): the SDK trusts no hub-reported content.

Each tamper test edits one thing in the hub's database (as a hub operator could) and shows
the SDK refusing with a VerificationError that names what disagreed: the dispatched case
against the platform's signed submission, a status event against the department's signed
push, a deleted event (a gap in the department's signed push numbers), and a checkpoint
that forks from the last one verified (offline, and served by a live hub). SQLite and
PostgreSQL.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cases_world import (
    ACCEPTED,
    COMPANY,
    ITEM,
    OTHER_COMPANY,
    PURPOSE,
    UNDER_REVIEW,
    Desk,
    event_id,
)
from hubkit import HubKit
from sqlalchemy import delete, select, update

from xhub.connectors.sdk._internal.proofs import LogState, verify_checkpoint
from xhub.hub.core.audit_log import load_log_signer
from xhub.hub.core.db import AuditCheckpointRow, CaseEventRow
from xhub.protocol.errors import (
    BadResponseError,
    FailedPreconditionError,
    PermissionDeniedError,
    VerificationError,
)
from xhub.protocol.log import merkle
from xhub.protocol.log.note import Checkpoint, NoteSigner, sign_checkpoint
from xhub.v1 import audit_pb2, case_pb2, intake_pb2

# -- the hub's store, edited ---------------------------------------------------------------


def _edit_events(desk: Desk, kind: str, message_type: type, edit: Callable[..., None]) -> int:
    """Rewrite the body of every ``kind`` event in place; returns how many."""
    with desk.kit.session() as session:
        rows = session.scalars(select(CaseEventRow).where(CaseEventRow.kind == kind)).all()
        for row in rows:
            body = message_type.FromString(row.body)
            edit(body)
            row.body = body.SerializeToString()
        session.commit()
        return len(rows)


def _swap_item(case: case_pb2.DispatchedCase) -> None:
    case.item.code = "11440103MB0A0007XY-OTHER"


DISPATCH_TAMPERING: dict[str, tuple[Callable[[case_pb2.DispatchedCase], None], str]] = {
    "applicant code swapped": (
        lambda case: setattr(case, "applicant_code", OTHER_COMPANY),
        "applicant_code differs from the platform's signed submission",
    ),
    "item swapped": (_swap_item, "item_code differs from the platform's signed submission"),
    "applicant renamed": (
        lambda case: setattr(case, "applicant_name", "另一家公司"),
        "applicant_name differs from the platform's signed submission",
    ),
    "form edited": (
        lambda case: case.form.update({"经营面积": "9999"}),
        "form differs from the platform's signed submission in field[(]s[)] 经营面积",
    ),
}


@pytest.mark.parametrize("tampering", DISPATCH_TAMPERING, ids=str)
def test_a_dispatched_case_edited_in_the_hub_fails_verify_submission(
    any_desk: Desk, tampering: str
) -> None:
    edit, words = DISPATCH_TAMPERING[tampering]
    any_desk.submit(form={"经营面积": "80"})
    assert _edit_events(any_desk, "dispatch", case_pb2.DispatchedCase, edit) == 1
    (case,) = list(any_desk.department.subscribe_cases(0, timeout=0.5))
    with pytest.raises(VerificationError, match=words):
        any_desk.department.verify_submission(case)


def test_a_faithful_case_verifies_with_the_signed_applicant_item_and_prepared_case(
    any_desk: Desk,
) -> None:
    receipt = any_desk.submit()
    (case,) = list(any_desk.department.subscribe_cases(0, timeout=0.5))
    signed = any_desk.department.verify_submission(case)
    assert (signed.applicant_code, signed.item_code) == (COMPANY, ITEM)
    assert signed.prepared_case_id == receipt.prepared_case_id == signed.header.case_id


@pytest.mark.parametrize("field", ["applicant_code", "item_code"])
def test_the_hub_refuses_a_submission_signing_another_applicant_or_item(
    any_desk: Desk, field: str
) -> None:
    platform = any_desk.platform
    checklist = platform.prepare_case(ITEM, COMPANY, purpose=PURPOSE)
    forged = intake_pb2.Checklist()
    forged.CopyFrom(checklist)
    if field == "applicant_code":
        forged.applicant_code = OTHER_COMPANY
    else:
        forged.item.code = "11440103MB0A0007XY-OTHER"
    with pytest.raises(PermissionDeniedError) as refused:
        platform.submit_case(checklist.case_id, purpose=PURPOSE, checklist=forged)
    assert refused.value.reason_name == "PURPOSE_NOT_BOUND"
    assert refused.value.metadata["field"] == field


# -- status events -------------------------------------------------------------------------


def test_a_status_event_whose_stage_was_changed_in_the_hub_is_refused(any_desk: Desk) -> None:
    number = any_desk.submit().case_number
    any_desk.walk(number, [ACCEPTED])

    def promote(event: case_pb2.StatusEvent) -> None:
        event.stage = case_pb2.CASE_STAGE_APPROVED

    assert _edit_events(any_desk, "status", case_pb2.StatusEvent, promote) == 1
    with pytest.raises(VerificationError, match=r"stage differs .*'CASE_STAGE_ACCEPTED'"):
        list(any_desk.platform.subscribe_status(0, timeout=0.5))


def test_a_status_event_attributed_to_another_department_is_refused(any_desk: Desk) -> None:
    number = any_desk.submit().case_number
    any_desk.walk(number, [ACCEPTED])
    other = any_desk.kit.member_id("department2")
    _edit_events(
        any_desk, "status", case_pb2.StatusEvent, lambda e: setattr(e, "department", other)
    )
    with pytest.raises(VerificationError, match="not a registered key of"):
        list(any_desk.platform.subscribe_status(0, timeout=0.5))


def test_faithful_events_verify_and_carry_the_departments_push_numbers(any_desk: Desk) -> None:
    number = any_desk.submit().case_number
    any_desk.walk(number, [ACCEPTED, UNDER_REVIEW])
    events = list(any_desk.platform.subscribe_status(0, timeout=0.5))
    assert [case_pb2.CaseStage.Name(e.stage) for e in events] == [
        "CASE_STAGE_ACCEPTED",
        "CASE_STAGE_UNDER_REVIEW",
    ]
    pushes = [case_pb2.StatusPush.FromString(e.origin.payload).sequence for e in events]
    assert pushes == [1, 2]


def test_an_undelivered_event_deleted_from_the_hub_is_a_gap(any_desk: Desk) -> None:
    number = any_desk.submit().case_number
    any_desk.walk(number, [ACCEPTED])
    with any_desk.kit.session() as session:  # the operator drops the first push's event
        session.execute(delete(CaseEventRow).where(CaseEventRow.kind == "status"))
        session.commit()
    any_desk.walk(number, [UNDER_REVIEW])
    department = any_desk.kit.member_id("department")
    with pytest.raises(VerificationError, match=f"event 1 of {number} at {department} missing"):
        list(any_desk.platform.subscribe_status(0, timeout=0.5))


def test_the_hub_refuses_a_push_that_skips_a_number(any_desk: Desk) -> None:
    number = any_desk.submit().case_number
    with pytest.raises(FailedPreconditionError) as refused:
        any_desk.department.push_status(number, ACCEPTED, event_id=event_id(), sequence=3)
    assert refused.value.metadata["field"] == "sequence"
    assert refused.value.metadata["expected_sequence"] == "1"
    # A client that does not know the number (a new process) adopts the hub's once.
    fresh = any_desk.kit.client("department")
    assert fresh.push_status(number, ACCEPTED, event_id=event_id()).stage == ACCEPTED
    assert fresh.push_status(number, UNDER_REVIEW, event_id=event_id()).stage == UNDER_REVIEW


# -- log state -----------------------------------------------------------------------------

ORIGIN = "xhub.test/log"


def _checkpoint(signer: NoteSigner, leaves: list[bytes]) -> audit_pb2.CheckpointResult:
    store = merkle.MemoryNodeStore()
    store.append(leaves)
    root = merkle.root_hash(len(leaves), store)
    note = sign_checkpoint(Checkpoint(ORIGIN, len(leaves), root), signer)
    return audit_pb2.CheckpointResult(checkpoint_note=note)


def _proof(leaves: list[bytes], old: int, new: int) -> list[bytes]:
    store = merkle.MemoryNodeStore()
    store.append(leaves)
    return list(merkle.consistency_proof(old, new, store))


def test_a_forked_checkpoint_is_refused_and_the_state_survives_a_restart(
    tmp_path: Path,
) -> None:
    signer = NoteSigner.generate(ORIGIN)
    key = signer.verifier_key()
    ours = [merkle.leaf_hash(f"entry {i}".encode()) for i in range(6)]
    forked = ours[:3] + [merkle.leaf_hash(f"rewritten {i}".encode()) for i in range(3)]
    state = LogState()
    first = verify_checkpoint(_checkpoint(signer, ours[:3]), key)
    state.advance(first, [])
    later = verify_checkpoint(_checkpoint(signer, ours), key)
    assert state.proof_sizes(later) == (3, 6)
    state.advance(later, _proof(ours, 3, 6))
    assert state.latest is later
    # Persisted and loaded again (a restarted connector), the state still catches a fork.
    saved = tmp_path / "log-state"
    saved.write_bytes(state.note())
    restarted = LogState.from_note(saved.read_bytes(), key)
    assert restarted.latest is not None and restarted.latest.size == 6
    other_history = verify_checkpoint(_checkpoint(signer, forked + ours[:1]), key)
    with pytest.raises(BadResponseError, match="inconsistent with the last verified checkpoint 6"):
        restarted.advance(other_history, _proof(forked + ours[:1], 6, 7))
    same_size_other_root = verify_checkpoint(_checkpoint(signer, forked), key)
    with pytest.raises(BadResponseError, match=r"checkpoint 6 .*inconsistent"):
        restarted.advance(same_size_other_root, [])
    # An older, consistent checkpoint (a lagging replica) passes and the latest stays.
    restarted.advance(first, _proof(ours, 3, 6))
    assert restarted.latest is not None and restarted.latest.size == 6


def test_the_client_checks_every_checkpoint_against_the_last(
    any_desk: Desk, tmp_path: Path
) -> None:
    client = any_desk.kit.client("platform", log_state_file=tmp_path / "log-state")
    receipt = any_desk.submit().header.receipt
    checkpoint, _ = client.prove_logged(receipt)
    assert client.log_state().latest is not None
    assert (tmp_path / "log-state").read_bytes() == client.log_state().saved()
    assert client.checkpoint().size >= checkpoint.size
    again = any_desk.kit.client("platform", log_state_file=tmp_path / "log-state")
    assert again.log_state().latest is not None
    assert again.log_state().latest.size >= checkpoint.size


@pytest.fixture(
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
    ids=["sqlite", "postgres"],
)
def paused_kit(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[HubKit]:
    """A running hub whose sequencer waits for ``sequence`` (one round at start-up only), so
    the test knows which checkpoint is the latest."""
    url = "" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    kit = HubKit(tmp_path, database_url=url)
    kit.config = dataclasses.replace(kit.config, sequencer_interval_seconds=3600.0)
    with kit.start():
        yield kit


def _sequence(kit: HubKit) -> None:
    assert kit.running is not None
    runtime = kit.running.runtime
    runtime.writing(lambda: runtime.audit.sequence(10_000))


def _forge_latest(kit: HubKit, size: int) -> bytes:
    """The operator re-signs checkpoint ``size`` over another root with the hub's own log
    key (read from its data directory); returns the note it replaced."""
    signer = load_log_signer(kit.config.effective_log_origin, kit.config.paths.log_key)
    root = hashlib.sha256(b"another history").digest()
    note = sign_checkpoint(Checkpoint(kit.config.effective_log_origin, size, root), signer)
    with kit.session() as session:
        row = session.get(AuditCheckpointRow, size)
        assert row is not None
        honest = bytes(row.note)
        session.execute(
            update(AuditCheckpointRow)
            .where(AuditCheckpointRow.tree_size == size)
            .values(note=note, root_hash=root)
        )
        session.commit()
    return honest


def test_a_live_hub_serving_a_checkpoint_inconsistent_with_the_last_verified_is_refused(
    paused_kit: HubKit, tmp_path: Path
) -> None:
    kit = paused_kit
    saved = tmp_path / "log-state"
    client = kit.client("platform", log_state_file=saved)
    client.get_member(kit.member_id("issuer"))
    _sequence(kit)
    verified = client.checkpoint()
    assert verified.size >= 1 and client.log_state().latest == verified

    # 1. The same size over another root, signed with the hub's log key.
    honest = _forge_latest(kit, verified.size)
    with pytest.raises(
        VerificationError,
        match=rf"checkpoint {verified.size} .* inconsistent with the last verified checkpoint "
        rf"{verified.size} .*same size, another root",
    ):
        client.checkpoint()
    # A restarted client, knowing only its saved state, refuses it too.
    restarted = kit.client("platform", log_state_file=saved)
    with pytest.raises(VerificationError, match="the log was rewritten or forked"):
        restarted.checkpoint()
    assert client.log_state().latest == verified  # the forged one was not taken

    # 2. A larger checkpoint that does not extend it: the hub's own consistency proof from
    #    its stored tree cannot join the verified root to the forged one.
    with kit.session() as session:
        session.execute(
            update(AuditCheckpointRow)
            .where(AuditCheckpointRow.tree_size == verified.size)
            .values(note=honest, root_hash=verified.root_hash)
        )
        session.commit()
    _sequence(kit)  # the calls since, refused ones included
    later = kit.client("auditor").checkpoint()
    assert later.size > verified.size
    _forge_latest(kit, later.size)
    with pytest.raises(
        VerificationError,
        match=rf"checkpoint {later.size} .* inconsistent with the last verified checkpoint "
        rf"{verified.size}",
    ):
        client.checkpoint()
    assert saved.read_bytes() == LogState(verified).saved()
