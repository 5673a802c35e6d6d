"""Supervision (效能监察) over a running hub: a yellow warning and an overdue escalation,
once each, to auditors only, and logged by the hub."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from cases_world import (
    ACCEPTED,
    APPROVED,
    COMPLETED,
    SUPERVISION_METHOD,
    UNDER_REVIEW,
    Code,
    Desk,
    S,
    drain,
    race,
)
from sqlalchemy import update

from xhub.connectors import XhubError
from xhub.hub.cases import calendar as workdays
from xhub.hub.cases.service import CaseService
from xhub.hub.core.db import CaseDepartmentRow
from xhub.v1 import audit_pb2

# -- supervision (效能监察) ---------------------------------------------------------------------


def _accepted_for_warning(today: date, limit: int, calendar: workdays.WorkCalendar) -> date:
    """An acceptance day that puts ``today`` in the yellow-warning period of ``limit``."""
    day = today
    while workdays.status_on(today, day, limit, calendar) != "warning":
        day -= timedelta(days=1)
    return day


def _supervision_events(desk: Desk, case: str) -> list[tuple[str, str, str, str]]:
    return [
        (S.SupervisionKind.Name(e.kind).removeprefix("SUPERVISION_KIND_"), e.department,
         e.accepted_on, e.deadline)
        for e in drain(desk.auditor.subscribe_supervision)
        if e.case_number == case
    ]  # fmt: skip


def test_supervision_warns_then_escalates_once_each_to_auditors(any_desk: Desk) -> None:
    desk = any_desk
    kit = desk.kit
    assert kit.running is not None
    calendar = workdays.WorkCalendar.from_file(workdays.SAMPLE_CN_2026)
    today = datetime.now(UTC).date()
    accepted = _accepted_for_warning(today, 10, calendar)
    deadline = workdays.deadline(accepted, 10, calendar)
    late = desk.submit().case_number
    done = desk.submit().case_number
    desk.walk(late, [ACCEPTED, UNDER_REVIEW])
    desk.walk(done, [ACCEPTED, UNDER_REVIEW, APPROVED, COMPLETED])  # finished: never overdue
    with kit.session() as session:
        session.execute(
            update(CaseDepartmentRow)
            .where(CaseDepartmentRow.case_number.in_([late, done]))
            .values(accepted_on=accepted.isoformat(), deadline=deadline.isoformat())
        )
    department = kit.member_id("department")
    services = [CaseService(kit.running.runtime), CaseService(kit.running.runtime)]

    # Twice on the warning day, and from two "hub processes" at once: one warning.
    published = [services[0].supervise(today=today), services[1].supervise(today=today)]
    assert sum(published) <= 1  # (the hub's own loop may have published it already)
    assert _supervision_events(desk, late) == [
        ("WARNING", department, accepted.isoformat(), deadline.isoformat())
    ]
    overdue_day = deadline + timedelta(days=1)
    published = race(2, lambda i: services[i].supervise(today=overdue_day))
    assert sorted(published) == [0, 1], published
    assert services[0].supervise(today=overdue_day + timedelta(days=5)) == 0
    expected = [
        ("WARNING", department, accepted.isoformat(), deadline.isoformat()),
        ("OVERDUE", department, accepted.isoformat(), deadline.isoformat()),
    ]
    assert _supervision_events(desk, late) == expected
    assert _supervision_events(desk, done) == []
    with kit.session() as session:
        row = session.get(CaseDepartmentRow, (late, department))
        assert row is not None and (row.warned, row.overdue) == (1, 1)

    # The escalations are in the audit log, from the hub, about the department.
    records = list(desk.auditor.query_audit(method=SUPERVISION_METHOD, case_id=late))
    entries = [audit_pb2.AuditEntry.FromString(r.entry) for r in records]
    assert sorted(e.reason for e in entries) == ["OVERDUE", "WARNING"]
    assert {(e.sender, e.recipient, e.decision) for e in entries} == {
        (kit.hub_id, department, audit_pb2.AUDIT_DECISION_ALLOWED)
    }


@pytest.mark.parametrize("member", ["platform", "department", "issuer"])
def test_only_auditors_subscribe_to_supervision(shared_desk: Desk, member: str) -> None:
    desk = shared_desk
    client = desk.kit.client(member)
    with pytest.raises(XhubError) as caught:
        drain(client.subscribe_supervision)
    assert (caught.value.code, caught.value.reason_name) == (
        Code.PERMISSION_DENIED,
        "ROLE_REQUIRED",
    )
