"""Signed calls to the hub: channel, stubs, sealing, the retry policy, opening answers.

Every request is signed with the member's key; every answer is opened with the kernel's one
opener and must answer this very request (``verify.open_answer``). Every call has a deadline.
Only idempotent calls are retried, and only when the error says ``retryable``, with
exponential backoff and jitter; the policy is built once per transport.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import grpc
from cryptography import x509
from google.protobuf.message import Message
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from xhub.connectors.sdk._internal.verify import UnknownHubKey, open_answer
from xhub.protocol.bundle import MemberBundle
from xhub.protocol.ca_handover import CaHandoverError, follow_ca_handovers
from xhub.protocol.envelope import new_header, seal
from xhub.protocol.errors import BadResponseError, XhubError, typed_error
from xhub.protocol.key_rotation import HandoverError, HubKey, follow_handovers
from xhub.v1 import (
    audit_pb2_grpc,
    case_pb2,
    case_pb2_grpc,
    certificate_pb2_grpc,
    envelope_pb2,
    intake_pb2_grpc,
    material_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
)

M = TypeVar("M", bound=Message)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently an idempotent call is sent again."""

    attempts: int = 4
    initial_backoff: float = 0.2
    max_backoff: float = 5.0
    jitter: float = 0.2


def secure_channel(
    bundle: MemberBundle,
    *,
    address: str | None = None,
    reconnect_initial: float = 0.2,
    reconnect_max: float = 5.0,
) -> grpc.Channel:
    """An mTLS channel to the hub. gRPC's own reconnect backoff is bounded (its default grows
    to 120 s, so calls would keep failing long after a hub came back)."""
    root, key, chain = bundle.tls_credentials()
    credentials = grpc.ssl_channel_credentials(
        root_certificates=root, private_key=key, certificate_chain=chain
    )
    return grpc.secure_channel(
        address or bundle.hub_address,
        credentials,
        options=[
            ("grpc.ssl_target_name_override", bundle.server_name),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.max_receive_message_length", 8 * 1024 * 1024),
            ("grpc.initial_reconnect_backoff_ms", max(50, int(reconnect_initial * 1000))),
            ("grpc.min_reconnect_backoff_ms", max(50, int(reconnect_initial * 1000))),
            ("grpc.max_reconnect_backoff_ms", max(100, int(reconnect_max * 1000))),
        ],
    )


def _copy(message: M) -> M:
    copy = type(message)()
    copy.CopyFrom(message)
    return copy


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, XhubError) and exc.retryable


class Transport:
    """One member's signed conversation with one hub over one channel."""

    def __init__(
        self,
        bundle: MemberBundle,
        channel: grpc.Channel,
        *,
        timeout: float,
        retry: RetryPolicy,
        clock_skew: timedelta,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self.bundle = bundle
        self.timeout = timeout
        self.retry = retry
        self.clock_skew = clock_skew
        # Channels replaced by ``use_channel``: streams still open on them run to their end.
        self._replaced: list[grpc.Channel] = []
        self.channel = channel
        self._make_stubs()
        # Hub keys learnt through the hub's signed hand-overs (empty: the pinned key only).
        self.hub_keys: dict[str, HubKey] = {}
        self._asked_hub_keys: set[str] = set()
        self._retrying = Retrying(
            retry=retry_if_exception(_retryable),
            stop=stop_after_attempt(retry.attempts),
            wait=wait_exponential_jitter(
                multiplier=retry.initial_backoff, max=retry.max_backoff, jitter=retry.jitter
            ),
            reraise=True,
            sleep=sleep or time.sleep,
        )

    def use_channel(self, channel: grpc.Channel) -> None:
        """Talk over ``channel`` from now on (e.g. one trusting newly learnt CA roots); the
        previous channel stays open for what still runs on it until ``close``."""
        self._replaced.append(self.channel)
        self.channel = channel
        self._make_stubs()

    def _make_stubs(self) -> None:
        channel = self.channel
        self.registry = registry_pb2_grpc.RegistryServiceStub(channel)
        self.audit = audit_pb2_grpc.AuditServiceStub(channel)
        self.certificates = certificate_pb2_grpc.CertificateServiceStub(channel)
        self.intake = intake_pb2_grpc.IntakeServiceStub(channel)
        self.materials = material_pb2_grpc.MaterialServiceStub(channel)
        self.cases = case_pb2_grpc.CaseServiceStub(channel)

    def close(self) -> None:
        for channel in (*self._replaced, self.channel):
            channel.close()
        self._replaced.clear()

    def seal(
        self,
        payload: M,
        *,
        case_id: str = "",
        purpose: str = "",
        complete: Callable[[Any], None] | None = None,
    ) -> envelope_pb2.Envelope:
        """Stamp a fresh header on ``payload`` and sign it with this member's key;
        ``complete`` fills what depends on the header (e.g. a proof over its message id)."""
        getattr(payload, "header").CopyFrom(  # noqa: B009
            new_header(self.bundle.member_id, self.bundle.hub_id, case_id=case_id, purpose=purpose)
        )
        if complete is not None:
            complete(payload)
        return seal(payload, self.bundle.signer)

    def open_response(
        self, envelope: envelope_pb2.Envelope, response_type: type[M], request_id: str
    ) -> M:
        """The hub's answer to ``request_id``, verified (raises BadResponseError). An answer
        signed by a hub key not learnt yet makes the client fetch the hub's key history
        once per unknown key id, check it from the pinned key, and try again."""
        try:
            return self._open(envelope, response_type, request_id, self.hub_keys)
        except UnknownHubKey as exc:
            if exc.key_id in self._asked_hub_keys:
                raise
            self._asked_hub_keys.add(exc.key_id)
            self.learn_hub_keys()
            try:
                return self._open(envelope, response_type, request_id, self.hub_keys)
            except UnknownHubKey as again:
                raise self._unreached(again) from again

    def learn_hub_keys(self) -> dict[str, HubKey]:
        """Fetch the hub's key hand-overs, follow them from the key pinned in the bundle and
        keep the keys reached (raises BadResponseError if the chain or the answer fails)."""
        return self.fetch_hub_keys()[1]

    def fetch_hub_keys(self) -> tuple[registry_pb2.GetHubKeysResponse, dict[str, HubKey]]:
        """The GetHubKeys answer, its hand-over chain checked from the pinned key and its
        signed answer verified with the key reached; the keys are kept. The CA hand-overs
        beside it are the caller's to check (``protocol.ca_handover``)."""
        payload = registry_pb2.HubKeysQuery()
        envelope = self.seal(payload)
        request_id = payload.header.message_id
        try:
            response = self.registry.GetHubKeys(
                registry_pb2.GetHubKeysRequest(envelope=envelope), timeout=self.timeout
            )
        except grpc.RpcError as exc:
            raise typed_error(exc) from exc
        try:
            chain = follow_handovers(
                self.bundle.hub_verifier,
                list(response.handovers),
                hub_id=self.bundle.hub_id,
                ca_cert=self._hub_cert_roots(response),
            )
        except HandoverError as exc:
            raise BadResponseError(
                f"the hub's key history does not follow from the key in our bundle: {exc}"
            ) from exc
        try:
            self._open(response.envelope, registry_pb2.HubKeysResult, request_id, chain)
        except UnknownHubKey as exc:
            raise self._unreached(exc) from exc
        self.hub_keys = chain
        return response, chain

    def _hub_cert_roots(
        self, response: registry_pb2.GetHubKeysResponse
    ) -> tuple[x509.Certificate, ...]:
        """The CA roots a hub key's certificate may chain to: ours, and the ones the CA
        hand-overs reach from ours (a hub key rotated after a CA renewal is the new CA's)."""
        try:
            return follow_ca_handovers(self.bundle.ca_certs, list(response.ca_handovers))
        except CaHandoverError:
            return self.bundle.ca_certs

    def _unreached(self, exc: UnknownHubKey) -> BadResponseError:
        return BadResponseError(
            f"response refused: signed by key {exc.key_id[:16]!r}, which the hub's signed "
            "hand-overs do not reach from the hub key in our bundle "
            f"({self.bundle.hub_verifier.key_id[:16]}…)"
        )

    def _open(
        self,
        envelope: envelope_pb2.Envelope,
        response_type: type[M],
        request_id: str,
        hub_keys: dict[str, HubKey],
    ) -> M:
        return open_answer(
            envelope,
            response_type,
            hub_verifier=self.bundle.hub_verifier,
            hub_id=self.bundle.hub_id,
            member_id=self.bundle.member_id,
            request_id=request_id,
            now=datetime.now(UTC),
            clock_skew=self.clock_skew,
            hub_keys=hub_keys,
        )

    def call(
        self,
        rpc: Callable[..., Any],
        request_type: Callable[..., Any],
        payload: Message,
        response_type: type[M],
        *,
        idempotent: bool,
        case_id: str = "",
        purpose: str = "",
        complete: Callable[[Any], None] | None = None,
    ) -> M:
        """Sign, send with a deadline, verify the answer; retry idempotent calls only."""

        def attempt() -> M:
            # A retry is a new message: fresh id and nonce, so the hub's replay check holds.
            envelope = self.seal(payload, case_id=case_id, purpose=purpose, complete=complete)
            request_id = getattr(payload, "header").message_id  # noqa: B009
            try:
                response = rpc(request_type(envelope=envelope), timeout=self.timeout)
            except grpc.RpcError as exc:
                raise typed_error(exc) from exc
            return self.open_response(response.envelope, response_type, request_id)

        return self._retrying(attempt) if idempotent else attempt()

    def subscribe(
        self,
        rpc: Callable[..., Any],
        request_type: Callable[..., Any],
        event_type: type[M],
        after_cursor: int,
        timeout: float | None,
    ) -> Iterator[M]:
        """Events of a server stream after ``after_cursor``, each verified; a stream that hits
        its deadline simply ends (the caller resubscribes by cursor)."""
        payload = case_pb2.CaseSubscription(after_cursor=after_cursor)
        envelope = self.seal(payload)
        try:
            for message in rpc(request_type(envelope=envelope), timeout=timeout):
                yield self.open_response(message.envelope, event_type, payload.header.message_id)
        except grpc.RpcError as exc:
            if isinstance(exc, grpc.Call) and exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                return
            raise typed_error(exc) from exc

    def pages(
        self,
        rpc: Callable[..., Any],
        request_type: Callable[..., Any],
        query: Message,
        page_type: type[M],
    ) -> Iterator[M]:
        """The answers to a paged ``query``, page after page, following ``next_page_token``
        until it is empty (each page is its own idempotent call; ``query`` stays as given)."""
        query = _copy(query)
        while True:
            page = self.call(rpc, request_type, query, page_type, idempotent=True)
            yield page
            token: str = getattr(page, "next_page_token")  # noqa: B009
            if not token:
                return
            setattr(query, "page_token", token)  # noqa: B010
