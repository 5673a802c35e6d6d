"""USCC (统一社会信用代码), citizen ID (公民身份号码) and division code (行政区划代码) checks."""

from __future__ import annotations

from datetime import date

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xhub.protocol.codes import (
    DIVISION_NAMES,
    DIVISION_REFERENCE_VERSION,
    PROVINCE_PREFIXES,
    USCC_CHARSET,
    CodeError,
    Level,
    citizen_id_check_char,
    division_level,
    division_name,
    make_citizen_id,
    make_uscc,
    normalize_division,
    org_code_check_char,
    parent_divisions,
    upgrade_citizen_id15,
    uscc_check_char,
    validate_citizen_id,
    validate_uscc,
)

LEGACY_PILOT = "91350100M0001TGQXM"
# Synthetic demo codes: Guangzhou market regulation bureau, Liwan one-window centre.
GZ_SAMR = make_uscc("1", "1", "440100", "MB2C9041")
LIWAN_CENTRE = make_uscc("1", "2", "440103", "0A7K3QX1")
CITIZEN_EXAMPLE = "11010519491231002X"


def _replace(text: str, index: int, char: str) -> str:
    return text[:index] + char + text[index + 1 :]


# --- USCC ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "code",
    [
        GZ_SAMR,
        LIWAN_CENTRE,
        "11100000000013338W",  # defining ministry in real e-certificate type codes
        "11220000013544541J",
        "11330105002500287C",
        " 11110000000021135m ",  # stripped and upper-cased
    ],
)
def test_valid_uscc(code: str) -> None:
    result = validate_uscc(code)
    assert result.code == code.strip().upper()
    assert not result.legacy
    assert result.warning is None
    assert result.failed_checks == ()
    assert result.division == result.code[2:8]
    assert result.org_code == result.code[8:17]


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (GZ_SAMR[:17], "USCC_LENGTH"),
        (GZ_SAMR + "0", "USCC_LENGTH"),
        ("", "USCC_LENGTH"),
        (_replace(GZ_SAMR, 9, "I"), "USCC_CHARSET"),
        (_replace(GZ_SAMR, 9, "O"), "USCC_CHARSET"),
        (_replace(GZ_SAMR, 9, "S"), "USCC_CHARSET"),
        (_replace(GZ_SAMR, 9, "V"), "USCC_CHARSET"),
        (_replace(GZ_SAMR, 9, "Z"), "USCC_CHARSET"),
        (_replace(GZ_SAMR, 3, "-"), "USCC_CHARSET"),
        (_replace(GZ_SAMR, 3, "A"), "USCC_DIVISION"),
        (_replace(GZ_SAMR, 17, "0" if GZ_SAMR[17] != "0" else "1"), "USCC_CHECK"),
        (_replace(GZ_SAMR, 10, "7" if GZ_SAMR[10] != "7" else "8"), "USCC_CHECK"),
        (LEGACY_PILOT, "USCC_CHECK"),
    ],
)
def test_invalid_uscc(code: str, reason: str) -> None:
    with pytest.raises(CodeError) as info:
        validate_uscc(code)
    assert info.value.reason == reason
    assert info.value.field == "uscc"
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (GZ_SAMR[:17], "USCC_LENGTH"),
        (_replace(GZ_SAMR, 9, "O"), "USCC_CHARSET"),
        (_replace(GZ_SAMR, 3, "A"), "USCC_DIVISION"),
    ],
)
def test_format_errors_are_never_overridable(code: str, reason: str) -> None:
    with pytest.raises(CodeError) as info:
        validate_uscc(code, allow_legacy=True)
    assert info.value.reason == reason


def test_legacy_pilot_code_needs_override() -> None:
    with pytest.raises(CodeError) as info:
        validate_uscc(LEGACY_PILOT)
    assert info.value.reason == "USCC_CHECK"
    assert "统一社会信用代码" in str(info.value)
    result = validate_uscc(LEGACY_PILOT, allow_legacy=True)
    assert result.legacy
    assert result.failed_checks == ("USCC_CHECK",)
    assert result.warning is not None and "legacy" in result.warning
    assert result.division == "350100"


def test_org_code_mismatch_is_legacy_overridable() -> None:
    # Wrong GB 11714 check char at position 17 but a correct position-18 check.
    first16 = GZ_SAMR[:16]
    wrong_org = "0" if GZ_SAMR[16] != "0" else "1"
    code = first16 + wrong_org + uscc_check_char(first16 + wrong_org)
    with pytest.raises(CodeError) as info:
        validate_uscc(code)
    assert info.value.reason == "USCC_ORG_CHECK"
    result = validate_uscc(code, allow_legacy=True)
    assert result.legacy and result.failed_checks == ("USCC_ORG_CHECK",)


def test_custom_field_name() -> None:
    with pytest.raises(CodeError) as info:
        validate_uscc("123", field="holder_code")
    assert info.value.field == "holder_code"


@pytest.mark.parametrize(
    ("base8", "check"),
    [("00001333", "8"), ("01354454", "1"), ("00002113", "5"), ("00250028", "7"), ("M0001TGQ", "X")],
)
def test_org_code_check_char(base8: str, check: str) -> None:
    assert org_code_check_char(base8) == check


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (("91", "1", "440100", "MB2C9041"), "registering"),
        (("9", "1", "44010", "MB2C9041"), "division"),
        (("9", "1", "44010A", "MB2C9041"), "division"),
        (("9", "1", "440100", "MB2C904"), "org_base8"),
        (("9", "1", "440100", "MB2C904I"), "org_base8"),
    ],
)
def test_make_uscc_rejects_bad_parts(args: tuple[str, str, str, str], field: str) -> None:
    with pytest.raises(CodeError) as info:
        make_uscc(*args)
    assert info.value.field == field


_uscc_char = st.sampled_from(USCC_CHARSET)
_uscc_parts = st.tuples(
    _uscc_char,
    _uscc_char,
    st.text("0123456789", min_size=6, max_size=6),
    st.text(USCC_CHARSET, min_size=8, max_size=8),
)


@settings(max_examples=200)
@given(_uscc_parts)
def test_generated_uscc_validates(parts: tuple[str, str, str, str]) -> None:
    code = make_uscc(*parts)
    assert validate_uscc(code).code == code


@settings(max_examples=300)
@given(_uscc_parts, st.integers(0, 17), st.sampled_from(USCC_CHARSET + "IOSVZ"))
def test_any_single_change_breaks_uscc(
    parts: tuple[str, str, str, str], index: int, char: str
) -> None:
    code = make_uscc(*parts)
    if code[index] == char:
        return
    with pytest.raises(CodeError):
        validate_uscc(_replace(code, index, char))


# --- Citizen ID -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "birth"),
    [
        (CITIZEN_EXAMPLE, date(1949, 12, 31)),
        (CITIZEN_EXAMPLE.lower(), date(1949, 12, 31)),
        (make_citizen_id("440103", "20000229", "123"), date(2000, 2, 29)),
        (make_citizen_id("830000", "19850101", "001"), date(1985, 1, 1)),
    ],
)
def test_valid_citizen_id(code: str, birth: date) -> None:
    result = validate_citizen_id(code)
    assert result.birth_date == birth
    assert result.code == code.upper()
    assert result.code18 == result.code
    assert not result.legacy15


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        ("110105194912310021", "CITIZEN_ID_CHECK"),
        ("11010519491231003X", "CITIZEN_ID_CHECK"),
        (make_citizen_id("440103", "19900101", "001")[:17] + "Y", "CITIZEN_ID_FORMAT"),
        ("1101051949123100X2", "CITIZEN_ID_FORMAT"),
        ("110105199002300012", "CITIZEN_ID_BIRTH_DATE"),  # 30 February
        ("110105199013010012", "CITIZEN_ID_BIRTH_DATE"),  # month 13
        ("110105190002290010", "CITIZEN_ID_BIRTH_DATE"),  # 1900 was not a leap year
        ("990105194912310020", "CITIZEN_ID_ADDRESS"),
        ("11010519491231002", "CITIZEN_ID_LENGTH"),
        ("11010519491231002X0", "CITIZEN_ID_LENGTH"),
        ("110105491231002", "CITIZEN_ID_LEGACY15"),
    ],
)
def test_invalid_citizen_id(code: str, reason: str) -> None:
    with pytest.raises(CodeError) as info:
        validate_citizen_id(code)
    assert info.value.reason == reason
    assert info.value.field == "citizen_id"
    assert code[:14] not in str(info.value)  # never echo personal numbers


def test_future_birth_date_needs_today() -> None:
    code = make_citizen_id("440103", "20300101", "001")
    assert validate_citizen_id(code).birth_date == date(2030, 1, 1)
    with pytest.raises(CodeError) as info:
        validate_citizen_id(code, today=date(2024, 6, 1))
    assert info.value.reason == "CITIZEN_ID_BIRTH_DATE"


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        ("110105491231002", None),
        ("11010549123100X", "CITIZEN_ID_FORMAT"),
        ("110105490230002", "CITIZEN_ID_BIRTH_DATE"),
    ],
)
def test_legacy15_citizen_id(code: str, reason: str | None) -> None:
    if reason is not None:
        with pytest.raises(CodeError) as info:
            validate_citizen_id(code, allow_legacy15=True)
        assert info.value.reason == reason
        return
    result = validate_citizen_id(code, allow_legacy15=True)
    assert result.legacy15
    assert result.warning is not None
    assert result.birth_date == date(1949, 12, 31)
    assert result.code18 == upgrade_citizen_id15(code)
    assert validate_citizen_id(result.code18).code18 == result.code18


def test_citizen_id_check_char() -> None:
    assert citizen_id_check_char(CITIZEN_EXAMPLE[:17]) == "X"
    with pytest.raises(CodeError):
        citizen_id_check_char("1101051949123100")


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (("44010", "19900101", "001"), "address6"),
        (("990103", "19900101", "001"), "address6"),
        (("440103", "19900230", "001"), "birth_yyyymmdd"),
        (("440103", "19900101", "01"), "seq3"),
        (("440103", "19900101", "０01"), "seq3"),  # full-width digit
    ],
)
def test_make_citizen_id_rejects_bad_parts(args: tuple[str, str, str], field: str) -> None:
    with pytest.raises(CodeError) as info:
        make_citizen_id(*args)
    assert info.value.field == field


_citizen_parts = st.tuples(
    st.builds(
        lambda prefix, rest: prefix + rest,
        st.sampled_from(sorted(PROVINCE_PREFIXES)),
        st.text("0123456789", min_size=4, max_size=4),
    ),
    st.dates(date(1900, 1, 1), date(2024, 12, 31)).map(lambda d: d.strftime("%Y%m%d")),
    st.text("0123456789", min_size=3, max_size=3),
)


@settings(max_examples=200)
@given(_citizen_parts)
def test_generated_citizen_id_validates(parts: tuple[str, str, str]) -> None:
    code = make_citizen_id(*parts)
    assert validate_citizen_id(code).code == code


@settings(max_examples=300)
@given(_citizen_parts, st.integers(0, 17), st.sampled_from("0123456789X"))
def test_any_single_change_breaks_citizen_id(
    parts: tuple[str, str, str], index: int, char: str
) -> None:
    code = make_citizen_id(*parts)
    if code[index] == char:
        return
    with pytest.raises(CodeError):
        validate_citizen_id(_replace(code, index, char))


# --- Division codes ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "six", "level", "parents", "name"),
    [
        ("440000", "440000", Level.PROVINCE, [], "广东省"),
        ("440100", "440100", Level.MUNICIPAL, ["440000"], "广州市"),
        ("440103", "440103", Level.DISTRICT, ["440000", "440100"], "荔湾区"),
        ("440103000000", "440103", Level.DISTRICT, ["440000", "440100"], "荔湾区"),
        ("440000000000", "440000", Level.PROVINCE, [], "广东省"),
        (" 110101 ", "110101", Level.DISTRICT, ["110000", "110100"], None),
        ("820000", "820000", Level.PROVINCE, [], "澳门特别行政区"),
    ],
)
def test_division(code: str, six: str, level: Level, parents: list[str], name: str | None) -> None:
    assert normalize_division(code) == six
    assert division_level(code) is level
    assert parent_divisions(code) == parents
    assert division_name(code) == name


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        ("440103001000", "DIVISION_TOWNSHIP"),
        ("440103001001", "DIVISION_TOWNSHIP"),
        ("990000", "DIVISION_PROVINCE"),
        ("000000", "DIVISION_PROVINCE"),
        ("160000", "DIVISION_PROVINCE"),
        ("44010", "DIVISION_FORMAT"),
        ("4401030", "DIVISION_FORMAT"),
        ("44010A", "DIVISION_FORMAT"),
        ("４40103", "DIVISION_FORMAT"),  # full-width digit
        ("", "DIVISION_FORMAT"),
    ],
)
def test_invalid_division(code: str, reason: str) -> None:
    with pytest.raises(CodeError) as info:
        normalize_division(code)
    assert info.value.reason == reason
    assert info.value.field == "division_code"
    with pytest.raises(CodeError):
        division_level(code)


def test_level_matches_proto_values() -> None:
    assert [(m.name, int(m)) for m in Level] == [
        ("PROVINCE", 1),
        ("MUNICIPAL", 2),
        ("DISTRICT", 3),
    ]


def test_reference_table_covers_all_provinces() -> None:
    expected = {f"{n}" for n in (*range(11, 16), *range(21, 24), *range(31, 38))}
    expected |= {f"{n}" for n in (*range(41, 47), *range(50, 55), *range(61, 66))}
    expected |= {"71", "81", "82"}
    assert expected == PROVINCE_PREFIXES
    assert len(PROVINCE_PREFIXES) == 34
    assert DIVISION_REFERENCE_VERSION == "2024"
    for code in DIVISION_NAMES:
        assert normalize_division(code) == code
