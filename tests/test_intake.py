"""The one-window intake over a running hub (DESIGN.md §6 flows 2–3, IntakeService).

PrepareCase is for platform members, needs a purpose, and answers the one-time checklist
(一次性告知): which certificate satisfies each requirement, and what the applicant must still
bring; expired, suspended, revoked and superseded certificates satisfy nothing and the line
says why.  PullCertificates is bound to the prepared case: only its platform, only its
applicant (or legal representative), only the types the item requires for that holder;
anything else is PERMISSION_DENIED PURPOSE_NOT_BOUND and audited with the holder as a keyed
hash.  Pulled certificates verify offline with nothing but the issuer's key.
VerifyCertificate is open to every member and carries no personal field.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from helpers import refused
from hubkit import HubKit, MemberDef
from sqlalchemy import func, select, update

from xhub.certificates_store.model import (
    CANCELLED,
    CITIZEN_ID,
    EXPIRED,
    REVOKED,
    SUSPENDED,
    USCC,
    VALID,
    Status,
    new_certificate,
    open_certificate,
)
from xhub.certificates_store.schema import CertificateRow
from xhub.connectors import HubClient, XhubError
from xhub.hub.catalog import store as catalog
from xhub.hub.core.db import PreparedCaseRow
from xhub.protocol.codes import make_citizen_id, make_uscc
from xhub.protocol.log import merkle
from xhub.protocol.signing import KeyVerifier
from xhub.v1 import audit_pb2, certificate_pb2, envelope_pb2, intake_pb2

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
def kit(request: pytest.FixtureRequest) -> HubKit:
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


# -- the catalogue ---------------------------------------------------------------------------


def test_get_item_for_any_member(world: World) -> None:
    item = world.department.get_item(ITEM_CODE).item
    assert item.name == "食品经营许可(新办)"
    assert [m.code for m in item.materials] == ["M01", "M02", "M03", "M04"]
    assert list(item.departments) == [world.kit.member_id("department")]
    error = refused(lambda: world.platform.get_item("NO-SUCH-ITEM"), Code.NOT_FOUND, "NOT_FOUND")
    assert error.metadata["item_code"] == "NO-SUCH-ITEM"


# -- PrepareCase -----------------------------------------------------------------------------


@pytest.mark.parametrize("member", ["issuer", "department", "auditor"])
def test_prepare_case_is_for_platform_members_only(world: World, member: str) -> None:
    client = world.kit.client(member)
    error = refused(
        lambda: client.prepare_case(ITEM_CODE, COMPANY, purpose=PURPOSE),
        Code.PERMISSION_DENIED,
        "ROLE_REQUIRED",
    )
    assert error.metadata["required_role"] == "ROLE_PLATFORM"
    assert prepared_cases(world.kit) == 0


@pytest.mark.parametrize("purpose", ["", "   "])
def test_prepare_case_needs_a_purpose(world: World, purpose: str) -> None:
    error = refused(lambda: world.prepare(purpose=purpose), Code.INVALID_ARGUMENT, "INVALID_FIELD")
    assert error.metadata["field"] == "purpose"
    assert prepared_cases(world.kit) == 0


def test_prepare_case_for_an_unknown_item(world: World) -> None:
    error = refused(
        lambda: world.platform.prepare_case("NO-SUCH-ITEM", COMPANY, purpose=PURPOSE),
        Code.NOT_FOUND,
        "NOT_FOUND",
    )
    assert error.metadata["item_code"] == "NO-SUCH-ITEM"
    assert prepared_cases(world.kit) == 0


BAD_USCC = COMPANY[:-1] + ("0" if COMPANY[-1] != "0" else "1")
BAD_CITIZEN_ID = PERSON[:-1] + ("0" if PERSON[-1] != "0" else "1")
MALFORMED_APPLICANTS = [
    ("uscc-bad-check", {"applicant_code": BAD_USCC}, "applicant_code"),
    ("uscc-too-short", {"applicant_code": COMPANY[:-1]}, "applicant_code"),
    ("empty", {"applicant_code": ""}, "applicant_code"),
    ("uscc-typed-as-citizen", {"applicant_code_type": CITIZEN_ID}, "applicant_code"),
    ("citizen-typed-as-uscc", {"applicant_code": PERSON}, "applicant_code"),
    (
        "citizen-bad-check",
        {"applicant_code": BAD_CITIZEN_ID, "applicant_code_type": CITIZEN_ID},
        "applicant_code",
    ),
    ("type-unspecified", {"applicant_code_type": 0}, "applicant_code"),
    (
        "legal-rep-bad-check",
        {"legal_representative_code": BAD_CITIZEN_ID},
        "legal_representative_code",
    ),
    (
        "legal-rep-is-uscc",
        {"legal_representative_code": OTHER_COMPANY},
        "legal_representative_code",
    ),
]


@pytest.mark.parametrize(
    ("fields", "field"),
    [c[1:] for c in MALFORMED_APPLICANTS],
    ids=[c[0] for c in MALFORMED_APPLICANTS],
)
def test_prepare_case_refuses_malformed_codes(
    world: World, fields: dict[str, Any], field: str
) -> None:
    fields = dict(fields)
    applicant = fields.pop("applicant_code", COMPANY)
    kwargs: dict[str, Any] = {"purpose": PURPOSE, "legal_representative_code": PERSON}
    kwargs.update(fields)
    error = refused(
        lambda: world.platform.prepare_case(ITEM_CODE, applicant, **kwargs),
        Code.INVALID_ARGUMENT,
        "INVALID_FIELD",
    )
    assert error.metadata["field"] == field
    assert prepared_cases(world.kit) == 0


def test_checklist_names_the_certificates_and_what_to_bring(kit: HubKit) -> None:
    world = make_world(kit)
    checklist = world.prepare()
    assert checklist.case_id
    assert checklist.item.code == ITEM_CODE
    assert [line.material.code for line in checklist.lines] == ["M01", "M02", "M03", "M04"]
    licence, id_card, premises, rules = checklist.lines

    # The business licence: held, by the provincial issuer, with its validity.
    assert licence.satisfied
    ref = licence.certificate
    assert (ref.identifier, ref.type_code, ref.type_name) == (
        world.licence.identifier,
        LICENCE_TYPE,
        "营业执照",
    )
    assert (ref.issuer_member_id, ref.issuer_name) == (
        kit.member_id("issuer"),
        kit.members["issuer"].spec.name,
    )
    assert (ref.valid_from, ref.valid_until, ref.status) == ("2024-01-10", "2044-01-09", VALID)
    # The legal representative's ID card, issued by the district department (Ed25519 key).
    assert id_card.satisfied
    assert id_card.certificate.identifier == world.id_card.identifier
    assert id_card.certificate.issuer_member_id == kit.member_id("department")
    # Proof of premises: could be a certificate, none on record -> bring it.
    assert not premises.satisfied and not premises.HasField("certificate")
    assert "must bring" in premises.note
    # Food-safety rules: material only -> the applicant brings it.
    assert not rules.satisfied and not rules.HasField("certificate")
    assert "material" in rules.note and "brings" in rules.note
    # The checklist carries no holder's personal field.
    wire = checklist.SerializeToString()
    assert COMPANY_NAME.encode() not in wire and PERSON_NAME.encode() not in wire

    # The prepared case binds later pulls.
    with kit.session() as session:
        case = session.get(PreparedCaseRow, checklist.case_id)
        assert case is not None
        assert (case.platform_member_id, case.item_code, case.purpose) == (
            kit.member_id("platform"),
            ITEM_CODE,
            PURPOSE,
        )
        assert (case.applicant_code, case.legal_representative_code) == (COMPANY, PERSON)
        assert case.expires_at > datetime.now(UTC)


def test_checklist_without_legal_representative(world: World) -> None:
    checklist = world.prepare(legal_representative_code="")
    line = checklist.lines[ID_LINE]
    assert not line.satisfied and not line.HasField("certificate")
    assert "legal representative" in line.note
    assert checklist.lines[LICENCE_LINE].satisfied


def test_checklist_normalises_the_applicant_code(world: World) -> None:
    checklist = world.platform.prepare_case(ITEM_CODE, COMPANY.lower(), purpose=PURPOSE)
    assert checklist.lines[LICENCE_LINE].satisfied


def _expired(world: World) -> Cert:
    cert = certificate(
        world.kit,
        "issuer",
        serial="2010000001",
        issue_date="2010-03-01",
        valid_from="2010-03-01",
        valid_until="2020-02-29",
    )
    world.issuer.publish_certificate(cert)
    return cert


def _changed(status: Status, reason: str) -> Callable[[World], Cert]:
    def make(world: World) -> Cert:
        world.issuer.publish_certificate(world.licence)
        world.issuer.change_certificate_status(world.licence.identifier, status, reason=reason)
        return world.licence

    return make


def _published_revoked(world: World) -> Cert:
    cert = certificate(world.kit, "issuer", serial="2024000002")
    world.issuer.publish_certificate(cert, status=REVOKED, raw_status_code="07")
    return cert


UNUSABLE = [
    # (id, what to publish on a hub with no valid licence, its status, the word in the note)
    ("expired", _expired, EXPIRED, "expired"),
    ("suspended", _changed(SUSPENDED, "责令停业整顿"), SUSPENDED, "suspended"),
    ("revoked", _changed(REVOKED, "吊销营业执照"), REVOKED, "revoked"),
    ("cancelled", _changed(CANCELLED, "公司注销"), CANCELLED, "cancelled"),
    ("revoked-when-published", _published_revoked, REVOKED, "revoked"),
]


@pytest.mark.parametrize(
    ("make", "status", "word"), [c[1:] for c in UNUSABLE], ids=[c[0] for c in UNUSABLE]
)
def test_unusable_certificate_does_not_satisfy(
    hub_kit: HubKit, make: Callable[[World], Cert], status: int, word: str
) -> None:
    world = make_world(hub_kit, publish=False)
    cert = make(world)
    line = world.prepare().lines[LICENCE_LINE]
    assert not line.satisfied, f"a {word} certificate was offered as satisfying"
    assert word in line.note and "must bring" in line.note
    # If the line names the certificate on record, it shows why it cannot be used.
    if line.HasField("certificate"):
        assert (line.certificate.identifier, line.certificate.status) == (cert.identifier, status)
    # VerifyCertificate reports the same status.
    assert world.department.verify_certificate(identifier=cert.identifier).certificate.status == (
        status
    )


def test_a_valid_certificate_beside_a_revoked_one_is_offered(world: World) -> None:
    revoked = _published_revoked(world)
    _expired(world)
    line = world.prepare().lines[LICENCE_LINE]
    assert line.satisfied
    assert line.certificate.identifier == world.licence.identifier != revoked.identifier


def test_the_renewed_version_is_the_one_offered(kit: HubKit) -> None:
    world = make_world(kit)
    v2 = certificate(
        kit,
        "issuer",
        version=2,
        issue_date="2026-01-05",
        valid_until="2046-01-04",
        predecessor=world.licence.identifier,
    )
    world.issuer.publish_certificate(v2)
    line = world.prepare().lines[LICENCE_LINE]
    assert line.satisfied
    assert (line.certificate.identifier, line.certificate.valid_until) == (
        v2.identifier,
        "2046-01-04",
    )
    # A revoked renewal is not replaced by the superseded version 1.
    world.issuer.change_certificate_status(v2.identifier, REVOKED, reason="吊销")
    line = world.prepare().lines[LICENCE_LINE]
    assert not line.satisfied and "revoked" in line.note


# -- PullCertificates ------------------------------------------------------------------------


def test_pull_returns_issuer_signed_copies_that_verify_offline(kit: HubKit) -> None:
    world = make_world(kit)
    checklist = world.prepare()
    case_id = checklist.case_id
    before = datetime.now(UTC) - timedelta(seconds=5)

    [pulled] = world.platform.pull_certificates(
        case_id, COMPANY, [LICENCE_TYPE], purpose=PURPOSE
    ).certificates
    # The SDK verified it against the issuer's registered key.
    assert world.platform.verify_issuer_signature(pulled) == world.licence
    assert (pulled.issuer_member_id, pulled.status, pulled.raw_status_code) == (
        kit.member_id("issuer"),
        VALID,
        "01",
    )
    # Byte for byte as the issuer signed it.
    with kit.session() as session:
        row = session.get(CertificateRow, world.licence.identifier)
        assert row is not None and row.envelope == pulled.certificate.SerializeToString()
    # Offline: only the issuer's member certificate is needed (its P-256 key signs).
    issuer_cert = kit.bundle("issuer").tls_cert
    offline = open_certificate(pulled.certificate, KeyVerifier(issuer_cert.public_key()))  # type: ignore[arg-type]
    assert offline == world.licence
    # The use annotation (加注): who, for which case and purpose, until when.
    note = pulled.annotation
    assert (note.pulled_by, note.case_id, note.purpose) == (
        kit.member_id("platform"),
        case_id,
        PURPOSE,
    )
    pulled_at = note.pulled_at.ToDatetime(tzinfo=UTC)
    assert before <= pulled_at <= datetime.now(UTC) + timedelta(seconds=5)
    assert note.use_until.ToDatetime(tzinfo=UTC) > pulled_at

    # The legal representative's ID card: Ed25519, checked with the department's registered key.
    [id_copy] = world.platform.pull_certificates(
        case_id, PERSON, [ID_TYPE], purpose=PURPOSE
    ).certificates
    member = world.platform.get_member(kit.member_id("department"))
    [key] = [k for k in member.signing_keys if k.key_id == id_copy.certificate.signatures[0].key_id]
    assert open_certificate(id_copy.certificate, KeyVerifier.from_der(key.public_key_der)) == (
        world.id_card
    )
    assert id_copy.issuer_member_id == kit.member_id("department")

    # The allowed pulls are audited with the holder as a keyed hash only.
    records = list(world.auditor.query_audit(case_id=case_id, method=PULL, decision=ALLOWED))
    assert [r.subject for r in records] == [COMPANY, PERSON]
    record = records[0]
    entry = audit_pb2.AuditEntry.FromString(record.entry)
    assert (entry.sender, entry.case_id, entry.decision) == (
        kit.member_id("platform"),
        case_id,
        ALLOWED,
    )
    assert entry.subject_hmac == subject_hmac(kit, COMPANY)
    assert COMPANY.encode() not in record.entry
    assert record.subject == COMPANY


def test_pull_receipt_is_the_pulls_own(world: World) -> None:
    """The receipt ``pull_certificates`` returns proves the pull, not an issuer lookup made
    to verify it."""
    case_id = world.prepare().case_id
    answer = world.platform.pull_certificates(case_id, COMPANY, [LICENCE_TYPE], purpose=PURPOSE)
    receipt = answer.header.receipt
    assert answer.header.HasField("receipt")
    record = audit_record(world, receipt.leaf_hash)
    assert audit_pb2.AuditEntry.FromString(record.entry).method == PULL


def test_a_tampered_pulled_copy_fails_the_sdk_check(world: World) -> None:
    case_id = world.prepare().case_id
    [pulled] = world.platform.pull_certificates(
        case_id, COMPANY, [LICENCE_TYPE], purpose=PURPOSE
    ).certificates
    forged = certificate(world.kit, "issuer", valid_until="2099-12-31")
    pulled.certificate.payload = forged.SerializeToString()
    with pytest.raises(XhubError) as caught:
        world.platform.verify_issuer_signature(pulled)
    assert caught.value.reason_name == "BAD_RESPONSE"


@dataclass(frozen=True)
class BadPull:
    case: str  # "none", "unknown", "own", "other-platform", "expired"
    holder: str
    types: tuple[str, ...]


BAD_PULLS = [
    ("no-case-id", BadPull("none", COMPANY, (LICENCE_TYPE,))),
    ("unknown-case-id", BadPull("unknown", COMPANY, (LICENCE_TYPE,))),
    ("another-platform", BadPull("other-platform", COMPANY, (LICENCE_TYPE,))),
    ("expired-case", BadPull("expired", COMPANY, (LICENCE_TYPE,))),
    ("holder-not-applicant", BadPull("own", OTHER_COMPANY, (LICENCE_TYPE,))),
    ("type-not-required", BadPull("own", COMPANY, (OTHER_TYPE,))),
    ("required-and-unrequired-type", BadPull("own", COMPANY, (LICENCE_TYPE, OTHER_TYPE))),
    ("legal-rep-type-for-company", BadPull("own", COMPANY, (ID_TYPE,))),
    ("company-type-for-legal-rep", BadPull("own", PERSON, (LICENCE_TYPE,))),
    ("no-type", BadPull("own", COMPANY, ())),
]


@pytest.mark.parametrize("bad", [c[1] for c in BAD_PULLS], ids=[c[0] for c in BAD_PULLS])
def test_pull_outside_the_prepared_case_is_denied_and_audited(world: World, bad: BadPull) -> None:
    kit = world.kit
    case_id = world.prepare().case_id
    client = world.platform
    if bad.case == "none":
        case_id = ""
    elif bad.case == "unknown":
        case_id = "PC" + "0" * 22
    elif bad.case == "other-platform":
        kit.add_member(
            MemberDef(
                "platform2",
                "广州市荔湾区政务服务中心",
                "440103",
                ("platform",),
                "MB2C9074",
                "onewindow",
            )
        )
        client = kit.client("platform2")
    elif bad.case == "expired":
        with kit.session() as session:
            session.execute(
                update(PreparedCaseRow)
                .where(PreparedCaseRow.case_id == case_id)
                .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
            )
    error = refused(
        lambda: client.pull_certificates(case_id, bad.holder, list(bad.types), purpose=PURPOSE),
        Code.PERMISSION_DENIED,
        "PURPOSE_NOT_BOUND",
    )
    leaf = bytes.fromhex(error.metadata["audit_leaf"])
    record = audit_record(world, leaf, method=PULL, decision=DENIED)
    entry = audit_pb2.AuditEntry.FromString(record.entry)
    assert (entry.sender, entry.decision, entry.reason) == (
        client.member_id,
        DENIED,
        "PURPOSE_NOT_BOUND",
    )
    assert (entry.case_id, entry.purpose) == (case_id, PURPOSE)
    # The holder: in clear for the auditor only, a keyed hash in the tamper-evident entry.
    assert record.subject == bad.holder
    assert entry.subject_hmac == subject_hmac(kit, bad.holder)
    assert bad.holder.encode() not in record.entry
    with pytest.raises(XhubError) as caught:
        list(world.platform.query_audit(subject=bad.holder))
    assert caught.value.reason_name == "ROLE_REQUIRED"


def _company_case(world: World) -> tuple[intake_pb2.Checklist, str, str]:
    return world.prepare(), COMPANY, PERSON


def _self_represented_case(world: World) -> tuple[intake_pb2.Checklist, str, str]:
    """An individual (个体) applies and is named as its own legal representative."""
    licence = certificate(
        world.kit,
        "issuer",
        serial="2024000009",
        number="440103600123456",
        holder_name=PERSON_NAME,
        holder_code=PERSON,
        holder_code_type=CITIZEN_ID,
    )
    world.issuer.publish_certificate(licence)
    checklist = world.platform.prepare_case(
        ITEM_CODE,
        PERSON,
        purpose=PURPOSE,
        applicant_code_type=CITIZEN_ID,
        legal_representative_code=PERSON,
    )
    return checklist, PERSON, PERSON


@pytest.mark.parametrize("prepare", [_company_case, _self_represented_case])
def test_every_satisfied_line_can_be_pulled(
    world: World, prepare: Callable[[World], tuple[intake_pb2.Checklist, str, str]]
) -> None:
    """What the checklist offers for a case, its platform may pull for that case."""
    checklist, applicant, representative = prepare(world)
    offered = [line for line in checklist.lines if line.satisfied]
    assert [line.material.code for line in offered] == ["M01", "M02"]
    for line in offered:
        holder = representative if line.material.holder == LEGAL_REP else applicant
        pulled = world.platform.pull_certificates(
            checklist.case_id, holder, [line.certificate.type_code], purpose=PURPOSE
        ).certificates
        identifiers = [world.platform.verify_issuer_signature(p).identifier for p in pulled]
        assert line.certificate.identifier in identifiers


def test_pull_names_the_purpose_of_its_case(world: World) -> None:
    """CertificatePull: "case_id and purpose are required" (intake.proto; DOMAIN.md: every
    certificate request names a required purpose), and it is the one the case was prepared for:
    the audit entry records the header's purpose, so another one would misstate the use."""
    case_id = world.prepare().case_id
    with pytest.raises(XhubError) as caught:
        world.platform.pull_certificates(case_id, COMPANY, [LICENCE_TYPE], purpose="")
    assert (caught.value.code, caught.value.reason_name) in {
        (Code.INVALID_ARGUMENT, "INVALID_FIELD"),
        (Code.PERMISSION_DENIED, "PURPOSE_NOT_BOUND"),
    }
    refused(
        lambda: world.platform.pull_certificates(
            case_id, COMPANY, [LICENCE_TYPE], purpose="市场营销"
        ),
        Code.PERMISSION_DENIED,
        "PURPOSE_NOT_BOUND",
    )


def test_pull_needs_the_platform_role(world: World) -> None:
    case_id = world.prepare().case_id
    refused(
        lambda: world.department.pull_certificates(
            case_id, COMPANY, [LICENCE_TYPE], purpose=PURPOSE
        ),
        Code.PERMISSION_DENIED,
        "ROLE_REQUIRED",
    )


def test_pull_returns_the_renewed_version(world: World) -> None:
    v2 = certificate(world.kit, "issuer", version=2, issue_date="2026-01-05")
    world.issuer.publish_certificate(v2)
    case_id = world.prepare().case_id
    [pulled] = world.platform.pull_certificates(
        case_id, COMPANY, [LICENCE_TYPE], purpose=PURPOSE
    ).certificates
    assert world.platform.verify_issuer_signature(pulled).identifier == v2.identifier


# -- VerifyCertificate -----------------------------------------------------------------------


def _verify_wire(
    client: HubClient, *, identifier: str = "", number: str = "", type_code: str = ""
) -> bytes:
    """The exact bytes of a VerifyCertificate response, as they crossed the wire."""
    check = intake_pb2.CertificateCheck(identifier=identifier, number=number, type_code=type_code)
    envelope = client.transport.seal(check)
    response = client.transport.intake.VerifyCertificate(
        intake_pb2.VerifyCertificateRequest(envelope=envelope), timeout=10
    )
    return bytes(response.SerializeToString())


@pytest.mark.parametrize("member", ["department", "auditor", "platform", "issuer"])
@pytest.mark.parametrize("by", ["identifier", "number"])
def test_verify_certificate_without_personal_fields(world: World, member: str, by: str) -> None:
    client = world.kit.client(member)
    check = (
        {"identifier": world.licence.identifier}
        if by == "identifier"
        else {"number": world.licence.number, "type_code": LICENCE_TYPE}
    )
    result = client.verify_certificate(**check)
    ref = result.certificate
    assert (ref.identifier, ref.type_code, ref.type_name, ref.status) == (
        world.licence.identifier,
        LICENCE_TYPE,
        "营业执照",
        VALID,
    )
    assert (ref.issuer_member_id, ref.issuer_name) == (
        world.kit.member_id("issuer"),
        world.kit.members["issuer"].spec.name,
    )
    assert (ref.valid_from, ref.valid_until) == ("2024-01-10", "2044-01-09")
    assert (result.signature_valid, result.version, result.raw_status_code) == (True, 1, "01")
    wire = _verify_wire(client, **check)
    for personal in (COMPANY, COMPANY_NAME, PERSON_NAME, PERSON):
        assert personal.encode() not in wire, f"{personal} leaked into the verification"


def test_verify_reports_status_and_ed25519_signatures(world: World) -> None:
    ident = world.department.verify_certificate(identifier=world.id_card.identifier)
    assert ident.signature_valid and ident.certificate.status == VALID
    assert PERSON.encode() not in _verify_wire(world.issuer, identifier=world.id_card.identifier)
    world.issuer.change_certificate_status(world.licence.identifier, REVOKED, reason="吊销")
    revoked = world.department.verify_certificate(identifier=world.licence.identifier)
    assert (revoked.certificate.status, revoked.signature_valid) == (REVOKED, True)


def test_verify_detects_stored_bytes_that_no_longer_verify(world: World) -> None:
    with world.kit.session() as session:
        row = session.get(CertificateRow, world.licence.identifier)
        assert row is not None
        envelope = envelope_pb2.Envelope.FromString(row.envelope)
        envelope.payload = envelope.payload.replace(b"2044-01-09", b"2099-01-09")
        row.envelope = envelope.SerializeToString()
    result = world.department.verify_certificate(identifier=world.licence.identifier)
    assert result.signature_valid is False


@pytest.mark.parametrize(
    ("check", "code", "reason"),
    [
        ({"identifier": "1.2.156.3005.2.NOPE"}, Code.NOT_FOUND, "NOT_FOUND"),
        ({"number": "NO-SUCH-NUMBER", "type_code": LICENCE_TYPE}, Code.NOT_FOUND, "NOT_FOUND"),
        ({"number": "440101000123456", "type_code": ID_TYPE}, Code.NOT_FOUND, "NOT_FOUND"),
        ({}, Code.INVALID_ARGUMENT, "INVALID_FIELD"),
        ({"number": "440101000123456"}, Code.INVALID_ARGUMENT, "INVALID_FIELD"),
        ({"type_code": LICENCE_TYPE}, Code.INVALID_ARGUMENT, "INVALID_FIELD"),
    ],
    ids=[
        "unknown-identifier",
        "unknown-number",
        "number-of-other-type",
        "nothing",
        "number-only",
        "type-only",
    ],
)
def test_verify_refusals(world: World, check: dict[str, str], code: Code, reason: str) -> None:
    refused(lambda: world.department.verify_certificate(**check), code, reason)
