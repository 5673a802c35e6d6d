"""The intake world the tests/test_intake_*.py files share: the food item, a licence (issuer)
and an ID card (department) on a running hub, and helpers.

Fixtures (registered for the suite by tests/conftest.py): ``intake_kit`` (a hub, once on
SQLite and once on PostgreSQL), ``world`` (a fresh SQLite world per test) and
``shared_world`` (one per module, for tests that prepare, publish and change nothing).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from hubkit import HubKit
from sqlalchemy import func, select

from xhub.certificates_store.model import (
    CITIZEN_ID,
    USCC,
    new_certificate,
)
from xhub.connectors import HubClient
from xhub.hub.catalog import store as catalog
from xhub.hub.core.db import PreparedCaseRow
from xhub.protocol.codes import make_citizen_id, make_uscc
from xhub.protocol.log import merkle
from xhub.v1 import audit_pb2, certificate_pb2, intake_pb2

Cert = certificate_pb2.ElectronicCertificate
Code = grpc.StatusCode
LEGAL_REP = intake_pb2.HOLDER_ROLE_LEGAL_REPRESENTATIVE
PULL = "/xhub.v1.IntakeService/PullCertificates"
ALLOWED = audit_pb2.AUDIT_DECISION_ALLOWED
DENIED = audit_pb2.AUDIT_DECISION_DENIED

LICENCE_TYPE = make_uscc("1", "1", "100000", "MB0A0001") + "001"  # 营业执照
ID_TYPE = make_uscc("1", "1", "100000", "MB0A0002") + "111"  # 居民身份证
TITLE_TYPE = make_uscc("1", "1", "100000", "MB0A0005") + "009"  # 不动产权证书
OTHER_TYPE = make_uscc("1", "1", "100000", "MB0A0006") + "020"  # not required by the item
COMPANY = make_uscc("9", "1", "440103", "MA5CQ8XY")
COMPANY_NAME = "广州荔湾示例餐饮有限公司"
OTHER_COMPANY = make_uscc("9", "1", "440103", "MA5CQ9AB")
PERSON = make_citizen_id("440103", "19800101", "123")  # the legal representative (synthetic)
PERSON_NAME = "张示例"
PURPOSE = "食品经营许可(新办)受理"
ITEM_CODE = "11440103MB0A0007XY-FOOD-NEW"

FOOD_ITEM = intake_pb2.Item(
    code=ITEM_CODE,
    name="食品经营许可(新办)",
    time_limit_days=10,
    materials=[
        intake_pb2.RequiredMaterial(code="M01", name="营业执照", certificate_types=[LICENCE_TYPE]),
        intake_pb2.RequiredMaterial(
            code="M02", name="法定代表人身份证", certificate_types=[ID_TYPE], holder=LEGAL_REP
        ),
        intake_pb2.RequiredMaterial(
            code="M03",
            name="经营场所证明",
            certificate_types=[TITLE_TYPE],
            material_types=["LEASE-CONTRACT"],
        ),
        intake_pb2.RequiredMaterial(
            code="M04", name="食品安全管理制度", material_types=["FOOD-SAFETY-RULES"]
        ),
    ],
)
LICENCE_LINE, ID_LINE, PREMISES_LINE, RULES_LINE = range(4)


@pytest.fixture(
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
    ids=["sqlite", "postgres"],
)
def intake_kit(request: pytest.FixtureRequest) -> HubKit:
    """The running hub, once on SQLite and once on PostgreSQL."""
    name = "hub_kit" if request.param == "sqlite" else "hub_kit_pg"
    fixture: HubKit = request.getfixturevalue(name)
    return fixture


@dataclass
class World:
    """A hub with the food item loaded, a licence (issuer) and an ID card (department)."""

    kit: HubKit
    issuer: HubClient
    department: HubClient
    platform: HubClient
    auditor: HubClient
    licence: Cert
    id_card: Cert

    def prepare(self, **kwargs: Any) -> intake_pb2.Checklist:
        kwargs.setdefault("purpose", PURPOSE)
        kwargs.setdefault("legal_representative_code", PERSON)
        return self.platform.prepare_case(ITEM_CODE, COMPANY, **kwargs)


def certificate(kit: HubKit, issuer: str, **overrides: Any) -> Cert:
    spec = kit.members[issuer].spec
    fields: dict[str, Any] = {
        "type_code": LICENCE_TYPE,
        "type_name": "营业执照",
        "issuer_code": spec.uscc,
        "issuer_name": spec.name,
        "serial": "2024000001",
        "number": "440101000123456",
        "holder_name": COMPANY_NAME,
        "holder_code": COMPANY,
        "holder_code_type": USCC,
        "issue_date": "2024-01-10",
        "valid_from": "2024-01-10",
        "valid_until": "2044-01-09",
        "extensions": {"KZ_LEGAL_REP": PERSON_NAME},
    }
    fields.update(overrides)
    return new_certificate(**fields)


def make_world(kit: HubKit, *, publish: bool = True) -> World:
    with kit.session() as session:
        item = intake_pb2.Item()
        item.CopyFrom(FOOD_ITEM)
        item.departments.append(kit.member_id("department"))
        catalog.put_items(session, [item])
    world = World(
        kit=kit,
        issuer=kit.client("issuer"),
        department=kit.client("department"),
        platform=kit.client("platform"),
        auditor=kit.client("auditor"),
        licence=certificate(kit, "issuer"),
        id_card=certificate(
            kit,
            "department",
            type_code=ID_TYPE,
            type_name="居民身份证",
            serial="E2024000777",
            number=PERSON,
            holder_name=PERSON_NAME,
            holder_code=PERSON,
            holder_code_type=CITIZEN_ID,
            valid_from="2020-05-01",
            valid_until="2040-05-01",
            issue_date="2020-05-01",
            extensions={},
        ),
    )
    if publish:
        world.issuer.publish_certificate(world.licence, raw_status_code="01")
        world.department.publish_certificate(world.id_card)
    return world


@pytest.fixture
def world(hub_kit: HubKit) -> World:
    return make_world(hub_kit)


def audit_record(world: World, leaf: bytes, **filters: Any) -> audit_pb2.AuditRecord:
    """The auditor's view of the entry with this leaf hash."""
    for record in world.auditor.query_audit(**filters):
        if merkle.leaf_hash(record.entry) == leaf:
            return record
    raise AssertionError(f"no audit record with leaf hash {leaf.hex()}")


def subject_hmac(kit: HubKit, subject: str) -> bytes:
    key = kit.config.paths.subject_key.read_bytes()
    return hmac.new(key, subject.encode(), hashlib.sha256).digest()


def prepared_cases(kit: HubKit) -> int:
    with kit.session() as session:
        return int(session.scalar(select(func.count()).select_from(PreparedCaseRow)) or 0)


@pytest.fixture(scope="module")
def shared_world(shared_hub_kit: HubKit) -> World:
    return make_world(shared_hub_kit)
