"""Member-side enrolment (接入申请): keys made on the member's machine, never by the hub.

    keys = generate_keys("CN.440103.<USCC>.approval", Path("member"))      # keygen
    # hand keys.request_path (enrolment.req) to the hub operator: `xhub member add --csr`
    bundle = install_bundle(Path("public-bundle-from-hub"), Path("member"))  # bundle install

A keys directory holds ``tls.key`` (ECDSA P-256, mutual TLS only), ``signing.key``
(ECDSA P-256 or Ed25519, message signatures only), both 0600, ``enrolment.req`` (the signed
request, ``protocol/enrolment.py``) and ``csr.pem`` (the CSR alone, for ``openssl req``).
Installing the hub's public bundle copies its certificates and ``member.json`` next to the
keys: the directory is then what ``HubClient.from_bundle`` opens.

Renewal: ``generate_keys(member_id, new_dir, signing_key=old signing key)`` (a new TLS key,
the same signing key) or ``renewal_request(keys_dir)`` (both keys kept); re-enrolment after a
revocation: ``generate_keys`` into a new directory (both keys new).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from xhub.protocol.bundle import (
    PRIVATE_FILES,
    SIGNING_KEY,
    TLS_KEY,
    BundleError,
    MemberBundle,
    PublicBundle,
)
from xhub.protocol.enrolment import armor, make_request
from xhub.protocol.signing import (
    ECDSA_P256,
    PrivateKey,
    generate_private_key,
    load_private_key,
    write_private_key,
)
from xhub.v1 import envelope_pb2, registry_pb2

REQUEST = "enrolment.req"
CSR_PEM = "csr.pem"


@dataclass(frozen=True)
class MemberKeys:
    """A member's key directory and the request made from it."""

    directory: Path
    member_id: str
    tls_key: ec.EllipticCurvePrivateKey
    signing_key: PrivateKey
    request: envelope_pb2.Envelope

    @property
    def request_path(self) -> Path:
        return self.directory / REQUEST


def generate_keys(
    member_id: str,
    out: Path,
    *,
    signing_algorithm: registry_pb2.KeyAlgorithm.ValueType = ECDSA_P256,
    signing_key: PrivateKey | None = None,
) -> MemberKeys:
    """Generate a TLS key and (unless ``signing_key`` is given) a signing key in ``out``,
    write them 0600 and write the enrolment request next to them.

    Raises:
        BundleError: ``out`` already holds a key (keys are never overwritten), or the
            member id is empty.
    """
    if not member_id.strip():
        raise BundleError("a member id is needed (e.g. CN.440103.<USCC>.approval)")
    existing = [name for name in PRIVATE_FILES if (out / name).exists()]
    if existing:
        raise BundleError(f"{out} already holds {', '.join(existing)}; keys are never overwritten")
    tls_key = ec.generate_private_key(ec.SECP256R1())
    signing = signing_key or generate_private_key(signing_algorithm)
    out.mkdir(parents=True, exist_ok=True)
    out.chmod(0o700)
    write_private_key(out / TLS_KEY, tls_key)
    write_private_key(out / SIGNING_KEY, signing)
    return _write_request(out, member_id, tls_key, signing)


def renewal_request(keys_dir: Path, member_id: str | None = None) -> MemberKeys:
    """A fresh request from the keys already in ``keys_dir`` (renewal keeping both keys).

    Raises:
        BundleError: the directory holds no usable keys, or no member id is known.
    """
    try:
        tls_key = load_private_key(keys_dir / TLS_KEY)
        signing = load_private_key(keys_dir / SIGNING_KEY)
    except (OSError, ValueError) as exc:
        raise BundleError(f"{keys_dir}: the member's keys cannot be read: {exc}") from exc
    if not isinstance(tls_key, ec.EllipticCurvePrivateKey):
        raise BundleError(f"{keys_dir / TLS_KEY}: the TLS key must be ECDSA P-256")
    if member_id is None:
        member_id = PublicBundle.load(keys_dir).member_id
    return _write_request(keys_dir, member_id, tls_key, signing)


def _write_request(
    out: Path, member_id: str, tls_key: ec.EllipticCurvePrivateKey, signing: PrivateKey
) -> MemberKeys:
    request = make_request(member_id, tls_key, signing)
    (out / REQUEST).write_bytes(armor(request))
    csr = x509.load_der_x509_csr(registry_pb2.EnrolmentRequest.FromString(request.payload).csr_der)
    (out / CSR_PEM).write_bytes(csr.public_bytes(Encoding.PEM))
    return MemberKeys(out, member_id, tls_key, signing, request)


def install_bundle(public_dir: Path, keys_dir: Path) -> MemberBundle:
    """Check the hub's public bundle against the member's keys, then copy it next to them.

    Raises:
        BundleError: the bundle is incomplete, expired, does not chain to its CA, or its
            certificate / registered signing key is not for these keys (nothing is copied).
    """
    if (public_dir / TLS_KEY).exists() and public_dir.resolve() != keys_dir.resolve():
        raise BundleError(f"{public_dir} holds a private key: a hub's public bundle never does")
    MemberBundle.load(public_dir, keys_dir=keys_dir)  # every check, before anything is copied
    PublicBundle.load(public_dir).write(keys_dir)
    return MemberBundle.load(keys_dir)
