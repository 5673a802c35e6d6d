"""PullCertificates over a running hub (DESIGN.md §6 flow 3): bound to the prepared case — only
its platform, only its applicant (or legal representative), only the types the item requires
for that holder; anything else is PERMISSION_DENIED PURPOSE_NOT_BOUND and audited with the
holder as a keyed hash. Pulled certificates verify offline with nothing but the issuer's
key. The pure binding rules are tabled in tests/test_binding_rules.py."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from helpers import refused
from hubkit import HubKit, MemberDef
from intake_world import (
    ALLOWED,
    COMPANY,
    DENIED,
    ID_TYPE,
    ITEM_CODE,
    LEGAL_REP,
    LICENCE_TYPE,
    OTHER_COMPANY,
    OTHER_TYPE,
    PERSON,
    PERSON_NAME,
    PULL,
    PURPOSE,
    Code,
    World,
    audit_record,
    certificate,
    make_world,
    subject_hmac,
)
from sqlalchemy import update

from xhub.certificates_store.model import (
    CITIZEN_ID,
    VALID,
    open_certificate,
)
from xhub.certificates_store.schema import CertificateRow
from xhub.connectors import XhubError
from xhub.hub.core.db import PreparedCaseRow
from xhub.protocol.signing import KeyVerifier
from xhub.v1 import audit_pb2, intake_pb2

# -- PullCertificates ------------------------------------------------------------------------


def test_pull_returns_issuer_signed_copies_that_verify_offline(intake_kit: HubKit) -> None:
    kit = intake_kit
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
    # Offline: only the issuer's registered signing key is needed.
    offline = open_certificate(pulled.certificate, kit.bundle("issuer").signer.verifier())
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
