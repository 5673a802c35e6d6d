"""The fuzz test's world (tests/test_fuzz.py): one valid request of every RPC, recorded from
a real SDK story on a running hub, and the means to send mutations of it and judge answers.

``play_story`` runs the SDK through every method of the contract (publish, prepare, pull,
upload, submit, push, subscribe, the auditor's proofs ...) over channels that record each
request's exact bytes (``Recorder``, a client interceptor): the first request of each method
is that method's *base*, a message the hub accepted once. ``tests/fuzz_mutations.py`` turns a
base into mutations with the refusal each must get; ``send_raw`` sends one as raw bytes over
the member's mTLS channel and ``judge`` says what is wrong with the hub's answer, if anything.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hubkit import HubKit, MemberDef
from intake_world import COMPANY, LICENCE_TYPE, PURPOSE, certificate
from materials_world import PLAN, content, upload

from xhub.connectors import HubClient
from xhub.connectors.sdk.client import secure_channel
from xhub.hub.catalog import store as catalog
from xhub.protocol.errors import ERROR_DOMAIN, error_info_of
from xhub.v1 import (
    audit_pb2,
    case_pb2,
    certificate_pb2,
    envelope_pb2,
    intake_pb2,
    material_pb2,
    registry_pb2,
)

Code = grpc.StatusCode
ITEM_CODE = "11440103MB0A0007XY-FUZZ"
SERVICES = (registry_pb2, audit_pb2, certificate_pb2, intake_pb2, material_pb2, case_pb2)

# Statuses a refusal may carry; anything else (INTERNAL, UNKNOWN, UNAVAILABLE, a deadline) is
# the hub failing, not deciding.
REFUSAL_CODES = frozenset(
    {
        Code.INVALID_ARGUMENT,
        Code.UNAUTHENTICATED,
        Code.PERMISSION_DENIED,
        Code.NOT_FOUND,
        Code.ALREADY_EXISTS,
        Code.FAILED_PRECONDITION,
        Code.RESOURCE_EXHAUSTED,
        Code.OUT_OF_RANGE,
    }
)
# Text that only internals carry: exception names and tracebacks, drivers, SQL, paths.
INTERNAL_TEXT = (
    "Traceback",
    "Errno",
    "sqlalche",
    "psycopg",
    "sqlite3",
    "Exception",
    "Error(",
    'File "',
    ".py",
    "Unexpected <class",
    "SELECT ",
    "INSERT ",
    "/tmp/",
)
# A refusal explains itself in a few lines; it never echoes a large input back (gRPC drops
# a status whose trailers pass 16 KiB).
MAX_DETAILS = 2048
MAX_METADATA = 1024


# -- the contract --------------------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    """One RPC of the contract, as the wire sees it."""

    path: str
    request: type[Message]
    client_streaming: bool
    server_streaming: bool

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[1]

    @property
    def envelope_field(self) -> str:
        """The request field that carries the signed envelope (an upload's manifest)."""
        return "manifest" if self.client_streaming else "envelope"

    def wrap(self, envelope: envelope_pb2.Envelope) -> bytes:
        """The request message carrying ``envelope``, serialized."""
        return self.request(**{self.envelope_field: envelope}).SerializeToString()

    def envelope_of(self, request: bytes) -> envelope_pb2.Envelope:
        return getattr(self.request.FromString(request), self.envelope_field)  # type: ignore[no-any-return]


def contract_methods() -> list[Method]:
    """Every method of every xhub service, from the generated descriptors."""
    methods = []
    for module in SERVICES:
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                methods.append(
                    Method(
                        path=f"/{service.full_name}/{method.name}",
                        request=GetMessageClass(method.input_type),
                        client_streaming=method.client_streaming,
                        server_streaming=method.server_streaming,
                    )
                )
    return methods


# -- recording the SDK's requests ----------------------------------------------------------


@dataclass
class Recorded:
    """The first request of one method in the story: who sent it and its exact messages."""

    path: str
    member: str  # the kit's member key
    messages: list[bytes] = field(default_factory=list)


class Recorder(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
):
    """Keeps the serialized messages of the first call of each method a member makes."""

    def __init__(self, member: str, calls: dict[str, Recorded]) -> None:
        self.member = member
        self.calls = calls

    def _slot(self, details: Any) -> list[bytes] | None:
        path = str(details.method)
        if path in self.calls:
            return None
        self.calls[path] = Recorded(path, self.member)
        return self.calls[path].messages

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        slot = self._slot(details)
        if slot is not None:
            slot.append(request.SerializeToString())
        return continuation(details, request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return self.intercept_unary_unary(continuation, details, request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        slot = self._slot(details)

        def recording() -> Iterator[Any]:
            for message in requests:
                if slot is not None:
                    slot.append(message.SerializeToString())
                yield message

        return continuation(details, recording())


def recording_client(kit: HubKit, key: str, calls: dict[str, Recorded]) -> HubClient:
    bundle = kit.bundle(key)
    channel = grpc.intercept_channel(secure_channel(bundle), Recorder(key, calls))
    return HubClient(bundle, channel=channel)


def fuzz_item(kit: HubKit) -> intake_pb2.Item:
    return intake_pb2.Item(
        code=ITEM_CODE,
        name="食品经营许可(新办)",
        time_limit_days=10,
        departments=[kit.member_id("department")],
        materials=[
            intake_pb2.RequiredMaterial(
                code="M1", name="营业执照", certificate_types=[LICENCE_TYPE], material_types=[PLAN]
            )
        ],
    )


ROTATOR = MemberDef("rotator", "广州市荔湾区数据局", "440103", ("auditor",), "MB2C9107")


def play_story(kit: HubKit, folder: Path) -> dict[str, Recorded]:
    """Every method of the contract called once through the SDK (each call accepted); the
    recorded requests by method path."""
    with kit.session() as session:
        catalog.put_items(session, [fuzz_item(kit)])
    calls: dict[str, Recorded] = {}
    # A member of its own rotates its signing key: the others' recorded requests stay signed
    # by keys that are current.
    kit.add_member(ROTATOR)
    keys = ("issuer", "platform", "department", "auditor", "rotator")
    clients = {key: recording_client(kit, key, calls) for key in keys}
    try:
        issuer, platform = clients["issuer"], clients["platform"]
        department, auditor = clients["department"], clients["auditor"]
        licence = certificate(kit, "issuer", serial="FUZZ0001")
        issuer.publish_certificate(licence, raw_status_code="01")
        spare = certificate(kit, "issuer", serial="FUZZ0002", number="440101000999999")
        issuer.publish_certificate(spare)
        issuer.change_certificate_status(
            spare.identifier, certificate_pb2.CERTIFICATE_STATUS_REVOKED, reason="补发新证"
        )
        platform.get_member(kit.member_id("issuer"))
        list(platform.list_members())
        platform.get_item(ITEM_CODE)
        case_id = platform.prepare_case(ITEM_CODE, COMPANY, purpose=PURPOSE).case_id
        platform.pull_certificates(case_id, COMPANY, [LICENCE_TYPE], purpose=PURPOSE)
        platform.verify_certificate(identifier=licence.identifier)
        material = upload(platform, folder, content("fuzz-plan")).material.material_id
        platform.find_materials(case_id, [PLAN], purpose=PURPOSE)
        platform.download_material(case_id, material, folder / "download.pdf", purpose=PURPOSE)
        case = platform.submit_case(case_id, purpose=PURPOSE, applicant_name="广州荔湾示例餐饮")
        platform.lookup_case(case_id)
        list(department.subscribe_cases(0, timeout=0.5))
        department.push_status(
            case.case_number,
            case_pb2.CASE_STAGE_SUPPLEMENT_REQUIRED,
            event_id=f"EV-{uuid.uuid4().hex[:16]}",
            missing_items=["营业执照副本"],
        )
        platform.resubmit_case(
            case.case_number, event_id=f"EV-{uuid.uuid4().hex[:16]}", note="已补正"
        )
        platform.withdraw_case(
            case.case_number, event_id=f"EV-{uuid.uuid4().hex[:16]}", reason="申请人撤回"
        )
        list(platform.subscribe_status(0, timeout=0.5))
        # 部门调阅 on a second case that stays open (a withdrawn one is CASE_CLOSED, which
        # would answer a replayed pull before the replay is found at commit).
        open_case = platform.prepare_case(ITEM_CODE, COMPANY, purpose=PURPOSE).case_id
        platform.pull_certificates(open_case, COMPANY, [LICENCE_TYPE], purpose=PURPOSE)
        second = platform.submit_case(open_case, purpose=PURPOSE, applicant_name="广州荔湾示例餐饮")
        department.pull_case_certificates(second.case_number)
        list(auditor.subscribe_supervision(0, timeout=0.5))
        checkpoint, _ = auditor.prove_logged(case.header.receipt)
        auditor.consistency_proof(1, checkpoint.size)
        next(iter(auditor.query_audit(page_size=5)))
        auditor.transport.learn_hub_keys()
        clients["rotator"].rotate_signing_key()
    finally:
        for client in clients.values():
            client.close()
    return calls


# -- sending and judging --------------------------------------------------------------------


def send_raw(
    channel: grpc.Channel, method: Method, messages: Iterable[bytes], timeout: float
) -> grpc.Call | None:
    """Send request bytes as they are; the failed call, or None if the hub accepted them
    (answered, or delivered or kept open a stream until the deadline)."""
    identity: dict[str, Any] = {"request_serializer": None, "response_deserializer": None}
    messages = list(messages)
    try:
        if method.client_streaming:
            channel.stream_unary(method.path, **identity)(iter(messages), timeout=timeout)
        elif method.server_streaming:
            for _ in channel.unary_stream(method.path, **identity)(messages[0], timeout=timeout):
                return None  # an event: the stream was admitted
        else:
            channel.unary_unary(method.path, **identity)(messages[0], timeout=timeout)
    except grpc.RpcError as exc:
        assert isinstance(exc, grpc.Call)
        if method.server_streaming and exc.code() == Code.DEADLINE_EXCEEDED:
            return None  # admitted and held open
        return exc
    return None


def judge(
    error: grpc.Call | None, expect: frozenset[str] | None, secrets: Iterable[str] = ()
) -> str:
    """What is wrong with the hub's answer to a mutation ('' if nothing): it must be refused
    with a refusal status, ErrorInfo in the xhub domain, a reason in ``expect`` (any if
    None), a short explanation and no internals (nor any of ``secrets``, e.g. paths)."""
    if error is None:
        return "accepted"
    code, details = error.code(), error.details() or ""
    try:
        info = error_info_of(error)
    except ValueError as exc:  # a status proto that disagrees with the status itself
        return f"{code.name}: unreadable status details ({exc})"
    if info is None or info.domain != ERROR_DOMAIN:
        return f"{code.name} without xhub ErrorInfo: {details[:200]!r}"
    if code not in REFUSAL_CODES:
        return f"{code.name} {info.reason}: {details[:200]!r}"
    if expect is not None and info.reason not in expect:
        return f"{code.name} {info.reason}, expected {'/'.join(sorted(expect))}: {details[:200]!r}"
    if not details:
        return f"{code.name} {info.reason} without an explanation"
    if len(details) > MAX_DETAILS:
        return f"{code.name} {info.reason}: details of {len(details)} characters"
    metadata = sum(len(k) + len(v) for k, v in info.metadata.items())
    if metadata > MAX_METADATA:
        return f"{code.name} {info.reason}: ErrorInfo metadata of {metadata} characters"
    text = details + " " + " ".join(info.metadata.values())
    leaked = [t for t in (*INTERNAL_TEXT, *secrets) if t and t in text]
    if leaked:
        return f"{code.name} {info.reason} shows {leaked}: {details[:200]!r}"
    return ""


@dataclass
class Tally:
    """What the fuzz sent, for the audit check at the end."""

    sent: int = 0
    undecodable: int = 0  # audited only within the per-peer budget
    failures: list[str] = field(default_factory=list)

    def add(self, other: Tally) -> None:
        self.sent += other.sent
        self.undecodable += other.undecodable
        self.failures.extend(other.failures)


def summary(failures: list[str], limit: int = 25) -> str:
    """The distinct failures, most frequent first."""
    counts: dict[str, int] = {}
    for failure in failures:
        counts[failure] = counts.get(failure, 0) + 1
    ranked = sorted(counts.items(), key=lambda item: -item[1])
    lines = [f"{n} x {failure}" for failure, n in ranked[:limit]]
    return f"{len(failures)} bad answers:\n" + "\n".join(lines)
