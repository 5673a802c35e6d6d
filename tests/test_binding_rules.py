"""Purpose binding as pure checks (hub.binding.rules): every rule, allowed and refused, with
its reason, on rows built by hand — no hub, no database. The same rules over a running hub
are in tests/test_intake_pull.py; how a RuleError reaches the wire is checked last here."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest

from xhub.hub.binding.purpose import refusal
from xhub.hub.binding.rules import (
    BoundCase,
    Refusal,
    ReviewedCase,
    RuleError,
    check_binding,
    check_pull,
    check_purpose,
    check_review,
    check_reviewed_references,
    item_of,
)
from xhub.protocol.stages import FINAL_STAGES, Stage
from xhub.v1 import intake_pb2

NOW = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
PLATFORM = "platform.example"
COMPANY, PERSON = "91440103MA5CQ8XY7K", "440103198001011234"
LICENCE, ID_CARD, TITLE = "LICENCE", "ID-CARD", "TITLE"
LEGAL_REP = intake_pb2.HOLDER_ROLE_LEGAL_REPRESENTATIVE
ITEM = intake_pb2.Item(
    code="ITEM-1",
    materials=[
        intake_pb2.RequiredMaterial(code="M1", certificate_types=[LICENCE]),
        intake_pb2.RequiredMaterial(code="M2", certificate_types=[ID_CARD], holder=LEGAL_REP),
        intake_pb2.RequiredMaterial(code="M3", certificate_types=[TITLE]),
    ],
)
CASE = BoundCase(
    case_id="PC1",
    item_code=ITEM.code,
    platform_member_id=PLATFORM,
    applicant_code=COMPANY,
    legal_representative_code=PERSON,
    purpose="食品经营许可(新办)受理",
    expires_at=NOW + timedelta(hours=1),
    item=ITEM,
)


def bind(case: BoundCase | None = CASE, **overrides: Any) -> BoundCase:
    arguments: dict[str, Any] = {
        "case_id": "PC1",
        "caller": PLATFORM,
        "purpose": CASE.purpose,
        "now": NOW,
    }
    arguments.update(overrides)
    return check_binding(case, **arguments)


def refusal_of(check: Any) -> tuple[Refusal, str, dict[str, str]]:
    with pytest.raises(RuleError) as caught:
        check()
    error = caught.value
    return error.refusal, error.message, dict(error.metadata)


def test_a_request_within_its_prepared_case_is_bound() -> None:
    assert bind() is CASE
    # The window closes at expiry: one microsecond before it still binds.
    assert bind(now=CASE.expires_at - timedelta(microseconds=1)) is CASE


BINDING_REFUSALS = [
    ("no-prepared-case", {"case": None, "case_id": ""}, Refusal.UNBOUND, "names no prepared"),
    ("unknown-case", {"case": None, "case_id": "PC-X" * 30}, Refusal.UNBOUND, "no prepared"),
    ("another-platform", {"caller": "platform2"}, Refusal.UNBOUND, "another platform"),
    ("expired", {"now": CASE.expires_at}, Refusal.UNBOUND, "expired"),
    ("no-purpose", {"purpose": ""}, Refusal.MALFORMED, "purpose"),
    ("blank-purpose", {"purpose": "  "}, Refusal.MALFORMED, "purpose"),
    ("other-purpose", {"purpose": "市场营销"}, Refusal.UNBOUND, "purpose differs"),
]


@pytest.mark.parametrize(
    ("overrides", "kind", "words"),
    [c[1:] for c in BINDING_REFUSALS],
    ids=[c[0] for c in BINDING_REFUSALS],
)
def test_binding_refusals(overrides: dict[str, Any], kind: Refusal, words: str) -> None:
    overrides = dict(overrides)
    case = overrides.pop("case", CASE)
    got, message, metadata = refusal_of(lambda: bind(case, **overrides))
    assert got == kind and words in message
    if kind == Refusal.MALFORMED:
        assert metadata == {"field": "purpose"}
    else:
        assert len(metadata["case_id"]) <= 64


def test_the_checks_run_in_order_so_the_first_broken_rule_is_reported() -> None:
    # Another platform's expired case, with another purpose: "another platform" wins.
    got, message, _ = refusal_of(
        lambda: bind(replace(CASE, expires_at=NOW), caller="platform2", purpose="x")
    )
    assert (got, "another platform" in message) == (Refusal.UNBOUND, True)


def test_check_purpose() -> None:
    check_purpose("受理")
    assert refusal_of(lambda: check_purpose(" "))[0] == Refusal.MALFORMED


PULLS = [
    # (id, case, holder, types, refused?)
    ("applicant-own-type", CASE, COMPANY, [LICENCE], None),
    ("applicant-two-types", CASE, COMPANY, [LICENCE, TITLE], None),
    ("legal-rep-own-type", CASE, PERSON, [ID_CARD], None),
    ("holder-not-applicant", CASE, "91440103MA5CQ9AB0X", [LICENCE], "not this case's applicant"),
    ("type-not-required", CASE, COMPANY, ["OTHER"], "does not require type(s) OTHER"),
    ("one-unrequired-type", CASE, COMPANY, [LICENCE, "OTHER"], "does not require type(s) OTHER"),
    ("legal-rep-type-for-company", CASE, COMPANY, [ID_CARD], "ID-CARD"),
    ("company-type-for-legal-rep", CASE, PERSON, [LICENCE], "LICENCE"),
    ("no-type", CASE, COMPANY, [], "(none)"),
    (
        "no-legal-rep-named",
        replace(CASE, legal_representative_code=""),
        PERSON,
        [ID_CARD],
        "not this case's applicant",
    ),
    (
        "self-represented-both-roles",
        replace(CASE, applicant_code=PERSON),
        PERSON,
        [LICENCE, ID_CARD],
        None,
    ),
]


@pytest.mark.parametrize(
    ("case", "holder", "types", "refused"), [c[1:] for c in PULLS], ids=[c[0] for c in PULLS]
)
def test_pull_rules(case: BoundCase, holder: str, types: list[str], refused: str | None) -> None:
    if refused is None:
        check_pull(case, holder, types)
        return
    got, message, metadata = refusal_of(lambda: check_pull(case, holder, types))
    assert (got, metadata["case_id"]) == (Refusal.UNBOUND, case.case_id)
    assert refused in message


def test_a_case_whose_item_left_the_catalogue() -> None:
    orphan = replace(CASE, item=None)
    got, _, metadata = refusal_of(lambda: item_of(orphan))
    assert (got, metadata) == (Refusal.NOT_FOUND, {"item_code": ITEM.code})
    # The holder is checked before the item is needed.
    assert "applicant" in refusal_of(lambda: check_pull(orphan, "nobody", [LICENCE]))[1]


def test_holders_are_the_applicant_and_the_legal_representative() -> None:
    assert CASE.holders == {COMPANY, PERSON}
    assert replace(CASE, legal_representative_code="").holders == {COMPANY}


WIRE = [
    (Refusal.MALFORMED, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD"),
    (Refusal.NOT_FOUND, grpc.StatusCode.NOT_FOUND, "NOT_FOUND"),
    (Refusal.UNBOUND, grpc.StatusCode.PERMISSION_DENIED, "PURPOSE_NOT_BOUND"),
    (Refusal.NOT_YOUR_CASE, grpc.StatusCode.PERMISSION_DENIED, "NOT_YOUR_CASE"),
    (Refusal.STATUS_TRANSITION, grpc.StatusCode.FAILED_PRECONDITION, "STATUS_TRANSITION"),
    # FAILED_PRECONDITION's default reason, as the hub answered before the rules were pure.
    (Refusal.PRECONDITION, grpc.StatusCode.FAILED_PRECONDITION, "STATUS_TRANSITION"),
    (Refusal.CASE_CLOSED, grpc.StatusCode.FAILED_PRECONDITION, "CASE_CLOSED"),
]


@pytest.mark.parametrize(("kind", "code", "reason"), WIRE, ids=[w[0].name for w in WIRE])
def test_each_rule_refusal_has_one_refusal_on_the_wire(
    kind: Refusal, code: grpc.StatusCode, reason: str
) -> None:
    error = refusal(RuleError(kind, "why", case_id="PC1"))
    assert (error.code, error.reason_name, error.message) == (code, reason, "why")
    assert error.metadata == {"case_id": "PC1"}


def test_every_rule_refusal_is_mapped() -> None:
    assert {w[0] for w in WIRE} == set(Refusal)


# == A department reading the case it reviews (部门调阅) ==========================================

REVIEWED = ReviewedCase(
    case_number="20260302ABCDEF123456",
    applicant_code=COMPANY,
    stage=Stage.SUBMITTED,
    certificate_identifiers=("1.2.156.3005.2.A", "1.2.156.3005.2.B"),
    material_ids=("MT1", "MT2"),
)
OPEN = [s for s in Stage if s not in FINAL_STAGES]


@pytest.mark.parametrize("stage", list(Stage), ids=[s.name for s in Stage])
def test_a_case_is_open_to_its_department_until_its_stage_there_is_final(stage: Stage) -> None:
    case = replace(REVIEWED, stage=stage)
    if stage in OPEN:
        assert check_review(case, case_number=case.case_number) is case
        return
    kind, message, _ = refusal_of(lambda: check_review(case, case_number=case.case_number))
    assert kind == Refusal.CASE_CLOSED and stage.name in message


def test_completed_is_open_and_delivered_closes_the_case() -> None:
    assert Stage.COMPLETED in OPEN and Stage.SUPPLEMENT_REQUIRED in OPEN
    assert Stage.DELIVERED not in OPEN


REVIEW_REFUSALS: list[tuple[str, ReviewedCase | None, Refusal]] = [
    ("no-such-case", None, Refusal.NOT_FOUND),
    ("another-departments-case", replace(REVIEWED, stage=None), Refusal.NOT_YOUR_CASE),
    ("withdrawn", replace(REVIEWED, stage=Stage.WITHDRAWN), Refusal.CASE_CLOSED),
]


@pytest.mark.parametrize(
    ("case", "kind"), [r[1:] for r in REVIEW_REFUSALS], ids=[r[0] for r in REVIEW_REFUSALS]
)
def test_review_refusals(case: ReviewedCase | None, kind: Refusal) -> None:
    assert refusal_of(lambda: check_review(case, case_number="20260302X"))[0] == kind


def test_a_refused_review_names_the_applicant_as_audit_subject() -> None:
    with pytest.raises(RuleError) as raised:
        check_review(replace(REVIEWED, stage=None), case_number=REVIEWED.case_number)
    assert raised.value.subject == COMPANY


REFERENCES: list[tuple[str, dict[str, list[str]], bool]] = [
    ("its-certificates", {"certificates": ["1.2.156.3005.2.A", "1.2.156.3005.2.B"]}, True),
    ("its-materials", {"materials": ["MT2"]}, True),
    ("nothing", {}, True),
    ("another-certificate", {"certificates": ["1.2.156.3005.2.Z"]}, False),
    ("another-material", {"materials": ["MT1", "MT9"]}, False),
]


@pytest.mark.parametrize(
    ("asked", "bound"), [r[1:] for r in REFERENCES], ids=[r[0] for r in REFERENCES]
)
def test_a_department_reads_only_the_cases_references(
    asked: dict[str, list[str]], bound: bool
) -> None:
    if bound:
        check_reviewed_references(REVIEWED, **asked)
        return
    kind, message, _ = refusal_of(lambda: check_reviewed_references(REVIEWED, **asked))
    assert kind == Refusal.UNBOUND and REVIEWED.case_number in message
