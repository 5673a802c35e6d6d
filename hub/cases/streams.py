"""The case subscriptions: resumable streams read from ``case_events`` by cursor.

Every event (dispatch, status, supervision) is a row with a global cursor; a stream serves
the subscriber's rows after its cursor, hub-signed, polling the database (and woken early
by this process's commits). Delivery is at-least-once, survives a crash of any party, and
works across hub processes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from typing import TypeVar

from google.protobuf.message import Message

from xhub.hub.cases import store
from xhub.hub.cases.rules import DISPATCH, STATUS, SUPERVISION
from xhub.hub.core.rpc import Context, Service
from xhub.v1 import case_pb2, envelope_pb2, registry_pb2

POLL_SECONDS = 0.2
M = TypeVar("M", bound=Message)


class CaseStreams(Service):
    """The streaming half of CaseService (its unary methods are in ``hub.cases.service``)."""

    async def SubscribeCases(
        self, request: case_pb2.SubscribeCasesRequest, context: Context
    ) -> AsyncIterator[case_pb2.SubscribeCasesResponse]:
        async for envelope in self._stream(
            context,
            request.envelope,
            DISPATCH,
            "SubscribeCases",
            registry_pb2.ROLE_DEPARTMENT,
            case_pb2.DispatchedCase,
        ):
            yield case_pb2.SubscribeCasesResponse(envelope=envelope)

    async def SubscribeStatus(
        self, request: case_pb2.SubscribeStatusRequest, context: Context
    ) -> AsyncIterator[case_pb2.SubscribeStatusResponse]:
        async for envelope in self._stream(
            context,
            request.envelope,
            STATUS,
            "SubscribeStatus",
            registry_pb2.ROLE_PLATFORM,
            case_pb2.StatusEvent,
        ):
            yield case_pb2.SubscribeStatusResponse(envelope=envelope)

    async def SubscribeSupervision(
        self, request: case_pb2.SubscribeSupervisionRequest, context: Context
    ) -> AsyncIterator[case_pb2.SubscribeSupervisionResponse]:
        async for envelope in self._stream(
            context,
            request.envelope,
            SUPERVISION,
            "SubscribeSupervision",
            registry_pb2.ROLE_AUDITOR,
            case_pb2.SupervisionEvent,
        ):
            yield case_pb2.SubscribeSupervisionResponse(envelope=envelope)

    async def _stream(
        self,
        context: Context,
        envelope: envelope_pb2.Envelope,
        kind: str,
        name: str,
        role: registry_pb2.Role.ValueType,
        body_type: type[M],
    ) -> AsyncIterator[envelope_pb2.Envelope]:
        """Events for the caller after its cursor, hub-signed, polling the database."""
        runtime = self.runtime
        admitted, draft = await runtime.admit(
            context,
            envelope,
            case_pb2.CaseSubscription,
            method=f"/{self.descriptor.full_name}/{name}",
            require_role=role,
        )
        await runtime.run_blocking(
            lambda: runtime.complete(admitted, draft, lambda call: case_pb2.CaseSubscription())
        )  # the subscription itself is audited once
        recipient = "" if kind == SUPERVISION else admitted.caller.member_id
        cursor = admitted.message.after_cursor
        while not context.done():
            rows = await runtime.run_blocking(
                partial(store.page, runtime.engine, kind, recipient, cursor)
            )
            for event_cursor, body in rows:
                message = body_type()
                message.ParseFromString(body)
                setattr(message, "cursor", event_cursor)  # noqa: B010 - every streamed body has one
                yield runtime.sign_response(message, admitted.header)
                cursor = event_cursor
            if len(rows) < store.PAGE:
                await runtime.notifier.wait(POLL_SECONDS)
