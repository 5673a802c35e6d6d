"""HubClient's e-certificate operations (issuers): publish, change status."""

from __future__ import annotations

from typing import TypeAlias

from xhub.connectors.sdk.services.base import Calls
from xhub.protocol.envelope import seal
from xhub.v1 import certificate_pb2

CertificateStatus: TypeAlias = certificate_pb2.CertificateStatus.ValueType


class CertificateCalls(Calls):
    """HubClient's e-certificate operations (issuers): publish, change status."""

    # -- e-certificates and intake ---------------------------------------------

    def publish_certificate(
        self,
        certificate: certificate_pb2.ElectronicCertificate,
        *,
        status: CertificateStatus = certificate_pb2.CERTIFICATE_STATUS_VALID,
        raw_status_code: str = "",
    ) -> certificate_pb2.PublicationResult:
        """Sign ``certificate`` as its issuer and publish it (idempotent by identifier+version).

        Raises: MalformedError (an invalid certificate), PermissionDeniedError (not an issuer,
        or another issuer's certificate), AlreadyExistsError (VERSION_CONFLICT).
        """
        signed = seal(certificate, self.bundle.signer)
        return self.transport.call(
            self.transport.certificates.PublishCertificate,
            certificate_pb2.PublishCertificateRequest,
            certificate_pb2.CertificatePublication(
                certificate=signed, status=status, raw_status_code=raw_status_code
            ),
            certificate_pb2.PublicationResult,
            idempotent=True,
        )

    def change_certificate_status(
        self,
        identifier: str,
        status: CertificateStatus,
        *,
        reason: str = "",
        raw_status_code: str = "",
    ) -> certificate_pb2.StatusChangeResult:
        """Change the status of one of this issuer's certificates (not retried).

        Raises: NotFoundError, PermissionDeniedError, FailedPreconditionError
        (STATUS_TRANSITION), MalformedError.
        """
        return self.transport.call(
            self.transport.certificates.ChangeCertificateStatus,
            certificate_pb2.ChangeCertificateStatusRequest,
            certificate_pb2.CertificateStatusChange(
                identifier=identifier, status=status, reason=reason, raw_status_code=raw_status_code
            ),
            certificate_pb2.StatusChangeResult,
            idempotent=False,
        )
