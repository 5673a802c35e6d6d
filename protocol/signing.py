"""Signer / Verifier interface (签名 / 验签) behind which every algorithm sits.

Callers never branch on the algorithm: they hold a ``Signer`` or a ``Verifier``.
ECDSA P-256 is the default; Ed25519 is supported; SM2/SM3 (国密) can be added
as one more implementation without touching callers.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from xhub.v1 import registry_pb2

ECDSA_P256 = registry_pb2.KEY_ALGORITHM_ECDSA_P256_SHA256
ED25519 = registry_pb2.KEY_ALGORITHM_ED25519

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


class SignatureMismatch(Exception):
    """The signature does not verify over the given bytes."""


class Signer(Protocol):
    """Produces signatures; ``key_id`` is how verifiers find the public key."""

    @property
    def key_id(self) -> str: ...

    @property
    def algorithm(self) -> registry_pb2.KeyAlgorithm.ValueType: ...

    def sign(self, data: bytes) -> bytes: ...


class Verifier(Protocol):
    """Checks signatures made by one key."""

    @property
    def key_id(self) -> str: ...

    @property
    def algorithm(self) -> registry_pb2.KeyAlgorithm.ValueType: ...

    def verify(self, signature: bytes, data: bytes) -> None:
        """Raise ``SignatureMismatch`` unless ``signature`` is valid for ``data``."""
        ...


def public_key_der(key: PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_id_for(key: PublicKey) -> str:
    """SHA-256 of the DER SubjectPublicKeyInfo: stable, algorithm-independent."""
    return hashlib.sha256(public_key_der(key)).hexdigest()


def algorithm_of(key: PublicKey | PrivateKey) -> registry_pb2.KeyAlgorithm.ValueType:
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return ED25519
    if isinstance(key.curve, ec.SECP256R1):
        return ECDSA_P256
    raise ValueError(f"unsupported key: {key.curve.name}; use ECDSA P-256 or Ed25519")


@dataclass(frozen=True)
class KeySigner:
    """A Signer over an in-memory private key."""

    private_key: PrivateKey

    @functools.cached_property
    def key_id(self) -> str:
        return key_id_for(self.private_key.public_key())

    @property
    def algorithm(self) -> registry_pb2.KeyAlgorithm.ValueType:
        return algorithm_of(self.private_key)

    def sign(self, data: bytes) -> bytes:
        if isinstance(self.private_key, ed25519.Ed25519PrivateKey):
            return self.private_key.sign(data)
        return self.private_key.sign(data, ec.ECDSA(hashes.SHA256()))

    def verifier(self) -> KeyVerifier:
        return KeyVerifier(self.private_key.public_key())


@dataclass(frozen=True)
class KeyVerifier:
    """A Verifier over a public key."""

    public_key: PublicKey

    def __post_init__(self) -> None:
        algorithm_of(self.public_key)  # refuse curves we do not support up front

    @functools.cached_property
    def key_id(self) -> str:
        return key_id_for(self.public_key)

    @property
    def algorithm(self) -> registry_pb2.KeyAlgorithm.ValueType:
        return algorithm_of(self.public_key)

    def verify(self, signature: bytes, data: bytes) -> None:
        try:
            if isinstance(self.public_key, ed25519.Ed25519PublicKey):
                self.public_key.verify(signature, data)
            else:
                self.public_key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature as exc:
            raise SignatureMismatch("signature does not verify") from exc

    @classmethod
    def from_der(cls, der: bytes) -> KeyVerifier:
        key = serialization.load_der_public_key(der)
        if not isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
            raise ValueError("only ECDSA P-256 and Ed25519 public keys are supported")
        return cls(key)


def generate_private_key(algorithm: registry_pb2.KeyAlgorithm.ValueType = ECDSA_P256) -> PrivateKey:
    if algorithm == ED25519:
        return ed25519.Ed25519PrivateKey.generate()
    if algorithm == ECDSA_P256:
        return ec.generate_private_key(ec.SECP256R1())
    raise ValueError(f"unsupported algorithm {algorithm}")


def private_key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_secret(path: Path, data: bytes) -> None:
    """Write a file readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_bytes(data)


def write_private_key(path: Path, key: PrivateKey) -> None:
    write_secret(path, private_key_pem(key))


def load_private_key(path: Path) -> PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise ValueError(f"{path}: only ECDSA P-256 and Ed25519 keys are supported")
    algorithm_of(key)
    return key


def load_signer(path: Path) -> KeySigner:
    return KeySigner(load_private_key(path))
