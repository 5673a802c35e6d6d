"""Shared pieces of the certificate tests: a valid licence, field mutations, signers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from hubkit import HubKit
from sqlalchemy import select

from xhub.certificates_store.identifier import (
    make_identifier,
    parse_identifier,
)
from xhub.certificates_store.model import (
    USCC,
    new_certificate,
)
from xhub.certificates_store.schema import CertificateRow
from xhub.protocol.codes import make_citizen_id, make_uscc
from xhub.protocol.signing import ECDSA_P256, ED25519, KeySigner, generate_private_key
from xhub.v1 import audit_pb2, certificate_pb2

Cert = certificate_pb2.ElectronicCertificate
Code = grpc.StatusCode
PUBLISH = "/xhub.v1.CertificateService/PublishCertificate"
DENIED = audit_pb2.AUDIT_DECISION_DENIED

# Type codes: a defining ministry's USCC + 3 digits (synthetic).
LICENCE_TYPE = make_uscc("1", "1", "100000", "MB0A0001") + "001"  # 营业执照
ID_TYPE = make_uscc("1", "1", "100000", "MB0A0002") + "111"  # 居民身份证
ISSUER_CODE = make_uscc("1", "1", "440100", "MB0A0003")
COMPANY = make_uscc("9", "1", "440103", "MA5CQ8XY")
PERSON = make_citizen_id("440103", "19800101", "123")
ALNUM = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"

ECDSA_SIGNER = KeySigner(generate_private_key(ECDSA_P256))
ED25519_SIGNER = KeySigner(generate_private_key(ED25519))


def licence(**overrides: Any) -> Cert:
    """A valid business licence (营业执照) for COMPANY; keyword arguments override fields."""
    fields: dict[str, Any] = {
        "type_code": LICENCE_TYPE,
        "type_name": "营业执照",
        "issuer_code": ISSUER_CODE,
        "issuer_name": "广州市市场监督管理局",
        "serial": "2024000001",
        "number": "440101000123456",
        "holder_name": "广州荔湾示例餐饮有限公司",
        "holder_code": COMPANY,
        "holder_code_type": USCC,
        "issue_date": "2024-01-10",
        "valid_from": "2024-01-10",
        "valid_until": "2044-01-09",
        "division_code": "440103",
        "extensions": {"KZ_LEGAL_REP": "张三", "KZ_CAPITAL": "100万元"},
    }
    fields.update(overrides)
    return new_certificate(**fields)


# -- mutations shared by the model and the hub tests ----------------------------------------


def _set(**fields: Any) -> Callable[[Cert], None]:
    def mutate(cert: Cert) -> None:
        for name, value in fields.items():
            setattr(cert, name, value)

    return mutate


def _wrong_check(cert: Cert) -> None:
    wrong = "0" if cert.identifier[-1] != "0" else "1"
    cert.identifier = cert.identifier[:-1] + wrong


def _other_issuer_in_identifier(cert: Cert) -> None:
    cert.identifier = make_identifier(LICENCE_TYPE, COMPANY, "2024000001").text


def _other_type_in_identifier(cert: Cert) -> None:
    cert.identifier = make_identifier(ID_TYPE, ISSUER_CODE, "2024000001").text


def _version_2_identifier(cert: Cert) -> None:
    cert.identifier = make_identifier(LICENCE_TYPE, ISSUER_CODE, "2024000001", 2).text


def _extension(key: str) -> Callable[[Cert], None]:
    def mutate(cert: Cert) -> None:
        cert.extensions[key] = "x"

    return mutate


# -- over a running hub -------------------------------------------------------------------


def issued_by(kit: HubKit, member: str = "issuer", **overrides: Any) -> Cert:
    """A licence naming ``member`` (its USCC and name) as issuer."""
    spec = kit.members[member].spec
    return licence(issuer_code=spec.uscc, issuer_name=spec.name, **overrides)


def rows(kit: HubKit, cert: Cert) -> list[CertificateRow]:
    """Every stored version of ``cert`` (same type, issuer, serial), oldest first."""
    parsed = parse_identifier(cert.identifier)
    base = f"{parsed.type_code}.{parsed.issuer_code}.{parsed.serial}"
    with kit.session() as session:
        found = list(
            session.scalars(
                select(CertificateRow)
                .where(CertificateRow.base_identifier == base)
                .order_by(CertificateRow.version)
            )
        )
        session.expunge_all()
    return found
