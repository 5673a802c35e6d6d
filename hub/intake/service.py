"""IntakeService (一窗受理): items, the one-time checklist, purpose-bound pulls, verification.

Every request's fields are bounded before anything is read (``hub.binding.limits.INTAKE``):
an id over its length or with a control character is refused ``INVALID_ARGUMENT
INVALID_FIELD`` naming the field and its limit.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar

from google.protobuf.message import Message

from xhub.certificates_store import store
from xhub.certificates_store.model import STATUS_NAMES, VALID, CertificateDataError, validate_holder
from xhub.certificates_store.schema import CertificateRow
from xhub.certificates_store.store import HeldCertificate
from xhub.hub.binding.limits import INTAKE, check
from xhub.hub.binding.purpose import bound_case, refusing, reviewed_case
from xhub.hub.binding.rules import (
    LEGAL_REP,
    check_pull,
    check_purpose,
    check_reviewed_references,
)
from xhub.hub.catalog import store as catalog
from xhub.hub.core.db import PreparedCaseRow
from xhub.hub.core.keys import KEYS
from xhub.hub.core.rpc import Service, Unary
from xhub.hub.core.runtime import Call
from xhub.hub.materials import store as materials
from xhub.protocol.envelope import open_signed
from xhub.protocol.errors import AuthenticationError, MalformedError, PermissionDeniedError
from xhub.protocol.signing import KeyVerifier
from xhub.v1 import (
    certificate_pb2,
    envelope_pb2,
    intake_pb2,
    material_pb2,
    registry_pb2,
)

REVIEW_PURPOSE = "办件审查"
"""The use a department's copy is annotated with when its pull names no purpose."""
PREPARED_CASE_LIFETIME = timedelta(hours=24)
USE_COPY_LIFETIME = timedelta(days=30)
R = envelope_pb2
M = TypeVar("M", bound=Message)

NUMBER_LOOKUP_ROLES = (registry_pb2.ROLE_PLATFORM, registry_pb2.ROLE_DEPARTMENT)
"""Who may verify a certificate by its printed number (see ``_verify``)."""


class IntakeService(Service):
    descriptor = intake_pb2.DESCRIPTOR.services_by_name["IntakeService"]

    def unary(self) -> Sequence[Unary[Any]]:
        platform = registry_pb2.ROLE_PLATFORM
        return [
            Unary("GetItem", intake_pb2.ItemLookup, _bounded(_get_item)),
            Unary(
                "PrepareCase", intake_pb2.CasePreparation, _bounded(_prepare_case), role=platform
            ),
            Unary("PullCertificates", intake_pb2.CertificatePull, _bounded(_pull), role=platform),
            Unary(
                "PullCaseCertificates",
                intake_pb2.CaseCertificatePull,
                _bounded(_pull_for_case),
                role=registry_pb2.ROLE_DEPARTMENT,
            ),
            Unary("VerifyCertificate", intake_pb2.CertificateCheck, _bounded(_verify)),
        ]


def _bounded(handler: Callable[[Call[M]], Message]) -> Callable[[Call[M]], Message]:
    """The fields first (``INTAKE``); the pure rules' refusals mapped."""

    def run(call: Call[M]) -> Message:
        check(call.message, INTAKE[type(call.message)])
        return handler(call)

    return refusing(run)


def _get_item(call: Call[intake_pb2.ItemLookup]) -> intake_pb2.ItemLookupResult:
    return intake_pb2.ItemLookupResult(item=catalog.get_item(call.session, call.message.code))


def _holder_code(code: str, code_type: int, field: str) -> str:
    try:
        return validate_holder(code, code_type)
    except CertificateDataError as exc:
        raise MalformedError(str(exc), metadata={"field": field}) from exc


def _prepare_case(call: Call[intake_pb2.CasePreparation]) -> intake_pb2.Checklist:
    request = call.message
    check_purpose(call.header.purpose)
    applicant = _holder_code(request.applicant_code, request.applicant_code_type, "applicant_code")
    call.audit.subject = applicant
    representative = ""
    if request.legal_representative_code:
        representative = _holder_code(
            request.legal_representative_code,
            certificate_pb2.HOLDER_CODE_TYPE_CITIZEN_ID,
            "legal_representative_code",
        )
    item = catalog.get_item(call.session, request.item_code)
    today = datetime.now(UTC).date()
    lines = []
    for material in item.materials:
        line = intake_pb2.ChecklistLine(material=material)
        holder = representative if material.holder == LEGAL_REP else applicant
        earlier = _earlier_material(call, applicant, material, today)
        if not material.certificate_types and earlier is not None:
            _reuse(line, earlier)
        elif not material.certificate_types:
            line.note = "material: the applicant brings it (材料需提交)"
        elif not holder:
            line.note = "no legal representative given (未提供法定代表人)"
        else:
            found = store.latest_for_holder(call.session, holder, list(material.certificate_types))
            usable = [row for row in found if store.status_of(row, today) == VALID]
            if usable:
                line.satisfied = True
                line.certificate.CopyFrom(store.to_ref(usable[0], today))
                line.note = "held in the e-certificate library (已共享, 免提交)"
            elif earlier is not None:
                _reuse(line, earlier)
            elif found:
                row = found[0]
                line.certificate.CopyFrom(store.to_ref(row, today))
                status = STATUS_NAMES[store.status_of(row, today)]
                line.note = f"on record but {status}; the applicant must bring a valid one"
            else:
                line.note = "none on record; the applicant must bring it (需提交)"
                if material.material_types:
                    line.note += " — or a material of type " + "/".join(material.material_types)
        lines.append(line)
    case_id = "PC" + uuid.uuid4().hex[:22].upper()
    now = datetime.now(UTC)
    call.session.add(
        PreparedCaseRow(
            case_id=case_id,
            item_code=item.code,
            platform_member_id=call.caller.member_id,
            applicant_code=applicant,
            legal_representative_code=representative,
            purpose=call.header.purpose,
            created_at=now,
            expires_at=now + PREPARED_CASE_LIFETIME,
        )
    )
    call.audit.case_id = case_id
    return intake_pb2.Checklist(
        case_id=case_id,
        item=item,
        lines=lines,
        applicant_code=applicant,
        applicant_code_type=request.applicant_code_type,
    )


def _earlier_material(
    call: Call[Any], applicant: str, material: intake_pb2.RequiredMaterial, today: date
) -> material_pb2.MaterialRef | None:
    if not material.material_types or material.holder == LEGAL_REP:
        return None
    found = materials.reusable(call.session, applicant, list(material.material_types), today)
    return materials.to_ref(found[0]) if found else None


def _reuse(line: intake_pb2.ChecklistLine, earlier: material_pb2.MaterialRef) -> None:
    line.satisfied = True
    line.earlier_material.CopyFrom(earlier)
    when = earlier.uploaded_at.ToDatetime(tzinfo=UTC).date().isoformat()
    line.note = f"submitted before for case {earlier.source_case} on {when} (已提交过, 免再次提交)"


def _pull(call: Call[intake_pb2.CertificatePull]) -> intake_pb2.PulledCertificates:
    request = call.message
    call.audit.subject = request.holder_code[:32]
    case = bound_case(call)
    check_pull(case, request.holder_code, request.type_codes)
    now = datetime.now(UTC)
    rows = store.latest_for_holder(call.session, request.holder_code, list(request.type_codes))
    # Only certificates that can satisfy a requirement leave the library (data minimisation).
    usable = [r for r in rows if store.status_of(r, now.date()) == VALID]
    return _copies(call, usable, case.case_id, case.purpose, now)


def _pull_for_case(call: Call[intake_pb2.CaseCertificatePull]) -> intake_pb2.PulledCertificates:
    """部门调阅: the certificates the case references (all of them when none is named), for a
    department the case is open at; each with its status today, valid or not (the department
    reviews what the applicant used, and must see one revoked since)."""
    case = reviewed_case(call)
    wanted = list(dict.fromkeys(call.message.certificate_identifiers)) or list(
        dict.fromkeys(case.certificate_identifiers)
    )
    check_reviewed_references(case, certificates=wanted)
    call.audit.case_id = case.case_number
    rows = [row for i in wanted if (row := call.session.get(CertificateRow, i)) is not None]
    purpose = call.header.purpose or REVIEW_PURPOSE
    return _copies(call, rows, case.case_number, purpose, datetime.now(UTC))


def _copies(
    call: Call[Any],
    rows: Sequence[HeldCertificate | CertificateRow],
    case_id: str,
    purpose: str,
    now: datetime,
) -> intake_pb2.PulledCertificates:
    """The issuer-signed certificates, each annotated with this use (用证记录)."""
    today = now.date()
    pulled = []
    for row in rows:
        envelope = envelope_pb2.Envelope()
        envelope.ParseFromString(row.envelope)
        copy = certificate_pb2.PulledCertificate(
            certificate=envelope,
            status=store.status_of(row, today),
            raw_status_code=row.raw_status_code,
            issuer_member_id=row.issuer_member_id,
            annotation=certificate_pb2.UseAnnotation(
                pulled_by=call.caller.member_id, case_id=case_id, purpose=purpose
            ),
        )
        copy.annotation.pulled_at.FromDatetime(now)
        copy.annotation.use_until.FromDatetime(now + USE_COPY_LIFETIME)
        pulled.append(copy)
    return intake_pb2.PulledCertificates(certificates=pulled)


def _verify(call: Call[intake_pb2.CertificateCheck]) -> intake_pb2.CertificateVerification:
    """核验. By identifier, for every member (an identifier names a certificate, no person).
    By printed number only for platforms and departments: a number can be a person's own
    (a 居民身份证's number is the citizen id), so a lookup by number tells whether that person
    holds a certificate; the window checks the paper certificates applicants bring, and a
    department the ones a case's materials show; issuers query their own records and
    auditors the log, so neither needs to probe people. Every lookup records the holder (or
    the probed number, when nothing is found or the caller may not) as the audit subject, so
    ``query_audit(subject=…)`` finds who asked about that person."""
    check = call.message
    by_number = not check.identifier and bool(check.number)
    if by_number:
        call.audit.subject = check.number
    if by_number and not any(call.caller.has(role) for role in NUMBER_LOOKUP_ROLES):
        raise PermissionDeniedError(
            "verifying by number is for platforms and departments; give the identifier",
            metadata={"required_role": "ROLE_PLATFORM,ROLE_DEPARTMENT", "field": "number"},
        )
    row = store.find(
        call.session, identifier=check.identifier, number=check.number, type_code=check.type_code
    )
    call.audit.subject = row.holder_code
    return intake_pb2.CertificateVerification(
        certificate=store.to_ref(row),
        raw_status_code=row.raw_status_code,
        signature_valid=_issuer_signature_holds(call, row),
        version=row.version,
    )


def _issuer_signature_holds(call: Call[Any], row: CertificateRow) -> bool:
    """The stored bytes still open, as the kernel opens any envelope, with the key the
    issuer registered under the signature's key id."""
    envelope = envelope_pb2.Envelope.FromString(row.envelope)

    def issuer_key(key_id: str) -> KeyVerifier:
        # Any key the issuer held: a certificate signed before a rotation stays valid.
        return KEYS.member_key(call.session, key_id, owner=row.issuer_member_id, at=None)

    try:
        open_signed(envelope, certificate_pb2.ElectronicCertificate, issuer_key)
    except (AuthenticationError, MalformedError):
        return False
    return True
