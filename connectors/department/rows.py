"""A row of the department's status table, read: its status code mapped to a stage
(``[status_codes]``), its note and missing items (补正材料) and certificate taken, or the
reason code it is passed over for (``reasons.py``)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from xhub.connectors.department.config import DepartmentConfig
from xhub.connectors.department.outbox import StatusRow
from xhub.connectors.department.reasons import (
    CASE_NOT_DISPATCHED,
    INTERNAL_STEP,
    NO_CASE_NUMBER,
    UNMAPPED_STATUS_CODE,
)

_MISSING_SPLIT = re.compile(r"[\n;；、]+")


def parse_missing_items(value: Any) -> tuple[str, ...]:
    """补正材料 as the department wrote them: a JSON list, or items split by ; ； 、 or lines."""
    if value is None:
        return ()
    text = str(value).strip()
    if text.startswith("["):
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        if isinstance(parsed, list):
            return tuple(str(item).strip() for item in parsed if str(item).strip())
    return tuple(part.strip() for part in _MISSING_SPLIT.split(text) if part.strip())


def text_of(value: Any) -> str:
    """A cell as text, trimmed; NULL as ""."""
    return "" if value is None else str(value).strip()


def map_status_row(config: DepartmentConfig, row: Mapping[str, Any], ours: set[str]) -> StatusRow:
    """A row of the status table as a push to queue, or passed over with its reason code;
    ``ours`` are the case numbers of the batch that are in the inbox."""
    columns = config.columns
    key, stamp = row[columns.key], row[columns.updated_at]
    case_number = text_of(row[columns.case])
    native = text_of(row[columns.status])
    passed = StatusRow(key, stamp, case_number, native)
    if not case_number:
        return replace(passed, reason_code=NO_CASE_NUMBER, reason="no case number (办件编号为空)")
    if case_number not in ours:
        return replace(
            passed,
            reason_code=CASE_NOT_DISPATCHED,
            reason=f"case {case_number} was not dispatched to this department (not in "
            f"{config.inbox_table}; a counter case 窗口件, or a mistyped number)",
        )
    if native not in config.status_codes:
        return replace(
            passed,
            reason_code=UNMAPPED_STATUS_CODE,
            reason=f"status code {native!r} is not in [status_codes] (未映射的状态码)",
        )
    stage = config.status_codes[native]
    if stage is None:
        return replace(passed, reason_code=INTERNAL_STEP, reason="an internal step (内部环节)")
    return replace(
        passed,
        stage=stage,
        note=text_of(row[columns.note]) if columns.note else "",
        missing_items=(
            parse_missing_items(row[columns.missing_items]) if columns.missing_items else ()
        ),
        certificate_identifier=text_of(row[columns.certificate]) if columns.certificate else "",
    )
