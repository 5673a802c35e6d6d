"""C2SP signed notes (c2sp.org/signed-note) with Ed25519 keys, and log checkpoints.

A signed note is a UTF-8 text ending in a newline, a blank line, then signature lines
``— <key name> <base64(4-byte key ID || signature)>\\n``.  The Ed25519 key ID is the first
four bytes of SHA-256(key name || 0x0A || 0x01 || 32-byte public key), and a verifier key is
written ``<name>+<hex key ID>+<base64(0x01 || public key)>`` (the Go ``sumdb/note`` format).

A checkpoint (c2sp.org/tlog-checkpoint) is a note whose text is the origin line, the tree
size in decimal, the base64 root hash, and optional extension lines.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = [
    "ALG_ED25519",
    "MAX_SIGNATURES",
    "Checkpoint",
    "InvalidSignatureError",
    "MalformedNoteError",
    "NoteError",
    "NoteSigner",
    "NoteVerifier",
    "UnknownKeyError",
    "ed25519_key_id",
    "format_checkpoint_body",
    "open_checkpoint",
    "open_note",
    "parse_checkpoint_body",
    "sign_checkpoint",
    "sign_note",
    "verifier_key_string",
]

ALG_ED25519 = 0x01
"""Signature type byte of Ed25519 note signatures."""

MAX_SIGNATURES = 100
"""Notes with more signature lines are rejected (the spec requires accepting at least 16)."""

_SIG_PREFIX = "— "  # U+2014 EM DASH, U+0020 SPACE
_HASH_SIZE = 32
_ED25519_SIG_SIZE = 64
_DECIMAL = re.compile(r"0|[1-9][0-9]*")
_HEX8 = re.compile(r"[0-9a-fA-F]{8}")
_MAX_TREE_SIZE = 2**64 - 1


class NoteError(ValueError):
    """A signed note (or checkpoint) is malformed or does not verify."""


class MalformedNoteError(NoteError):
    """The note, its text, a signature line, a key string or a checkpoint is malformed."""


class UnknownKeyError(NoteError):
    """The note carries no signature by the verifier's key (name and key ID)."""


class InvalidSignatureError(NoteError):
    """A signature by the verifier's key does not verify."""


# --------------------------------------------------------------------------- helpers


def _b64decode(text: str, what: str) -> bytes:
    """Strict, canonical standard base64 (RFC 4648 §4, with padding)."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        raise MalformedNoteError(f"{what} is not valid base64") from None
    if base64.b64encode(raw).decode("ascii") != text:
        raise MalformedNoteError(f"{what} is not canonical base64")
    return raw


def _b64encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _check_key_name(name: str) -> None:
    """Key names are non-empty and contain neither Unicode spaces nor ``+``."""
    if not name:
        raise MalformedNoteError("key name is empty")
    if "+" in name or any(ch.isspace() for ch in name):
        raise MalformedNoteError(f"key name {name!r} contains a space or '+'")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in name):
        raise MalformedNoteError(f"key name {name!r} contains a control character")


def _check_text_chars(text: str, what: str) -> None:
    """Signed notes must not contain ASCII control characters other than newline."""
    for ch in text:
        if ord(ch) < 0x20 and ch != "\n":
            raise MalformedNoteError(f"{what} contains control character {ch!r}")


def _raw_public_key(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def ed25519_key_id(name: str, public_key: bytes) -> int:
    """Key ID = SHA-256(key name || 0x0A || 0x01 || 32-byte public key)[:4], big-endian."""
    if len(public_key) != 32:
        raise ValueError(f"an Ed25519 public key is 32 bytes, not {len(public_key)}")
    digest = hashlib.sha256(name.encode() + b"\n" + bytes([ALG_ED25519]) + public_key).digest()
    return int.from_bytes(digest[:4], "big")


def verifier_key_string(name: str, public_key: Ed25519PublicKey) -> str:
    """The verifier key string ``<name>+<hex key ID>+<base64(0x01 || public key)>``."""
    _check_key_name(name)
    raw = _raw_public_key(public_key)
    return f"{name}+{ed25519_key_id(name, raw):08x}+{_b64encode(bytes([ALG_ED25519]) + raw)}"


# --------------------------------------------------------------------------- keys


class NoteSigner:
    """An Ed25519 private key and the key name it signs notes under."""

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        _check_key_name(name)
        self.name = name
        self.private_key = private_key
        self.public_key = private_key.public_key()
        self.key_id = ed25519_key_id(name, _raw_public_key(self.public_key))

    @classmethod
    def generate(cls, name: str) -> NoteSigner:
        """A signer with a fresh random key."""
        return cls(name, Ed25519PrivateKey.generate())

    @classmethod
    def from_private_key_string(cls, skey: str) -> NoteSigner:
        """Parse ``PRIVATE+KEY+<name>+<hex key ID>+<base64(0x01 || seed)>`` (Go ``note``)."""
        parts = skey.split("+", 4)
        if len(parts) != 5 or parts[0] != "PRIVATE" or parts[1] != "KEY":
            raise MalformedNoteError("private key string is not PRIVATE+KEY+name+id+key")
        _, _, name, id_hex, key64 = parts
        _check_key_name(name)
        if not _HEX8.fullmatch(id_hex):
            raise MalformedNoteError("private key string has a malformed key ID")
        raw = _b64decode(key64, "private key")
        if len(raw) != 33 or raw[0] != ALG_ED25519:
            raise MalformedNoteError("private key is not an Ed25519 seed (0x01 || 32 bytes)")
        signer = cls(name, Ed25519PrivateKey.from_private_bytes(raw[1:]))
        if signer.key_id != int(id_hex, 16):
            raise MalformedNoteError("private key string's key ID does not match its key")
        return signer

    def private_key_string(self) -> str:
        """This key in the ``PRIVATE+KEY+...`` format (secret: store it like a private key)."""
        seed = self.private_key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        key64 = _b64encode(bytes([ALG_ED25519]) + seed)
        return f"PRIVATE+KEY+{self.name}+{self.key_id:08x}+{key64}"

    def verifier_key(self) -> str:
        """The public verifier key string for this signer."""
        return verifier_key_string(self.name, self.public_key)

    def verifier(self) -> NoteVerifier:
        return NoteVerifier(self.name, self.public_key)

    def sign(self, message: bytes) -> bytes:
        """The raw Ed25519 signature of ``message`` (no key ID)."""
        return self.private_key.sign(message)


class NoteVerifier:
    """An Ed25519 public key and its key name: accepts notes signed by that key."""

    def __init__(self, name: str, public_key: Ed25519PublicKey) -> None:
        _check_key_name(name)
        self.name = name
        self.public_key = public_key
        self.key_id = ed25519_key_id(name, _raw_public_key(public_key))

    @classmethod
    def from_vkey(cls, vkey: str) -> NoteVerifier:
        """Parse ``<name>+<hex key ID>+<base64(0x01 || public key)>``, checking the key ID."""
        parts = vkey.split("+", 2)
        if len(parts) != 3:
            raise MalformedNoteError("verifier key is not name+id+key")
        name, id_hex, key64 = parts
        _check_key_name(name)
        if not _HEX8.fullmatch(id_hex):
            raise MalformedNoteError("verifier key has a malformed key ID (8 hex digits)")
        raw = _b64decode(key64, "verifier public key")
        if not raw or raw[0] != ALG_ED25519:
            raise MalformedNoteError("verifier key is not an Ed25519 key (type 0x01)")
        if len(raw) != 33:
            raise MalformedNoteError("verifier key's Ed25519 public key is not 32 bytes")
        verifier = cls(name, Ed25519PublicKey.from_public_bytes(raw[1:]))
        if verifier.key_id != int(id_hex, 16):
            raise MalformedNoteError("verifier key's key ID does not match its key")
        return verifier

    def vkey(self) -> str:
        return verifier_key_string(self.name, self.public_key)

    def verify(self, message: bytes, signature: bytes) -> bool:
        """Whether ``signature`` (raw Ed25519, no key ID) is valid for ``message``."""
        if len(signature) != _ED25519_SIG_SIZE:
            return False
        try:
            self.public_key.verify(signature, message)
        except InvalidSignature:
            return False
        return True


# --------------------------------------------------------------------------- notes


def _check_body(body: bytes) -> str:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedNoteError("note text is not valid UTF-8") from None
    if not text.endswith("\n"):
        raise MalformedNoteError("note text does not end with a newline")
    if text.startswith("\n") or "\n\n" in text:
        raise MalformedNoteError("note text contains a blank line")
    _check_text_chars(text, "note text")
    return text


def sign_note(body: bytes, signer: NoteSigner, *more_signers: NoteSigner) -> bytes:
    """The signed note: ``body``, a blank line, and one signature line per signer.

    ``body`` must be UTF-8 without control characters other than newline, end with a
    newline and contain no blank line.
    """
    _check_body(body)
    lines = []
    for s in (signer, *more_signers):
        sig = s.key_id.to_bytes(4, "big") + s.sign(body)
        lines.append(f"{_SIG_PREFIX}{s.name} {_b64encode(sig)}\n")
    return body + b"\n" + "".join(lines).encode()


def open_note(note: bytes, verifier: NoteVerifier) -> bytes:
    """Verify ``note`` against ``verifier`` and return its text (the signed body).

    Signature lines by other keys (another name or key ID) are ignored, as the spec requires.
    Raises :class:`MalformedNoteError`, :class:`UnknownKeyError` (no signature by this key)
    or :class:`InvalidSignatureError` (a signature by this key does not verify); all are
    :class:`NoteError`.
    """
    try:
        decoded = note.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedNoteError("note is not valid UTF-8") from None
    _check_text_chars(decoded, "note")
    split = note.rfind(b"\n\n")
    if split < 0:
        raise MalformedNoteError("note has no blank line before its signatures")
    body, sig_block = note[: split + 1], note[split + 2 :]
    if not sig_block:
        raise MalformedNoteError("note has no signature lines")
    if not sig_block.endswith(b"\n"):
        raise MalformedNoteError("note does not end with a newline")
    lines = sig_block.decode("utf-8").split("\n")[:-1]
    if len(lines) > MAX_SIGNATURES:
        raise MalformedNoteError(f"note has more than {MAX_SIGNATURES} signatures")

    matched = 0
    for number, line in enumerate(lines, start=1):
        if not line.startswith(_SIG_PREFIX):
            raise MalformedNoteError(f"signature line {number} does not start with '— '")
        name, sep, sig64 = line[len(_SIG_PREFIX) :].partition(" ")
        if not sep:
            raise MalformedNoteError(f"signature line {number} is not '— <name> <signature>'")
        try:
            _check_key_name(name)
        except MalformedNoteError as exc:
            raise MalformedNoteError(f"signature line {number}: {exc}") from None
        sig = _b64decode(sig64, f"signature on line {number}")
        if len(sig) < 5:
            raise MalformedNoteError(f"signature on line {number} is too short")
        if name != verifier.name or int.from_bytes(sig[:4], "big") != verifier.key_id:
            continue  # another key's signature: ignored
        if not verifier.verify(body, sig[4:]):
            raise InvalidSignatureError(
                f"invalid signature for key {verifier.name}+{verifier.key_id:08x}"
            )
        matched += 1
    if not matched:
        raise UnknownKeyError(f"note has no signature by key {verifier.name}+{verifier.key_id:08x}")
    return body


# --------------------------------------------------------------------------- checkpoints


@dataclass(frozen=True)
class Checkpoint:
    """A log's tree head: origin, tree size, root hash and (not recommended) extension lines."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.origin:
            raise ValueError("checkpoint origin is empty")
        if not 0 <= self.size <= _MAX_TREE_SIZE:
            raise ValueError(f"checkpoint tree size {self.size} is out of range")
        if len(self.root_hash) != _HASH_SIZE:
            raise ValueError(f"checkpoint root hash is {len(self.root_hash)} bytes, not 32")
        for line in (self.origin, *self.extensions):
            if not line:
                raise ValueError("checkpoint extension lines must be non-empty")
            if any(ord(ch) < 0x20 for ch in line):
                raise ValueError(f"checkpoint line {line!r} contains a control character")


def format_checkpoint_body(cp: Checkpoint) -> bytes:
    """The checkpoint's note text (each line ends with a newline)."""
    lines = [cp.origin, str(cp.size), _b64encode(cp.root_hash), *cp.extensions]
    return "".join(line + "\n" for line in lines).encode()


def parse_checkpoint_body(body: bytes) -> Checkpoint:
    """Parse a checkpoint note text; raises :class:`MalformedNoteError`."""
    text = _check_body(body)
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise MalformedNoteError("checkpoint has fewer than three lines")
    origin, size_line, hash_line, *extensions = lines
    if not _DECIMAL.fullmatch(size_line):
        raise MalformedNoteError(f"checkpoint tree size {size_line!r} is not a decimal number")
    size = int(size_line)
    if size > _MAX_TREE_SIZE:
        raise MalformedNoteError(f"checkpoint tree size {size} is out of range")
    root = _b64decode(hash_line, "checkpoint root hash")
    if len(root) != _HASH_SIZE:
        raise MalformedNoteError(f"checkpoint root hash is {len(root)} bytes, not 32")
    return Checkpoint(origin, size, root, tuple(extensions))


def sign_checkpoint(cp: Checkpoint, signer: NoteSigner) -> bytes:
    """The signed checkpoint note."""
    return sign_note(format_checkpoint_body(cp), signer)


def open_checkpoint(note: bytes, verifier: NoteVerifier) -> Checkpoint:
    """Verify a signed checkpoint and parse it (the caller checks the origin it expects)."""
    return parse_checkpoint_body(open_note(note, verifier))
