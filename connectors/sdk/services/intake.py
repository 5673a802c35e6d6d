"""HubClient's intake operations (platforms): items, case preparation, certificate pulls."""

from __future__ import annotations

from typing import TypeAlias

from xhub.connectors.sdk._internal.verify import (
    issuers_to_fetch,
    verify_case_certificates,
    verify_dispatched_case,
    verify_pulled,
    verify_pulled_certificate,
)
from xhub.connectors.sdk.services.registry import RegistryCalls
from xhub.protocol.errors import BadResponseError
from xhub.v1 import case_pb2, certificate_pb2, intake_pb2

HolderCodeType: TypeAlias = certificate_pb2.HolderCodeType.ValueType
REVIEW_PURPOSE = "办件审查"
"""The purpose a department's reading of a case it reviews names (部门调阅)."""


class IntakeCalls(RegistryCalls):
    """HubClient's intake operations (platforms): items, case preparation, certificate pulls."""

    def get_item(self, code: str) -> intake_pb2.ItemLookupResult:
        """A catalogue item (事项) by code; the answer's ``item``. Raises: NotFoundError."""
        return self.transport.call(
            self.transport.intake.GetItem,
            intake_pb2.GetItemRequest,
            intake_pb2.ItemLookup(code=code),
            intake_pb2.ItemLookupResult,
            idempotent=True,
        )

    def prepare_case(
        self,
        item_code: str,
        applicant_code: str,
        *,
        purpose: str,
        applicant_code_type: HolderCodeType = certificate_pb2.HOLDER_CODE_TYPE_USCC,
        legal_representative_code: str = "",
    ) -> intake_pb2.Checklist:
        """The one-time checklist (一次性告知) for an application; platform members only.

        The hub-signed checklist is remembered: ``submit_case`` signs its applicant, item
        and prepared case, and ``pull_certificates`` checks holders against it.

        Raises: PermissionDeniedError (not a platform, no purpose), NotFoundError (no such
        item), MalformedError (a bad applicant code), BadResponseError (the checklist is for
        another item or applicant than asked).
        """
        checklist = self.transport.call(
            self.transport.intake.PrepareCase,
            intake_pb2.PrepareCaseRequest,
            intake_pb2.CasePreparation(
                item_code=item_code,
                applicant_code=applicant_code,
                applicant_code_type=applicant_code_type,
                legal_representative_code=legal_representative_code,
            ),
            intake_pb2.Checklist,
            idempotent=False,
            purpose=purpose,
        )
        if checklist.item.code != item_code or (
            checklist.applicant_code.upper() != applicant_code.strip().upper()
        ):
            raise BadResponseError(
                f"checklist {checklist.case_id[:40]!r} is for item {checklist.item.code!r} and "
                f"another applicant than asked (item {item_code!r})"
            )
        self._prepared[checklist.case_id] = checklist
        self._holders[checklist.case_id] = frozenset(
            {checklist.applicant_code.upper(), legal_representative_code.strip().upper()} - {""}
        )
        return checklist

    def pull_certificates(
        self, case_id: str, holder_code: str, type_codes: list[str], *, purpose: str
    ) -> intake_pb2.PulledCertificates:
        """Certificates bound to a prepared case, each verified against its issuer's key.

        First the pull, then the issuers' member records not yet trusted, then the offline
        check of every certificate (``_internal.verify.verify_pulled``): the issuer's
        signature, and — read from the issuer's signed bytes, not the hub's wrapper — the
        holder (the one asked for, and the prepared case's applicant or legal
        representative when this client prepared it), the type (one asked for) and the
        identifier (not repeated).

        Raises: PermissionDeniedError (purpose or case binding), NotFoundError (no such
        case), MalformedError, BadResponseError (a certificate fails its issuer's check, or
        names another holder or type than asked).
        """
        asked = intake_pb2.CertificatePull(holder_code=holder_code, type_codes=type_codes)
        answer = self.transport.call(
            self.transport.intake.PullCertificates,
            intake_pb2.PullCertificatesRequest,
            asked,
            intake_pb2.PulledCertificates,
            idempotent=True,
            case_id=case_id,
            purpose=purpose,
        )
        self._trust(issuers_to_fetch(answer))
        verify_pulled(answer, self._trusted, asked, holders=self._holders.get(case_id, frozenset()))
        return answer

    def pull_case_certificates(
        self,
        case_number: str,
        identifiers: list[str] | None = None,
        *,
        dispatched: case_pb2.DispatchedCase | None = None,
        purpose: str = REVIEW_PURPOSE,
    ) -> intake_pb2.PulledCertificates:
        """Departments: the certificates a case dispatched to this department references
        (部门调阅), while the case is open here; ``identifiers`` (default: every one).

        Each is verified against its issuer's registered key (``verify_pulled``), then
        against what was asked (``verify_case_certificates``). Given ``dispatched`` (the case
        as SubscribeCases delivered it), the case is first checked end to end against the
        platform's signatures, and the pull must bring exactly the references the platform
        signed (or those of ``identifiers``, each of which it must sign).

        Raises: PermissionDeniedError (not a department: ROLE_REQUIRED; another
        department's case: NOT_YOUR_CASE; a certificate the case does not reference:
        PURPOSE_NOT_BOUND), FailedPreconditionError (CASE_CLOSED: the case's stage here
        is final), NotFoundError (no such case), MalformedError, BadResponseError (a
        certificate fails its issuer's check or is not one asked for).
        """
        references: list[str] | None = None
        if dispatched is not None:
            self._trust([dispatched.platform])
            verify_dispatched_case(dispatched, self._trusted, hub_id=self.hub_id)
            references = [c.identifier for c in dispatched.certificates]
        asked = list(identifiers or [])
        answer = self.transport.call(
            self.transport.intake.PullCaseCertificates,
            intake_pb2.PullCaseCertificatesRequest,
            intake_pb2.CaseCertificatePull(certificate_identifiers=asked),
            intake_pb2.PulledCertificates,
            idempotent=True,
            case_id=case_number,
            purpose=purpose,
        )
        self._trust(issuers_to_fetch(answer))
        certificates = verify_pulled(answer, self._trusted)
        if references is not None and (foreign := [i for i in asked if i not in references]):
            raise BadResponseError(
                f"case {case_number}: the platform's signed references do not name "
                + ", ".join(foreign)
            )
        wanted = asked or references
        verify_case_certificates(
            answer,
            certificates,
            case_number=case_number,
            wanted=wanted if wanted is not None else [c.identifier for c in certificates],
            complete=wanted is not None,
        )
        return answer

    def verify_issuer_signature(
        self, pulled: certificate_pb2.PulledCertificate
    ) -> certificate_pb2.ElectronicCertificate:
        """Check a pulled certificate against its issuer's registered keys (offline once the
        issuer is trusted; otherwise its member record is fetched first).

        Raises: BadResponseError; NotFoundError when the hub knows no such issuer.
        """
        if pulled.certificate.signatures:
            self._trust([pulled.issuer_member_id])
        return verify_pulled_certificate(pulled, self._trusted)

    def verify_certificate(
        self, *, identifier: str = "", number: str = "", type_code: str = ""
    ) -> intake_pb2.CertificateVerification:
        """Ask the hub whether a certificate exists and is valid (核验).

        Raises: MalformedError (neither identifier nor number and type), NotFoundError.
        """
        return self.transport.call(
            self.transport.intake.VerifyCertificate,
            intake_pb2.VerifyCertificateRequest,
            intake_pb2.CertificateCheck(identifier=identifier, number=number, type_code=type_code),
            intake_pb2.CertificateVerification,
            idempotent=True,
        )
