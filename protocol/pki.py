"""Offline checks on the hub's PKI (no database, no network).

Member certificates carry the member id as a SAN URI ``urn:xhub:member:<member id>``.
Chains are verified with ``cryptography``'s client verifier, never by hand. Issuing lives
in the hub (``xhub.hub.core.ca``); checking lives here so the SDK and the hub share it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

MEMBER_URI_PREFIX = "urn:xhub:member:"


class CertificateError(ValueError):
    """A certificate does not chain to the hub CA or names no member."""


class CertificateExpired(CertificateError):
    """A certificate is outside its validity period (expired, or not yet valid)."""


def when(moment: datetime) -> str:
    """A certificate date as every message shows it: ``2026-12-01 09:30:00 UTC``."""
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


def check_validity(cert: x509.Certificate, what: str, *, at: datetime | None = None) -> None:
    """Raise ``CertificateExpired`` naming ``what`` and the date unless ``cert`` is valid ``at``."""
    at = at or datetime.now(UTC)
    if at >= cert.not_valid_after_utc:
        raise CertificateExpired(f"{what} expired on {when(cert.not_valid_after_utc)}")
    if at < cert.not_valid_before_utc:
        raise CertificateExpired(
            f"{what} is not valid yet: valid from {when(cert.not_valid_before_utc)}"
        )


def member_uri(member_id: str) -> str:
    return MEMBER_URI_PREFIX + member_id


def certificate_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def load_certificate(data: bytes) -> x509.Certificate:
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def load_certificates(data: bytes) -> tuple[x509.Certificate, ...]:
    """Every certificate of a PEM file holding one or several (a ``ca.pem`` of CA roots)."""
    if data.lstrip().startswith(b"-----BEGIN"):
        return tuple(x509.load_pem_x509_certificates(data))
    return (x509.load_der_x509_certificate(data),)


def certificates_pem(certs: Sequence[x509.Certificate]) -> bytes:
    return b"".join(certificate_pem(cert) for cert in certs)


Roots = x509.Certificate | Sequence[x509.Certificate]


def as_roots(roots: Roots) -> tuple[x509.Certificate, ...]:
    return (roots,) if isinstance(roots, x509.Certificate) else tuple(roots)


def ca_label(ca: x509.Certificate) -> str:
    """How messages name a CA: its common name and the start of its serial."""
    names = ca.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    name = str(names[0].value) if names else ca.subject.rfc4514_string()
    return f"{name} (serial {format(ca.serial_number, 'x')[:12]})"


def issuing_root(cert: x509.Certificate, roots: Roots) -> x509.Certificate | None:
    """The root among ``roots`` that directly issued ``cert`` (signature checked), or None."""
    for root in as_roots(roots):
        if cert.issuer != root.subject:
            continue
        try:
            cert.verify_directly_issued_by(root)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return root
    return None


def member_id_of(cert: x509.Certificate | x509.CertificateSigningRequest) -> str:
    """The member id in the SAN URI of a certificate (or of a request for one)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound as exc:
        raise CertificateError("certificate has no subjectAltName") from exc
    ids = [
        uri.removeprefix(MEMBER_URI_PREFIX)
        for uri in san.get_values_for_type(x509.UniformResourceIdentifier)
        if uri.startswith(MEMBER_URI_PREFIX)
    ]
    if len(ids) != 1:
        raise CertificateError("certificate must name exactly one member in its SAN URI")
    return ids[0]


def verify_member_certificate(
    cert: x509.Certificate, ca_cert: Roots, *, at: datetime | None = None
) -> str:
    """Verify ``cert`` chains to one of the hub's CA roots at ``at`` (one certificate or
    several: a renewed CA is trusted beside the one it renews); return the member id named.

    A certificate outside its validity period (or a CA outside its own) raises
    ``CertificateExpired`` saying so and when, before the chain is looked at.
    """
    at = at or datetime.now(UTC)
    named = member_id_of(cert)
    roots = as_roots(ca_cert)
    issuer = issuing_root(cert, roots) or roots[0]
    check_validity(issuer, "the hub CA certificate", at=at)
    check_validity(cert, f"certificate of {named}", at=at)
    verifier = PolicyBuilder().store(Store([issuer])).time(at).build_client_verifier()
    try:
        verifier.verify(cert, [])
    except VerificationError as exc:
        raise CertificateError(f"certificate does not chain to the hub CA: {exc}") from exc
    return named
