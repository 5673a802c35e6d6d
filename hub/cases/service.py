"""CaseService (办件派发与状态回传): submit once, dispatch to every department, status back.

Each unary handler reads what its decision needs once (``hub.cases.store``, under the case
lock), decides with the pure rules (``hub.cases.rules``), and writes the decision; a broken
rule reaches the caller as its refusal (``hub.binding.purpose.refusing``). Every request's
envelope, header and fields are bounded first (``hub.cases.limits``). Pushes are idempotent by
the author's event id, submissions by the prepared case (``hub.cases.submission``). The
streams are ``hub.cases.streams``; time-limit supervision is ``hub.cases.supervision``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from typing import Any, TypeVar

from google.protobuf.message import Message

from xhub.hub.binding.purpose import refusing
from xhub.hub.binding.store import read_bound_case
from xhub.hub.cases import calendar as workdays
from xhub.hub.cases import limits, rules, store, submission
from xhub.hub.cases.streams import CaseStreams
from xhub.hub.cases.supervision import Supervisor
from xhub.hub.core.rpc import Unary
from xhub.hub.core.runtime import Call, HubRuntime
from xhub.v1 import case_pb2, registry_pb2

DESCRIPTOR = case_pb2.DESCRIPTOR.services_by_name["CaseService"]
M = TypeVar("M", bound=Message)


class CaseService(CaseStreams):
    descriptor = DESCRIPTOR

    def __init__(self, runtime: HubRuntime, calendar: workdays.WorkCalendar | None = None) -> None:
        super().__init__(runtime)
        self.calendar = calendar or workdays.WorkCalendar.from_file(workdays.SAMPLE_CN_2026)
        self.supervisor = Supervisor(runtime, self.calendar)

    def unary(self) -> Sequence[Unary[Any]]:
        platform, department = registry_pb2.ROLE_PLATFORM, registry_pb2.ROLE_DEPARTMENT
        return [
            Unary("SubmitCase", case_pb2.CaseSubmission, self._handler(_submit), role=platform),
            Unary("LookupCase", case_pb2.CaseLookup, self._handler(_lookup), role=platform),
            Unary("WithdrawCase", case_pb2.CaseWithdrawal, self._handler(_withdraw), role=platform),
            Unary(
                "ResubmitCase", case_pb2.CaseResubmission, self._handler(_resubmit), role=platform
            ),
            Unary("PushStatus", case_pb2.StatusPush, self._handler(self._push), role=department),
        ]

    def supervise(self, today: date | None = None) -> int:
        """Publish due time-limit warnings and overdue escalations (see ``Supervisor``)."""
        return self.supervisor.supervise(today)

    def _handler(self, handler: Callable[[Call[M]], Message]) -> Callable[[Call[M]], Message]:
        """Bounded fields first; rules map to refusals; this process's streams wake once the
        events are committed."""

        def bounded(call: Call[M]) -> Message:
            limits.check_request(call.admitted.opened.envelope, call.message)
            return handler(call)

        ruled = refusing(bounded)

        def run(call: Call[M]) -> Message:
            call.after_commit.append(self.runtime.notifier.notify)
            return ruled(call)

        return run

    def _push(self, call: Call[case_pb2.StatusPush]) -> case_pb2.StatusPushResult:
        push = call.message
        call.audit.case_id = push.case_number[:40]
        request = _request(call)
        rows = store.read_push(call.session, request.author, push)
        return _applied(call, request, rules.decide_push(rows, push, request, self.calendar))


def _request(call: Call[Any]) -> rules.Request:
    return rules.Request(call.caller.member_id, call.admitted.opened.envelope, datetime.now(UTC))


def _applied(
    call: Call[Any], request: rules.Request, decision: rules.CaseDecision
) -> case_pb2.StatusPushResult:
    if decision.subject:
        call.audit.subject = decision.subject
    store.apply(call.session, decision.result.case_number, request.author, decision, request.now)
    return decision.result


def _submit(call: Call[case_pb2.CaseSubmission]) -> case_pb2.CaseReceipt:
    request = _request(call)
    rows = store.read_submission(call.session, call.header.case_id, call.message)
    decision = submission.decide_submit(
        rows,
        call.message,
        request,
        case_id=call.header.case_id,
        purpose=call.header.purpose,
        case_number=request.now.strftime("%Y%m%d") + uuid.uuid4().hex[:12].upper(),
    )
    call.audit.subject = decision.subject
    store.insert_case(call.session, decision)
    call.audit.case_id = decision.case_number
    return decision.receipt


def _lookup(call: Call[case_pb2.CaseLookup]) -> case_pb2.CaseReceipt:
    case_id = call.message.prepared_case_id
    prepared = read_bound_case(call.session, case_id)
    receipt = submission.decide_lookup(
        prepared,
        store.read_submitted(call.session, case_id),
        case_id=case_id,
        caller=call.caller.member_id,
    )
    call.audit.case_id = receipt.case_number
    call.audit.subject = prepared.applicant_code if prepared is not None else ""
    return receipt


def _withdraw(call: Call[case_pb2.CaseWithdrawal]) -> case_pb2.StatusPushResult:
    withdrawal = call.message
    call.audit.case_id = withdrawal.case_number[:40]
    request = _request(call)
    rows = store.read_platform_action(call.session, request.author, withdrawal)
    return _applied(call, request, rules.decide_withdraw(rows, withdrawal, request))


def _resubmit(call: Call[case_pb2.CaseResubmission]) -> case_pb2.StatusPushResult:
    resubmission = call.message
    call.audit.case_id = resubmission.case_number[:40]
    request = _request(call)
    rows = store.read_platform_action(
        call.session,
        request.author,
        resubmission,
        resubmission.certificate_identifiers,
        resubmission.material_ids,
    )
    return _applied(call, request, rules.decide_resubmit(rows, resubmission, request))
