"""HubClient's case operations: submit, status, resubmit, withdraw, subscriptions."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from typing import TypeAlias, TypeVar

from google.protobuf.message import Message

from xhub.connectors.sdk._internal.status import (
    PushSequences,
    signers_to_fetch,
    verify_status_event,
)
from xhub.connectors.sdk._internal.verify import verify_dispatched_case
from xhub.connectors.sdk.services.registry import RegistryCalls
from xhub.protocol.errors import RefusedError, XhubError
from xhub.v1 import case_pb2, intake_pb2

M = TypeVar("M", bound=Message)
CaseStage: TypeAlias = case_pb2.CaseStage.ValueType


class CaseCalls(RegistryCalls):
    """HubClient's case operations: submit, status, resubmit, withdraw, subscriptions."""

    # -- cases ----------------------------------------------------------------

    def verify_submission(self, case: case_pb2.DispatchedCase) -> case_pb2.CaseSubmission:
        """End-to-end check of a dispatched case (端到端核验): what the hub forwards is what
        the platform signed (``_internal.verify.verify_dispatched_case``); the platform's
        member record is fetched first if not yet trusted.

        Raises: BadResponseError; NotFoundError when the hub knows no such platform.
        """
        self._trust([case.platform])
        return verify_dispatched_case(case, self._trusted, hub_id=self.hub_id)

    def submit_case(
        self,
        case_id: str,
        *,
        purpose: str,
        certificate_identifiers: list[str] | None = None,
        material_ids: list[str] | None = None,
        applicant_name: str = "",
        form: dict[str, str] | None = None,
        checklist: intake_pb2.Checklist | None = None,
    ) -> case_pb2.CaseReceipt:
        """Submit a prepared case once; the hub dispatches it to every department.

        The submission signs which case it is — prepared case, applicant code and type,
        item — taken from the hub-signed ``checklist`` that ``prepare_case`` answered (this
        client remembers the ones it prepared; pass ``checklist`` for a case prepared by
        another process). The hub refuses one that names another applicant or item, and the
        departments check them against the platform's signature (``verify_submission``).

        Idempotent by prepared case, so a call whose answer was lost is retried: submitting
        the same prepared case with the same content answers the first receipt (its
        ``duplicate`` set, same case number). ``lookup_case`` finds it later.

        Raises: ValueError (a checklist of another case), PermissionDeniedError (purpose or
        case binding; PURPOSE_NOT_BOUND with metadata ``field`` when the signed applicant /
        item / prepared case is not the prepared case's — also when no checklist is known
        here), FailedPreconditionError (already submitted with other content; metadata
        ``case_number`` names the case), NotFoundError, MalformedError (a field over its
        limit: metadata ``field``, ``limit``).
        """
        prepared = checklist or self._prepared.get(case_id) or intake_pb2.Checklist()
        if prepared.case_id and prepared.case_id != case_id:
            raise ValueError(f"the checklist is of prepared case {prepared.case_id[:40]!r}")
        return self.transport.call(
            self.transport.cases.SubmitCase,
            case_pb2.SubmitCaseRequest,
            case_pb2.CaseSubmission(
                certificate_identifiers=certificate_identifiers or [],
                material_ids=material_ids or [],
                applicant_name=applicant_name,
                form=form or {},
                applicant_code=prepared.applicant_code,
                applicant_code_type=prepared.applicant_code_type,
                item_code=prepared.item.code,
                prepared_case_id=prepared.case_id,
            ),
            case_pb2.CaseReceipt,
            idempotent=True,
            case_id=case_id,
            purpose=purpose,
        )

    def lookup_case(self, prepared_case_id: str) -> case_pb2.CaseReceipt:
        """The receipt of the case a prepared case became (按预受理编号查询), for the platform
        that prepared it — e.g. after a ``submit_case`` whose answer never arrived.

        Raises: NotFoundError (no such prepared case, or it was not submitted),
        PermissionDeniedError (NOT_YOUR_CASE: another platform prepared it; ROLE_REQUIRED: not
        a platform), MalformedError (a malformed id).
        """
        return self.transport.call(
            self.transport.cases.LookupCase,
            case_pb2.LookupCaseRequest,
            case_pb2.CaseLookup(prepared_case_id=prepared_case_id),
            case_pb2.CaseReceipt,
            idempotent=True,
        )

    def push_status(
        self,
        case_number: str,
        stage: CaseStage,
        *,
        event_id: str,
        note: str = "",
        missing_items: list[str] | None = None,
        certificate_identifier: str = "",
        sequence: int | None = None,
    ) -> case_pb2.StatusPushResult:
        """Report a stage change; idempotent by ``event_id``, so retrying is safe.

        ``sequence`` numbers this department's pushes of the case (1, 2, …; signed, so the
        platform notices a push the hub dropped). A connector with a durable outbox passes
        its own; left out, this client uses one more than the last it pushed for the case
        and, when it does not know that (a new process), adopts the number the hub's
        refusal names and sends once more (a hub that names a wrong number only makes the
        platform see a gap).

        Raises: PermissionDeniedError (not dispatched to this department),
        FailedPreconditionError (STATUS_TRANSITION; metadata ``field`` "sequence" and
        ``expected_sequence`` for a skipped or reused number), NotFoundError, MalformedError.
        """

        def push(number: int) -> case_pb2.StatusPushResult:
            return self.transport.call(
                self.transport.cases.PushStatus,
                case_pb2.PushStatusRequest,
                case_pb2.StatusPush(
                    case_number=case_number,
                    stage=stage,
                    event_id=event_id,
                    note=note,
                    missing_items=missing_items or [],
                    certificate_identifier=certificate_identifier,
                    sequence=number,
                ),
                case_pb2.StatusPushResult,
                idempotent=True,
                case_id=case_number,
            )

        number = sequence or self._pushed.get(case_number, 0) + 1
        try:
            result = push(number)
        except RefusedError as exc:
            expected = exc.metadata.get("expected_sequence", "")
            if sequence is not None or exc.metadata.get("field") != "sequence":
                raise
            if not expected.isdigit() or int(expected) == number:
                raise
            number = int(expected)
            result = push(number)
        if not result.duplicate:
            self._pushed[case_number] = number
        return result

    def resubmit_case(
        self,
        case_number: str,
        *,
        event_id: str,
        certificate_identifiers: list[str] | None = None,
        material_ids: list[str] | None = None,
        note: str = "",
    ) -> case_pb2.StatusPushResult:
        """Answer a supplement request (补正): the departments receive the case again.

        Raises: PermissionDeniedError (not this platform's case), FailedPreconditionError
        (no supplement requested), NotFoundError, MalformedError.
        """
        return self.transport.call(
            self.transport.cases.ResubmitCase,
            case_pb2.ResubmitCaseRequest,
            case_pb2.CaseResubmission(
                case_number=case_number,
                event_id=event_id,
                certificate_identifiers=certificate_identifiers or [],
                material_ids=material_ids or [],
                note=note,
            ),
            case_pb2.StatusPushResult,
            idempotent=True,
            case_id=case_number,
        )

    def withdraw_case(
        self, case_number: str, *, event_id: str, reason: str
    ) -> case_pb2.StatusPushResult:
        """Withdraw a case (撤回) before it is decided; idempotent by ``event_id``.

        Raises: PermissionDeniedError (not this platform's case), FailedPreconditionError
        (already decided), NotFoundError, MalformedError.
        """
        return self.transport.call(
            self.transport.cases.WithdrawCase,
            case_pb2.WithdrawCaseRequest,
            case_pb2.CaseWithdrawal(case_number=case_number, event_id=event_id, reason=reason),
            case_pb2.StatusPushResult,
            idempotent=True,
            case_id=case_number,
        )

    def subscribe_cases(
        self, after_cursor: int = 0, *, timeout: float | None = None
    ) -> Iterator[case_pb2.DispatchedCase]:
        """Cases dispatched to this department after ``after_cursor``, each verified as the
        hub's answer (check the platform's signatures with ``verify_submission``).

        Raises: PermissionDeniedError (not a department), TransportError, BadResponseError.
        """
        return self.transport.subscribe(
            self.transport.cases.SubscribeCases,
            case_pb2.SubscribeCasesRequest,
            case_pb2.DispatchedCase,
            after_cursor,
            timeout,
        )

    def subscribe_status(
        self,
        after_cursor: int = 0,
        *,
        timeout: float | None = None,
        sequences: PushSequences | None = None,
    ) -> Iterator[case_pb2.StatusEvent]:
        """Status events of this platform's cases after ``after_cursor``, each verified as
        the hub's answer and against the originator's signed message inside it
        (``StatusEvent.origin``: the department's push, or our own withdrawal or
        resubmission): case, department (the push's signer), stage, event id, note,
        missing items and certificate must be the signed ones. ``sequences`` tracks each
        department's push numbers and refuses a gap (a push the hub dropped); pass the one
        saved with ``after_cursor`` when resuming (``PushSequences``: a fresh one for a
        resumed stream cannot see gaps before the first event of each case).

        Raises: PermissionDeniedError (not a platform), TransportError, BadResponseError
        (an event that differs from its signed origin, or a missing push: "event 2 of CASE
        at DEPT missing"), NotFoundError (a signer the hub does not know).
        """
        tracker = sequences if sequences is not None else PushSequences(anchored=not after_cursor)
        events = self.transport.subscribe(
            self.transport.cases.SubscribeStatus,
            case_pb2.SubscribeStatusRequest,
            case_pb2.StatusEvent,
            after_cursor,
            timeout,
        )
        for event in events:
            self._trust(signers_to_fetch(event, self.member_id))
            checked = verify_status_event(
                event, self._trusted, platform=self.member_id, hub_id=self.hub_id
            )
            if checked.push is not None:
                tracker.check(event, checked.push)
            yield event

    def subscribe_supervision(
        self, after_cursor: int = 0, *, timeout: float | None = None
    ) -> Iterator[case_pb2.SupervisionEvent]:
        """Supervision events (督办: overdue cases) after ``after_cursor``, each verified.

        Raises: PermissionDeniedError, TransportError, BadResponseError.
        """
        return self.transport.subscribe(
            self.transport.cases.SubscribeSupervision,
            case_pb2.SubscribeSupervisionRequest,
            case_pb2.SupervisionEvent,
            after_cursor,
            timeout,
        )

    def follow(
        self,
        subscribe: Callable[..., Iterator[M]],
        after_cursor: int = 0,
        *,
        stop: Callable[[], bool] = lambda: False,
        max_backoff: float = 5.0,
        window: float = 300.0,
        sequences: PushSequences | None = None,
    ) -> Iterator[M]:
        """A subscription that survives hub restarts: resubscribes after the last cursor
        it delivered, with exponential backoff and jitter while the hub is away. Following
        ``subscribe_status``, one ``PushSequences`` (``sequences``, or a new one) spans every
        window, so a push missing across a reconnect is noticed too.

        Raises: what ``subscribe`` raises, except retryable errors (those it waits out).
        """
        cursor, delay = after_cursor, 0.1
        extra: dict[str, PushSequences] = {}
        if getattr(subscribe, "__func__", None) is CaseCalls.subscribe_status:
            extra["sequences"] = sequences or PushSequences(anchored=not after_cursor)
        while not stop():
            try:
                # Each window is one audited subscription; a new one resumes by cursor.
                for event in subscribe(cursor, timeout=window, **extra):
                    cursor = getattr(event, "cursor")  # noqa: B009
                    delay = 0.1
                    yield event
                    if stop():
                        return
            except XhubError as exc:
                if not exc.retryable:
                    raise
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, max_backoff)
