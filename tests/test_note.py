"""C2SP signed notes and checkpoints: published vectors, round trips, tampering."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from xhub.protocol.log.note import (
    Checkpoint,
    InvalidSignatureError,
    MalformedNoteError,
    NoteError,
    NoteSigner,
    NoteVerifier,
    UnknownKeyError,
    ed25519_key_id,
    format_checkpoint_body,
    open_checkpoint,
    open_note,
    parse_checkpoint_body,
    sign_checkpoint,
    sign_note,
    verifier_key_string,
)

# --------------------------------------------------------------------------- published vectors
# From the reference implementation's tests, golang.org/x/mod/sumdb/note/note_test.go.

PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
TEXT = (
    b"If you think cryptography is the answer to your problem,\n"
    b"then you don't know what your problem is.\n"
)
PETER_SIG = (
    "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNX"
    "gKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
).encode()
ENOCH_SIG = (
    "— EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01o"
    "OTGwnWLox33WWd1RvMc+QQ=\n"
).encode()


def test_go_verifier_key_parses() -> None:
    v = NoteVerifier.from_vkey(PETER_VKEY)
    assert (v.name, v.key_id) == ("PeterNeumann", 0xC74F20A3)
    assert v.vkey() == PETER_VKEY


def test_go_private_key_gives_the_published_verifier_key() -> None:
    signer = NoteSigner.from_private_key_string(PETER_SKEY)
    assert (signer.name, signer.key_id) == ("PeterNeumann", 0xC74F20A3)
    assert signer.verifier_key() == PETER_VKEY
    assert signer.private_key_string() == PETER_SKEY


def test_go_signed_note_is_reproduced_byte_for_byte() -> None:
    # Ed25519 is deterministic, so signing the published text gives the published note.
    signer = NoteSigner.from_private_key_string(PETER_SKEY)
    assert sign_note(TEXT, signer) == TEXT + b"\n" + PETER_SIG


def test_go_signed_note_opens() -> None:
    assert open_note(TEXT + b"\n" + PETER_SIG, NoteVerifier.from_vkey(PETER_VKEY)) == TEXT


@pytest.mark.parametrize(
    ("vkey", "sigs"),
    [
        (PETER_VKEY, PETER_SIG + ENOCH_SIG),  # the other key's line is ignored
        (ENOCH_VKEY, PETER_SIG + ENOCH_SIG),
        (PETER_VKEY, ENOCH_SIG + PETER_SIG),
        (PETER_VKEY, PETER_SIG + PETER_SIG + ENOCH_SIG + ENOCH_SIG),  # duplicates are fine
    ],
)
def test_go_note_with_two_signers(vkey: str, sigs: bytes) -> None:
    assert open_note(TEXT + b"\n" + sigs, NoteVerifier.from_vkey(vkey)) == TEXT


def test_go_note_without_the_verifiers_signature_is_unknown_key() -> None:
    with pytest.raises(UnknownKeyError, match=r"no signature by key EnochRoot\+af0cfe78"):
        open_note(TEXT + b"\n" + PETER_SIG, NoteVerifier.from_vkey(ENOCH_VKEY))


def test_go_corrupted_signature_is_rejected() -> None:
    bad = PETER_SIG[:60] + b"ABCD" + PETER_SIG[60:]
    with pytest.raises(InvalidSignatureError, match=r"PeterNeumann\+c74f20a3"):
        open_note(TEXT + b"\n" + bad, NoteVerifier.from_vkey(PETER_VKEY))
    # ... even when a good signature by the same key is also present.
    with pytest.raises(InvalidSignatureError):
        open_note(TEXT + b"\n" + PETER_SIG + bad, NoteVerifier.from_vkey(PETER_VKEY))


@pytest.mark.parametrize(
    "message",
    [
        TEXT,
        TEXT + b"\n",
        TEXT + b"\n" + PETER_SIG[:-1],
        b"\x01" + TEXT + b"\n" + PETER_SIG,
        b"\xff" + TEXT + b"\n" + PETER_SIG,
        TEXT + b"\n" + PETER_SIG.replace(b"PeterNeumann", b"Bad Name")[:-1],
        TEXT + b"\n" + PETER_SIG + b"Unexpected line.\n",
        TEXT + b"\n" + PETER_SIG * 101,
    ],
    ids=[
        "no-signatures",
        "blank-line-only",
        "no-final-newline",
        "control-char",
        "invalid-utf8",
        "name-with-space",
        "unexpected-line",
        "too-many-signatures",
    ],
)
def test_go_malformed_notes(message: bytes) -> None:
    with pytest.raises(MalformedNoteError):
        open_note(message, NoteVerifier.from_vkey(PETER_VKEY))


def _manglings(key: str) -> list[str]:
    """Every proper substring and every one-character increment of ``key`` (as Go tests)."""
    out = {key[i:j] for i in range(len(key) + 1) for j in range(i + 1, len(key) + 1)}
    out |= {key[:i] + chr(ord(key[i]) + 1) + key[i + 1 :] for i in range(len(key))}
    out.discard(key)
    return sorted(out)


def test_go_verifier_key_manglings_are_rejected() -> None:
    bad = [
        *_manglings(PETER_VKEY),
        # wrong length key, and unknown algorithm, each with an adjusted key hash
        "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==",
        "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
    ]
    for vkey in bad:
        with pytest.raises(MalformedNoteError):
            NoteVerifier.from_vkey(vkey)
            pytest.fail(f"accepted verifier key {vkey!r}")


def test_go_private_key_manglings_are_rejected() -> None:
    for skey in _manglings(PETER_SKEY):
        with pytest.raises(MalformedNoteError):
            NoteSigner.from_private_key_string(skey)
            pytest.fail(f"accepted private key {skey!r}")


# --------------------------------------------------------------------------- key formats


def _raw(signer: NoteSigner) -> bytes:
    return signer.public_key.public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def test_key_id_and_verifier_key_string_follow_the_spec() -> None:
    signer = NoteSigner("log.example/xhub", Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
    pub = _raw(signer)
    digest = hashlib.sha256(b"log.example/xhub" + b"\x0a" + b"\x01" + pub).digest()
    assert ed25519_key_id("log.example/xhub", pub) == int.from_bytes(digest[:4], "big")
    vkey = verifier_key_string("log.example/xhub", signer.public_key)
    assert (
        vkey
        == "log.example/xhub+" + digest[:4].hex() + "+" + base64.b64encode(b"\x01" + pub).decode()
    )
    assert vkey == signer.verifier_key()
    v = NoteVerifier.from_vkey(vkey)
    assert (v.name, v.key_id, v.vkey()) == (signer.name, signer.key_id, vkey)


@pytest.mark.parametrize("name", ["", "a b", "a+b", "tab\there", "nbsp\u00a0x", "ctl\x01"])
def test_bad_key_names_are_rejected(name: str) -> None:
    with pytest.raises(MalformedNoteError):
        NoteSigner.generate(name)


def test_private_key_string_round_trip() -> None:
    signer = NoteSigner.generate("log.example/xhub")
    again = NoteSigner.from_private_key_string(signer.private_key_string())
    assert (again.name, again.key_id, again.verifier_key()) == (
        signer.name,
        signer.key_id,
        signer.verifier_key(),
    )


# --------------------------------------------------------------------------- sign and open

NAME = "hub.example/audit"
SIGNER = NoteSigner.generate(NAME)
VERIFIER = NoteVerifier.from_vkey(SIGNER.verifier_key())
BODY = b"hub.example/audit\n42\n" + base64.b64encode(b"\x07" * 32) + b"\n"


def test_sign_open_round_trip() -> None:
    note = sign_note(BODY, SIGNER)
    assert note.startswith(BODY + b"\n\xe2\x80\x94 " + NAME.encode() + b" ")
    assert note.endswith(b"\n") and note.count(b"\n") == BODY.count(b"\n") + 2
    assert open_note(note, VERIFIER) == BODY
    assert open_note(note, SIGNER.verifier()) == BODY


def test_two_signers_in_one_note() -> None:
    other = NoteSigner.generate("witness.example")
    note = sign_note(BODY, SIGNER, other)
    assert open_note(note, VERIFIER) == BODY
    assert open_note(note, other.verifier()) == BODY


@pytest.mark.parametrize("position", [0, 5, len(BODY) // 2, len(BODY) - 2])
def test_tampered_body_byte_is_rejected(position: int) -> None:
    note = bytearray(sign_note(BODY, SIGNER))
    note[position] ^= 0x01  # a printable ASCII byte stays printable (and is not a newline)
    with pytest.raises(InvalidSignatureError, match="invalid signature"):
        open_note(bytes(note), VERIFIER)


def test_tampered_signature_is_rejected() -> None:
    note = sign_note(BODY, SIGNER)
    body, _, line = note.rpartition(b" ")
    sig = bytearray(base64.b64decode(line))
    sig[10] ^= 0x80
    with pytest.raises(InvalidSignatureError):
        open_note(body + b" " + base64.b64encode(bytes(sig)) + b"\n", VERIFIER)


def test_other_key_with_the_same_name_is_unknown() -> None:
    impostor = NoteSigner.generate(NAME)
    with pytest.raises(UnknownKeyError, match="no signature by key"):
        open_note(sign_note(BODY, impostor), VERIFIER)


def test_other_key_claiming_our_key_id_fails_verification() -> None:
    impostor = NoteSigner.generate(NAME)
    forged_sig = SIGNER.key_id.to_bytes(4, "big") + impostor.sign(BODY)
    note = BODY + b"\n" + f"— {NAME} ".encode() + base64.b64encode(forged_sig) + b"\n"
    with pytest.raises(InvalidSignatureError):
        open_note(note, VERIFIER)


@pytest.mark.parametrize(
    "extra",
    [
        "— witness.example " + "A" * 72 + "\n",
        "— other.example/log AAECAwQF\n",  # short, unknown signature type: still just ignored
    ],
)
def test_unrelated_signature_lines_are_ignored(extra: str) -> None:
    note = sign_note(BODY, SIGNER)
    assert open_note(note + extra.encode(), VERIFIER) == BODY
    body, blank, sigs = note.partition(b"\n\n")
    assert open_note(body + blank + extra.encode() + sigs, VERIFIER) == BODY


def test_same_key_id_under_another_name_is_ignored() -> None:
    note = sign_note(BODY, SIGNER)
    line = note.rpartition(b"\n\n")[2]
    renamed = line.replace(NAME.encode(), b"someone.else")
    with pytest.raises(UnknownKeyError):
        open_note(BODY + b"\n" + renamed, VERIFIER)


def _signed_lines() -> bytes:
    return sign_note(BODY, SIGNER).rpartition(b"\n\n")[2]


@pytest.mark.parametrize(
    "note",
    [
        BODY + _signed_lines(),  # missing blank line
        BODY + b"\n" + _signed_lines()[:-1],  # no trailing newline
        BODY + b"\n",  # no signature lines
        BODY[:-1] + b"\n" + _signed_lines(),  # body without its final newline
        BODY + b"\n" + _signed_lines().replace("—".encode(), b"--"),  # not an em dash
        BODY + b"\n" + _signed_lines().replace(b" ", b"  ", 1),  # em dash and two spaces
        BODY + b"\n" + f"— {NAME}\n".encode(),  # no signature
        BODY + b"\n" + f"— {NAME} AAAA\n".encode(),  # shorter than a key ID
        BODY + b"\n" + f"— {NAME} not*base64\n".encode(),
        BODY + b"\n" + f"— {NAME} AAAAAAA\n".encode(),  # bad padding
        BODY + b"\n" + "— a+b AAAAAAAA\n".encode(),  # '+' in a key name
        BODY.replace(b"42", b"4\t2") + b"\n" + _signed_lines(),  # control character
        b"\xc3\x28" + BODY + b"\n" + _signed_lines(),  # invalid UTF-8
        b"",
    ],
    ids=[
        "missing-blank-line",
        "no-trailing-newline",
        "no-signatures",
        "body-without-newline",
        "ascii-dashes",
        "two-spaces",
        "no-signature",
        "short-signature",
        "bad-base64",
        "bad-padding",
        "plus-in-name",
        "control-char",
        "invalid-utf8",
        "empty",
    ],
)
def test_malformed_notes_are_rejected(note: bytes) -> None:
    with pytest.raises(MalformedNoteError, match=r"."):
        open_note(note, VERIFIER)


@pytest.mark.parametrize(
    "body",
    [b"", b"no newline", b"a\n\nb\n", b"\nstarts blank\n", b"tab\there\n", b"\xff\n", b"\n"],
)
def test_bad_bodies_cannot_be_signed(body: bytes) -> None:
    with pytest.raises(MalformedNoteError):
        sign_note(body, SIGNER)


def test_note_errors_are_value_errors() -> None:
    for cls in (MalformedNoteError, UnknownKeyError, InvalidSignatureError):
        assert issubclass(cls, NoteError)
    assert issubclass(NoteError, ValueError)


# --------------------------------------------------------------------------- checkpoints

# The example checkpoint body of c2sp.org/tlog-checkpoint.
SPEC_BODY = b"example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"


def test_spec_example_checkpoint_parses_and_formats_back() -> None:
    cp = parse_checkpoint_body(SPEC_BODY)
    assert cp.origin == "example.com/behind-the-sofa"
    assert cp.size == 20852163
    assert cp.root_hash == base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=")
    assert cp.extensions == ()
    assert format_checkpoint_body(cp) == SPEC_BODY


@pytest.mark.parametrize(
    "cp",
    [
        Checkpoint("hub.example/audit", 0, hashlib.sha256(b"").digest()),
        Checkpoint("hub.example/audit", 1, b"\x00" * 32),
        Checkpoint("日志.example/审计", 2**63, b"\xff" * 32),
        Checkpoint("hub.example/audit", 7, b"\x01" * 32, ("ext one", "— ext two")),
    ],
)
def test_checkpoint_round_trip(cp: Checkpoint) -> None:
    body = format_checkpoint_body(cp)
    assert body.endswith(b"\n") and body.count(b"\n") == 3 + len(cp.extensions)
    assert parse_checkpoint_body(body) == cp
    note = sign_checkpoint(cp, SIGNER)
    assert open_checkpoint(note, VERIFIER) == cp


def test_checkpoint_body_layout() -> None:
    cp = Checkpoint("o", 10, b"\x00" * 32, ("x",))
    assert format_checkpoint_body(cp) == b"o\n10\n" + b"A" * 43 + b"=\nx\n"


_ROOT64 = base64.b64encode(b"\x00" * 32)


@pytest.mark.parametrize(
    "body",
    [
        b"origin\n1\n",  # two lines
        b"origin\n01\n" + _ROOT64 + b"\n",  # leading zero
        b"origin\n+1\n" + _ROOT64 + b"\n",
        b"origin\n-1\n" + _ROOT64 + b"\n",
        b"origin\n 1\n" + _ROOT64 + b"\n",
        b"origin\n1_0\n" + _ROOT64 + b"\n",
        "origin\n\u0661\n".encode() + _ROOT64 + b"\n",  # ARABIC-INDIC DIGIT ONE
        b"origin\n0x10\n" + _ROOT64 + b"\n",
        b"origin\n18446744073709551616\n" + _ROOT64 + b"\n",  # 2**64
        b"origin\n1\n" + base64.b64encode(b"\x00" * 31) + b"\n",
        b"origin\n1\n" + _ROOT64.rstrip(b"=") + b"\n",
        b"origin\n1\n" + _ROOT64 + b"\n\nextension\n",  # empty extension line
        b"\n1\n" + _ROOT64 + b"\n",  # empty origin
        b"origin\n1\n" + _ROOT64,  # no final newline
    ],
)
def test_malformed_checkpoints_are_rejected(body: bytes) -> None:
    with pytest.raises(MalformedNoteError):
        parse_checkpoint_body(body)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("", 1, b"\x00" * 32), "origin is empty"),
        (("o", -1, b"\x00" * 32), "out of range"),
        (("o", 1, b"\x00" * 31), "not 32"),
        (("o\nx", 1, b"\x00" * 32), "control character"),
        (("o", 1, b"\x00" * 32, ("",)), "non-empty"),
    ],
)
def test_invalid_checkpoints_cannot_be_built(args: tuple[object, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Checkpoint(*args)  # type: ignore[arg-type]


def test_checkpoint_signed_by_another_key_is_rejected() -> None:
    cp = Checkpoint(NAME, 3, b"\x02" * 32)
    with pytest.raises(UnknownKeyError):
        open_checkpoint(sign_checkpoint(cp, NoteSigner.generate(NAME)), VERIFIER)
