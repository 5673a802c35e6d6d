"""The hub's own certificate authority (平台 CA): issuing. Checking is in ``xhub.protocol.pki``.

Member certificates are ECDSA P-256 (``cryptography.x509.verification`` refuses
Ed25519 certificates) and carry the member id as a SAN URI
``urn:xhub:member:<member id>``. Chains are verified with the library's client
verifier, never by hand.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from xhub.protocol.pki import CertificateError, member_uri
from xhub.v1 import registry_pb2

CA_DAYS = 3650
MEMBER_DAYS = 730
# A CA may certify one CA below it: hubs created before CA renewal existed carry
# ``path_length=0``, so a CA they cross-sign could issue nothing that verifies. New CAs
# allow one level, so a later renewal could also be published as a cross-signed
# intermediate; renewal here does not depend on it (``protocol.ca_handover``).
CA_PATH_LENGTH = 1


def _name(common_name: str, organization: str = "xhub") -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


@dataclass(frozen=True)
class CertificateAuthority:
    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey

    @classmethod
    def create(
        cls, common_name: str, *, now: datetime | None = None, days: int = CA_DAYS
    ) -> CertificateAuthority:
        now = now or datetime.now(UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        name = _name(common_name)
        cert = _ca_certificate(name, key.public_key(), name, key, now=now, days=days)
        return cls(cert, key)

    def hand_over_to(self, successor: CertificateAuthority) -> registry_pb2.CaHandover:
        """The statement this CA signs naming ``successor`` (根证书交接): a certificate of the
        successor's key and subject issued by this CA, valid as long as the successor."""
        new = successor.certificate
        statement = _ca_certificate(
            new.subject,
            successor.private_key.public_key(),
            self.certificate.subject,
            self.private_key,
            now=new.not_valid_before_utc + timedelta(minutes=5),
            days=0,
            not_after=min(new.not_valid_after_utc, self.certificate.not_valid_after_utc),
            issuer_key_id=self.certificate.extensions.get_extension_for_class(
                x509.SubjectKeyIdentifier
            ).value,
        )
        return registry_pb2.CaHandover(
            statement_der=statement.public_bytes(Encoding.DER),
            new_ca_certificate_der=new.public_bytes(Encoding.DER),
        )

    def issue(
        self,
        public_key: ec.EllipticCurvePublicKey,
        common_name: str,
        *,
        member_id: str | None = None,
        dns_names: tuple[str, ...] = (),
        ip_addresses: tuple[str, ...] = (),
        server: bool = False,
        days: int = MEMBER_DAYS,
        now: datetime | None = None,
    ) -> x509.Certificate:
        """Issue a client (member) or server (hub) certificate."""
        if not isinstance(public_key.curve, ec.SECP256R1):
            raise CertificateError("member certificates must use ECDSA P-256")
        now = now or datetime.now(UTC)
        names: list[x509.GeneralName] = []
        if member_id:
            names.append(x509.UniformResourceIdentifier(member_uri(member_id)))
        names += [x509.DNSName(d) for d in dns_names]
        names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
        if not names:
            raise CertificateError("a certificate needs a member id or a host name")
        usage = [ExtendedKeyUsageOID.SERVER_AUTH] if server else [ExtendedKeyUsageOID.CLIENT_AUTH]
        ca_ski = self.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        return (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(min(now + timedelta(days=days), self.certificate.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=True,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski.value),
                critical=False,
            )
            .sign(self.private_key, hashes.SHA256())
        )


def _ca_certificate(
    subject: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    now: datetime,
    days: int,
    not_after: datetime | None = None,
    issuer_key_id: x509.SubjectKeyIdentifier | None = None,
) -> x509.Certificate:
    ski = x509.SubjectKeyIdentifier.from_public_key(public_key)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(not_after or now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=CA_PATH_LENGTH), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_key_id or ski),
            critical=False,
        )
        .sign(issuer_key, hashes.SHA256())
    )
