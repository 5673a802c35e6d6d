"""HubClient's case operations: submit, status, resubmit, withdraw, subscriptions."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from typing import TypeAlias, TypeVar

from google.protobuf.message import Message

from xhub.connectors.sdk._internal.verify import verify_dispatched_case
from xhub.connectors.sdk.services.registry import RegistryCalls
from xhub.protocol.errors import XhubError
from xhub.v1 import case_pb2

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
    ) -> case_pb2.CaseReceipt:
        """Submit a prepared case once; the hub dispatches it to every department.

        Idempotent by prepared case, so a call whose answer was lost is retried: submitting
        the same prepared case with the same content answers the first receipt (its
        ``duplicate`` set, same case number). ``lookup_case`` finds it later.

        Raises: PermissionDeniedError (purpose or case binding), FailedPreconditionError
        (already submitted with other content; metadata ``case_number`` names the case),
        NotFoundError, MalformedError (a field over its limit: metadata ``field``, ``limit``).
        """
        return self.transport.call(
            self.transport.cases.SubmitCase,
            case_pb2.SubmitCaseRequest,
            case_pb2.CaseSubmission(
                certificate_identifiers=certificate_identifiers or [],
                material_ids=material_ids or [],
                applicant_name=applicant_name,
                form=form or {},
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
    ) -> case_pb2.StatusPushResult:
        """Report a stage change; idempotent by ``event_id``, so retrying is safe.

        Raises: PermissionDeniedError (not dispatched to this department),
        FailedPreconditionError (STATUS_TRANSITION), NotFoundError, MalformedError.
        """
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
            ),
            case_pb2.StatusPushResult,
            idempotent=True,
            case_id=case_number,
        )

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
        self, after_cursor: int = 0, *, timeout: float | None = None
    ) -> Iterator[case_pb2.StatusEvent]:
        """Status events of this platform's cases after ``after_cursor``, each verified.

        Raises: PermissionDeniedError (not a platform), TransportError, BadResponseError.
        """
        return self.transport.subscribe(
            self.transport.cases.SubscribeStatus,
            case_pb2.SubscribeStatusRequest,
            case_pb2.StatusEvent,
            after_cursor,
            timeout,
        )

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
    ) -> Iterator[M]:
        """A subscription that survives hub restarts: resubscribes after the last cursor
        it delivered, with exponential backoff and jitter while the hub is away.

        Raises: what ``subscribe`` raises, except retryable errors (those it waits out).
        """
        cursor, delay = after_cursor, 0.1
        while not stop():
            try:
                # Each window is one audited subscription; a new one resumes by cursor.
                for event in subscribe(cursor, timeout=window):
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
