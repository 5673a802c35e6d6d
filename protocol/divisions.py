"""GB/T 2260 reference data (行政区划代码参考数据) shipped with the project.

The table lives in ``protocol/data/gbt2260_<year>.txt`` (``code<TAB>name`` a line, ``#``
comments); the newest year is used. It lists province, prefecture and county levels. A
district created after the shipped year is refused unless the operator allows it
explicitly (``--allow-unlisted-division``), which is then recorded as a warning.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

from xhub.protocol.codes import CodeError, normalize_division

DATA_DIR = Path(__file__).parent / "data"
_FILE_RE = re.compile(r"^gbt2260_(\d{4})\.txt$")


@dataclass(frozen=True)
class DivisionTable:
    """One version of the reference table."""

    version: str
    names: dict[str, str]


def read_table(path: Path, version: str) -> DivisionTable:
    """Parse one reference file; a malformed line is a ValueError naming it."""
    names: dict[str, str] = {}
    for number, line in enumerate(path.read_text("utf-8").splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        code, _, name = line.partition("\t")
        if not re.fullmatch(r"\d{6}", code) or not name.strip():
            raise ValueError(f"{path}:{number}: expected 6 digits, a tab and a name")
        names[code] = name.strip()
    return DivisionTable(version, names)


@functools.cache
def reference() -> DivisionTable:
    """The newest shipped table."""
    found = sorted(
        (match.group(1), path)
        for path in DATA_DIR.iterdir()
        if (match := _FILE_RE.match(path.name)) is not None
    )
    if not found:
        raise RuntimeError(f"no GB/T 2260 reference file in {DATA_DIR}")
    version, path = found[-1]
    return read_table(path, version)


def check_listed(code: str, *, allow_unlisted: bool = False, field: str = "division") -> str:
    """Check a (normalised) division code against the reference table.

    Returns a warning (empty: listed). Raises CodeError when the code is not listed and
    ``allow_unlisted`` is false.
    """
    text = normalize_division(code, field=field)
    table = reference()
    if text in table.names:
        return ""
    message = (
        f"division code {text} is not in the GB/T 2260 reference data ({table.version} "
        "edition shipped with xhub)"
    )
    if allow_unlisted:
        return f"{message}; accepted because --allow-unlisted-division was given"
    raise CodeError(
        "DIVISION_UNLISTED",
        f"{message}; check the code, or pass --allow-unlisted-division for a newly "
        "created district",
        f"行政区划代码{text}不在随附的GB/T 2260参考数据（{table.version}版）中",
        field=field,
    )
