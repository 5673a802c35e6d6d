"""The case-dispatch world the tests/test_cases_*.py files share: a hub with two platforms,
two departments and three items, the clients of one hub (``Desk``), and helpers.

Fixtures (registered for the suite by tests/conftest.py): ``case_kit``/``desk`` (SQLite, fresh
per test), ``any_case_kit``/``any_desk`` (SQLite and PostgreSQL), ``shared_desk`` (one SQLite
hub per module, for tests that leave no case state another test in the module reads).
"""

from __future__ import annotations

import sys
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeAlias, TypeVar

import grpc
import pytest
from hubkit import DEFAULT_MEMBERS, HubKit, MemberDef
from sqlalchemy import func, select, update

from xhub.certificates_store.model import USCC, new_certificate
from xhub.connectors import HubClient
from xhub.hub.catalog import store as catalog
from xhub.hub.core.db import CaseDepartmentRow, CaseEventRow, CaseRow
from xhub.protocol.codes import make_uscc
from xhub.protocol.signing import KeyVerifier
from xhub.v1 import case_pb2, certificate_pb2, intake_pb2

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
def case_kit(tmp_path: Path) -> Iterator[HubKit]:
    """A running hub on SQLite."""
    with make_kit(tmp_path).start() as running:
        yield running


@pytest.fixture(
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
    ids=["sqlite", "postgres"],
)
def any_case_kit(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[HubKit]:
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
def desk(case_kit: HubKit) -> Desk:
    return Desk(case_kit)


@pytest.fixture
def any_desk(any_case_kit: HubKit) -> Desk:
    return Desk(any_case_kit)


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


@pytest.fixture(scope="module")
def shared_desk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Desk]:
    """One hub for a whole module: its tests only read, or are refused before any write."""
    with make_kit(tmp_path_factory.mktemp("cases-shared")).start() as running:
        yield Desk(running)


def race(n: int, fn: Callable[[int], Any]) -> list[Any]:
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


def age(kit: HubKit, case_number: str, minutes: float) -> None:
    """Pretend the case was submitted ``minutes`` ago."""
    with kit.session() as session:
        session.execute(
            update(CaseRow)
            .where(CaseRow.case_number == case_number)
            .values(submitted_at=datetime.now(UTC) - timedelta(minutes=minutes))
        )
