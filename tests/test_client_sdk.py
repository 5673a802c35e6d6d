"""HubClient against grpcio-testing's fake channel: signing, response checks, retries.

The test thread plays the hub: it takes each request off the fake channel, checks the
envelope the client signed, and answers with an envelope signed by the hub key (or with a
defect, or with a gRPC status).  The client call itself runs on a worker thread.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import grpc_testing
import pytest
from google.protobuf.message import Message
from hubkit import enrol

from xhub.connectors import HubClient, RetryPolicy, TransportError
from xhub.hub.registry.store import validate_member
from xhub.hub.setup import init_data_dir
from xhub.protocol import codes
from xhub.protocol.bundle import MemberBundle
from xhub.protocol.envelope import (
    check_shape,
    new_header,
    parse_verified,
    seal,
    verify_signature_by,
)
from xhub.protocol.errors import (
    AuthenticationError,
    BadResponseError,
    MalformedError,
    NotFoundError,
    PermissionDeniedError,
    UnavailableError,
    XhubError,
)
from xhub.protocol.signing import ED25519, KeySigner, KeyVerifier, generate_private_key, load_signer
from xhub.v1 import envelope_pb2, registry_pb2

SERVICE = registry_pb2.DESCRIPTOR.services_by_name["RegistryService"]
GET_MEMBER = SERVICE.methods_by_name["GetMember"]
GET_HUB_KEYS = SERVICE.methods_by_name["GetHubKeys"]
LIST_MEMBERS = SERVICE.methods_by_name["ListMembers"]
HUB_ID = "CN.440000.XHUB"
ASKER_USCC = codes.make_uscc("1", "1", "440103", "0A7K3QX1")
TARGET_ID = "CN.440100." + codes.make_uscc("1", "1", "440100", "MB2C9041")
OTHER_MEMBER_ID = "CN.440106." + codes.make_uscc("1", "2", "440106", "3H8J2K4L")
WAIT = 5.0  # seconds; generous, the fake channel answers in microseconds


# --------------------------------------------------------------------------- fixtures


@dataclass(frozen=True)
class HubKeys:
    bundle: MemberBundle
    hub_signer: KeySigner


@pytest.fixture(scope="module")
def hub_keys(tmp_path_factory: pytest.TempPathFactory) -> HubKeys:
    """A real data dir and a real Ed25519-signing member bundle (signing key != TLS key)."""
    root: Path = tmp_path_factory.mktemp("client-sdk") / "hub"
    config = init_data_dir(root, hub_id=HUB_ID)
    spec = validate_member(
        name="荔湾区政务服务数据管理局",
        uscc=ASKER_USCC,
        division="440103",
        roles=["department"],
    )
    bundle = MemberBundle.load(
        enrol(config, spec, root.parent / "member", signing_algorithm=ED25519)
    )
    return HubKeys(bundle=bundle, hub_signer=load_signer(config.paths.signing_key))


class RecordingChannel:
    """Wraps the fake channel and records each unary invocation: method and timeout."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.invocations: list[tuple[str, float | None]] = []
        self._lock = threading.Lock()

    @property
    def calls(self) -> int:
        with self._lock:
            return len(self.invocations)

    @property
    def timeouts(self) -> list[float | None]:
        with self._lock:
            return [timeout for _method, timeout in self.invocations]

    def method_of(self, index: int) -> str:
        with self._lock:
            return self.invocations[index][0]

    def unary_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool = False,
    ) -> Callable[..., Any]:
        multi = self.inner.unary_unary(method, request_serializer, response_deserializer)

        def invoke(
            request: Any,
            timeout: float | None = None,
            metadata: Any = None,
            credentials: Any = None,
        ) -> Any:
            with self._lock:
                self.invocations.append((method, timeout))
            return multi(request, timeout=timeout, metadata=metadata, credentials=credentials)

        return invoke

    def __getattr__(self, name: str) -> Any:  # other stubs built by the client
        return getattr(self.inner, name)

    def close(self) -> None:
        pass


@dataclass
class Taken:
    """One request the client sent, already checked to be signed by the member."""

    request: Any
    rpc: Any
    header: envelope_pb2.Header
    payload: Message


@dataclass
class Hub:
    """The test thread's side of the fake channel."""

    keys: HubKeys
    channel: RecordingChannel
    client: HubClient
    executor: ThreadPoolExecutor
    sleeps: list[float] = field(default_factory=list)
    served: int = 0
    futures: list[Future[Any]] = field(default_factory=list)
    unanswered: list[Any] = field(default_factory=list)

    @property
    def bundle(self) -> MemberBundle:
        return self.keys.bundle

    def start(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future[Any]:
        future = self.executor.submit(fn, *args, **kwargs)
        self.futures.append(future)
        return future

    def take(
        self,
        method: Any = GET_MEMBER,
        payload_type: type[Message] = registry_pb2.MemberLookup,
    ) -> Taken:
        deadline = time.monotonic() + WAIT
        while self.channel.calls <= self.served:
            if time.monotonic() > deadline:
                pytest.fail(f"the client sent no request #{self.served + 1}")
            time.sleep(0.001)
        _metadata, request, rpc = self.channel.inner.take_unary_unary(method)
        self.served += 1
        self.unanswered.append(rpc)
        envelope = request.envelope
        # The request is a signed envelope of the right type, signed by the member's key.
        check_shape(envelope, payload_type.DESCRIPTOR.full_name)
        assert envelope.payload_type == payload_type.DESCRIPTOR.full_name
        verify_signature_by(envelope, KeyVerifier(self.bundle.signing_key.public_key()))
        payload = parse_verified(envelope, payload_type)
        header: envelope_pb2.Header = payload.header  # type: ignore[attr-defined]
        assert header.sender == self.bundle.member_id
        assert header.recipient == self.bundle.hub_id == HUB_ID
        assert len(header.nonce) >= 16
        return Taken(request=request, rpc=rpc, header=header, payload=payload)

    def answer(self, taken: Taken, response: Any) -> None:
        self.unanswered.remove(taken.rpc)
        taken.rpc.terminate(response, (), grpc.StatusCode.OK, "")

    def fail(self, taken: Taken, status: Any) -> None:
        """Terminate with a plain transport status or an xhub status (grpc.Status)."""
        self.unanswered.remove(taken.rpc)
        taken.rpc.terminate(None, status.trailing_metadata, status.code, status.details)

    def drain(self) -> None:
        """Unblock a client still waiting on requests the test did not answer."""
        for rpc in self.unanswered:
            rpc.terminate(None, (), grpc.StatusCode.INTERNAL, "test ended without an answer")
        self.unanswered.clear()
        deadline = time.monotonic() + WAIT
        while not all(f.done() for f in self.futures) and time.monotonic() < deadline:
            if self.channel.calls > self.served:
                method = self.channel.method_of(self.served)
                service, name = method.rsplit("/", 1)
                descriptor = SERVICE.methods_by_name[name]
                assert service == "/" + SERVICE.full_name
                _m, _r, rpc = self.channel.inner.take_unary_unary(descriptor)
                self.served += 1
                rpc.terminate(None, (), grpc.StatusCode.INTERNAL, "unexpected extra request")
            time.sleep(0.001)


@pytest.fixture
def make_hub(hub_keys: HubKeys) -> Iterator[Callable[..., Hub]]:
    executor = ThreadPoolExecutor(max_workers=2)
    hubs: list[Hub] = []

    def build(retry: RetryPolicy | None = None, timeout: float = 7.5) -> Hub:
        fake = grpc_testing.channel(
            registry_pb2.DESCRIPTOR.services_by_name.values(), grpc_testing.strict_real_time()
        )
        channel = RecordingChannel(fake)
        sleeps: list[float] = []
        client = HubClient(
            hub_keys.bundle, channel=channel, retry=retry, timeout=timeout, sleep=sleeps.append
        )
        hub = Hub(keys=hub_keys, channel=channel, client=client, executor=executor, sleeps=sleeps)
        hubs.append(hub)
        return hub

    yield build
    for hub in hubs:
        hub.drain()
    executor.shutdown(wait=False, cancel_futures=True)


def lookup_result(
    hub: Hub,
    request_id: str,
    *,
    sender: str = HUB_ID,
    recipient: str | None = None,
    issued_at: datetime | None = None,
) -> registry_pb2.MemberLookupResult:
    return registry_pb2.MemberLookupResult(
        header=new_header(
            sender,
            hub.bundle.member_id if recipient is None else recipient,
            in_reply_to=request_id,
            now=issued_at,
        ),
        member=registry_pb2.Member(
            member_id=TARGET_ID,
            name="广州市市场监督管理局",
            level=registry_pb2.LEVEL_MUNICIPAL,
            roles=[registry_pb2.ROLE_ISSUER],
            status=registry_pb2.MEMBER_STATUS_ACTIVE,
        ),
    )


def good_response(hub: Hub, request_id: str) -> registry_pb2.GetMemberResponse:
    return registry_pb2.GetMemberResponse(
        envelope=seal(lookup_result(hub, request_id), hub.keys.hub_signer)
    )


def result_of(future: Future[Any]) -> Any:
    return future.result(timeout=WAIT)


# --------------------------------------------------------------------------- happy path


def test_get_member_signs_request_and_returns_verified_member(make_hub: Callable[..., Hub]):
    hub = make_hub(timeout=7.5)
    future = hub.start(hub.client.get_member, TARGET_ID)
    taken = hub.take()
    assert isinstance(taken.payload, registry_pb2.MemberLookup)
    assert taken.payload.member_id == TARGET_ID
    issued = taken.header.issued_at.ToDatetime(tzinfo=UTC)
    assert abs(datetime.now(UTC) - issued) < timedelta(seconds=30)
    hub.answer(taken, good_response(hub, taken.header.message_id))

    member = result_of(future)
    assert member.member_id == TARGET_ID
    assert member.name == "广州市市场监督管理局"
    assert hub.channel.timeouts == [7.5]  # every call carries a deadline
    assert hub.sleeps == []


def test_list_members_follows_page_tokens(make_hub: Callable[..., Hub]):
    hub = make_hub()
    future = hub.start(
        lambda: list(
            hub.client.list_members(
                role=registry_pb2.ROLE_ISSUER, division_prefix="44", page_size=1
            )
        )
    )
    pages = [(["CN.A"], "token-2"), (["CN.B"], "")]
    seen_tokens = []
    for ids, next_token in pages:
        taken = hub.take(LIST_MEMBERS, registry_pb2.MemberListQuery)
        query = taken.payload
        assert isinstance(query, registry_pb2.MemberListQuery)
        assert query.role == registry_pb2.ROLE_ISSUER
        assert query.division_prefix == "44"
        assert query.page_size == 1
        seen_tokens.append(query.page_token)
        result = registry_pb2.MemberListResult(
            header=new_header(HUB_ID, hub.bundle.member_id, in_reply_to=taken.header.message_id),
            members=[registry_pb2.Member(member_id=i) for i in ids],
            next_page_token=next_token,
        )
        hub.answer(
            taken,
            registry_pb2.ListMembersResponse(envelope=seal(result, hub.keys.hub_signer)),
        )
    assert [m.member_id for m in result_of(future)] == ["CN.A", "CN.B"]
    assert seen_tokens == ["", "token-2"]
    assert hub.channel.calls == 2


# --------------------------------------------------------------------------- bad responses


def _signed_by_other_key(hub: Hub, request_id: str) -> registry_pb2.GetMemberResponse:
    stranger = KeySigner(generate_private_key())
    return registry_pb2.GetMemberResponse(envelope=seal(lookup_result(hub, request_id), stranger))


def _payload_byte_flipped(hub: Hub, request_id: str) -> registry_pb2.GetMemberResponse:
    response = good_response(hub, request_id)
    payload = bytearray(response.envelope.payload)
    payload[-1] ^= 0x01
    response.envelope.payload = bytes(payload)
    return response


def _wrong_payload_type(hub: Hub, request_id: str) -> registry_pb2.GetMemberResponse:
    # Correctly signed by the hub, but a list result where a lookup result is expected.
    other = registry_pb2.MemberListResult(
        header=new_header(HUB_ID, hub.bundle.member_id, in_reply_to=request_id)
    )
    return registry_pb2.GetMemberResponse(envelope=seal(other, hub.keys.hub_signer))


def _relabelled_payload_type(hub: Hub, request_id: str) -> registry_pb2.GetMemberResponse:
    # The type string is part of the signed bytes: relabelling breaks the signature.
    response = _wrong_payload_type(hub, request_id)
    response.envelope.payload_type = "xhub.v1.MemberLookupResult"
    return response


def _reply_to_other_request(hub: Hub, request_id: str) -> registry_pb2.GetMemberResponse:
    return good_response(hub, str(uuid.uuid4()))


def _recipient_other_member(hub: Hub, request_id: str) -> registry_pb2.GetMemberResponse:
    result = lookup_result(hub, request_id, recipient=OTHER_MEMBER_ID)
    return registry_pb2.GetMemberResponse(envelope=seal(result, hub.keys.hub_signer))


def _sender_not_hub(hub: Hub, request_id: str) -> registry_pb2.GetMemberResponse:
    result = lookup_result(hub, request_id, sender=OTHER_MEMBER_ID)
    return registry_pb2.GetMemberResponse(envelope=seal(result, hub.keys.hub_signer))


def _stale_response(hub: Hub, request_id: str) -> registry_pb2.GetMemberResponse:
    result = lookup_result(hub, request_id, issued_at=datetime.now(UTC) - timedelta(hours=1))
    return registry_pb2.GetMemberResponse(envelope=seal(result, hub.keys.hub_signer))


def _unsigned(hub: Hub, request_id: str) -> registry_pb2.GetMemberResponse:
    response = good_response(hub, request_id)
    del response.envelope.signatures[:]
    return response


def _no_envelope(hub: Hub, request_id: str) -> registry_pb2.GetMemberResponse:
    return registry_pb2.GetMemberResponse()


@pytest.mark.parametrize(
    "defect",
    [
        _payload_byte_flipped,
        _wrong_payload_type,
        _relabelled_payload_type,
        _reply_to_other_request,
        _recipient_other_member,
        _sender_not_hub,
        _stale_response,
        _unsigned,
        _no_envelope,
    ],
    ids=lambda f: f.__name__.strip("_"),
)
def test_bad_response_is_refused_and_not_retried(
    make_hub: Callable[..., Hub],
    defect: Callable[[Hub, str], registry_pb2.GetMemberResponse],
):
    hub = make_hub(retry=RetryPolicy(attempts=4))
    future = hub.start(hub.client.get_member, TARGET_ID)
    taken = hub.take()
    hub.answer(taken, defect(hub, taken.header.message_id))
    with pytest.raises(BadResponseError) as info:
        result_of(future)
    assert info.value.code == grpc.StatusCode.DATA_LOSS
    assert hub.channel.calls == 1  # never retried
    assert hub.sleeps == []


def test_an_answer_by_an_unknown_key_asks_for_the_hub_key_history_once(
    make_hub: Callable[..., Hub],
) -> None:
    """A key the bundle does not pin may be a successor the hub handed over to: the client
    asks for the hand-overs once; none reaches the stranger's key, so the answer is refused."""
    hub = make_hub(retry=RetryPolicy(attempts=4))
    future = hub.start(hub.client.get_member, TARGET_ID)
    taken = hub.take()
    hub.answer(taken, _signed_by_other_key(hub, taken.header.message_id))
    asked = hub.take(GET_HUB_KEYS, registry_pb2.HubKeysQuery)
    history = registry_pb2.HubKeysResult(
        header=new_header(HUB_ID, hub.bundle.member_id, in_reply_to=asked.header.message_id)
    )
    hub.answer(asked, registry_pb2.GetHubKeysResponse(envelope=seal(history, hub.keys.hub_signer)))
    with pytest.raises(BadResponseError) as info:
        result_of(future)
    assert "hand-overs do not reach" in info.value.message
    assert hub.channel.calls == 2  # the look-up once, the history once; never retried
    assert hub.sleeps == []


# --------------------------------------------------------------------------- retries


@dataclass(frozen=True)
class Plain:
    """A transport failure: a status with no xhub ErrorInfo."""

    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str], ...] = ()


def _plain(code: grpc.StatusCode) -> Callable[[], Plain]:
    return lambda: Plain(code, f"transport says {code.name}")


def _typed(error: XhubError) -> Callable[[], grpc.Status]:
    return error.to_status


@pytest.mark.parametrize(
    "failure",
    [
        _plain(grpc.StatusCode.UNAVAILABLE),
        _plain(grpc.StatusCode.DEADLINE_EXCEEDED),
        _typed(UnavailableError("hub is draining")),
    ],
    ids=["unavailable", "deadline-exceeded", "typed-unavailable"],
)
def test_idempotent_call_is_retried_with_a_new_message(
    make_hub: Callable[..., Hub], failure: Callable[[], Any]
):
    hub = make_hub(retry=RetryPolicy(attempts=3, initial_backoff=0.1, max_backoff=1.0, jitter=0.1))
    future = hub.start(hub.client.get_member, TARGET_ID)
    first = hub.take()
    hub.fail(first, failure())
    second = hub.take()
    hub.answer(second, good_response(hub, second.header.message_id))
    assert result_of(future).member_id == TARGET_ID
    assert hub.channel.calls == 2
    # A retry is a new message: fresh id and nonce, so the hub's replay check holds.
    assert second.header.message_id != first.header.message_id
    assert second.header.nonce != first.header.nonce
    assert second.payload.member_id == first.payload.member_id == TARGET_ID  # type: ignore[attr-defined]
    assert all(t is not None and t > 0 for t in hub.channel.timeouts)
    assert len(hub.sleeps) == 1
    assert 0 <= hub.sleeps[0] <= 1.0 + 0.1


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (PermissionDeniedError("role department may not do this"), PermissionDeniedError),
        (MalformedError("member_id is empty", metadata={"field": "member_id"}), MalformedError),
        (
            AuthenticationError("member revoked", reason=envelope_pb2.ERROR_REASON_MEMBER_REVOKED),
            AuthenticationError,
        ),
        (NotFoundError("no member 'CN.X'", metadata={"member_id": "CN.X"}), NotFoundError),
    ],
    ids=["permission-denied", "invalid-argument", "unauthenticated", "not-found"],
)
def test_refusals_are_typed_and_not_retried(
    make_hub: Callable[..., Hub], error: XhubError, expected: type[XhubError]
):
    hub = make_hub(retry=RetryPolicy(attempts=4))
    future = hub.start(hub.client.get_member, TARGET_ID)
    hub.fail(hub.take(), error.to_status())
    with pytest.raises(expected) as info:
        result_of(future)
    raised = info.value
    assert type(raised) is expected
    assert raised.code == error.code
    assert raised.reason == error.reason
    assert raised.reason_name == error.reason_name
    assert raised.metadata == error.metadata
    assert raised.message == error.message
    assert hub.channel.calls == 1
    assert hub.sleeps == []


@pytest.mark.parametrize(
    ("policy", "failure", "expected"),
    [
        (RetryPolicy(), _plain(grpc.StatusCode.UNAVAILABLE), TransportError),
        (RetryPolicy(attempts=1), _plain(grpc.StatusCode.UNAVAILABLE), TransportError),
        (RetryPolicy(attempts=3), _plain(grpc.StatusCode.DEADLINE_EXCEEDED), TransportError),
        (RetryPolicy(attempts=2), _typed(UnavailableError("busy")), UnavailableError),
    ],
    ids=["default-policy", "one-attempt", "deadline-3", "typed-unavailable-2"],
)
def test_gives_up_after_policy_attempts(
    make_hub: Callable[..., Hub],
    policy: RetryPolicy,
    failure: Callable[[], Any],
    expected: type[Exception],
):
    hub = make_hub(retry=policy)
    future = hub.start(hub.client.get_member, TARGET_ID)
    ids = []
    for _ in range(policy.attempts):
        taken = hub.take()
        ids.append(taken.header.message_id)
        hub.fail(taken, failure())
    with pytest.raises(expected) as info:
        result_of(future)
    raised: Any = info.value
    assert raised.code == failure().code
    assert hub.channel.calls == policy.attempts
    assert len(set(ids)) == policy.attempts  # every attempt was a new message
    assert len(hub.sleeps) == policy.attempts - 1
    assert all(0 <= s <= policy.max_backoff + policy.jitter for s in hub.sleeps)


def test_non_idempotent_call_is_not_retried(make_hub: Callable[..., Hub]):
    hub = make_hub(retry=RetryPolicy(attempts=4))
    future = hub.start(
        hub.client.transport.call,
        hub.client.transport.registry.GetMember,
        registry_pb2.GetMemberRequest,
        registry_pb2.MemberLookup(member_id=TARGET_ID),
        registry_pb2.MemberLookupResult,
        idempotent=False,
    )
    hub.fail(hub.take(), Plain(grpc.StatusCode.UNAVAILABLE, "connection reset"))
    with pytest.raises(TransportError) as info:
        result_of(future)
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert info.value.details == "connection reset"
    assert hub.channel.calls == 1
    assert hub.sleeps == []


def test_non_idempotent_call_succeeds_once(make_hub: Callable[..., Hub]):
    hub = make_hub()
    future = hub.start(
        hub.client.transport.call,
        hub.client.transport.registry.GetMember,
        registry_pb2.GetMemberRequest,
        registry_pb2.MemberLookup(member_id=TARGET_ID),
        registry_pb2.MemberLookupResult,
        idempotent=False,
        case_id="CASE-2026-0001",
        purpose="一窗受理",
    )
    taken = hub.take()
    assert taken.header.case_id == "CASE-2026-0001"
    assert taken.header.purpose == "一窗受理"
    hub.answer(taken, good_response(hub, taken.header.message_id))
    result = result_of(future)
    assert isinstance(result, registry_pb2.MemberLookupResult)
    assert result.member.member_id == TARGET_ID
    assert result.header.in_reply_to == taken.header.message_id
    assert hub.channel.calls == 1
