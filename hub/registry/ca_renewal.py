"""CA renewal (根证书更新) in three phases an operator runs without downtime.

1. ``renew_ca``: a new CA key and certificate; the outgoing CA signs the hand-over naming it
   (``CertificateAuthority.hand_over_to``, checked by ``protocol.ca_handover``); the hub
   trusts both roots for member TLS and issues new and renewed member certificates from the
   new CA. Its own TLS server and signing certificates stay under the old CA, so bundles
   that know only the old root keep verifying the hub.
2. ``switch_server``: the hub's TLS server certificate and signing certificate are reissued
   by the new CA for the same keys (nothing for members to re-pin; a member must have
   learnt the new root to verify the server from now on).
3. ``retire_old``: the hub trusts the current CA only; refused while active members hold
   only certificates of a retired CA (they are listed), unless forced.

Each takes effect at the hub's next start. Nothing is written before every check passed;
files are replaced atomically.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import select
from sqlalchemy.orm import Session

from xhub.hub.core.ca import CA_DAYS, CertificateAuthority
from xhub.hub.core.ca_roots import (
    ca_history,
    read_ca_handovers,
    trusted_roots,
)
from xhub.hub.core.config import HubConfig
from xhub.hub.core.data_dir import replace_file
from xhub.hub.core.db import MemberCertificateRow, MemberRow
from xhub.hub.registry.hub_keys import HUB_KEY_DAYS
from xhub.hub.registry.store import ACTIVE
from xhub.protocol.ca_handover import follow_ca_handovers, handovers_json
from xhub.protocol.pki import ca_label, certificate_pem, certificates_pem, issuing_root
from xhub.protocol.signing import load_private_key, private_key_pem, write_secret


class CaRenewalError(RuntimeError):
    """A CA renewal phase is refused; the message says why and what to do."""


def _same_ca(a: x509.Certificate, b: x509.Certificate) -> bool:
    return a.public_bytes(Encoding.DER) == b.public_bytes(Encoding.DER)


@dataclass(frozen=True)
class CaRenewal:
    old: x509.Certificate
    new: x509.Certificate
    roots: tuple[x509.Certificate, ...]
    kept_key: str


def renew_ca(
    config: HubConfig, ca: CertificateAuthority, *, now: datetime, days: int = CA_DAYS
) -> CaRenewal:
    """Phase 1: a new CA, handed over by ``ca`` (the current one); both trusted."""
    paths = config.paths
    roots = trusted_roots(paths)
    if not any(_same_ca(root, ca.certificate) for root in roots):
        raise CaRenewalError(f"{paths.ca_cert} is not among the trusted roots {paths.ca_roots}")
    name = f"{config.hub_name} CA {now:%Y%m%d%H%M%S}"
    successor = CertificateAuthority.create(name, now=now, days=days)
    handovers = [*read_ca_handovers(paths), ca.hand_over_to(successor)]
    reached = follow_ca_handovers(ca_history(paths)[:1], handovers)
    if not _same_ca(reached[-1], successor.certificate):
        raise CaRenewalError("the CA hand-overs do not reach the new CA")
    history = (*ca_history(paths), successor.certificate)
    new_roots = (*roots, successor.certificate)
    kept = paths.ca_key.with_name(f"ca.{format(ca.certificate.serial_number, 'x')[:16]}")
    write_secret(kept.with_suffix(".key.old"), paths.ca_key.read_bytes())
    kept.with_suffix(".pem.old").write_bytes(paths.ca_cert.read_bytes())
    replace_file(paths.ca_history, certificates_pem(history))
    replace_file(paths.ca_handovers, handovers_json(handovers))
    replace_file(paths.ca_roots, certificates_pem(new_roots))
    replace_file(paths.ca_key, private_key_pem(successor.private_key), secret=True)
    replace_file(paths.ca_cert, certificate_pem(successor.certificate))
    return CaRenewal(ca.certificate, successor.certificate, new_roots, str(kept) + ".key.old")


def _names(cert: x509.Certificate) -> tuple[tuple[str, ...], tuple[str, ...]]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = tuple(san.get_values_for_type(x509.DNSName))
    ips = tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress))
    return dns, ips


@dataclass(frozen=True)
class ServerSwitch:
    tls_cert: x509.Certificate
    signing_cert: x509.Certificate
    tls_pem: bytes
    signing_pem: bytes

    def write(self, config: HubConfig) -> None:
        """Keep the old certificates beside (``.pem.old``), then replace them."""
        paths = config.paths
        for path, data in ((paths.tls_cert, self.tls_pem), (paths.signing_cert, self.signing_pem)):
            path.with_suffix(".pem.old").write_bytes(path.read_bytes())
            replace_file(path, data)


def switch_server(
    config: HubConfig, ca: CertificateAuthority, session: Session, *, now: datetime
) -> ServerSwitch:
    """Phase 2: the hub's TLS and signing certificates reissued by ``ca`` for the same keys;
    the registry's certificate of the hub follows (in ``session``; the caller commits, then
    calls ``write``)."""
    paths = config.paths
    tls_key = load_private_key(paths.tls_key)
    signing_key = load_private_key(paths.signing_key)
    if not isinstance(tls_key, ec.EllipticCurvePrivateKey) or not isinstance(
        signing_key, ec.EllipticCurvePrivateKey
    ):
        raise CaRenewalError("the hub's TLS and signing keys must be ECDSA P-256")
    old_tls = x509.load_pem_x509_certificate(paths.tls_cert.read_bytes())
    old_signing = x509.load_pem_x509_certificate(paths.signing_cert.read_bytes())
    if all(issuing_root(c, (ca.certificate,)) for c in (old_tls, old_signing)):
        raise CaRenewalError(
            f"the hub's certificates are already issued by {ca_label(ca.certificate)}; "
            "renew the CA first (`xhub ca renew`)"
        )
    dns, ips = _names(old_tls)
    tls = ca.issue(
        tls_key.public_key(),
        config.hub_name,
        dns_names=dns,
        ip_addresses=ips,
        server=True,
        days=HUB_KEY_DAYS,
        now=now,
    )
    signing = ca.issue(
        signing_key.public_key(),
        config.hub_name,
        member_id=config.hub_id,
        days=HUB_KEY_DAYS,
        now=now,
    )
    hub = session.get(MemberRow, config.hub_id)
    if hub is None:
        raise CaRenewalError(f"the registry holds no member {config.hub_id} (the hub itself)")
    hub.certificate_der = signing.public_bytes(Encoding.DER)
    hub.certificate_serial = format(signing.serial_number, "x")
    hub.not_after = signing.not_valid_after_utc
    session.flush()
    return ServerSwitch(tls, signing, certificate_pem(tls), certificate_pem(signing))


@dataclass(frozen=True)
class Stranded:
    """An active member whose usable certificates all chain to a CA being retired."""

    member_id: str
    name: str
    ca: str


def stranded_members(
    session: Session, keep: x509.Certificate, history: tuple[x509.Certificate, ...], now: datetime
) -> list[Stranded]:
    """Active members with no unrevoked, unexpired certificate issued by ``keep``."""
    rows = session.execute(
        select(MemberRow.member_id, MemberRow.name, MemberCertificateRow.certificate_der)
        .join(MemberCertificateRow, MemberCertificateRow.member_id == MemberRow.member_id)
        .where(
            MemberRow.status == ACTIVE,
            MemberCertificateRow.revoked_at.is_(None),
            MemberCertificateRow.not_after > now,
        )
    ).all()
    issuers: dict[str, tuple[str, list[str]]] = {}
    for member_id, name, der in rows:
        cert = x509.load_der_x509_certificate(der)
        root = issuing_root(cert, history)
        label = ca_label(root) if root is not None else "an unknown CA"
        issuers.setdefault(member_id, (name, []))[1].append(label)
    on_keep = {
        member_id
        for member_id, _name, der in rows
        if issuing_root(x509.load_der_x509_certificate(der), (keep,)) is not None
    }
    return [
        Stranded(member_id, name, ", ".join(sorted(set(labels))))
        for member_id, (name, labels) in sorted(issuers.items())
        if member_id not in on_keep
    ]


@dataclass(frozen=True)
class Retirement:
    kept: x509.Certificate
    retired: tuple[x509.Certificate, ...]
    stranded: tuple[Stranded, ...]


def retire_old(
    config: HubConfig, session: Session, *, now: datetime, force: bool = False
) -> Retirement:
    """Phase 3: trust only the current CA from the next start. Refused before
    ``switch_server`` (the hub's own certificates must be the new CA's) and while active
    members hold only old-CA certificates (listed), unless ``force``."""
    paths = config.paths
    current = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    roots = trusted_roots(paths)
    retired = tuple(root for root in roots if not _same_ca(root, current))
    if not retired:
        raise CaRenewalError("the hub trusts one CA only; nothing to retire")
    for path, what in ((paths.tls_cert, "TLS server"), (paths.signing_cert, "signing")):
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        if issuing_root(cert, (current,)) is None:
            raise CaRenewalError(
                f"the hub's {what} certificate is still under the old CA; "
                "run `xhub ca switch-server` and restart the hub first"
            )
    stranded = tuple(
        s
        for s in stranded_members(session, current, ca_history(paths), now)
        if s.member_id != config.hub_id
    )
    if stranded and not force:
        listed = "; ".join(f"{s.member_id} ({s.name}) on {s.ca}" for s in stranded)
        raise CaRenewalError(
            f"{len(stranded)} active member(s) hold only certificates of a CA being retired: "
            f"{listed}. Renew them first (`xhub member renew`), or pass --force to cut them off"
        )
    replace_file(paths.ca_roots, certificates_pem((current,)))
    return Retirement(current, retired, stranded)
