"""Time-limit supervision (效能监察): a yellow warning, then an overdue escalation, once each.

Several hub processes may run this at once: each escalation is claimed by a conditional
UPDATE, and the claim, the supervision event and its audit entry commit together through
the runtime's one audit path (``HubRuntime.hub_action``), sent by the hub itself.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

from sqlalchemy.orm import Session

from xhub.hub.cases import calendar as workdays
from xhub.hub.cases import store
from xhub.hub.cases.rules import SUPERVISION, NewEvent, supervision_due
from xhub.hub.core.runtime import HubRuntime
from xhub.v1 import case_pb2

SERVICE = case_pb2.DESCRIPTOR.services_by_name["CaseService"].full_name
METHOD = f"/{SERVICE}/Supervision"  # the audit log's method for escalations


class Supervisor:
    def __init__(self, runtime: HubRuntime, calendar: workdays.WorkCalendar) -> None:
        self.runtime = runtime
        self.calendar = calendar

    def supervise(self, today: date | None = None) -> int:
        """Publish warnings and overdue escalations once each (several hubs may run this)."""
        today = today or datetime.now(UTC).date()
        with self.runtime.sessions() as session:
            open_rows = store.open_time_limits(session)
        published = 0
        for row, limit in open_rows:
            kind = supervision_due(today, row.accepted_on, limit, bool(row.warned), self.calendar)
            if kind is not None and self._escalate(
                row.case_number, row.department, kind, row.accepted_on, row.deadline
            ):
                published += 1
        return published

    def _escalate(
        self,
        case_number: str,
        department: str,
        kind: case_pb2.SupervisionKind.ValueType,
        accepted_on: str,
        deadline: str,
    ) -> bool:
        flag = "overdue" if kind == case_pb2.SUPERVISION_KIND_OVERDUE else "warned"
        now = datetime.now(UTC)

        def publish(session: Session) -> bool:
            if not store.claim_escalation(session, case_number, department, flag):
                return False  # another hub process published it
            overall = store.overall_of(session, case_number)
            event = case_pb2.SupervisionEvent(
                case_number=case_number,
                department=department,
                kind=kind,
                deadline=deadline,
                accepted_on=accepted_on,
            )
            escalation = NewEvent(
                SUPERVISION,
                "",
                department,
                f"{flag}:{case_number}:{department}"[:64],
                overall,
                overall,
                event,
            )
            store.add_events(session, case_number, self.runtime.identity.hub_id, [escalation], now)
            return True

        return self.runtime.hub_action(
            METHOD,
            publish,
            recipient=department,
            case_id=case_number,
            reason=case_pb2.SupervisionKind.Name(kind).removeprefix("SUPERVISION_KIND_"),
        )
