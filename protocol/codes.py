"""Checks for the national codes the hub carries.

Unified social credit code (统一社会信用代码, GB 32100), citizen ID number
(公民身份号码, GB 11643) and administrative division code (行政区划代码,
GB/T 2260). Pure functions, no I/O: callers decide what to do with a warning.

Inputs are stripped and upper-cased before checking (clerks type ``x`` for
``X``); results carry the canonical form.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import date
from typing import Final

__all__ = [
    "DIVISION_NAMES",
    "DIVISION_REFERENCE_VERSION",
    "PROVINCE_PREFIXES",
    "USCC_CHARSET",
    "CitizenIdResult",
    "CodeError",
    "Level",
    "UsccResult",
    "citizen_id_check_char",
    "division_level",
    "division_name",
    "make_citizen_id",
    "make_uscc",
    "normalize_division",
    "org_code_check_char",
    "parent_divisions",
    "upgrade_citizen_id15",
    "uscc_check_char",
    "validate_citizen_id",
    "validate_uscc",
]


def _ascii_digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


class CodeError(ValueError):
    """A code failed a format or check rule (代码校验失败).

    ``reason`` is a stable machine string for clients and audit records;
    ``field`` names the offending input. Messages never echo a citizen ID.
    """

    def __init__(self, reason: str, message_en: str, message_zh: str, *, field: str) -> None:
        super().__init__(f"{message_en} ({message_zh})")
        self.reason = reason
        self.field = field
        self.message_en = message_en
        self.message_zh = message_zh


# --------------------------------------------------------------------------
# Unified social credit code (统一社会信用代码, GB 32100-2015)
# --------------------------------------------------------------------------

USCC_CHARSET: Final = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_USCC_VALUE: Final = {c: i for i, c in enumerate(USCC_CHARSET)}
_USCC_WEIGHTS: Final = tuple(pow(3, i, 31) for i in range(17))

# GB 11714 organisation code (组织机构代码): letters count 10..35 as in ISO 646.
_ALNUM: Final = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_ORG_WEIGHTS: Final = (3, 7, 9, 10, 5, 8, 4, 2)


@dataclass(frozen=True, slots=True)
class UsccResult:
    """A USCC that passed the format rules (统一社会信用代码校验结果).

    ``legacy`` is set only when a check failed and the caller allowed legacy
    pilot codes; ``failed_checks`` then names the failed reasons.
    """

    code: str
    registering: str
    category: str
    division: str
    org_code: str
    legacy: bool = False
    warning: str | None = None
    failed_checks: tuple[str, ...] = ()


def _uscc_body_error(text: str, field: str) -> CodeError | None:
    bad = sorted({c for c in text if c not in _USCC_VALUE})
    if bad:
        shown = " ".join(repr(c) for c in bad)
        return CodeError(
            "USCC_CHARSET",
            f"USCC contains characters outside the GB 32100 set (no I O S V Z): {shown}",
            f"统一社会信用代码含非法字符（不得使用 I O S V Z）：{shown}",
            field=field,
        )
    return None


def uscc_check_char(first17: str) -> str:
    """Check character (校验码) for the first 17 characters of a USCC."""
    if len(first17) != 17:
        raise CodeError(
            "USCC_LENGTH",
            f"USCC check needs exactly 17 characters, got {len(first17)}",
            f"计算校验码需要前17位，实际{len(first17)}位",
            field="uscc",
        )
    err = _uscc_body_error(first17, "uscc")
    if err is not None:
        raise err
    total = sum(_USCC_VALUE[c] * w for c, w in zip(first17, _USCC_WEIGHTS, strict=True))
    return USCC_CHARSET[(31 - total % 31) % 31]


def org_code_check_char(base8: str) -> str:
    """Check character of a GB 11714 organisation code (组织机构代码校验码)."""
    if len(base8) != 8 or any(c not in _ALNUM for c in base8):
        raise CodeError(
            "USCC_ORG_FORMAT",
            "organisation code body must be 8 characters of 0-9 A-Z",
            "组织机构代码本体应为8位数字或大写字母",
            field="uscc",
        )
    total = sum(_ALNUM.index(c) * w for c, w in zip(base8, _ORG_WEIGHTS, strict=True))
    value = 11 - total % 11
    if value == 10:
        return "X"
    if value == 11:
        return "0"
    return str(value)


def validate_uscc(code: str, *, allow_legacy: bool = False, field: str = "uscc") -> UsccResult:
    """Validate a USCC (统一社会信用代码).

    Length, character set and the digit-only division part are never
    overridable. A failed check character -- the USCC's own (``USCC_CHECK``)
    or the embedded organisation code's (``USCC_ORG_CHECK``) -- raises unless
    ``allow_legacy`` is set: some early pilot codes (e.g. 91350100M0001TGQXM)
    are real but fail, and must surface as a warning, never a silent accept.
    """
    text = code.strip().upper()
    if len(text) != 18:
        raise CodeError(
            "USCC_LENGTH",
            f"USCC must be 18 characters, got {len(text)}",
            f"统一社会信用代码应为18位，实际{len(text)}位",
            field=field,
        )
    err = _uscc_body_error(text, field)
    if err is not None:
        raise err
    if not text[2:8].isdigit():
        raise CodeError(
            "USCC_DIVISION",
            f"USCC positions 3-8 must be a 6-digit division code, got {text[2:8]!r}",
            f"统一社会信用代码第3-8位应为6位数字行政区划码，实际为{text[2:8]}",
            field=field,
        )

    failed: list[str] = []
    messages: list[tuple[str, str]] = []
    expected_org = org_code_check_char(text[8:16])
    if text[16] != expected_org:
        failed.append("USCC_ORG_CHECK")
        messages.append(
            (
                f"embedded organisation code {text[8:17]} fails its GB 11714 check "
                f"(expected {expected_org!r} at position 17)",
                f"组织机构代码{text[8:17]}校验失败（第17位应为{expected_org}）",
            )
        )
    expected = uscc_check_char(text[:17])
    if text[17] != expected:
        failed.append("USCC_CHECK")
        messages.append(
            (
                f"USCC {text} fails its check character (expected {expected!r} at position 18)",
                f"统一社会信用代码{text}校验码错误（第18位应为{expected}）",
            )
        )

    if failed and not allow_legacy:
        # Report the USCC's own check first: it is what users recognise.
        reason = "USCC_CHECK" if "USCC_CHECK" in failed else failed[0]
        en, zh = messages[failed.index(reason)]
        raise CodeError(reason, en, zh, field=field)

    warning = None
    if failed:
        en = "; ".join(m[0] for m in messages)
        zh = "；".join(m[1] for m in messages)
        warning = (
            f"accepted as legacy pilot code by explicit override: {en} (按历史试点代码放行：{zh})"
        )
    return UsccResult(
        code=text,
        registering=text[0],
        category=text[1],
        division=text[2:8],
        org_code=text[8:17],
        legacy=bool(failed),
        warning=warning,
        failed_checks=tuple(failed),
    )


def make_uscc(registering: str, category: str, division: str, org_base8: str) -> str:
    """Build a valid synthetic USCC for demos and tests (生成测试用统一社会信用代码).

    Both check characters are computed; the parts must already be in the
    GB 32100 character set so the result validates.
    """
    parts = (
        ("registering", registering, 1),
        ("category", category, 1),
        ("division", division, 6),
        ("org_base8", org_base8, 8),
    )
    for name, value, size in parts:
        if len(value) != size:
            raise CodeError(
                "USCC_LENGTH",
                f"{name} must be {size} character(s), got {len(value)}",
                f"{name}应为{size}位，实际{len(value)}位",
                field=name,
            )
        err = _uscc_body_error(value, name)
        if err is not None:
            raise err
    if not division.isdigit():
        raise CodeError(
            "USCC_DIVISION",
            "division must be 6 digits",
            "行政区划码应为6位数字",
            field="division",
        )
    first17 = registering + category + division + org_base8 + org_code_check_char(org_base8)
    return first17 + uscc_check_char(first17)


# --------------------------------------------------------------------------
# Citizen ID number (公民身份号码, GB 11643-1999)
# --------------------------------------------------------------------------

_ID_WEIGHTS: Final = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK: Final = "10X98765432"
_ID18_RE: Final = re.compile(r"[0-9]{17}[0-9X]")
_ID15_RE: Final = re.compile(r"[0-9]{15}")
# 83: residence permits for Taiwan residents (台湾居民居住证) use 830000.
_ID_ADDRESS_PREFIXES: Final = frozenset(
    {"11", "12", "13", "14", "15", "21", "22", "23", "31", "32", "33", "34", "35", "36", "37"}
    | {"41", "42", "43", "44", "45", "46", "50", "51", "52", "53", "54"}
    | {"61", "62", "63", "64", "65", "71", "81", "82", "83"}
)


@dataclass(frozen=True, slots=True)
class CitizenIdResult:
    """A citizen ID that passed (公民身份号码校验结果).

    ``code18`` is the 18-character form (upgraded for legacy 15-digit numbers)
    so records can be matched across both.
    """

    code: str
    code18: str
    division: str
    birth_date: date
    sequence: str
    legacy15: bool = False
    warning: str | None = None


def citizen_id_check_char(first17: str) -> str:
    """Check character (校验码) for the first 17 digits of a citizen ID."""
    if len(first17) != 17 or not _ascii_digits(first17):
        raise CodeError(
            "CITIZEN_ID_FORMAT",
            "citizen ID check needs exactly 17 digits",
            "计算公民身份号码校验码需要前17位数字",
            field="citizen_id",
        )
    total = sum(int(c) * w for c, w in zip(first17, _ID_WEIGHTS, strict=True))
    return _ID_CHECK[total % 11]


def _birth_date(yyyymmdd: str, field: str, today: date | None) -> date:
    try:
        born = date(int(yyyymmdd[:4]), int(yyyymmdd[4:6]), int(yyyymmdd[6:8]))
    except ValueError:
        born = None
    if born is None or born.year < 1800 or (today is not None and born > today):
        raise CodeError(
            "CITIZEN_ID_BIRTH_DATE",
            "citizen ID contains an impossible birth date",
            "公民身份号码中的出生日期无效",
            field=field,
        )
    return born


def _check_address(address6: str, field: str) -> None:
    if address6[:2] not in _ID_ADDRESS_PREFIXES:
        raise CodeError(
            "CITIZEN_ID_ADDRESS",
            "citizen ID address code does not start with a known province prefix",
            "公民身份号码地址码的省级前缀无效",
            field=field,
        )


def validate_citizen_id(
    code: str,
    *,
    allow_legacy15: bool = False,
    today: date | None = None,
    field: str = "citizen_id",
) -> CitizenIdResult:
    """Validate a citizen ID number (公民身份号码).

    15-digit numbers from old records (一代证, no check character, 19xx births)
    are accepted only with ``allow_legacy15`` and carry a warning. Pass
    ``today`` to reject birth dates in the future (kept out of the default so
    the function stays pure).
    """
    text = code.strip().upper()
    if len(text) == 15:
        if not allow_legacy15:
            raise CodeError(
                "CITIZEN_ID_LEGACY15",
                "15-digit legacy citizen ID numbers need an explicit override",
                "15位旧版公民身份号码须显式允许",
                field=field,
            )
        if not _ID15_RE.fullmatch(text):
            raise CodeError(
                "CITIZEN_ID_FORMAT",
                "a 15-digit citizen ID must be all digits",
                "15位公民身份号码应全部为数字",
                field=field,
            )
        _check_address(text[:6], field)
        born = _birth_date("19" + text[6:12], field, today)
        return CitizenIdResult(
            code=text,
            code18=upgrade_citizen_id15(text),
            division=text[:6],
            birth_date=born,
            sequence=text[12:15],
            legacy15=True,
            warning="15-digit legacy citizen ID has no check character (15位旧版号码无校验码)",
        )
    if len(text) != 18:
        raise CodeError(
            "CITIZEN_ID_LENGTH",
            f"citizen ID must be 18 characters, got {len(text)}",
            f"公民身份号码应为18位，实际{len(text)}位",
            field=field,
        )
    if not _ID18_RE.fullmatch(text):
        raise CodeError(
            "CITIZEN_ID_FORMAT",
            "citizen ID must be 17 digits followed by a digit or X",
            "公民身份号码应为17位数字加1位数字或X",
            field=field,
        )
    _check_address(text[:6], field)
    born = _birth_date(text[6:14], field, today)
    if citizen_id_check_char(text[:17]) != text[17]:
        raise CodeError(
            "CITIZEN_ID_CHECK",
            "citizen ID check character does not match",
            "公民身份号码校验码错误",
            field=field,
        )
    return CitizenIdResult(
        code=text,
        code18=text,
        division=text[:6],
        birth_date=born,
        sequence=text[14:17],
    )


def upgrade_citizen_id15(code15: str) -> str:
    """18-character form of a legacy 15-digit citizen ID (15位升18位)."""
    text = code15.strip()
    if not _ID15_RE.fullmatch(text):
        raise CodeError(
            "CITIZEN_ID_FORMAT",
            "a 15-digit citizen ID must be all digits",
            "15位公民身份号码应全部为数字",
            field="citizen_id",
        )
    first17 = text[:6] + "19" + text[6:]
    return first17 + citizen_id_check_char(first17)


def make_citizen_id(address6: str, birth_yyyymmdd: str, seq3: str) -> str:
    """Build a valid synthetic citizen ID for test data (生成测试用公民身份号码).

    Never use real people's numbers in fixtures.
    """
    for name, value, size in (
        ("address6", address6, 6),
        ("birth_yyyymmdd", birth_yyyymmdd, 8),
        ("seq3", seq3, 3),
    ):
        if len(value) != size or not _ascii_digits(value):
            raise CodeError(
                "CITIZEN_ID_FORMAT",
                f"{name} must be {size} digits",
                f"{name}应为{size}位数字",
                field=name,
            )
    _check_address(address6, "address6")
    _birth_date(birth_yyyymmdd, "birth_yyyymmdd", None)
    first17 = address6 + birth_yyyymmdd + seq3
    return first17 + citizen_id_check_char(first17)


# --------------------------------------------------------------------------
# Administrative division code (行政区划代码, GB/T 2260)
# --------------------------------------------------------------------------


class Level(enum.IntEnum):
    """Level of government (行政层级); values match proto ``xhub.v1.Level``."""

    PROVINCE = 1
    MUNICIPAL = 2
    DISTRICT = 3


DIVISION_REFERENCE_VERSION: Final = "2024"

# Reference data version 2024 (行政区划参考数据 2024版): every province-level
# prefix plus the demo region. Codes change over time; bump the version when
# editing, and do not treat absence here as "invalid".
DIVISION_NAMES: Final[dict[str, str]] = {
    "110000": "北京市",
    "120000": "天津市",
    "130000": "河北省",
    "140000": "山西省",
    "150000": "内蒙古自治区",
    "210000": "辽宁省",
    "220000": "吉林省",
    "230000": "黑龙江省",
    "310000": "上海市",
    "320000": "江苏省",
    "330000": "浙江省",
    "340000": "安徽省",
    "350000": "福建省",
    "360000": "江西省",
    "370000": "山东省",
    "410000": "河南省",
    "420000": "湖北省",
    "430000": "湖南省",
    "440000": "广东省",
    "450000": "广西壮族自治区",
    "460000": "海南省",
    "500000": "重庆市",
    "510000": "四川省",
    "520000": "贵州省",
    "530000": "云南省",
    "540000": "西藏自治区",
    "610000": "陕西省",
    "620000": "甘肃省",
    "630000": "青海省",
    "640000": "宁夏回族自治区",
    "650000": "新疆维吾尔自治区",
    "710000": "台湾省",
    "810000": "香港特别行政区",
    "820000": "澳门特别行政区",
    # Demo region: Guangzhou and its districts.
    "440100": "广州市",
    "440103": "荔湾区",
    "440104": "越秀区",
    "440105": "海珠区",
    "440106": "天河区",
    "440111": "白云区",
    "440112": "黄埔区",
    "440113": "番禺区",
    "440114": "花都区",
    "440115": "南沙区",
    "440117": "从化区",
    "440118": "增城区",
}

PROVINCE_PREFIXES: Final = frozenset(code[:2] for code in DIVISION_NAMES if code[2:] == "0000")


def normalize_division(code: str, *, field: str = "division_code") -> str:
    """Six-digit form of a division code (行政区划代码规范化).

    Accepts 6 digits or the 12-digit platform form with a ``000000`` suffix;
    any other 12-digit code is below county level (乡镇/街道) and rejected.
    """
    text = code.strip()
    if not _ascii_digits(text) or len(text) not in (6, 12):
        raise CodeError(
            "DIVISION_FORMAT",
            "division code must be 6 digits (or 12 digits ending in 000000)",
            "行政区划代码应为6位数字（或以000000结尾的12位数字）",
            field=field,
        )
    if len(text) == 12:
        if text[6:] != "000000":
            raise CodeError(
                "DIVISION_TOWNSHIP",
                f"12-digit code {text} is township level; only province, municipal "
                "and district levels are supported",
                f"12位代码{text}为乡镇（街道）级，仅支持省、市、区县三级",
                field=field,
            )
        text = text[:6]
    if text[:2] not in PROVINCE_PREFIXES:
        raise CodeError(
            "DIVISION_PROVINCE",
            f"division code {text} does not start with a GB/T 2260 province prefix",
            f"行政区划代码{text}的省级前缀不存在",
            field=field,
        )
    return text


def division_level(code: str) -> Level:
    """Level of a division code: pp0000 province, ppcc00 municipal, otherwise district."""
    text = normalize_division(code)
    if text[2:] == "0000":
        return Level.PROVINCE
    if text[4:] == "00":
        return Level.MUNICIPAL
    return Level.DISTRICT


def parent_divisions(code: str) -> list[str]:
    """Ancestors of a division code, province first, excluding the code itself."""
    text = normalize_division(code)
    level = division_level(text)
    if level is Level.PROVINCE:
        return []
    parents = [text[:2] + "0000"]
    if level is Level.DISTRICT and text[2:4] != "00":
        parents.append(text[:4] + "00")
    return parents


def division_name(code: str) -> str | None:
    """Name from the reference table, or None when the table lacks the code."""
    return DIVISION_NAMES.get(normalize_division(code))
