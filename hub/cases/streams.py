"""The case subscriptions: resumable streams read from ``case_events`` by cursor.

Every event (dispatch, status, supervision) is a row with a global cursor; a stream serves
the subscriber's rows after its cursor, hub-signed, polling the database (and woken early
by this process's commits). Delivery is at-least-once, survives a crash of any party, and
works across hub processes.

An event that cannot be delivered — its body is over ``limits.MAX_EVENT_BYTES``, so once
signed it could exceed what the SDK receives; only rows written before the limits can be —
is skipped, never retried: the stream moves past its cursor and the rest keep flowing. The
skip is reported once per delivery attempt: a warning in the hub log naming the stream,
recipient, cursor, case and size, and a DENIED audit entry (reason ``TOO_LARGE``, sent by
the hub to the subscriber, with the case number) that an operator or auditor finds by case.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from functools import partial
from typing import TypeVar

from google.protobuf.message import Message

from xhub.hub.binding.purpose import refusal
from xhub.hub.binding.rules import RuleError
from xhub.hub.cases import limits, store
from xhub.hub.cases.rules import DISPATCH, STATUS, SUPERVISION
from xhub.hub.core.audit_log import AuditDraft
from xhub.hub.core.rpc import Context, Received, Service
from xhub.v1 import case_pb2, envelope_pb2, registry_pb2

POLL_SECONDS = 0.2
log = logging.getLogger("xhub.cases")
M = TypeVar("M", bound=Message)


class CaseStreams(Service):
    """The streaming half of CaseService (its unary methods are in ``hub.cases.service``)."""

    async def SubscribeCases(
        self, request: Received[case_pb2.SubscribeCasesRequest], context: Context
    ) -> AsyncIterator[case_pb2.SubscribeCasesResponse]:
        async for envelope in self._stream(
            context,
            request,
            DISPATCH,
            "SubscribeCases",
            registry_pb2.ROLE_DEPARTMENT,
            case_pb2.DispatchedCase,
        ):
            yield case_pb2.SubscribeCasesResponse(envelope=envelope)

    async def SubscribeStatus(
        self, request: Received[case_pb2.SubscribeStatusRequest], context: Context
    ) -> AsyncIterator[case_pb2.SubscribeStatusResponse]:
        async for envelope in self._stream(
            context,
            request,
            STATUS,
            "SubscribeStatus",
            registry_pb2.ROLE_PLATFORM,
            case_pb2.StatusEvent,
        ):
            yield case_pb2.SubscribeStatusResponse(envelope=envelope)

    async def SubscribeSupervision(
        self, request: Received[case_pb2.SubscribeSupervisionRequest], context: Context
    ) -> AsyncIterator[case_pb2.SubscribeSupervisionResponse]:
        async for envelope in self._stream(
            context,
            request,
            SUPERVISION,
            "SubscribeSupervision",
            registry_pb2.ROLE_AUDITOR,
            case_pb2.SupervisionEvent,
        ):
            yield case_pb2.SubscribeSupervisionResponse(envelope=envelope)

    async def _stream(
        self,
        context: Context,
        request: Received[Message],
        kind: str,
        name: str,
        role: registry_pb2.Role.ValueType,
        body_type: type[M],
    ) -> AsyncIterator[envelope_pb2.Envelope]:
        """Events for the caller after its cursor, hub-signed, polling the database."""
        runtime = self.runtime
        envelope = request.envelope
        admitted, draft = await runtime.admit(
            context,
            envelope,
            case_pb2.CaseSubscription,
            method=f"/{self.descriptor.full_name}/{name}",
            require_role=role,
            envelope_bytes=request.envelope_bytes,
        )
        try:
            limits.check_request(admitted.opened.envelope, admitted.message)
        except RuleError as exc:
            await runtime.refuse(context, draft, refusal(exc))
        await runtime.run_blocking(
            lambda: runtime.complete(admitted, draft, lambda call: case_pb2.CaseSubscription())
        )  # the subscription itself is audited once
        recipient = "" if kind == SUPERVISION else admitted.caller.member_id
        cursor = admitted.message.after_cursor
        # Before each batch is sent, the subscriber is checked again (after the batch was
        # read, on the same connection): a member revoked or expired gets none of it.
        recheck = partial(runtime.gate.recheck, peer_pem=admitted.peer_pem)
        while not context.done():
            rows = await runtime.run_blocking(
                partial(store.page, runtime.engine, kind, recipient, cursor, recheck)
            )
            for event_cursor, body in rows:
                message = body_type()
                message.ParseFromString(body)
                if len(body) > limits.MAX_EVENT_BYTES:
                    await self._undeliverable(draft.method, recipient, event_cursor, message)
                    cursor = event_cursor
                    continue
                setattr(message, "cursor", event_cursor)  # noqa: B010 - every streamed body has one
                yield runtime.sign_response(message, admitted.header)
                cursor = event_cursor
            if len(rows) < store.PAGE:
                await runtime.notifier.wait(POLL_SECONDS)

    async def _undeliverable(
        self, method: str, recipient: str, cursor: int, message: Message
    ) -> None:
        """Report an event skipped as too large (see the module docstring)."""
        case_number = str(getattr(message, "case_number", ""))[:40]
        size = message.ByteSize()
        log.warning(
            "undeliverable event skipped: %s to %s, cursor %d, case %s, %d bytes (limit %d)",
            method,
            recipient or "auditors",
            cursor,
            case_number,
            size,
            limits.MAX_EVENT_BYTES,
        )
        draft = AuditDraft(
            method=method,
            sender=self.runtime.identity.hub_id,
            recipient=recipient,
            case_id=case_number,
        )
        await self.runtime.run_blocking(lambda: self.runtime.audit_refusal(draft, "TOO_LARGE"))
