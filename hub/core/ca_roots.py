"""The hub's CA roots (根证书集合): which CAs it trusts for member TLS, which CAs it ever
had, and the hand-overs between them. Written by ``xhub ca …``
(``xhub.hub.registry.ca_renewal``); read here by the server, the registry and enrolment.
"""

from __future__ import annotations

from cryptography import x509

from xhub.hub.core.config import DataDir
from xhub.protocol.ca_handover import parse_handovers_json
from xhub.protocol.pki import issuing_root, load_certificate, load_certificates
from xhub.v1 import registry_pb2


def trusted_roots(paths: DataDir) -> tuple[x509.Certificate, ...]:
    """The CA roots whose member certificates the hub accepts, the oldest first."""
    if paths.ca_roots.exists():
        return load_certificates(paths.ca_roots.read_bytes())
    return (load_certificate(paths.ca_cert.read_bytes()),)


def ca_history(paths: DataDir) -> tuple[x509.Certificate, ...]:
    """Every CA the hub had, oldest first (a retired CA stays here, not in the roots)."""
    if paths.ca_history.exists():
        return load_certificates(paths.ca_history.read_bytes())
    return trusted_roots(paths)


def read_ca_handovers(paths: DataDir) -> list[registry_pb2.CaHandover]:
    """The CA hand-overs, oldest first (none before the first renewal)."""
    if not paths.ca_handovers.exists():
        return []
    return parse_handovers_json(paths.ca_handovers.read_bytes())


def ca_number(cert: x509.Certificate, history: tuple[x509.Certificate, ...]) -> int:
    """1 for the hub's first CA, 2 for the one renewing it, …; 0 for none of them."""
    root = issuing_root(cert, history)
    return history.index(root) + 1 if root is not None else 0
