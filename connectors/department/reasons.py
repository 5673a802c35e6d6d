"""Why the department connector passes a status row over (does not send it): the reason
codes of the state file's ``row_status`` view, the log and ``xhub-connector status``."""

from __future__ import annotations

from typing import Final

# Why a status row is passed over (not sent); the first two are errors in the row.
NO_CASE_NUMBER: Final = "NO_CASE_NUMBER"  # the case column is empty
UNMAPPED_STATUS_CODE: Final = "UNMAPPED_STATUS_CODE"  # the code is not in [status_codes]
CASE_NOT_DISPATCHED: Final = "CASE_NOT_DISPATCHED"  # not in the inbox: a counter case, or a typo
INTERNAL_STEP: Final = "INTERNAL_STEP"  # mapped to "" in [status_codes]: the hub is not told
STAGE_UNCHANGED: Final = "STAGE_UNCHANGED"  # repeats the stage last queued for its case
PASS_REASONS: Final = (
    NO_CASE_NUMBER,
    UNMAPPED_STATUS_CODE,
    CASE_NOT_DISPATCHED,
    INTERNAL_STEP,
    STAGE_UNCHANGED,
)
ROW_ERRORS: Final = frozenset({NO_CASE_NUMBER, UNMAPPED_STATUS_CODE})
"""Reasons that are always an error in the row (``DepartmentConfig.row_errors`` may add
CASE_NOT_DISPATCHED): kept until the row changes; the others ``keep_sent_days``."""

HUB_REFUSED: Final = "HUB_REFUSED"
"""Not a reason to pass a row over: the reason code of a push the hub refused."""
