"""Error families (错误类别): one base, three families.

``XhubError`` is the base of everything the SDK raises; ``retryable`` says whether the same
call may be sent again. Under it, kept apart (as python-tuf keeps ``RepositoryError`` apart
from ``DownloadError``):

- ``RefusedError``: the hub decided no. One type per gRPC status; the refusal carries a
  ``google.rpc.Status`` with a ``google.rpc.ErrorInfo`` (domain ``xhub.v1``) whose ``reason``
  is an ``xhub.v1.ErrorReason`` name, so a connector branches on a stable string rather than
  parse messages. The hub raises these; its servicer layer maps them to statuses.
- ``TransportError``: the call reached no decision (network, deadline, shutdown).
- ``VerificationError``: an answer failed the client's own checks (forged, inconsistent or
  tampered); never retried.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TypeAlias, cast

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from xhub.v1 import envelope_pb2

ERROR_DOMAIN = "xhub.v1"
Reason: TypeAlias = envelope_pb2.ErrorReason.ValueType


def reason_name(reason: Reason) -> str:
    return envelope_pb2.ErrorReason.Name(reason).removeprefix("ERROR_REASON_")


ECHO_LIMIT = 64
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def shown(value: str, limit: int = ECHO_LIMIT) -> str:
    """A value the caller sent, as a refusal may echo it (message or ErrorInfo metadata):
    control characters escaped, then at most ``limit`` characters, cut with an ellipsis, so a
    refusal never carries back kilobytes of what arrived."""
    return clip(_UNPRINTABLE.sub(lambda m: f"\\x{ord(m.group()):02x}", value), limit)


def clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, the cut marked with an ellipsis."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


# What a refusal may carry at most on the wire, whatever a site put in it.
WIRE_MESSAGE_LIMIT = 1024
WIRE_VALUE_LIMIT = 256


# Transport failures worth another attempt: the hub may answer next time.
RETRYABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


class XhubError(Exception):
    """Base of everything xhub raises to a caller.

    Every family answers the same three questions, so a report or log line needs no
    ``isinstance`` ladder: ``code`` (the gRPC status, or the transport's), ``reason_name``
    (a stable ``xhub.v1.ErrorReason`` name, ``TRANSPORT`` for transport failures) and
    ``message``; ``retryable`` says whether sending the same call again may succeed.
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN
    _reason_label = "UNSPECIFIED"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def reason_name(self) -> str:
        return self._reason_label

    @property
    def retryable(self) -> bool:
        """Whether sending the same call again may succeed."""
        return False


class TransportError(XhubError):
    """The call did not reach a decision at the hub (network, deadline, shutdown)."""

    _reason_label = "TRANSPORT"

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details

    @property
    def retryable(self) -> bool:
        return self.code in RETRYABLE_CODES


class VerificationError(XhubError):
    """An answer failed verification at the client (a forged or inconsistent answer).

    It carries the status a hub would use for corrupt data (``DATA_LOSS``) and the
    ``BAD_RESPONSE`` reason, so logs and reports read like the other families.
    """

    code: grpc.StatusCode = grpc.StatusCode.DATA_LOSS
    _reason_label = "BAD_RESPONSE"


class RefusedError(XhubError):
    """Base of every hub refusal; subclasses fix the gRPC status code."""

    default_reason: Reason = envelope_pb2.ERROR_REASON_UNSPECIFIED

    def __init__(
        self,
        message: str,
        *,
        reason: Reason | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.reason: Reason = self.default_reason if reason is None else reason
        self.metadata: dict[str, str] = dict(metadata or {})

    @property
    def reason_name(self) -> str:
        return reason_name(self.reason)

    @property
    def retryable(self) -> bool:
        return self.code in RETRYABLE_CODES

    def to_status(self) -> grpc.Status:
        # A backstop behind each site's own ``shown``: nothing on the wire grows with input.
        metadata = {key: clip(value, WIRE_VALUE_LIMIT) for key, value in self.metadata.items()}
        info = error_details_pb2.ErrorInfo(
            reason=self.reason_name, domain=ERROR_DOMAIN, metadata=metadata
        )
        detail = any_pb2.Any()
        detail.Pack(info)
        message = clip(self.message, WIRE_MESSAGE_LIMIT)
        status = status_pb2.Status(code=self.code.value[0], message=message, details=[detail])
        return cast(grpc.Status, rpc_status.to_status(status))

    def __str__(self) -> str:
        return f"{self.code.name} {self.reason_name}: {self.message}"


class MalformedError(RefusedError):
    """The request is not well formed (INVALID_ARGUMENT)."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = envelope_pb2.ERROR_REASON_INVALID_FIELD


class AuthenticationError(RefusedError):
    """Signature, key, peer, member status or freshness failed (UNAUTHENTICATED)."""

    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = envelope_pb2.ERROR_REASON_BAD_SIGNATURE


class AlreadyExistsError(RefusedError):
    """The thing exists already, with other content (ALREADY_EXISTS)."""

    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = envelope_pb2.ERROR_REASON_VERSION_CONFLICT


class ReplayError(AlreadyExistsError):
    """The message id was already used inside the window (ALREADY_EXISTS)."""

    default_reason = envelope_pb2.ERROR_REASON_REPLAYED_MESSAGE


class FailedPreconditionError(RefusedError):
    """The current state does not allow the change (FAILED_PRECONDITION)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = envelope_pb2.ERROR_REASON_STATUS_TRANSITION


class PermissionDeniedError(RefusedError):
    """Role or purpose does not allow the call (PERMISSION_DENIED)."""

    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = envelope_pb2.ERROR_REASON_ROLE_REQUIRED


class NotFoundError(RefusedError):
    """The object asked for does not exist (NOT_FOUND)."""

    code = grpc.StatusCode.NOT_FOUND
    default_reason = envelope_pb2.ERROR_REASON_NOT_FOUND


class ResourceExhaustedError(RefusedError):
    """A limit was hit, e.g. the maximum material size (RESOURCE_EXHAUSTED)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = envelope_pb2.ERROR_REASON_TOO_LARGE


class UnavailableError(RefusedError):
    """Retryable: the hub is busy or stopping (UNAVAILABLE)."""

    code = grpc.StatusCode.UNAVAILABLE
    default_reason = envelope_pb2.ERROR_REASON_HUB_BUSY


class BadResponseError(VerificationError):
    """A hub response failed verification at the client (signature, header, binding)."""


_FAMILIES: dict[grpc.StatusCode, type[RefusedError]] = {
    cls.code: cls
    for cls in (
        MalformedError,
        AuthenticationError,
        AlreadyExistsError,
        FailedPreconditionError,
        ResourceExhaustedError,
        PermissionDeniedError,
        NotFoundError,
        UnavailableError,
    )
}


def error_info_of(call: grpc.Call) -> error_details_pb2.ErrorInfo | None:
    """The xhub ErrorInfo attached to a failed call, if any."""
    status = rpc_status.from_call(call)
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            if info.domain == ERROR_DOMAIN:
                return info
    return None


def from_rpc_error(exc: grpc.RpcError) -> RefusedError | None:
    """Rebuild the typed error from a refused call; None for transport failures."""
    if not isinstance(exc, grpc.Call):
        return None
    info = error_info_of(exc)
    if info is None:
        return None
    family = _FAMILIES.get(exc.code(), RefusedError)
    try:
        reason = envelope_pb2.ErrorReason.Value("ERROR_REASON_" + info.reason)
    except ValueError:
        reason = envelope_pb2.ERROR_REASON_UNSPECIFIED
    if reason == envelope_pb2.ERROR_REASON_REPLAYED_MESSAGE:
        family = ReplayError
    error = family(exc.details() or "", reason=reason, metadata=dict(info.metadata))
    error.code = exc.code()
    return error


def typed_error(exc: grpc.RpcError) -> RefusedError | TransportError:
    """A failed call as the SDK raises it: the hub's refusal, or a transport failure."""
    refused = from_rpc_error(exc)
    if refused is not None:
        return refused
    code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = (exc.details() if isinstance(exc, grpc.Call) else str(exc)) or ""
    if UNKNOWN_ISSUER in details:
        details += UNKNOWN_ISSUER_HINT
    return TransportError(code, details)


# What gRPC's TLS says when the hub's server certificate is issued by a CA we do not trust.
UNKNOWN_ISSUER = "CERTIFICATE_VERIFY_FAILED"
UNKNOWN_ISSUER_HINT = (
    " — the hub's TLS certificate is issued by a CA root this bundle does not hold (the hub"
    " renewed its CA and this bundle did not learn the new root before the hub switched):"
    " ask the hub operator for ca/handovers.json and run"
    " `xhub-connector learn-roots BUNDLE --handovers FILE`"
)
