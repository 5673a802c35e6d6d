"""HubClient's per-case memory is bounded (``case_memory``, default 10 000 cases): the
checklists ``prepare_case`` answered and the last push number of each case, least recently
used forgotten first; a forgotten case still works."""

from __future__ import annotations

import pytest
from cases_world import ACCEPTED, COMPANY, ITEM, PURPOSE, UNDER_REVIEW, event_id
from hubkit import HubKit

from xhub.connectors.sdk._internal.lru import DEFAULT_CASE_MEMORY, LruDict
from xhub.protocol.errors import PermissionDeniedError


def test_the_least_recently_used_entry_goes_first() -> None:
    memory: LruDict[str, int] = LruDict(2)
    memory["a"], memory["b"] = 1, 2
    assert memory.get("a") == 1  # read: now the most recent
    memory["c"] = 3
    assert ("a" in memory, "b" in memory, "c" in memory) == (True, False, True)
    memory["a"] = 10  # set again: most recent, still two entries
    memory["d"] = 4
    assert (memory.get("a"), memory.get("c"), memory.get("d"), len(memory)) == (10, None, 4, 2)
    assert memory.get("c", 0) == 0
    with pytest.raises(ValueError, match="at least 1"):
        LruDict(0)
    assert LruDict().capacity == DEFAULT_CASE_MEMORY == 10_000


def test_a_client_remembers_only_its_most_recent_cases(case_kit: HubKit) -> None:
    platform = case_kit.client("platform", case_memory=2)
    first, second, third = (platform.prepare_case(ITEM, COMPANY, purpose=PURPOSE) for _ in "123")
    assert [c.case_id in platform._prepared for c in (first, second, third)] == [
        False,
        True,
        True,
    ]
    # Forgotten: the submission signs no applicant or item, and the hub refuses it ...
    with pytest.raises(PermissionDeniedError) as refused:
        platform.submit_case(first.case_id, purpose=PURPOSE, applicant_name="示例")
    assert refused.value.reason_name == "PURPOSE_NOT_BOUND"
    # ... unless the caller passes the checklist it kept.
    receipt = platform.submit_case(
        first.case_id, purpose=PURPOSE, applicant_name="示例", checklist=first
    )
    # A department that forgot a case's push number adopts the hub's once.
    department = case_kit.client("department", case_memory=1)
    department.push_status(receipt.case_number, ACCEPTED, event_id=event_id())
    other = platform.submit_case(second.case_id, purpose=PURPOSE, applicant_name="示例")
    department.push_status(other.case_number, ACCEPTED, event_id=event_id())
    assert receipt.case_number not in department._pushed
    result = department.push_status(receipt.case_number, UNDER_REVIEW, event_id=event_id())
    assert result.stage == UNDER_REVIEW and department._pushed.get(receipt.case_number) == 2
