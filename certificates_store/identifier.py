"""E-certificate identifier (电子证照标识, GB/T 36904-2018).

``1.2.156.3005.2.<type code>.<issuer code>.<serial>.<version>.<check>``; the
check character is ISO/IEC 7064 MOD 37,36 (GB/T 17710 hybrid system) over
type code + issuer code + serial + version, without the root and dots.
Identifiers are keys: they are not case-folded, only stripped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from xhub.protocol.errors import shown

__all__ = [
    "IDENTIFIER_ROOT",
    "CertificateIdentifier",
    "IdentifierError",
    "make_identifier",
    "mod37_36_check_char",
    "parse_identifier",
]

IDENTIFIER_ROOT: Final = "1.2.156.3005.2"

_ALPHABET: Final = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_VALUE: Final = {c: i for i, c in enumerate(_ALPHABET)}
_M: Final = 36

# Type code: the defining ministry's USCC (GB 32100 set, no I O S V Z) + 3 digits.
_TYPE_CODE_RE: Final = re.compile(r"[0-9A-HJ-NP-RTUW-Y]{18}[0-9]{3}")
_ISSUER_RE: Final = re.compile(r"[0-9A-Z]{1,64}")
_SERIAL_RE: Final = re.compile(r"[0-9A-Z]{1,64}")
_VERSION_RE: Final = re.compile(r"[0-9]{3}")


class IdentifierError(ValueError):
    """An identifier failed a format or check rule (证照标识校验失败).

    ``reason`` is a stable machine string; ``field`` names the part at fault.
    """

    def __init__(self, reason: str, message_en: str, message_zh: str, *, field: str) -> None:
        super().__init__(f"{message_en} ({message_zh})")
        self.reason = reason
        self.field = field
        self.message_en = message_en
        self.message_zh = message_zh


def mod37_36_check_char(s: str) -> str:
    """ISO/IEC 7064 MOD 37,36 check character (GB/T 17710 混合系统校验码)."""
    if not s or any(c not in _VALUE for c in s):
        raise IdentifierError(
            "IDENTIFIER_FORMAT",
            "MOD 37,36 input must be non-empty and use only 0-9 A-Z",
            "MOD 37,36 校验输入应为非空的数字或大写字母",
            field="identifier",
        )
    p = _M
    for c in s:
        p = (((p + _VALUE[c]) % _M or _M) * 2) % (_M + 1)
    return _ALPHABET[(_M + 1 - p) % _M]


@dataclass(frozen=True, slots=True)
class CertificateIdentifier:
    """A parsed e-certificate identifier (电子证照标识)."""

    type_code: str
    issuer_code: str
    serial: str
    version: int
    check: str

    @property
    def text(self) -> str:
        return ".".join(
            (
                IDENTIFIER_ROOT,
                self.type_code,
                self.issuer_code,
                self.serial,
                f"{self.version:03d}",
                self.check,
            )
        )

    def __str__(self) -> str:
        return self.text


def _check_parts(type_code: str, issuer_code: str, serial: str, version: str) -> None:
    if not _TYPE_CODE_RE.fullmatch(type_code):
        raise IdentifierError(
            "IDENTIFIER_FORMAT",
            "type code must be 21 characters: the defining authority's USCC + 3 digits",
            "证照类型代码应为21位：定义机构统一社会信用代码加3位数字",
            field="type_code",
        )
    if not _ISSUER_RE.fullmatch(issuer_code):
        raise IdentifierError(
            "IDENTIFIER_FORMAT",
            "issuer code must be 1-64 characters of 0-9 A-Z (normally a USCC)",
            "颁发机构代码应为1-64位数字或大写字母（通常为统一社会信用代码）",
            field="issuer_code",
        )
    if not _SERIAL_RE.fullmatch(serial):
        raise IdentifierError(
            "IDENTIFIER_FORMAT",
            "serial must be 1-64 characters of 0-9 A-Z",
            "顺序号应为1-64位数字或大写字母",
            field="serial",
        )
    if not _VERSION_RE.fullmatch(version) or version == "000":
        raise IdentifierError(
            "IDENTIFIER_VERSION",
            f"version must be 3 digits from 001, got {shown(version)!r}",
            f"版本号应为001起的3位数字，实际为{shown(version)}",
            field="version",
        )


def parse_identifier(s: str) -> CertificateIdentifier:
    """Parse and verify an e-certificate identifier (解析并校验电子证照标识)."""
    text = s.strip()
    prefix = IDENTIFIER_ROOT + "."
    if not text.startswith(prefix):
        raise IdentifierError(
            "IDENTIFIER_ROOT",
            f"identifier must start with {prefix}",
            f"电子证照标识应以{prefix}开头",
            field="identifier",
        )
    parts = text[len(prefix) :].split(".")
    if len(parts) != 5:
        raise IdentifierError(
            "IDENTIFIER_FORMAT",
            "identifier must have type code, issuer code, serial, version and check "
            f"after the root, got {len(parts)} part(s)",
            f"根之后应有类型代码、颁发机构代码、顺序号、版本号、校验位五段，实际{len(parts)}段",
            field="identifier",
        )
    type_code, issuer_code, serial, version, check = parts
    _check_parts(type_code, issuer_code, serial, version)
    if len(check) != 1 or check not in _VALUE:
        raise IdentifierError(
            "IDENTIFIER_FORMAT",
            "check must be one character of 0-9 A-Z",
            "校验位应为1位数字或大写字母",
            field="check",
        )
    expected = mod37_36_check_char(type_code + issuer_code + serial + version)
    if check != expected:
        raise IdentifierError(
            "IDENTIFIER_CHECK",
            f"identifier check character does not match (expected {expected!r})",
            f"电子证照标识校验位错误（应为{expected}）",
            field="check",
        )
    return CertificateIdentifier(type_code, issuer_code, serial, int(version), check)


def make_identifier(
    type_code: str, issuer_code: str, serial: str, version: int = 1
) -> CertificateIdentifier:
    """Build an identifier with its check character (生成电子证照标识)."""
    if not 1 <= version <= 999:
        raise IdentifierError(
            "IDENTIFIER_VERSION",
            f"version must be 1-999, got {version}",
            f"版本号应为1-999，实际为{version}",
            field="version",
        )
    version_text = f"{version:03d}"
    _check_parts(type_code, issuer_code, serial, version_text)
    check = mod37_36_check_char(type_code + issuer_code + serial + version_text)
    return CertificateIdentifier(type_code, issuer_code, serial, version, check)
