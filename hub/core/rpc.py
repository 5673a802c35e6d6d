"""One declaration per unary RPC: its payload type, its handler and the role it needs.

Every unary xhub method has the same shape — ``XRequest{envelope}`` in, ``XResponse{envelope}``
out — and the same path through ``HubRuntime.unary`` (admit, handle, audit, sign). A service
lists its unary methods as ``Unary`` rows; its streaming methods stay hand-written methods of
the same name. ``Service.rpc_handler`` builds the gRPC handler for the whole service from the
contract's descriptor, and refuses a service that leaves a method undeclared (so no method
silently answers ``UNIMPLEMENTED``) or declares one the contract does not have.

Every method, unary or streaming, is guarded the same way at this edge:

- bytes that do not parse as the method's request message become ``Undecodable`` instead of
  gRPC's bare ``UNKNOWN``: the caller gets ``INVALID_ARGUMENT MALFORMED_ENVELOPE`` with
  ErrorInfo, and the refusal is audited like every other (digest of what arrived, a bounded
  prefix, within the sender's ``refusals_logged_per_minute``);
- a member holds at most ``StreamLimits.streams_per_member`` open server streams
  (subscriptions, downloads) and ``uploads_per_member`` uploads: one member cannot take every
  slot of the hub-wide ``max_concurrent_rpcs`` from the others and the health check. A server
  stream ends cleanly after ``lifetime_seconds`` (the SDK resumes from its cursor); an upload
  with nothing arriving for ``upload_idle_seconds`` is refused and discarded;
- a refusal raised by a streaming method (or by these guards) is audited and becomes its
  status; anything else becomes
  ``INTERNAL`` "internal error; the hub has logged it" — no exception text, SQL or path
  reaches a client (the log has them).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

import grpc
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from xhub.hub.core.audit_log import AuditDraft
from xhub.hub.core.failures import log_internal_error
from xhub.hub.core.gate import peer_member_id
from xhub.hub.core.runtime import Call, HubRuntime, peer_certificate
from xhub.protocol.errors import (
    MalformedError,
    RefusedError,
    ResourceExhaustedError,
    UnavailableError,
)
from xhub.protocol.wire import field_parts
from xhub.v1 import envelope_pb2, registry_pb2

log = logging.getLogger("xhub.rpc")

M = TypeVar("M", bound=Message)
R = TypeVar("R", bound=Message, covariant=True)
T = TypeVar("T")
Context = grpc.aio.ServicerContext[Any, Any]

_STREAM_HANDLERS: dict[tuple[bool, bool], Callable[..., grpc.RpcMethodHandler[Any, Any]]] = {
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


INTERNAL_ERROR = "internal error; the hub has logged it"


@dataclass(frozen=True)
class Undecodable:
    """Request bytes that do not parse as the method's request message."""

    data: bytes


@dataclass(frozen=True)
class Received(Generic[R]):
    """A request message as parsed, with the exact bytes of its signed envelope as they
    arrived (``b""`` when it carries none): what the audit log stores and hashes."""

    message: R
    envelope: envelope_pb2.Envelope | None  # None only for a message with no envelope field
    envelope_bytes: bytes


def _envelope_field(request_class: Any) -> str:
    """The name of the request message's one ``Envelope`` field ("" if it has none)."""
    for field_descriptor in request_class.DESCRIPTOR.fields:
        if field_descriptor.message_type is envelope_pb2.Envelope.DESCRIPTOR:
            return str(field_descriptor.name)
    return ""


def _lenient(request_class: Any) -> Callable[[bytes], Any]:
    """Parse the request, keeping its envelope's bytes as received (``protocol.wire``): the
    parsed message re-encoded could differ from them (field order, unknown fields)."""
    name = _envelope_field(request_class)
    number = request_class.DESCRIPTOR.fields_by_name[name].number if name else 0

    def parse(data: bytes) -> Any:
        try:
            message = request_class.FromString(data)
        except Exception:  # DecodeError, or whatever the parser raises on garbage
            return Undecodable(data)
        if not name:
            return Received(message, None, b"")
        envelope = getattr(message, name)  # an empty one when the field is not set
        if not message.HasField(name):
            return Received(message, envelope, b"")
        parts = field_parts(data, number)
        raw = parts[0] if len(parts) == 1 else b"".join(parts)
        # Repeated occurrences merge, and concatenated they parse to the same envelope —
        # unless another member of a oneof came between them: then there are no exact bytes.
        if len(parts) != 1 and envelope_pb2.Envelope.FromString(raw) != envelope:
            return Undecodable(data)
        return Received(message, envelope, raw)

    return parse


@dataclass(frozen=True)
class StreamLimits:
    """Fair shares of the long-lived calls (settings of the same names in ``xhub.toml``)."""

    streams_per_member: int = 64  # max_streams_per_member
    uploads_per_member: int = 16  # max_uploads_per_member
    lifetime_seconds: float = 3600.0  # stream_lifetime_seconds
    upload_idle_seconds: float = 60.0  # upload_idle_seconds
    member_recheck_seconds: float = 2.0  # member_recheck_seconds


@dataclass
class OpenStreams:
    """The open long-lived calls of one hub process, by member (event-loop thread only)."""

    limits: StreamLimits = field(default_factory=StreamLimits)
    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    # Set when a draining hub ends its subscriptions (UNAVAILABLE HUB_BUSY; the SDK resumes
    # from its cursor at another hub process or after the restart).
    closing: asyncio.Event = field(default_factory=asyncio.Event)

    def by_kind(self) -> dict[str, int]:
        """Open calls by kind ("streams", "uploads"), for metric scrapes."""
        totals = {"streams": 0, "uploads": 0}
        for (_, kind), count in list(self.counts.items()):
            totals[kind] += count
        return totals

    @contextmanager
    def slot(self, member: str, *, upload: bool) -> Iterator[None]:
        kind = "uploads" if upload else "streams"
        cap = self.limits.uploads_per_member if upload else self.limits.streams_per_member
        key = (member, kind)
        if self.counts.get(key, 0) >= cap:
            setting = "max_uploads_per_member" if upload else "max_streams_per_member"
            raise ResourceExhaustedError(
                f"{member or 'this peer'} already holds {cap} open {kind}; close one first",
                reason=envelope_pb2.ERROR_REASON_TOO_MANY_STREAMS,
                metadata={"cap": str(cap), "setting": setting},
            )
        self.counts[key] = self.counts.get(key, 0) + 1
        try:
            yield
        finally:
            left = self.counts[key] - 1
            if left:
                self.counts[key] = left
            else:
                del self.counts[key]


@dataclass(frozen=True)
class Unary(Generic[M]):
    """A unary RPC: the signed payload it takes, what it does, who may call it."""

    name: str
    payload: type[M]
    handler: Callable[[Call[M]], Message]
    role: registry_pb2.Role.ValueType | None = None
    # Fields of the response message beside the signed envelope (e.g. GetHubKeys's
    # hand-overs, which carry their own signatures).
    beside: Callable[[], Mapping[str, Any]] | None = None


class Service:
    """Base of the hub's services: ``descriptor`` names the contract's service."""

    descriptor: ClassVar[ServiceDescriptor]

    def __init__(self, runtime: HubRuntime) -> None:
        self.runtime = runtime
        self.open_streams = OpenStreams()  # the server hands every service the same one

    def unary(self) -> Sequence[Unary[Any]]:
        """The service's unary methods, one row each."""
        return ()

    def rpc_handler(self) -> grpc.GenericRpcHandler:
        declared = {d.name: d for d in self.unary()}
        handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
        for method in self.descriptor.methods:
            request = GetMessageClass(method.input_type)
            response = GetMessageClass(method.output_type)
            shape = (method.client_streaming, method.server_streaming)
            if shape == (False, False):
                if method.name not in declared:
                    raise TypeError(f"{self.descriptor.full_name}.{method.name} is not declared")
                handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                    self._unary_method(method, declared.pop(method.name)),
                    request_deserializer=_lenient(request),
                    response_serializer=response.SerializeToString,
                )
            else:
                handlers[method.name] = _STREAM_HANDLERS[shape](
                    self._guarded_stream(method, getattr(self, method.name)),
                    request_deserializer=_lenient(request),
                    response_serializer=response.SerializeToString,
                )
        if declared:
            unknown = ", ".join(sorted(declared))
            raise TypeError(f"{self.descriptor.full_name} has no unary method(s) {unknown}")
        return grpc.method_handlers_generic_handler(self.descriptor.full_name, handlers)

    def _unary_method(
        self, method: MethodDescriptor, declaration: Unary[Any]
    ) -> Callable[[Any, Context], Awaitable[Message]]:
        response_class = GetMessageClass(method.output_type)
        path = f"/{self.descriptor.full_name}/{method.name}"
        runtime = self.runtime
        # The method's latency child, looked up on the first call (building a handler
        # touches no runtime) and kept: labels() takes a lock every time it is asked.
        latency: list[Any] = []

        async def handle(request: Any, context: Context) -> Message:
            started = time.perf_counter()
            try:
                if isinstance(request, Undecodable):
                    await self._refuse_undecodable(context, path, request)
                envelope = await runtime.unary(
                    context,
                    request.envelope,
                    declaration.payload,
                    declaration.handler,
                    method=path,
                    require_role=declaration.role,
                    envelope_bytes=request.envelope_bytes,
                )
                extra = declaration.beside() if declaration.beside is not None else {}
                return response_class(envelope=envelope, **extra)
            finally:
                if not latency:
                    latency.append(runtime.metrics.latency.labels(path))
                latency[0].observe(time.perf_counter() - started)

        handle.__name__ = method.name
        return handle

    def _guarded_stream(self, method: MethodDescriptor, fn: Callable[..., Any]) -> Any:
        """The hand-written streaming method behind the edge's guards (see the module doc)."""
        path = f"/{self.descriptor.full_name}/{method.name}"

        if method.client_streaming and method.server_streaming:
            raise TypeError(f"{path}: bidirectional streams are not part of the contract")
        if not method.client_streaming:
            # Subscriptions resume from their cursor: a draining hub ends them. A download
            # (like an upload) gets the shutdown grace to finish.
            return self._stream_out(path, fn, ends_on_drain=method.name.startswith("Subscribe"))

        async def stream_in(requests: AsyncIterator[Any], context: Context) -> Any:
            peer_pem = peer_certificate(context)
            member = peer_member_id(peer_pem)
            watch = _kept(self._watch_member(peer_pem))
            try:
                with self.open_streams.slot(member, upload=True):
                    idle = self.open_streams.limits.upload_idle_seconds
                    first = await _next_within(aiter(requests), idle)
                    if isinstance(first, Undecodable):
                        await self._refuse_undecodable(context, path, first)
                    work = _kept(fn(_checked(first, requests, idle), context))
                    try:
                        await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        if not work.done():  # revoked or expired, or the client went away
                            work.cancel()
                            with contextlib.suppress(BaseException):
                                await work  # its own clean-up (discard, audit) runs first
                    if work.cancelled():  # by the watch: the member was revoked or expired
                        watch.result()
                    return work.result()
            except Exception as exc:
                await self._abort_for(context, path, exc)
            finally:
                watch.cancel()

        return stream_in

    def _stream_out(self, path: str, fn: Callable[..., Any], *, ends_on_drain: bool) -> Any:
        async def stream_out(request: Any, context: Context) -> AsyncIterator[Any]:
            peer_pem = peer_certificate(context)
            member = peer_member_id(peer_pem)
            watch = _kept(self._watch_member(peer_pem, ends_on_drain=ends_on_drain))
            try:
                with self.open_streams.slot(member, upload=False):
                    if isinstance(request, Undecodable):
                        await self._refuse_undecodable(context, path, request)
                    lifetime = self.open_streams.limits.lifetime_seconds
                    stream = aiter(fn(request, context))
                    end = asyncio.get_running_loop().time() + lifetime
                    step: asyncio.Future[Any] | None = None
                    try:
                        while True:
                            # The next item in a task of its own, raced against the watch.
                            step = _kept(anext(stream))
                            await asyncio.wait(
                                {step, watch},
                                timeout=max(end - asyncio.get_running_loop().time(), 0),
                                return_when=asyncio.FIRST_COMPLETED,
                            )
                            if not step.done():
                                if watch.done():  # the member was revoked or expired
                                    watch.result()
                                return  # the lifetime is up: end cleanly, resume later
                            try:
                                item = step.result()
                            except StopAsyncIteration:
                                return
                            yield item
                    finally:
                        # However the call ends (lifetime, revocation, client gone), the
                        # method's own clean-up runs before this does.
                        if step is not None and not step.done():
                            step.cancel()
                            with contextlib.suppress(BaseException):
                                await step
                        await stream.aclose()
            except Exception as exc:
                await self._abort_for(context, path, exc)
            finally:
                watch.cancel()

        return stream_out

    async def _watch_member(self, peer_pem: bytes | None, *, ends_on_drain: bool = False) -> None:
        """Return only by raising: every ``member_recheck_seconds`` the member behind a
        long call is checked again (``Gate.recheck``), and its refusal (``MEMBER_REVOKED``,
        ``MEMBER_EXPIRED``) ends the call. A check that fails otherwise (the database
        briefly away) is retried next round; the streams' own reads fail meanwhile. With
        ``ends_on_drain``, a draining hub ends the call (UNAVAILABLE ``HUB_BUSY``)."""
        every = self.open_streams.limits.member_recheck_seconds
        closing = self.open_streams.closing
        while True:
            if ends_on_drain:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(every):
                        await closing.wait()
                    raise HubClosing("the hub is shutting down; resume from the cursor")
            else:
                await asyncio.sleep(every)
            try:
                await self.runtime.run_blocking(lambda: self.runtime.recheck_member(peer_pem))
            except RefusedError:
                raise
            except Exception as exc:
                log_internal_error(log, "re-checking a stream's member", exc)

    async def _refuse_undecodable(self, context: Context, path: str, request: Undecodable) -> None:
        """Refuse bytes that are no request message, audited with the digest of what came."""
        await self._refuse(
            context,
            path,
            MalformedError(
                "the request does not parse as this method's request message",
                reason=envelope_pb2.ERROR_REASON_MALFORMED_ENVELOPE,
            ),
            received=request.data,
        )

    async def _refuse(
        self, context: Context, path: str, refusal: RefusedError, *, received: bytes = b""
    ) -> None:
        """Audit a refusal made at the edge (before admission) and abort with its status."""
        draft = AuditDraft(
            method=path,
            sender=peer_member_id(peer_certificate(context)),
            envelope_bytes=received,
            envelope_digest=hashlib.sha256(received).digest() if received else b"",
        )
        await self.runtime.refuse(context, draft, refusal)

    async def _abort_for(self, context: Context, path: str, exc: Exception) -> None:
        """End a streaming call that raised: its refusal's status (audited), or INTERNAL."""
        if isinstance(exc, grpc.aio.AbortError | asyncio.CancelledError):
            raise exc
        if isinstance(exc, HubClosing):  # the hub ends the call: not a refusal to audit
            await context.abort_with_status(exc.to_status())
        if isinstance(exc, RefusedError):
            await self._refuse(context, path, exc)
        log_internal_error(log, path, exc)
        await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_ERROR)


class HubClosing(UnavailableError):
    """A draining hub ends a subscription (UNAVAILABLE ``HUB_BUSY``, retryable)."""


_KEPT: set[asyncio.Future[Any]] = set()


def _kept(awaitable: Awaitable[T]) -> asyncio.Future[T]:
    """A task that lives until it is done, even when the call that started it ends first
    (the event loop holds tasks only weakly; a collected one never finishes its clean-up)."""
    task = asyncio.ensure_future(awaitable)
    _KEPT.add(task)
    task.add_done_callback(_KEPT.discard)
    return task


async def _next_within(messages: AsyncIterator[Any], seconds: float) -> Any:
    """The next message of a request stream, or None at its end; refused when idle too long."""
    try:
        async with asyncio.timeout(seconds):
            return await anext(messages, None)
    except TimeoutError:
        raise ResourceExhaustedError(
            f"nothing arrived for {seconds:g} s; the upload was discarded",
            reason=envelope_pb2.ERROR_REASON_IDLE_TIMEOUT,
            metadata={"setting": "upload_idle_seconds"},
        ) from None


async def _checked(first: Any, rest: AsyncIterator[Any], idle: float) -> AsyncIterator[Any]:
    """The request stream: an undecodable message after the first is malformed, and a gap of
    more than ``idle`` seconds between messages is refused."""
    if first is None:
        return
    yield first
    while (message := await _next_within(rest, idle)) is not None:
        if isinstance(message, Undecodable):
            raise MalformedError(
                "a stream message does not parse as this method's request message",
                reason=envelope_pb2.ERROR_REASON_MALFORMED_ENVELOPE,
            )
        yield message
