"""E-certificate identifier (电子证照标识, GB/T 36904) with its MOD 37,36 check."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xhub.certificates_store.identifier import (
    IDENTIFIER_ROOT,
    CertificateIdentifier,
    IdentifierError,
    make_identifier,
    mod37_36_check_char,
    parse_identifier,
)
from xhub.protocol.codes import USCC_CHARSET, make_uscc

REAL = [
    "1.2.156.3005.2.11100000000013338W032.11220000013544541J.2430599.001.F",
    "1.2.156.3005.2.11100000000013338W011.11110000000021135M.20230329701.003.Y",
    "1.2.156.3005.2.11100000000013338W009.11330105002500287C.2025052201.002.0",
]
ALNUM = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _replace(text: str, index: int, char: str) -> str:
    return text[:index] + char + text[index + 1 :]


@pytest.mark.parametrize("text", REAL)
def test_real_identifiers_validate(text: str) -> None:
    ident = parse_identifier(text)
    assert ident.text == text
    assert str(ident) == text
    assert len(ident.type_code) == 21
    assert make_identifier(ident.type_code, ident.issuer_code, ident.serial, ident.version) == ident


@pytest.mark.parametrize(
    ("body", "check"),
    [
        ("11100000000013338W03211220000013544541J2430599001", "F"),
        ("11100000000013338W01111110000000021135M20230329701003", "Y"),
        ("11100000000013338W00911330105002500287C2025052201002", "0"),
    ],
)
def test_mod37_36_vectors(body: str, check: str) -> None:
    assert mod37_36_check_char(body) == check


@pytest.mark.parametrize("bad", ["", "abc", "12.3", "12-3"])
def test_mod37_36_rejects_bad_input(bad: str) -> None:
    with pytest.raises(IdentifierError):
        mod37_36_check_char(bad)


@pytest.mark.parametrize(
    ("text", "reason", "field"),
    [
        (REAL[0][:-1] + "G", "IDENTIFIER_CHECK", "check"),
        (REAL[1][:-1] + "Z", "IDENTIFIER_CHECK", "check"),
        (REAL[0][:-1] + "f", "IDENTIFIER_FORMAT", "check"),
        (REAL[0][:-1] + "FF", "IDENTIFIER_FORMAT", "check"),
        (REAL[0].replace("2430599", "2430598"), "IDENTIFIER_CHECK", "check"),
        (REAL[0].replace("1.2.156.3005.2.", "1.2.156.3005.1."), "IDENTIFIER_ROOT", "identifier"),
        (REAL[0].replace("1.2.156.", "1.2.840."), "IDENTIFIER_ROOT", "identifier"),
        (REAL[0].removeprefix("1.2.156.3005.2."), "IDENTIFIER_ROOT", "identifier"),
        (REAL[0].replace(".001.", ".000."), "IDENTIFIER_VERSION", "version"),
        (REAL[0].replace(".001.", ".01."), "IDENTIFIER_VERSION", "version"),
        (REAL[0].replace(".001.", ".0001."), "IDENTIFIER_VERSION", "version"),
        (REAL[0].replace("W032.", "W03."), "IDENTIFIER_FORMAT", "type_code"),
        (REAL[0].replace("W032.", "W0321."), "IDENTIFIER_FORMAT", "type_code"),
        (REAL[0].replace("338W032", "338O032"), "IDENTIFIER_FORMAT", "type_code"),
        (REAL[0].replace("W032.", "W03A."), "IDENTIFIER_FORMAT", "type_code"),
        (REAL[0].replace(".2430599.", ".243-599."), "IDENTIFIER_FORMAT", "serial"),
        (REAL[0].replace(".2430599.", ".abc."), "IDENTIFIER_FORMAT", "serial"),
        (REAL[0].replace(".2430599.", ".."), "IDENTIFIER_FORMAT", "serial"),
        (REAL[0].replace(".2430599.", "." + "9" * 65 + "."), "IDENTIFIER_FORMAT", "serial"),
        (REAL[0].replace(".11220000013544541J.", ".."), "IDENTIFIER_FORMAT", "issuer_code"),
        (REAL[0].replace(".2430599.", ".2430.599."), "IDENTIFIER_FORMAT", "identifier"),
        (REAL[0].replace(".001.F", ".001"), "IDENTIFIER_FORMAT", "identifier"),
    ],
)
def test_invalid_identifiers(text: str, reason: str, field: str) -> None:
    with pytest.raises(IdentifierError) as info:
        parse_identifier(text)
    assert info.value.reason == reason
    assert info.value.field == field
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("args", "reason", "field"),
    [
        (("11100000000013338W03", "11220000013544541J", "1", 1), "IDENTIFIER_FORMAT", "type_code"),
        (("11100000000013338W032", "", "1", 1), "IDENTIFIER_FORMAT", "issuer_code"),
        (("11100000000013338W032", "11220000013544541J", "", 1), "IDENTIFIER_FORMAT", "serial"),
        (("11100000000013338W032", "11220000013544541J", "1", 0), "IDENTIFIER_VERSION", "version"),
        (
            ("11100000000013338W032", "11220000013544541J", "1", 1000),
            "IDENTIFIER_VERSION",
            "version",
        ),
    ],
)
def test_make_identifier_rejects_bad_parts(
    args: tuple[str, str, str, int], reason: str, field: str
) -> None:
    with pytest.raises(IdentifierError) as info:
        make_identifier(*args)
    assert info.value.reason == reason
    assert info.value.field == field


def test_identifier_is_frozen_and_formats_version() -> None:
    ident = make_identifier("11100000000013338W032", "11220000013544541J", "SN1", 7)
    assert ident.text.startswith(IDENTIFIER_ROOT + ".")
    assert ".007." in ident.text
    with pytest.raises(AttributeError):
        ident.version = 8  # type: ignore[misc]


_uscc = st.builds(
    make_uscc,
    st.sampled_from(USCC_CHARSET),
    st.sampled_from(USCC_CHARSET),
    st.text("0123456789", min_size=6, max_size=6),
    st.text(USCC_CHARSET, min_size=8, max_size=8),
)
_identifiers = st.builds(
    make_identifier,
    st.builds(lambda u, n: u + f"{n:03d}", _uscc, st.integers(0, 999)),
    _uscc,
    st.text(ALNUM, min_size=1, max_size=64),
    st.integers(1, 999),
)


@settings(max_examples=200)
@given(_identifiers)
def test_generated_identifier_validates(ident: CertificateIdentifier) -> None:
    assert parse_identifier(ident.text) == ident


@settings(max_examples=400)
@given(_identifiers, st.data())
def test_any_single_change_breaks_identifier(
    ident: CertificateIdentifier, data: st.DataObject
) -> None:
    text = ident.text
    index = data.draw(st.integers(0, len(text) - 1))
    char = data.draw(st.sampled_from(ALNUM + ".").filter(lambda c: c != text[index]))
    with pytest.raises(IdentifierError):
        parse_identifier(_replace(text, index, char))
