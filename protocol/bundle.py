"""The member bundle (接入包): everything a connector needs to talk to the hub.

A directory holding ``member.json``, the member's TLS key and certificate, the
hub CA certificate, the hub's signing certificate and (for Ed25519 members) a
separate message-signing key. Written by ``xhub member add``, read by the SDK.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from xhub.protocol.pki import (
    CertificateError,
    certificate_pem,
    load_certificate,
    verify_member_certificate,
)
from xhub.protocol.signing import (
    KeySigner,
    KeyVerifier,
    PrivateKey,
    load_private_key,
    public_key_der,
    write_private_key,
)

MANIFEST = "member.json"
TLS_KEY = "tls.key"
TLS_CERT = "tls.pem"
CA_CERT = "ca.pem"
HUB_SIGNING_CERT = "hub-signing.pem"
SIGNING_KEY = "signing.key"


class BundleError(ValueError):
    """The bundle is incomplete or its certificates do not fit together."""


@dataclass(frozen=True)
class MemberBundle:
    member_id: str
    name: str
    hub_id: str
    hub_address: str
    server_name: str
    tls_key: PrivateKey
    tls_cert: x509.Certificate
    ca_cert: x509.Certificate
    hub_signing_cert: x509.Certificate
    signing_key: PrivateKey
    log_key: str = ""  # the audit log's note verifier key, pinned at registration

    @functools.cached_property
    def signer(self) -> KeySigner:
        return KeySigner(self.signing_key)

    @functools.cached_property
    def hub_verifier(self) -> KeyVerifier:
        key = self.hub_signing_cert.public_key()
        return KeyVerifier(key)  # type: ignore[arg-type]

    def write(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        write_private_key(directory / TLS_KEY, self.tls_key)
        (directory / TLS_CERT).write_bytes(certificate_pem(self.tls_cert))
        (directory / CA_CERT).write_bytes(certificate_pem(self.ca_cert))
        (directory / HUB_SIGNING_CERT).write_bytes(certificate_pem(self.hub_signing_cert))
        separate_key = self.signing_key is not self.tls_key
        if separate_key:
            write_private_key(directory / SIGNING_KEY, self.signing_key)
        manifest = {
            "member_id": self.member_id,
            "name": self.name,
            "hub_id": self.hub_id,
            "hub_address": self.hub_address,
            "server_name": self.server_name,
            "signing_key": SIGNING_KEY if separate_key else TLS_KEY,
            "log_key": self.log_key,
        }
        (directory / MANIFEST).write_text(
            json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", "utf-8"
        )

    @classmethod
    def load(cls, directory: Path, *, hub_address: str | None = None) -> MemberBundle:
        """Load and cross-check a bundle; ``hub_address`` overrides the stored one."""
        try:
            manifest = json.loads((directory / MANIFEST).read_text("utf-8"))
            tls_key = load_private_key(directory / TLS_KEY)
            signing_name = manifest.get("signing_key", TLS_KEY)
            signing_key = (
                tls_key if signing_name == TLS_KEY else load_private_key(directory / signing_name)
            )
            bundle = cls(
                member_id=manifest["member_id"],
                name=manifest.get("name", ""),
                hub_id=manifest["hub_id"],
                hub_address=hub_address or manifest["hub_address"],
                server_name=manifest.get("server_name", "xhub-hub"),
                tls_key=tls_key,
                tls_cert=load_certificate((directory / TLS_CERT).read_bytes()),
                ca_cert=load_certificate((directory / CA_CERT).read_bytes()),
                hub_signing_cert=load_certificate((directory / HUB_SIGNING_CERT).read_bytes()),
                signing_key=signing_key,
                log_key=manifest.get("log_key", ""),
            )
        except (OSError, KeyError, ValueError) as exc:
            raise BundleError(f"{directory}: not a usable member bundle: {exc}") from exc
        try:
            named = verify_member_certificate(bundle.tls_cert, bundle.ca_cert)
            hub_named = verify_member_certificate(bundle.hub_signing_cert, bundle.ca_cert)
        except CertificateError as exc:
            raise BundleError(f"{directory}: {exc}") from exc
        if named != bundle.member_id:
            raise BundleError(f"{directory}: certificate names {named}, not {bundle.member_id}")
        if hub_named != bundle.hub_id:
            raise BundleError(f"{directory}: hub signing certificate does not name {bundle.hub_id}")
        cert_key = bundle.tls_cert.public_key()
        if public_key_der(bundle.tls_key.public_key()) != public_key_der(cert_key):  # type: ignore[arg-type]
            raise BundleError(f"{directory}: tls.key does not belong to tls.pem")
        return bundle

    def tls_credentials(self) -> tuple[bytes, bytes, bytes]:
        """(root CA PEM, private key PEM, certificate chain PEM) for grpc."""
        from xhub.protocol.signing import private_key_pem

        return (
            certificate_pem(self.ca_cert),
            private_key_pem(self.tls_key),
            certificate_pem(self.tls_cert),
        )
