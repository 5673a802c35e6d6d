"""Case dispatch over a running hub (DESIGN.md §5–§6 flows 4–6, §8; CaseService).

SubmitCase is for platforms, bound to the case they prepared, once per prepared case, and
dispatches to every handling department (并联审批) with references, never copies.
PushStatus follows the stage machine (a refusal names the current stage), only the
departments handling a case may push, and pushes are idempotent by (author, event id).
WithdrawCase (撤回) is free before acceptance, bounded by a window after it, and all or
nothing across departments.  Streams are served from ``case_events`` by cursor: ordered,
resumable, private to their subscriber, hub-signed, and the department's own signed push
travels inside each status event.  Nothing is lost or applied twice across ``kill -9`` of
a hub process, on SQLite and on PostgreSQL, and a subscriber on one hub process sees
events written through another.  Supervision (效能监察) publishes a yellow warning and an
overdue escalation once each, to auditors only, and logs them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, TypeAlias, TypeVar

import grpc
import pytest
from helpers import refused
from hubkit import DEFAULT_MEMBERS, HubKit, MemberDef
from sqlalchemy import func, insert, select, text, update

from xhub.certificates_store.model import USCC, new_certificate
from xhub.connectors import BadResponseError, HubClient, RetryPolicy, TransportError, XhubError
from xhub.hub.cases import calendar as workdays
from xhub.hub.cases.service import CaseService
from xhub.hub.catalog import store as catalog
from xhub.hub.core.db import CaseDepartmentRow, CaseEventRow, CaseRow, SeenMessageRow
from xhub.protocol.codes import make_uscc
from xhub.protocol.envelope import parse_verified, seal, verify_signature_by
from xhub.protocol.errors import RETRYABLE_CODES, AuthenticationError
from xhub.protocol.signing import ED25519, KeyVerifier
from xhub.v1 import audit_pb2, case_pb2, certificate_pb2, intake_pb2

Code = grpc.StatusCode
S = case_pb2  # stage constants: S.CASE_STAGE_ACCEPTED, ...
Stage: TypeAlias = case_pb2.CaseStage.ValueType
M = TypeVar("M")

SUBMITTED = S.CASE_STAGE_SUBMITTED
ACCEPTED = S.CASE_STAGE_ACCEPTED
NOT_ACCEPTED = S.CASE_STAGE_NOT_ACCEPTED
UNDER_REVIEW = S.CASE_STAGE_UNDER_REVIEW
SUPPLEMENT = S.CASE_STAGE_SUPPLEMENT_REQUIRED
APPROVED = S.CASE_STAGE_APPROVED
REJECTED = S.CASE_STAGE_REJECTED
COMPLETED = S.CASE_STAGE_COMPLETED
DELIVERED = S.CASE_STAGE_DELIVERED
WITHDRAWN = S.CASE_STAGE_WITHDRAWN
HAPPY_PATH = (ACCEPTED, UNDER_REVIEW, APPROVED, COMPLETED, DELIVERED)

XHUB = Path(sys.executable).with_name("xhub")
COMPANY = make_uscc("9", "1", "440103", "MA5CQ8XY")
COMPANY_NAME = "广州荔湾示例餐饮有限公司"
OTHER_COMPANY = make_uscc("9", "1", "440103", "MA5CQ9AB")
PURPOSE = "食品经营许可(新办)受理"
LICENCE_TYPE = make_uscc("1", "1", "100000", "MB0A0001") + "001"  # 营业执照
PERMIT_TYPE = make_uscc("1", "1", "100000", "MB0A0003") + "001"  # 食品经营许可证
PLAN = "BIZ-PLAN"
ITEM = "11440103MB0A0007XY-CASE-ONE"  # handled by "department"
JOINT_ITEM = "11440103MB0A0007XY-CASE-JOINT"  # "department" and "department2" (并联审批)
ITEM2 = "11440103MB0A0007XY-CASE-TWO"  # handled by "department2" only
SUPERVISION_METHOD = "/xhub.v1.CaseService/Supervision"

DEPARTMENT2 = MemberDef(
    "department2", "广州市荔湾区市场监督管理局", "440103", ("department",), "MB2C9074", "food"
)
PLATFORM2 = MemberDef(
    "platform2", "广州市荔湾区政务服务中心", "440103", ("platform",), "MB2C9085", "window"
)
MEMBERS = (*DEFAULT_MEMBERS, DEPARTMENT2, PLATFORM2)


# -- the hub and its catalogue -------------------------------------------------------------


def make_kit(root: Path, database_url: str = "") -> HubKit:
    """A hub data directory with two platforms, two departments and the three items."""
    kit = HubKit(root, database_url=database_url, members=MEMBERS)
    one, two = kit.member_id("department"), kit.member_id("department2")
    with kit.session() as session:
        catalog.put_items(
            session,
            [
                item(ITEM, "食品经营许可(新办)", [one]),
                item(JOINT_ITEM, "餐饮开业一件事(并联审批)", [one, two]),
                item(ITEM2, "公共场所卫生许可", [two]),
            ],
        )
    return kit


def item(code: str, name: str, departments: Sequence[str], limit: int = 10) -> intake_pb2.Item:
    return intake_pb2.Item(
        code=code,
        name=name,
        departments=list(departments),
        time_limit_days=limit,
        materials=[
            intake_pb2.RequiredMaterial(
                code="M1", name="营业执照", certificate_types=[LICENCE_TYPE], material_types=[PLAN]
            )
        ],
    )


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[HubKit]:
    """A running hub on SQLite."""
    with make_kit(tmp_path).start() as running:
        yield running


@pytest.fixture(
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
    ids=["sqlite", "postgres"],
)
def any_kit(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[HubKit]:
    """A running hub, once on SQLite and once on PostgreSQL."""
    url = "" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    with make_kit(tmp_path, url).start() as running:
        yield running


@dataclass
class Desk:
    """The clients of one hub: the one-window platform, two departments, an auditor."""

    kit: HubKit
    platform: HubClient = field(init=False)
    department: HubClient = field(init=False)
    department2: HubClient = field(init=False)
    auditor: HubClient = field(init=False)

    def __post_init__(self) -> None:
        self.platform = self.kit.client("platform")
        self.department = self.kit.client("department")
        self.department2 = self.kit.client("department2")
        self.auditor = self.kit.client("auditor")

    def submit(
        self,
        item_code: str = ITEM,
        *,
        applicant: str = COMPANY,
        platform: HubClient | None = None,
        **fields: Any,
    ) -> case_pb2.CaseReceipt:
        """Prepare then submit a case (the normal two steps at the window)."""
        platform = platform or self.platform
        checklist = platform.prepare_case(item_code, applicant, purpose=PURPOSE)
        fields.setdefault("applicant_name", COMPANY_NAME)
        return platform.submit_case(checklist.case_id, purpose=PURPOSE, **fields)

    def walk(
        self, case_number: str, stages: Sequence[Stage], client: HubClient | None = None
    ) -> list[case_pb2.StatusPushResult]:
        """Push ``stages`` in order, each with a fresh event id."""
        client = client or self.department
        return [
            client.push_status(case_number, stage, event_id=event_id(), **extras(stage))
            for stage in stages
        ]


@pytest.fixture
def desk(kit: HubKit) -> Desk:
    return Desk(kit)


@pytest.fixture
def any_desk(any_kit: HubKit) -> Desk:
    return Desk(any_kit)


def event_id() -> str:
    return "EV-" + uuid.uuid4().hex[:16]


def extras(stage: Stage) -> dict[str, Any]:
    """What a push of ``stage`` must carry besides the stage."""
    return {"missing_items": ["营业执照副本"]} if stage == SUPPLEMENT else {}


def drain(subscribe: Callable[..., Iterator[M]], after: int = 0, wait: float = 0.6) -> list[M]:
    """Everything a subscription delivers after ``after`` within ``wait`` seconds."""
    return list(subscribe(after, timeout=wait))


def count_events(kit: HubKit, *where: Any) -> int:
    with kit.session() as session:
        counted = session.scalar(select(func.count()).select_from(CaseEventRow).where(*where))
        return int(counted or 0)


def stage_at(kit: HubKit, case_number: str, department: str) -> str:
    with kit.session() as session:
        row = session.get(CaseDepartmentRow, (case_number, kit.member_id(department)))
        assert row is not None
        return name(row.stage)


def name(stage: int) -> str:
    return S.CaseStage.Name(stage).removeprefix("CASE_STAGE_")  # type: ignore[arg-type]


def certificate(
    kit: HubKit, issuer: str, **overrides: Any
) -> certificate_pb2.ElectronicCertificate:
    spec = kit.members[issuer].spec
    fields: dict[str, Any] = {
        "type_code": LICENCE_TYPE,
        "type_name": "营业执照",
        "issuer_code": spec.uscc,
        "issuer_name": spec.name,
        "serial": "2024" + uuid.uuid4().hex[:6].upper(),
        "number": "440101000123456",
        "holder_name": COMPANY_NAME,
        "holder_code": COMPANY,
        "holder_code_type": USCC,
        "issue_date": "2024-01-10",
        "valid_from": "2024-01-10",
        "valid_until": "2044-01-09",
    }
    fields.update(overrides)
    return new_certificate(**fields)


def upload(desk: Desk, folder: Path, data: bytes, applicant: str) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{uuid.uuid4().hex[:8]}.pdf"
    path.write_bytes(data)
    receipt = desk.platform.upload_material(
        path,
        material_type=PLAN,
        applicant_code=applicant,
        media_type="application/pdf",
        source_case="SC-2024-0001",
    )
    return receipt.material.material_id


def registered_keys(client: HubClient, member_id: str) -> dict[str, KeyVerifier]:
    """The member's message-signing keys as the registry publishes them, by key id."""
    return {
        key.key_id: KeyVerifier.from_der(key.public_key_der)
        for key in client.get_member(member_id).signing_keys
    }


def signer_key(client: HubClient, member_id: str, envelope: Any) -> KeyVerifier:
    """The registered key of ``member_id`` that signed ``envelope`` (it must be one)."""
    keys = registered_keys(client, member_id)
    (signature,) = envelope.signatures
    assert signature.key_id in keys, f"{member_id} has no registered key {signature.key_id}"
    return keys[signature.key_id]


# -- SubmitCase --------------------------------------------------------------------------------


@pytest.mark.parametrize("member", ["department", "issuer", "auditor"])
def test_submit_case_is_for_platforms_only(desk: Desk, member: str) -> None:
    checklist = desk.platform.prepare_case(ITEM, COMPANY, purpose=PURPOSE)
    other = desk.kit.client(member)
    refused(
        lambda: other.submit_case(checklist.case_id, purpose=PURPOSE),
        Code.PERMISSION_DENIED,
        "ROLE_REQUIRED",
    )
    assert count_events(desk.kit) == 0


@pytest.mark.parametrize(
    ("submitter", "case_id", "purpose"),
    [
        pytest.param("platform2", None, PURPOSE, id="another-platforms-case"),
        pytest.param("platform", None, "其他用途", id="wrong-purpose"),
        pytest.param("platform", "", PURPOSE, id="no-prepared-case"),
        pytest.param("platform", "PC-NO-SUCH-CASE", PURPOSE, id="unknown-prepared-case"),
    ],
)
def test_submit_case_is_bound_to_the_prepared_case(
    desk: Desk, submitter: str, case_id: str | None, purpose: str
) -> None:
    checklist = desk.platform.prepare_case(ITEM, COMPANY, purpose=PURPOSE)
    client = desk.kit.client(submitter)
    refused(
        lambda: client.submit_case(
            checklist.case_id if case_id is None else case_id, purpose=purpose
        ),
        Code.PERMISSION_DENIED,
        "PURPOSE_NOT_BOUND",
    )
    with desk.kit.session() as session:
        assert session.scalar(select(func.count()).select_from(CaseRow)) == 0
    # The refusal left the prepared case intact: its own platform submits it.
    receipt = desk.platform.submit_case(checklist.case_id, purpose=PURPOSE)
    assert list(receipt.departments) == [desk.kit.member_id("department")]


def test_case_numbers_are_unique_and_a_prepared_case_is_submitted_once(desk: Desk) -> None:
    checklists = [desk.platform.prepare_case(ITEM, COMPANY, purpose=PURPOSE) for _ in range(6)]
    receipts = [desk.platform.submit_case(c.case_id, purpose=PURPOSE) for c in checklists]
    numbers = [r.case_number for r in receipts]
    assert len(set(numbers)) == len(numbers)
    assert all(n and len(n) <= 40 for n in numbers)
    error = refused(
        lambda: desk.platform.submit_case(checklists[0].case_id, purpose=PURPOSE),
        Code.FAILED_PRECONDITION,
        "STATUS_TRANSITION",
    )
    assert error.metadata.get("case_id") == checklists[0].case_id
    with desk.kit.session() as session:
        assert session.scalar(select(func.count()).select_from(CaseRow)) == 6
    assert count_events(desk.kit, CaseEventRow.kind == "dispatch") == 6


@pytest.mark.parametrize(
    ("own_certificate", "own_material"),
    [
        pytest.param(False, True, id="another-applicants-certificate"),
        pytest.param(True, False, id="another-applicants-material"),
    ],
)
def test_references_to_another_applicants_data_are_refused(
    desk: Desk, tmp_path: Path, own_certificate: bool, own_material: bool
) -> None:
    issuer = desk.kit.client("issuer")
    mine = certificate(desk.kit, "issuer")
    theirs = certificate(desk.kit, "issuer", holder_code=OTHER_COMPANY, holder_name="别家公司")
    for cert in (mine, theirs):
        issuer.publish_certificate(cert)
    my_plan = upload(desk, tmp_path, b"%PDF my plan", COMPANY)
    their_plan = upload(desk, tmp_path, b"%PDF their plan", OTHER_COMPANY)
    checklist = desk.platform.prepare_case(ITEM, COMPANY, purpose=PURPOSE)
    refused(
        lambda: desk.platform.submit_case(
            checklist.case_id,
            purpose=PURPOSE,
            certificate_identifiers=[mine.identifier if own_certificate else theirs.identifier],
            material_ids=[my_plan if own_material else their_plan],
        ),
        Code.PERMISSION_DENIED,
        "PURPOSE_NOT_BOUND",
    )
    with desk.kit.session() as session:
        assert session.scalar(select(func.count()).select_from(CaseRow)) == 0
    assert count_events(desk.kit) == 0
    # Nothing half-written: the same prepared case goes through with the applicant's own data.
    receipt = desk.platform.submit_case(
        checklist.case_id,
        purpose=PURPOSE,
        certificate_identifiers=[mine.identifier],
        material_ids=[my_plan],
    )
    assert receipt.case_number


def test_a_joint_case_is_dispatched_to_every_department_by_reference(
    any_desk: Desk, tmp_path: Path
) -> None:
    desk = any_desk
    licence = certificate(desk.kit, "issuer", number="440101000999888")
    desk.kit.client("issuer").publish_certificate(licence)
    content = b"%PDF-1.7 business plan " + uuid.uuid4().bytes * 8
    plan = upload(desk, tmp_path, content, COMPANY)
    receipt = desk.submit(
        JOINT_ITEM,
        certificate_identifiers=[licence.identifier],
        material_ids=[plan],
        form={"经营场所": "广州市荔湾区示例路1号"},
    )
    departments = [desk.kit.member_id("department"), desk.kit.member_id("department2")]
    assert sorted(receipt.departments) == sorted(departments)
    platform_id = desk.kit.member_id("platform")
    for client in (desk.department, desk.department2):
        (dispatched,) = drain(client.subscribe_cases)
        assert dispatched.case_number == receipt.case_number
        assert dispatched.stage == SUBMITTED
        assert dispatched.platform == desk.kit.member_id("platform")
        assert dispatched.applicant_code == COMPANY
        assert dispatched.item.code == JOINT_ITEM
        assert dict(dispatched.form) == {"经营场所": "广州市荔湾区示例路1号"}
        # References, not copies: the identifier and the hash travel, the data does not.
        assert [c.identifier for c in dispatched.certificates] == [licence.identifier]
        assert [m.material_id for m in dispatched.materials] == [plan]
        assert dispatched.materials[0].size == len(content)
        wire = dispatched.SerializeToString()
        assert content not in wire
        assert licence.number.encode() not in wire
        # The platform's own signed submission travels byte for byte and verifies.
        verify_signature_by(
            dispatched.submission, signer_key(desk.platform, platform_id, dispatched.submission)
        )
        submission = parse_verified(dispatched.submission, case_pb2.CaseSubmission)
        assert list(submission.certificate_identifiers) == [licence.identifier]
    with desk.kit.session() as session:
        rows = session.scalars(
            select(CaseDepartmentRow).where(CaseDepartmentRow.case_number == receipt.case_number)
        ).all()
        assert sorted(r.department for r in rows) == sorted(departments)
        assert {r.stage for r in rows} == {SUBMITTED}


# -- PushStatus: the stage machine -------------------------------------------------------------


def test_a_case_walks_the_happy_path_and_the_platform_sees_each_step(any_desk: Desk) -> None:
    desk = any_desk
    case = desk.submit().case_number
    results = desk.walk(case, HAPPY_PATH)
    assert [(r.stage, r.overall, r.duplicate) for r in results] == [
        (s, s, False) for s in HAPPY_PATH
    ]
    events = drain(desk.platform.subscribe_status)
    assert [(e.case_number, e.stage, e.overall) for e in events] == [
        (case, s, s) for s in HAPPY_PATH
    ]
    assert all(e.department == desk.kit.member_id("department") for e in events)
    calendar = workdays.WorkCalendar.from_file(workdays.SAMPLE_CN_2026)
    with desk.kit.session() as session:
        row = session.get(CaseDepartmentRow, (case, desk.kit.member_id("department")))
        assert row is not None
        assert row.accepted_on == datetime.now(UTC).date().isoformat()
        # Set once on acceptance (10 working days), kept through the later stages.
        accepted = date.fromisoformat(row.accepted_on)
        assert row.deadline == workdays.deadline(accepted, 10, calendar).isoformat()
        assert row.stage == DELIVERED
        assert abs(datetime.now(UTC) - row.updated_at) < timedelta(minutes=5)
        stored = session.get(CaseRow, case)
        assert stored is not None and stored.overall == DELIVERED


@pytest.mark.parametrize(
    ("before", "proposed", "current", "why"),
    [
        ((), UNDER_REVIEW, "SUBMITTED", "ILLEGAL_TRANSITION"),
        ((), APPROVED, "SUBMITTED", "ILLEGAL_TRANSITION"),
        ((), DELIVERED, "SUBMITTED", "ILLEGAL_TRANSITION"),
        ((), SUBMITTED, "SUBMITTED", "ILLEGAL_TRANSITION"),
        ((), WITHDRAWN, "SUBMITTED", "NOT_YOUR_TRANSITION"),
        ((ACCEPTED,), ACCEPTED, "ACCEPTED", "ILLEGAL_TRANSITION"),
        ((ACCEPTED,), COMPLETED, "ACCEPTED", "ILLEGAL_TRANSITION"),
        ((ACCEPTED, UNDER_REVIEW, APPROVED), REJECTED, "APPROVED", "ILLEGAL_TRANSITION"),
        ((SUPPLEMENT,), ACCEPTED, "SUPPLEMENT_REQUIRED", "ILLEGAL_TRANSITION"),
        ((SUPPLEMENT,), SUBMITTED, "SUPPLEMENT_REQUIRED", "NOT_YOUR_TRANSITION"),
        ((NOT_ACCEPTED,), ACCEPTED, "NOT_ACCEPTED", "FINAL_STAGE"),
        ((ACCEPTED, UNDER_REVIEW, REJECTED), APPROVED, "REJECTED", "FINAL_STAGE"),
        (HAPPY_PATH, COMPLETED, "DELIVERED", "FINAL_STAGE"),
    ],
    ids=lambda v: name(v) if isinstance(v, int) else None,
)
def test_an_illegal_transition_names_the_current_stage(
    desk: Desk, before: tuple[Stage, ...], proposed: Stage, current: str, why: str
) -> None:
    case = desk.submit().case_number
    desk.walk(case, before)
    events = count_events(desk.kit)
    error = refused(
        lambda: desk.department.push_status(
            case, proposed, event_id=event_id(), **extras(proposed)
        ),
        Code.FAILED_PRECONDITION,
        "STATUS_TRANSITION",
    )
    assert error.metadata["current_stage"] == current
    assert error.metadata["code"] == why
    assert current in error.message
    assert count_events(desk.kit) == events
    assert stage_at(desk.kit, case, "department") == current


@pytest.mark.parametrize(
    ("changes", "field_name"),
    [
        pytest.param({"stage": S.CASE_STAGE_UNSPECIFIED}, "stage", id="unspecified-stage"),
        pytest.param({"stage": 42}, "stage", id="unknown-stage"),
        pytest.param({"event_id": ""}, "event_id", id="no-event-id"),
        pytest.param({"event_id": "E" * 65}, "event_id", id="event-id-too-long"),
        pytest.param({"stage": SUPPLEMENT}, "missing_items", id="supplement-without-items"),
    ],
)
def test_a_malformed_push_is_invalid_argument(
    desk: Desk, changes: dict[str, Any], field_name: str
) -> None:
    case = desk.submit().case_number
    fields: dict[str, Any] = {"stage": ACCEPTED, "event_id": event_id(), **changes}
    stage = fields.pop("stage")
    error = refused(
        lambda: desk.department.push_status(case, stage, **fields),
        Code.INVALID_ARGUMENT,
        "INVALID_FIELD",
    )
    assert error.metadata.get("field") == field_name
    assert count_events(desk.kit, CaseEventRow.kind == "status") == 0
    assert stage_at(desk.kit, case, "department") == "SUBMITTED"


def test_a_supplement_carries_its_missing_items_to_the_platform(desk: Desk) -> None:
    case = desk.submit().case_number
    desk.walk(case, [ACCEPTED])
    result = desk.department.push_status(
        case, SUPPLEMENT, event_id=event_id(), missing_items=["营业执照副本", "场所平面图"]
    )
    assert (result.stage, result.overall) == (SUPPLEMENT, SUPPLEMENT)
    last = drain(desk.platform.subscribe_status)[-1]
    assert (last.stage, list(last.missing_items)) == (SUPPLEMENT, ["营业执照副本", "场所平面图"])


@pytest.mark.parametrize(
    ("pusher", "reason"),
    [
        pytest.param("department2", None, id="department-not-handling-the-case"),
        pytest.param("platform", "ROLE_REQUIRED", id="platform"),
        pytest.param("issuer", "ROLE_REQUIRED", id="issuer"),
        pytest.param("auditor", "ROLE_REQUIRED", id="auditor"),
    ],
)
def test_only_a_handling_department_pushes_status(
    desk: Desk, pusher: str, reason: str | None
) -> None:
    case = desk.submit().case_number
    client = desk.kit.client(pusher)
    with pytest.raises(XhubError) as caught:
        client.push_status(case, ACCEPTED, event_id=event_id())
    assert caught.value.code == Code.PERMISSION_DENIED, str(caught.value)
    if reason:
        assert caught.value.reason_name == reason
    assert count_events(desk.kit, CaseEventRow.kind == "status") == 0
    assert stage_at(desk.kit, case, "department") == "SUBMITTED"
    # The handling department is not blocked by the refusal.
    assert desk.department.push_status(case, ACCEPTED, event_id=event_id()).stage == ACCEPTED


def test_a_push_for_an_unknown_case_is_not_found(desk: Desk) -> None:
    refused(
        lambda: desk.department.push_status("20260101NOSUCHCASE00", ACCEPTED, event_id=event_id()),
        Code.NOT_FOUND,
        "NOT_FOUND",
    )


# -- PushStatus: idempotency -------------------------------------------------------------------


def test_a_repeated_push_returns_the_first_result_and_adds_nothing(desk: Desk) -> None:
    case = desk.submit().case_number
    first = desk.department.push_status(case, ACCEPTED, event_id="dept-0001", note="受理")
    assert (first.stage, first.overall, first.duplicate) == (ACCEPTED, ACCEPTED, False)
    again = desk.department.push_status(case, ACCEPTED, event_id="dept-0001", note="受理")
    assert (again.case_number, again.stage, again.overall, again.duplicate) == (
        case,
        ACCEPTED,
        ACCEPTED,
        True,
    )
    # Same id, other content: still the first result, and the stage does not move.
    other = desk.department.push_status(case, UNDER_REVIEW, event_id="dept-0001")
    assert (other.stage, other.duplicate) == (ACCEPTED, True)
    assert stage_at(desk.kit, case, "department") == "ACCEPTED"
    assert count_events(desk.kit, CaseEventRow.kind == "status") == 1
    assert [e.event_id for e in drain(desk.platform.subscribe_status)] == ["dept-0001"]


def test_an_event_id_reused_for_another_case_is_refused(desk: Desk) -> None:
    first, second = desk.submit().case_number, desk.submit().case_number
    desk.department.push_status(first, ACCEPTED, event_id="dept-0002")
    error = refused(
        lambda: desk.department.push_status(second, ACCEPTED, event_id="dept-0002"),
        Code.INVALID_ARGUMENT,
        "INVALID_FIELD",
    )
    assert error.metadata.get("field") == "event_id"
    assert stage_at(desk.kit, second, "department") == "SUBMITTED"
    assert count_events(desk.kit, CaseEventRow.kind == "status") == 1


def test_event_ids_belong_to_their_author(desk: Desk) -> None:
    """Two departments of a joint case may happen to choose the same event id."""
    case = desk.submit(JOINT_ITEM).case_number
    a = desk.department.push_status(case, ACCEPTED, event_id="0001")
    b = desk.department2.push_status(case, ACCEPTED, event_id="0001")
    assert (a.duplicate, b.duplicate) == (False, False)
    assert (a.overall, b.overall) == (SUBMITTED, ACCEPTED)
    assert count_events(desk.kit, CaseEventRow.kind == "status") == 2


def _race(n: int, fn: Callable[[int], Any]) -> list[Any]:
    """Run ``fn(i)`` for i in range(n) at the same moment; results or exceptions."""
    barrier = threading.Barrier(n)

    def run(i: int) -> Any:
        barrier.wait()
        try:
            return fn(i)
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(run, range(n)))


def test_concurrent_retries_of_one_push_apply_it_once(any_desk: Desk) -> None:
    """A department retrying while its first attempt is still in flight (at-least-once)."""
    desk = any_desk
    case = desk.submit().case_number
    clients = [desk.kit.client("department") for _ in range(6)]
    outcomes = _race(
        len(clients), lambda i: clients[i].push_status(case, ACCEPTED, event_id="dept-race")
    )
    errors = [str(o) for o in outcomes if isinstance(o, Exception)]
    assert not errors, f"a retried push must not fail: {errors}"
    assert sorted(o.duplicate for o in outcomes) == [False] + [True] * (len(clients) - 1)
    assert {(o.stage, o.overall) for o in outcomes} == {(ACCEPTED, ACCEPTED)}
    assert count_events(desk.kit, CaseEventRow.kind == "status") == 1


def test_concurrent_pushes_cannot_cheat_the_stage_machine(any_desk: Desk) -> None:
    """Two pushes of ACCEPTED with different ids at once: one applies, one is refused."""
    desk = any_desk
    case = desk.submit().case_number
    clients = [desk.kit.client("department") for _ in range(6)]
    outcomes = _race(
        len(clients), lambda i: clients[i].push_status(case, ACCEPTED, event_id=f"accept-{i}")
    )
    applied = [o for o in outcomes if isinstance(o, case_pb2.StatusPushResult)]
    refusals = [o for o in outcomes if isinstance(o, XhubError)]
    assert len(applied) == 1, (
        f"ACCEPTED applied {len(applied)} times from SUBMITTED; "
        f"{count_events(desk.kit, CaseEventRow.kind == 'status')} ACCEPTED events recorded"
    )
    assert len(refusals) == len(clients) - 1, [str(r) for r in refusals]
    assert {(e.code, e.metadata.get("current_stage")) for e in refusals} == {
        (Code.FAILED_PRECONDITION, "ACCEPTED")
    }
    assert count_events(desk.kit, CaseEventRow.kind == "status") == 1


def test_a_push_out_of_order_is_refused_then_applies_in_order(desk: Desk) -> None:
    case = desk.submit().case_number
    desk.department.push_status(case, ACCEPTED, event_id="o-1")
    # APPROVED (o-3) overtakes UNDER_REVIEW (o-2), e.g. two connector threads.
    error = refused(
        lambda: desk.department.push_status(case, APPROVED, event_id="o-3"),
        Code.FAILED_PRECONDITION,
        "STATUS_TRANSITION",
    )
    assert error.metadata["current_stage"] == "ACCEPTED"
    assert desk.department.push_status(case, UNDER_REVIEW, event_id="o-2").stage == UNDER_REVIEW
    # The refused id recorded nothing: retried in order it applies (not a duplicate).
    retried = desk.department.push_status(case, APPROVED, event_id="o-3")
    assert (retried.stage, retried.duplicate) == (APPROVED, False)
    events = drain(desk.platform.subscribe_status)
    assert [(e.event_id, e.stage) for e in events] == [
        ("o-1", ACCEPTED),
        ("o-2", UNDER_REVIEW),
        ("o-3", APPROVED),
    ]


OVERALL_STORIES = {
    "both-deliver": [
        ("department", ACCEPTED, SUBMITTED),
        ("department2", ACCEPTED, ACCEPTED),
        ("department", UNDER_REVIEW, ACCEPTED),
        ("department", APPROVED, ACCEPTED),
        ("department2", UNDER_REVIEW, UNDER_REVIEW),
        ("department2", APPROVED, APPROVED),
        ("department", COMPLETED, APPROVED),
        ("department", DELIVERED, APPROVED),
        ("department2", COMPLETED, COMPLETED),
        ("department2", DELIVERED, DELIVERED),
    ],
    "one-asks-for-a-supplement": [
        ("department", ACCEPTED, SUBMITTED),
        ("department2", SUPPLEMENT, SUPPLEMENT),
        ("department", UNDER_REVIEW, SUPPLEMENT),
        ("department", APPROVED, SUPPLEMENT),
    ],
    "one-refusal-sinks-the-case": [
        ("department", ACCEPTED, SUBMITTED),
        ("department2", NOT_ACCEPTED, NOT_ACCEPTED),
        ("department", UNDER_REVIEW, NOT_ACCEPTED),
        ("department", REJECTED, REJECTED),
    ],
}


@pytest.mark.parametrize("story", list(OVERALL_STORIES))
def test_overall_status_of_a_joint_case(desk: Desk, story: str) -> None:
    case = desk.submit(JOINT_ITEM).case_number
    steps = OVERALL_STORIES[story]
    clients = {"department": desk.department, "department2": desk.department2}
    for who, stage, overall in steps:
        result = clients[who].push_status(case, stage, event_id=event_id(), **extras(stage))
        assert (who, result.stage, result.overall) == (who, stage, overall)
    events = drain(desk.platform.subscribe_status)
    assert [(e.department, e.stage, e.overall) for e in events] == [
        (desk.kit.member_id(who), stage, overall) for who, stage, overall in steps
    ]
    with desk.kit.session() as session:
        row = session.get(CaseRow, case)
        assert row is not None and row.overall == steps[-1][2]


def test_completion_names_a_certificate_the_department_issued(desk: Desk) -> None:
    case = desk.submit().case_number
    desk.walk(case, [ACCEPTED, UNDER_REVIEW, APPROVED])
    permit = certificate(desk.kit, "department", type_code=PERMIT_TYPE, type_name="食品经营许可证")
    desk.department.publish_certificate(permit)
    licence = certificate(desk.kit, "issuer")
    desk.kit.client("issuer").publish_certificate(licence)
    for wrong in (licence.identifier, permit.identifier[:-1] + "0", "not-an-identifier"):
        refused(
            partial(
                desk.department.push_status,
                case,
                COMPLETED,
                event_id=event_id(),
                certificate_identifier=wrong,
            ),
            Code.INVALID_ARGUMENT,
            "INVALID_FIELD",
        )
    assert stage_at(desk.kit, case, "department") == "APPROVED"
    done = desk.department.push_status(
        case, COMPLETED, event_id="done-1", certificate_identifier=permit.identifier
    )
    assert done.stage == COMPLETED
    last = drain(desk.platform.subscribe_status)[-1]
    assert (last.event_id, last.stage, last.certificate_identifier) == (
        "done-1",
        COMPLETED,
        permit.identifier,
    )


# -- WithdrawCase ------------------------------------------------------------------------------


def _age(kit: HubKit, case_number: str, minutes: float) -> None:
    """Pretend the case was submitted ``minutes`` ago."""
    with kit.session() as session:
        session.execute(
            update(CaseRow)
            .where(CaseRow.case_number == case_number)
            .values(submitted_at=datetime.now(UTC) - timedelta(minutes=minutes))
        )


def test_withdrawal_before_acceptance_reaches_every_department(any_desk: Desk) -> None:
    desk = any_desk
    case = desk.submit(JOINT_ITEM).case_number
    result = desk.platform.withdraw_case(case, event_id="wd-1", reason="申请人撤回")
    assert (result.case_number, result.stage, result.overall, result.duplicate) == (
        case,
        WITHDRAWN,
        WITHDRAWN,
        False,
    )
    for client in (desk.department, desk.department2):
        dispatched = drain(client.subscribe_cases)
        assert [(d.case_number, d.stage) for d in dispatched] == [
            (case, SUBMITTED),
            (case, WITHDRAWN),
        ]
        assert dispatched[0].cursor < dispatched[1].cursor
    status = drain(desk.platform.subscribe_status)
    assert sorted(e.department for e in status) == sorted(
        desk.kit.member_id(k) for k in ("department", "department2")
    )
    for event in status:
        assert (event.stage, event.overall, event.note) == (WITHDRAWN, WITHDRAWN, "申请人撤回")
        platform_key = signer_key(desk.platform, desk.kit.member_id("platform"), event.origin)
        verify_signature_by(event.origin, platform_key)
    error = refused(
        lambda: desk.department.push_status(case, ACCEPTED, event_id=event_id()),
        Code.FAILED_PRECONDITION,
        "STATUS_TRANSITION",
    )
    assert (error.metadata["current_stage"], error.metadata["code"]) == (
        "WITHDRAWN",
        "FINAL_STAGE",
    )


@pytest.mark.parametrize(
    ("before", "minutes_ago", "current", "why"),
    [
        pytest.param((), 31, None, None, id="submitted-long-ago"),
        pytest.param((SUPPLEMENT,), 31, None, None, id="waiting-for-supplement"),
        pytest.param((ACCEPTED,), 29, None, None, id="accepted-within-window"),
        pytest.param((ACCEPTED, UNDER_REVIEW), 1, None, None, id="under-review-within"),
        pytest.param((ACCEPTED,), 31, "ACCEPTED", "WITHDRAW_WINDOW_CLOSED", id="accepted-late"),
        pytest.param(
            (ACCEPTED, UNDER_REVIEW),
            45,
            "UNDER_REVIEW",
            "WITHDRAW_WINDOW_CLOSED",
            id="under-review-late",
        ),
        pytest.param(
            (ACCEPTED, UNDER_REVIEW, APPROVED),
            1,
            "APPROVED",
            "ILLEGAL_TRANSITION",
            id="approved",
        ),
    ],
)
def test_withdrawal_window(
    desk: Desk,
    before: tuple[Stage, ...],
    minutes_ago: float,
    current: str | None,
    why: str | None,
) -> None:
    case = desk.submit().case_number
    desk.walk(case, before)
    _age(desk.kit, case, minutes_ago)
    events = count_events(desk.kit)
    withdraw = partial(desk.platform.withdraw_case, case, event_id="wd-2", reason="撤回")
    if current is None:
        assert withdraw().overall == WITHDRAWN
        assert stage_at(desk.kit, case, "department") == "WITHDRAWN"
        return
    error = refused(withdraw, Code.FAILED_PRECONDITION, "STATUS_TRANSITION")
    assert (error.metadata["current_stage"], error.metadata["code"]) == (current, why)
    assert current in error.message
    assert count_events(desk.kit) == events
    assert stage_at(desk.kit, case, "department") == current
    assert [d.stage for d in drain(desk.department.subscribe_cases)] == [SUBMITTED]


def test_withdrawal_is_all_or_nothing_across_departments(desk: Desk) -> None:
    case = desk.submit(JOINT_ITEM).case_number
    desk.department.push_status(case, ACCEPTED, event_id=event_id())
    _age(desk.kit, case, 31)
    refused(
        lambda: desk.platform.withdraw_case(case, event_id="wd-3", reason="撤回"),
        Code.FAILED_PRECONDITION,
        "STATUS_TRANSITION",
    )
    assert stage_at(desk.kit, case, "department") == "ACCEPTED"
    assert stage_at(desk.kit, case, "department2") == "SUBMITTED"
    assert [d.stage for d in drain(desk.department2.subscribe_cases)] == [SUBMITTED]


def test_withdrawal_is_idempotent_by_event_id(desk: Desk) -> None:
    case = desk.submit(JOINT_ITEM).case_number
    first = desk.platform.withdraw_case(case, event_id="wd-4", reason="撤回")
    events = count_events(desk.kit)
    again = desk.platform.withdraw_case(case, event_id="wd-4", reason="撤回")
    assert (again.stage, again.overall, again.duplicate) == (first.stage, first.overall, True)
    assert count_events(desk.kit) == events
    error = refused(
        lambda: desk.platform.withdraw_case(case, event_id="wd-5", reason="再次撤回"),
        Code.FAILED_PRECONDITION,
        "STATUS_TRANSITION",
    )
    assert error.metadata["code"] == "FINAL_STAGE"
    assert [d.stage for d in drain(desk.department.subscribe_cases)] == [SUBMITTED, WITHDRAWN]


@pytest.mark.parametrize("who", ["platform2", "department", "auditor"])
def test_only_the_cases_platform_withdraws_it(desk: Desk, who: str) -> None:
    case = desk.submit().case_number
    with pytest.raises(XhubError) as caught:
        desk.kit.client(who).withdraw_case(case, event_id="wd-6", reason="撤回")
    assert caught.value.code == Code.PERMISSION_DENIED, str(caught.value)
    assert stage_at(desk.kit, case, "department") == "SUBMITTED"
    assert count_events(desk.kit, CaseEventRow.kind == "status") == 0


# -- streams -----------------------------------------------------------------------------------


def test_streams_deliver_in_cursor_order_and_resume_after_a_cursor(desk: Desk) -> None:
    cases = [desk.submit().case_number for _ in range(3)]
    dispatched = drain(desk.department.subscribe_cases)
    assert [d.case_number for d in dispatched] == cases
    cursors = [d.cursor for d in dispatched]
    assert cursors == sorted(set(cursors))
    resumed = drain(desk.department.subscribe_cases, after=cursors[0])
    assert [(d.cursor, d.case_number) for d in resumed] == [
        (d.cursor, d.case_number) for d in dispatched[1:]
    ]
    assert drain(desk.department.subscribe_cases, after=cursors[-1]) == []

    pushed = []
    for stage in (ACCEPTED, UNDER_REVIEW, APPROVED):
        for case in cases:
            pushed.append(eid := event_id())
            desk.department.push_status(case, stage, event_id=eid)
    events = drain(desk.platform.subscribe_status)
    assert [e.event_id for e in events] == pushed
    cursors = [e.cursor for e in events]
    assert cursors == sorted(set(cursors))
    for k in (0, 4, len(events) - 1):
        tail = drain(desk.platform.subscribe_status, after=cursors[k])
        assert [(e.cursor, e.event_id) for e in tail] == [
            (e.cursor, e.event_id) for e in events[k + 1 :]
        ]


def test_a_live_subscriber_receives_events_as_they_are_pushed(desk: Desk) -> None:
    case = desk.submit().case_number
    seen: list[case_pb2.StatusEvent] = []
    stream = desk.platform.subscribe_status(0, timeout=15)

    def read() -> None:
        for event in stream:
            seen.append(event)
            if len(seen) == len(HAPPY_PATH):
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    time.sleep(0.3)  # the subscription is open before anything is pushed
    desk.walk(case, HAPPY_PATH)
    reader.join(timeout=10)
    assert [e.stage for e in seen] == list(HAPPY_PATH)


def test_a_subscriber_sees_only_its_own_events(desk: Desk) -> None:
    platform2 = desk.kit.client("platform2")
    mine = desk.submit(ITEM).case_number  # platform → department
    theirs = desk.submit(ITEM2, platform=platform2).case_number  # platform2 → department2
    desk.walk(mine, [ACCEPTED, UNDER_REVIEW])
    desk.walk(theirs, [ACCEPTED], client=desk.department2)
    assert {d.case_number for d in drain(desk.department.subscribe_cases)} == {mine}
    assert {d.case_number for d in drain(desk.department2.subscribe_cases)} == {theirs}
    assert [e.case_number for e in drain(desk.platform.subscribe_status)] == [mine, mine]
    assert [e.case_number for e in drain(platform2.subscribe_status)] == [theirs]
    # A member without the role gets no stream at all.
    for client, subscribe in (
        (desk.department, desk.department.subscribe_status),
        (desk.platform, desk.platform.subscribe_cases),
        (desk.auditor, desk.auditor.subscribe_cases),
        (desk.auditor, desk.auditor.subscribe_status),
    ):
        with pytest.raises(XhubError) as caught:
            drain(subscribe)
        assert (caught.value.code, caught.value.reason_name) == (
            Code.PERMISSION_DENIED,
            "ROLE_REQUIRED",
        ), client.member_id


def _raw_status_stream(client: HubClient, after: int = 0) -> tuple[str, list[Any]]:
    """The hub's signed envelopes as they arrive, without the SDK's checks."""
    payload = case_pb2.CaseSubscription(after_cursor=after)
    envelope = client.transport.seal(payload)
    responses: list[Any] = []
    try:
        for message in client.transport.cases.SubscribeStatus(
            case_pb2.SubscribeStatusRequest(envelope=envelope), timeout=1.0
        ):
            responses.append(message.envelope)
    except grpc.RpcError as exc:
        assert exc.code() == Code.DEADLINE_EXCEEDED
    return payload.header.message_id, responses


def test_stream_events_are_hub_signed_and_the_sdk_checks_them(desk: Desk) -> None:
    case = desk.submit().case_number
    desk.walk(case, [ACCEPTED, UNDER_REVIEW])
    request_id, envelopes = _raw_status_stream(desk.platform)
    assert len(envelopes) == 2
    for envelope in envelopes:
        assert envelope.payload_type == "xhub.v1.StatusEvent"
        verify_signature_by(envelope, desk.platform.bundle.hub_verifier)
        event = desk.platform.transport.open_response(envelope, case_pb2.StatusEvent, request_id)
        assert event.header.sender == desk.kit.hub_id
        assert event.header.recipient == desk.kit.member_id("platform")
        # Altered in transit, or answering another subscription: the SDK refuses it.
        tampered = type(envelope)()
        tampered.CopyFrom(envelope)
        tampered.payload = envelope.payload.replace(case.encode(), case[:-1].encode() + b"X")
        with pytest.raises(BadResponseError):
            desk.platform.transport.open_response(tampered, case_pb2.StatusEvent, request_id)
        with pytest.raises(BadResponseError):
            desk.platform.transport.open_response(envelope, case_pb2.StatusEvent, "another-request")
        with pytest.raises(BadResponseError):  # the right bytes, but for another recipient
            desk.department.transport.open_response(envelope, case_pb2.StatusEvent, request_id)


def test_a_status_event_carries_the_departments_own_signed_push(desk: Desk) -> None:
    case = desk.submit().case_number
    desk.department.push_status(case, ACCEPTED, event_id="sig-1", note="材料齐全,予以受理")
    (event,) = drain(desk.platform.subscribe_status)
    department_id = desk.kit.member_id("department")
    department_key = signer_key(desk.platform, department_id, event.origin)
    assert department_key.key_id == desk.kit.bundle("department").signer.key_id
    assert department_key.algorithm == ED25519
    verify_signature_by(event.origin, department_key)  # the department's own Ed25519 key
    push = parse_verified(event.origin, case_pb2.StatusPush)
    assert (push.header.sender, push.case_number, push.stage, push.event_id, push.note) == (
        department_id,
        case,
        ACCEPTED,
        "sig-1",
        "材料齐全,予以受理",
    )
    assert (event.department, event.stage, event.event_id) == (department_id, ACCEPTED, "sig-1")
    # The origin is the department's signature, not the hub's or the platform's.
    for other in (
        desk.platform.bundle.hub_verifier,
        *registered_keys(desk.platform, desk.kit.member_id("platform")).values(),
    ):
        with pytest.raises(AuthenticationError):
            verify_signature_by(event.origin, other)
    forged = type(event.origin)()
    forged.CopyFrom(event.origin)
    forged.payload = event.origin.payload.replace(b"sig-1", b"sig-2")
    with pytest.raises(AuthenticationError):
        verify_signature_by(forged, department_key)


# -- crash: kill -9 of a hub process with streams open and events in flight --------------------


@dataclass
class HubProcess:
    """``xhub serve`` as a real process on the kit's data directory and port."""

    kit: HubKit
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    str(XHUB),
                    "serve",
                    "--data-dir",
                    str(self.kit.config.data_dir),
                    "--listen",
                    self.kit.address,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "XHUB_SHUTDOWN_GRACE_SECONDS": "1"},
            )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def _retrying(fn: Callable[[], M], retries: list[str], give_up: float = 60.0) -> M:
    """Call until the hub answers: a department simply retries an idempotent push."""
    deadline = time.monotonic() + give_up
    while True:
        try:
            return fn()
        except (TransportError, XhubError) as exc:
            if getattr(exc, "code", None) not in RETRYABLE_CODES or time.monotonic() > deadline:
                raise
            retries.append(str(exc))
            time.sleep(0.05)


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_kill_9_loses_nothing_and_applies_nothing_twice(
    tmp_path: Path, request: pytest.FixtureRequest, backend: str
) -> None:
    url = "" if backend == "sqlite" else request.getfixturevalue("pg_url")
    kit = make_kit(tmp_path, url)  # data directory and members; the subprocess serves
    hub = HubProcess(kit, tmp_path / "hub.log")
    hub.start()
    try:
        fast = RetryPolicy(attempts=2, initial_backoff=0.05, max_backoff=0.2)
        desk = Desk(kit)
        desk.department = kit.client("department", retry=fast, timeout=5)
        desk.platform.wait_until_serving(timeout=30)
        cases = [desk.submit().case_number for _ in range(6)]
        plan = [(case, stage, f"k9-{i}-{name(stage)}") for stage in HAPPY_PATH
                for i, case in enumerate(cases)]  # fmt: skip
        received: list[case_pb2.StatusEvent] = []
        pushed: list[case_pb2.StatusPushResult] = []
        retries: list[str] = []
        failures: list[BaseException] = []
        finished = threading.Event()

        def follow() -> None:
            try:
                for event in desk.platform.follow(
                    desk.platform.subscribe_status, 0, stop=finished.is_set, max_backoff=0.3
                ):
                    received.append(event)
                    if len(received) >= len(plan):
                        return
            except BaseException as exc:
                failures.append(exc)

        def push() -> None:
            try:
                for case, stage, eid in plan:
                    pushed.append(
                        _retrying(
                            partial(desk.department.push_status, case, stage, event_id=eid),
                            retries,
                        )
                    )
                    time.sleep(0.02)
            except BaseException as exc:
                failures.append(exc)

        follower = threading.Thread(target=follow, daemon=True)
        pusher = threading.Thread(target=push, daemon=True)
        follower.start()
        pusher.start()
        deadline = time.monotonic() + 30
        while (len(pushed) < len(plan) // 3 or len(received) < 3) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not failures, failures
        hub.kill()  # streams open, pushes in flight
        killed_at = len(pushed)
        time.sleep(0.3)
        hub.start()
        pusher.join(timeout=60)
        follower.join(timeout=20)
        finished.set()
        assert not failures, f"{failures!r}\n{hub.output()}"
        assert not pusher.is_alive() and not follower.is_alive(), hub.output()
        assert 0 < killed_at < len(plan)
        assert len(pushed) == len(plan)
        assert retries, "no push was in flight while the hub was down"
        assert [(p.stage, p.case_number) for p in pushed] == [(s, c) for c, s, _ in plan]
        # Exactly once per event id, in cursor order, nothing missing.
        cursors = [e.cursor for e in received]
        assert cursors == sorted(set(cursors)), "a cursor was delivered twice or out of order"
        assert Counter(e.event_id for e in received) == Counter(eid for _, _, eid in plan)
        for case in cases:
            assert [e.stage for e in received if e.case_number == case] == list(HAPPY_PATH)
        with kit.session() as session:
            rows = session.execute(
                select(CaseEventRow.event_id, func.count())
                .where(CaseEventRow.kind == "status")
                .group_by(CaseEventRow.event_id)
            ).all()
        assert dict(rows) == {eid: 1 for _, _, eid in plan}
    finally:
        hub.stop()
        kit.close()


# -- several hub processes on one PostgreSQL database ------------------------------------------


@pytest.fixture
def pg_kit(tmp_path: Path, pg_url: str) -> Iterator[HubKit]:
    with make_kit(tmp_path, pg_url).start() as running:
        yield running


def _follow_status(
    client: HubClient, into: list[case_pb2.StatusEvent], stop: threading.Event, *, until: int
) -> threading.Thread:
    """Follow the status stream in a thread until ``until`` events arrived (or ``stop``)."""

    def run() -> None:
        try:
            for event in client.follow(client.subscribe_status, 0, stop=stop.is_set):
                into.append(event)
                if len(into) >= until:
                    return
        except (TransportError, XhubError):
            if not stop.is_set():
                raise

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.postgres
def test_a_subscriber_on_one_hub_sees_every_event_pushed_through_another(pg_kit: HubKit) -> None:
    replica = pg_kit.start_replica()
    desk = Desk(pg_kit)  # the platform subscribes through the main hub process
    pushers = [pg_kit.client("department", address=replica) for _ in range(4)]
    cases = [desk.submit().case_number for _ in range(len(pushers) * 2)]
    expected = len(cases) * len(HAPPY_PATH)
    received: list[case_pb2.StatusEvent] = []
    stop = threading.Event()
    follower = _follow_status(desk.platform, received, stop, until=expected)

    def walk(i: int) -> None:
        for stage in HAPPY_PATH:
            for case in cases[i::len(pushers)]:  # fmt: skip
                pushers[i].push_status(case, stage, event_id=f"r-{case}-{stage}")

    outcomes = _race(len(pushers), walk)
    assert not [o for o in outcomes if isinstance(o, Exception)], outcomes
    follower.join(timeout=15)
    stop.set()
    assert len(received) == expected, (
        f"the subscriber saw {len(received)} of {expected} events; "
        f"in the database: {count_events(pg_kit, CaseEventRow.kind == 'status')}"
    )
    assert len({e.event_id for e in received}) == expected
    cursors = [e.cursor for e in received]
    assert cursors == sorted(set(cursors))


def _ids(events: list[case_pb2.StatusEvent]) -> list[str]:
    return [e.event_id for e in events]


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.mark.postgres
def test_an_event_committed_after_a_later_cursor_is_still_delivered(pg_kit: HubKit) -> None:
    """Cursor order is not commit order on PostgreSQL: a push that took cursor N but commits
    after the push that took N+1 must still reach a subscriber that already read N+1."""
    replica = pg_kit.start_replica()
    desk = Desk(pg_kit)
    slow_client = pg_kit.client("department", address=replica)
    slow_case, fast_case = desk.submit().case_number, desk.submit().case_number
    events: list[case_pb2.StatusEvent] = []
    stop = threading.Event()
    follower = _follow_status(desk.platform, events, stop, until=2)
    time.sleep(0.3)

    # The slow push: its transaction inserts its case event (taking cursor N), then waits
    # on the replay-store row this test holds uncommitted with the same message id.
    payload = case_pb2.StatusPush(case_number=slow_case, stage=ACCEPTED, event_id="slow-1")
    envelope = slow_client.transport.seal(payload, case_id=slow_case)
    header = payload.header
    outcome: list[Any] = []
    with pg_kit.engine.connect() as blocker:
        transaction = blocker.begin()
        blocker.execute(
            insert(SeenMessageRow).values(
                sender=header.sender,
                message_id=header.message_id,
                seen_at=datetime.now(UTC),
                issued_at=header.issued_at.ToDatetime(tzinfo=UTC),
            )
        )

        def slow_push() -> None:
            try:
                outcome.append(
                    slow_client.transport.cases.PushStatus(
                        case_pb2.PushStatusRequest(envelope=envelope), timeout=30
                    )
                )
            except grpc.RpcError as exc:
                outcome.append(exc)

        slow = threading.Thread(target=slow_push, daemon=True)
        slow.start()
        with pg_kit.engine.connect() as probe:

            def slow_push_is_waiting() -> bool:
                waiting = probe.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                        "AND wait_event_type = 'Lock' "
                        "AND query ILIKE 'INSERT INTO seen_messages%'"
                    )
                ).scalar()
                probe.rollback()
                return bool(waiting)

            _wait_for(slow_push_is_waiting, 15, "the slow push to hold its cursor")
        # The fast push would take cursor N+1; the hub must not let it commit (and a
        # subscriber read it) before cursor N commits. It waits for the slow push.
        fast = threading.Thread(
            target=lambda: desk.department.push_status(fast_case, ACCEPTED, event_id="fast-1"),
            daemon=True,
        )
        fast.start()
        time.sleep(1.0)
        assert "fast-1" not in _ids(events), "a later cursor became visible before an earlier"
        transaction.rollback()  # the slow push goes on and commits cursor N
    slow.join(timeout=15)
    fast.join(timeout=15)
    assert outcome and not isinstance(outcome[0], grpc.RpcError), outcome
    assert count_events(pg_kit, CaseEventRow.event_id == "slow-1") == 1
    with pg_kit.session() as session:
        by_id = dict(
            session.execute(
                select(CaseEventRow.event_id, CaseEventRow.cursor).where(
                    CaseEventRow.event_id.in_(["slow-1", "fast-1"])
                )
            ).all()
        )
    assert by_id["slow-1"] < by_id["fast-1"]  # the situation this test is about
    follower.join(timeout=5)
    stop.set()
    received = _ids(events)
    assert sorted(received) == ["fast-1", "slow-1"], (
        f"the subscriber never received slow-1 (cursor {by_id['slow-1']}), committed after "
        f"fast-1 (cursor {by_id['fast-1']}) which it had already read: received {received}"
    )


# -- supervision (效能监察) ---------------------------------------------------------------------


def _accepted_for_warning(today: date, limit: int, calendar: workdays.WorkCalendar) -> date:
    """An acceptance day that puts ``today`` in the yellow-warning period of ``limit``."""
    day = today
    while workdays.status_on(today, day, limit, calendar) != "warning":
        day -= timedelta(days=1)
    return day


def _supervision_events(desk: Desk, case: str) -> list[tuple[str, str, str, str]]:
    return [
        (S.SupervisionKind.Name(e.kind).removeprefix("SUPERVISION_KIND_"), e.department,
         e.accepted_on, e.deadline)
        for e in drain(desk.auditor.subscribe_supervision)
        if e.case_number == case
    ]  # fmt: skip


def test_supervision_warns_then_escalates_once_each_to_auditors(any_desk: Desk) -> None:
    desk = any_desk
    kit = desk.kit
    assert kit.running is not None
    calendar = workdays.WorkCalendar.from_file(workdays.SAMPLE_CN_2026)
    today = datetime.now(UTC).date()
    accepted = _accepted_for_warning(today, 10, calendar)
    deadline = workdays.deadline(accepted, 10, calendar)
    late = desk.submit().case_number
    done = desk.submit().case_number
    desk.walk(late, [ACCEPTED, UNDER_REVIEW])
    desk.walk(done, [ACCEPTED, UNDER_REVIEW, APPROVED, COMPLETED])  # finished: never overdue
    with kit.session() as session:
        session.execute(
            update(CaseDepartmentRow)
            .where(CaseDepartmentRow.case_number.in_([late, done]))
            .values(accepted_on=accepted.isoformat(), deadline=deadline.isoformat())
        )
    department = kit.member_id("department")
    services = [CaseService(kit.running.runtime), CaseService(kit.running.runtime)]

    # Twice on the warning day, and from two "hub processes" at once: one warning.
    published = [services[0].supervise(today=today), services[1].supervise(today=today)]
    assert sum(published) <= 1  # (the hub's own loop may have published it already)
    assert _supervision_events(desk, late) == [
        ("WARNING", department, accepted.isoformat(), deadline.isoformat())
    ]
    overdue_day = deadline + timedelta(days=1)
    published = _race(2, lambda i: services[i].supervise(today=overdue_day))
    assert sorted(published) == [0, 1], published
    assert services[0].supervise(today=overdue_day + timedelta(days=5)) == 0
    expected = [
        ("WARNING", department, accepted.isoformat(), deadline.isoformat()),
        ("OVERDUE", department, accepted.isoformat(), deadline.isoformat()),
    ]
    assert _supervision_events(desk, late) == expected
    assert _supervision_events(desk, done) == []
    with kit.session() as session:
        row = session.get(CaseDepartmentRow, (late, department))
        assert row is not None and (row.warned, row.overdue) == (1, 1)

    # The escalations are in the audit log, from the hub, about the department.
    records = list(desk.auditor.query_audit(method=SUPERVISION_METHOD, case_id=late))
    entries = [audit_pb2.AuditEntry.FromString(r.entry) for r in records]
    assert sorted(e.reason for e in entries) == ["OVERDUE", "WARNING"]
    assert {(e.sender, e.recipient, e.decision) for e in entries} == {
        (kit.hub_id, department, audit_pb2.AUDIT_DECISION_ALLOWED)
    }


@pytest.mark.parametrize("member", ["platform", "department", "issuer"])
def test_only_auditors_subscribe_to_supervision(desk: Desk, member: str) -> None:
    client = desk.kit.client(member)
    with pytest.raises(XhubError) as caught:
        drain(client.subscribe_supervision)
    assert (caught.value.code, caught.value.reason_name) == (
        Code.PERMISSION_DENIED,
        "ROLE_REQUIRED",
    )


# -- 补正后重新提交 (resubmission after a supplement request) ----------------------------


def test_resubmission_returns_the_case_to_the_department_that_asked(desk: Desk) -> None:
    case_number = desk.submit().case_number
    desk.department.push_status(
        case_number, SUPPLEMENT, event_id="ask-1", missing_items=["场所平面图"]
    )
    before = count_events(desk.kit, CaseEventRow.case_number == case_number)
    result = desk.platform.resubmit_case(case_number, event_id="again-1", note="已补交平面图")
    assert (result.stage, result.duplicate) == (SUBMITTED, False)
    # A repeat is a duplicate and adds nothing.
    assert desk.platform.resubmit_case(case_number, event_id="again-1").duplicate
    dispatched = [
        case
        for case in desk.department.subscribe_cases(0, timeout=2)
        if case.case_number == case_number
    ]
    assert [case.stage for case in dispatched] == [SUBMITTED, SUBMITTED]
    # The department can accept the resubmitted case.
    accepted = desk.department.push_status(case_number, ACCEPTED, event_id="acc-after")
    assert accepted.stage == ACCEPTED
    assert count_events(desk.kit, CaseEventRow.case_number == case_number) == before + 3


# -- 端到端核验: a department checks what the hub forwards against the platform's signature --


def _dispatched_pair(desk: Desk, tmp_path: Path) -> tuple[case_pb2.DispatchedCase, ...]:
    """A case dispatched, then dispatched again after a supplement with one more material."""
    licence = certificate(desk.kit, "issuer", number="440101000777666")
    desk.kit.client("issuer").publish_certificate(licence)
    plan = upload(desk, tmp_path, b"%PDF plan " + uuid.uuid4().bytes, COMPANY)
    case_number = desk.submit(
        certificate_identifiers=[licence.identifier],
        material_ids=[plan],
        form={"经营场所": "广州市荔湾区示例路1号"},
    ).case_number
    desk.department.push_status(
        case_number, SUPPLEMENT, event_id=event_id(), missing_items=["场所平面图"]
    )
    extra = upload(desk, tmp_path, b"%PDF floor plan " + uuid.uuid4().bytes, COMPANY)
    desk.platform.resubmit_case(case_number, event_id=event_id(), material_ids=[extra])
    first, again = drain(desk.department.subscribe_cases)
    assert [m.material_id for m in again.materials] == [plan, extra]
    return first, again


def test_a_department_verifies_a_dispatched_case_end_to_end(desk: Desk, tmp_path: Path) -> None:
    first, again = _dispatched_pair(desk, tmp_path)
    for dispatched in (first, again):
        submission = desk.department.verify_submission(dispatched)
        assert dict(submission.form) == {"经营场所": "广州市荔湾区示例路1号"}
        assert submission.applicant_name == COMPANY_NAME
    assert len(first.resubmissions) == 0 and len(again.resubmissions) == 1


def _other_members_message(desk: Desk, case: case_pb2.DispatchedCase) -> None:
    """The same submission, signed by a department key instead of the platform's."""
    payload = case_pb2.CaseSubmission.FromString(case.submission.payload)
    case.submission.CopyFrom(seal(payload, desk.kit.bundle("department").signer))


TAMPERING: dict[str, Callable[[Desk, case_pb2.DispatchedCase], object]] = {
    "form changed": lambda desk, case: case.form.__setitem__("经营场所", "另一地址"),
    "applicant renamed": lambda desk, case: setattr(case, "applicant_name", "冒名公司"),
    "certificate added": lambda desk, case: case.certificates.add(identifier="1.2.156.x"),
    "material dropped": lambda desk, case: case.materials.pop(),
    "resubmission dropped": lambda desk, case: case.resubmissions.pop(),
    "another platform named": lambda desk, case: setattr(
        case, "platform", desk.kit.member_id("department")
    ),
    "payload edited": lambda desk, case: setattr(
        case.submission, "payload", case.submission.payload[:-1] + b"\x00"
    ),
    "signed by another member": _other_members_message,
    "foreign message as resubmission": lambda desk, case: case.resubmissions.append(
        case.submission
    ),
}


@pytest.mark.parametrize("tampering", sorted(TAMPERING))
def test_a_case_altered_after_the_platform_signed_it_is_refused(
    desk: Desk, tmp_path: Path, tampering: str
) -> None:
    _, again = _dispatched_pair(desk, tmp_path)
    altered = case_pb2.DispatchedCase()
    altered.CopyFrom(again)
    TAMPERING[tampering](desk, altered)
    assert altered != again
    with pytest.raises(BadResponseError):
        desk.department.verify_submission(altered)
    desk.department.verify_submission(again)  # the genuine case still verifies


def test_resubmission_needs_a_supplement_request(desk: Desk) -> None:
    case_number = desk.submit().case_number
    with pytest.raises(XhubError) as caught:
        desk.platform.resubmit_case(case_number, event_id="early")
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.metadata["current_stage"] == "SUBMITTED"
