"""CertificateService (证照发布): issuers publish and change status of their certificates."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC
from typing import Any

from sqlalchemy import select

from xhub.certificates_store import store
from xhub.certificates_store.model import CertificateDataError
from xhub.hub.core.db import MemberRow
from xhub.hub.core.keys import KEYS
from xhub.hub.core.rpc import Service, Unary
from xhub.hub.core.runtime import Call
from xhub.protocol.envelope import open_signed
from xhub.protocol.errors import (
    AuthenticationError,
    MalformedError,
    PermissionDeniedError,
    shown,
)
from xhub.protocol.signing import Verifier
from xhub.v1 import certificate_pb2, envelope_pb2, registry_pb2


class CertificateService(Service):
    descriptor = certificate_pb2.DESCRIPTOR.services_by_name["CertificateService"]

    def unary(self) -> Sequence[Unary[Any]]:
        return [
            Unary(
                "PublishCertificate",
                certificate_pb2.CertificatePublication,
                _publish,
                role=registry_pb2.ROLE_ISSUER,
            ),
            Unary(
                "ChangeCertificateStatus",
                certificate_pb2.CertificateStatusChange,
                _change_status,
                role=registry_pb2.ROLE_ISSUER,
            ),
        ]


def _publish(
    call: Call[certificate_pb2.CertificatePublication],
) -> certificate_pb2.PublicationResult:
    publication = call.message
    inner = publication.certificate

    def callers_key(key_id: str) -> Verifier:
        # A certificate published now is signed with one of the caller's keys valid now.
        try:
            return KEYS.member_key(
                call.session,
                key_id,
                owner=call.caller.member_id,
                at=call.header.issued_at.ToDatetime(tzinfo=UTC),
            )
        except AuthenticationError as exc:
            raise AuthenticationError(
                f"the certificate is not signed by a current key of the caller: {exc.message}",
                reason=envelope_pb2.ERROR_REASON_UNKNOWN_KEY,
            ) from exc

    # 1. The certificate is its own envelope, signed by the caller's key over its exact bytes.
    cert = open_signed(inner, certificate_pb2.ElectronicCertificate, callers_key).message
    call.audit.subject = cert.holder_code
    # 2. Only the issuer named in the certificate may publish it.
    uscc = call.session.scalar(
        select(MemberRow.uscc).where(MemberRow.member_id == call.caller.member_id)
    )
    if cert.issuer_code != uscc:
        raise PermissionDeniedError(
            f"the certificate names issuer {shown(cert.issuer_code)!r}; you are {uscc!r}",
            reason=envelope_pb2.ERROR_REASON_NOT_ISSUER,
            metadata={"issuer_code": shown(cert.issuer_code)},
        )
    # 3. Validate and store; an identical re-publish is a no-op.
    try:
        published = store.publish(
            call.session,
            envelope=inner,
            issuer_member_id=call.caller.member_id,
            status=publication.status or certificate_pb2.CERTIFICATE_STATUS_VALID,
            raw_status_code=publication.raw_status_code,
        )
    except CertificateDataError as exc:
        # The model's verdict on the data, refused with the same status and reason.
        raise MalformedError(exc.message, reason=exc.reason, metadata=exc.metadata) from exc
    return certificate_pb2.PublicationResult(
        identifier=published.identifier, already_published=published.already_published
    )


def _change_status(
    call: Call[certificate_pb2.CertificateStatusChange],
) -> certificate_pb2.StatusChangeResult:
    change = call.message
    previous, status = store.change_status(
        call.session,
        identifier=change.identifier,
        issuer_member_id=call.caller.member_id,
        status=change.status,
        reason=change.reason,
        raw_status_code=change.raw_status_code,
    )
    return certificate_pb2.StatusChangeResult(
        identifier=change.identifier, previous_status=previous, status=status
    )
