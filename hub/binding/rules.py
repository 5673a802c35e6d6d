"""Purpose binding (用途绑定) as pure checks over the prepared case, read once.

No database and no clock here: ``hub.binding.store`` reads the prepared case (with its
item) in one statement, these functions decide, and the servicers map a ``RuleError`` to
the refusal the wire shows (``hub.binding.purpose.refusal``). ``RuleError`` is also the
domain error of the case rules (``hub.cases.rules``): the rooms above binding share it.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from xhub.protocol.stages import Stage, is_final
from xhub.v1 import intake_pb2

LEGAL_REP = intake_pb2.HOLDER_ROLE_LEGAL_REPRESENTATIVE


class Refusal(enum.Enum):
    """What a broken rule means to the caller (each maps to one refusal on the wire)."""

    MALFORMED = "malformed"  # a field of the request is wrong (metadata names it)
    NOT_FOUND = "not found"  # the request names something that does not exist
    UNBOUND = "purpose not bound"  # outside the prepared case it is bound to
    NOT_YOUR_CASE = "not your case"  # another member's case
    STATUS_TRANSITION = "status transition"  # the case's stage does not allow it
    CASE_CLOSED = "case closed"  # the case is closed at the caller (a final stage there)
    PRECONDITION = "precondition"  # the hub's own state does not allow it


class RuleError(Exception):
    """A pure rule refused: ``refusal`` says which kind, ``metadata`` what to report, and
    ``subject`` (when known) whom the refused call concerns, for its audit entry."""

    def __init__(self, refusal: Refusal, message: str, **metadata: str) -> None:
        super().__init__(message)
        self.refusal = refusal
        self.message = message
        self.metadata: Mapping[str, str] = metadata
        self.subject = ""


def unbound(message: str, **metadata: str) -> RuleError:
    return RuleError(Refusal.UNBOUND, message, **metadata)


@dataclass(frozen=True)
class BoundCase:
    """The prepared case a request is bound to, with the item it was prepared for."""

    case_id: str
    item_code: str
    platform_member_id: str
    applicant_code: str
    legal_representative_code: str
    purpose: str
    expires_at: datetime
    item: intake_pb2.Item | None  # None only if the item left the catalogue

    @property
    def holders(self) -> frozenset[str]:
        """Whose data the case may use: the applicant and its legal representative."""
        return frozenset({self.applicant_code, self.legal_representative_code} - {""})


def check_purpose(purpose: str) -> None:
    """Every certificate use names its purpose (用证事由)."""
    if not purpose.strip():
        raise RuleError(Refusal.MALFORMED, "a purpose (用证事由) is required", field="purpose")


def check_binding(
    case: BoundCase | None, *, case_id: str, caller: str, purpose: str, now: datetime
) -> BoundCase:
    """Steps 1–2 of every bound request: the named prepared case exists, the caller is the
    platform that prepared it, it has not expired, and the purpose is the case's."""
    # 1. The request names a prepared case, and the caller is the platform that prepared it.
    if case is None:
        raise unbound("the request names no prepared case (case_id)", case_id=case_id[:64])
    if case.platform_member_id != caller:
        raise unbound("this case was prepared by another platform", case_id=case.case_id)
    if case.expires_at <= now:
        raise unbound("the prepared case has expired; prepare it again", case_id=case.case_id)
    # 2. The purpose is the one the case was prepared for.
    check_purpose(purpose)
    if purpose != case.purpose:
        raise unbound("the purpose differs from the prepared case's", case_id=case.case_id)
    return case


def item_of(case: BoundCase) -> intake_pb2.Item:
    """The case's item (a prepared case names an item of the catalogue)."""
    if case.item is None:
        code = case.item_code[:64]
        raise RuleError(Refusal.NOT_FOUND, f"no item {code!r} in the catalogue", item_code=code)
    return case.item


def check_pull(case: BoundCase, holder_code: str, type_codes: Sequence[str]) -> None:
    """Steps 3–4 of a certificate pull, after ``check_binding``."""
    # 3. The holder is the applicant (or the legal representative named for this case);
    #    one person may be both, when an individual represents itself.
    roles: dict[str, set[int]] = {case.applicant_code: {intake_pb2.HOLDER_ROLE_UNSPECIFIED}}
    if case.legal_representative_code:
        roles.setdefault(case.legal_representative_code, set()).add(LEGAL_REP)
    if holder_code not in roles:
        raise unbound("the holder is not this case's applicant", case_id=case.case_id)
    # 4. Every type is required by the item for that holder.
    item = item_of(case)
    allowed = {
        type_code
        for material in item.materials
        if material.holder in roles[holder_code]
        for type_code in material.certificate_types
    }
    refused = [t for t in type_codes if t not in allowed]
    if refused or not type_codes:
        raise unbound(
            f"item {item.code} does not require type(s) {', '.join(refused) or '(none)'}",
            case_id=case.case_id,
            type_codes=",".join(refused)[:200],
        )


# -- a department reading the case it reviews (部门调阅) -------------------------------------


@dataclass(frozen=True)
class ReviewedCase:
    """A submitted case as a department reading it sees it, read once: the caller's stage
    there (None: not dispatched to the caller) and the references the platform signed."""

    case_number: str
    applicant_code: str
    stage: Stage | None  # at the calling department
    certificate_identifiers: tuple[str, ...]  # submission's, then each resubmission's
    material_ids: tuple[str, ...]


def check_review(case: ReviewedCase | None, *, case_number: str) -> ReviewedCase:
    """A department may read a case's references while the case is open at it.

    1. The case exists (NOT_FOUND).
    2. It was dispatched to the caller (NOT_YOUR_CASE).
    3. It is open there: its stage at the caller is not final — NOT_ACCEPTED 不予受理,
       REJECTED 不予许可, DELIVERED 出件 and WITHDRAWN 撤回 close it (CASE_CLOSED);
       COMPLETED 办结 is still open (the result is not delivered yet), and so is
       SUPPLEMENT_REQUIRED 补正 (the department waits for the applicant).
    """
    number = case_number[:40]
    # 1.
    if case is None:
        raise RuleError(Refusal.NOT_FOUND, f"no case {number!r}", case_number=number)
    # 2.
    if case.stage is None:
        error = RuleError(
            Refusal.NOT_YOUR_CASE,
            "the case was not dispatched to this department",
            case_number=case.case_number,
        )
        error.subject = case.applicant_code
        raise error
    # 3.
    if is_final(case.stage):
        error = RuleError(
            Refusal.CASE_CLOSED,
            f"the case is closed at this department ({case.stage.label})",
            case_number=case.case_number,
            stage=case.stage.name,
        )
        error.subject = case.applicant_code
        raise error
    return case


def check_reviewed_references(
    case: ReviewedCase, *, certificates: Sequence[str] = (), materials: Sequence[str] = ()
) -> None:
    """Every certificate identifier and material id asked for is one the case references
    (the platform's signed submission or resubmissions): PURPOSE_NOT_BOUND otherwise."""
    foreign_certificates = [c for c in certificates if c not in case.certificate_identifiers]
    foreign_materials = [m for m in materials if m not in case.material_ids]
    if foreign_certificates or foreign_materials:
        named = ", ".join(foreign_certificates + foreign_materials)[:200]
        error = unbound(
            f"case {case.case_number} does not reference {named}",
            case_id=case.case_number,
        )
        error.subject = case.applicant_code
        raise error
