"""Error families (错误类别), one type per family, each with its gRPC status.

A refused call carries a ``google.rpc.Status`` with a ``google.rpc.ErrorInfo``
(domain ``xhub.v1``) whose ``reason`` is an ``xhub.v1.ErrorReason`` name, so a
connector can branch on a stable string rather than parse messages.
Bad data (these errors) is kept apart from transport failure (``grpc.RpcError``
that carries no xhub reason).
"""

from __future__ import annotations

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


class XhubError(Exception):
    """Base of every refusal; subclasses fix the gRPC status code."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN
    default_reason: Reason = envelope_pb2.ERROR_REASON_UNSPECIFIED

    def __init__(
        self,
        message: str,
        *,
        reason: Reason | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason: Reason = self.default_reason if reason is None else reason
        self.metadata: dict[str, str] = dict(metadata or {})

    @property
    def reason_name(self) -> str:
        return reason_name(self.reason)

    def to_status(self) -> grpc.Status:
        info = error_details_pb2.ErrorInfo(
            reason=self.reason_name, domain=ERROR_DOMAIN, metadata=self.metadata
        )
        detail = any_pb2.Any()
        detail.Pack(info)
        status = status_pb2.Status(code=self.code.value[0], message=self.message, details=[detail])
        return cast(grpc.Status, rpc_status.to_status(status))

    def __str__(self) -> str:
        return f"{self.code.name} {self.reason_name}: {self.message}"


class MalformedError(XhubError):
    """The request is not well formed (INVALID_ARGUMENT)."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = envelope_pb2.ERROR_REASON_INVALID_FIELD


class AuthenticationError(XhubError):
    """Signature, key, peer, member status or freshness failed (UNAUTHENTICATED)."""

    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = envelope_pb2.ERROR_REASON_BAD_SIGNATURE


class AlreadyExistsError(XhubError):
    """The thing exists already, with other content (ALREADY_EXISTS)."""

    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = envelope_pb2.ERROR_REASON_VERSION_CONFLICT


class ReplayError(AlreadyExistsError):
    """The message id was already used inside the window (ALREADY_EXISTS)."""

    default_reason = envelope_pb2.ERROR_REASON_REPLAYED_MESSAGE


class FailedPreconditionError(XhubError):
    """The current state does not allow the change (FAILED_PRECONDITION)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = envelope_pb2.ERROR_REASON_STATUS_TRANSITION


class PermissionDeniedError(XhubError):
    """Role or purpose does not allow the call (PERMISSION_DENIED)."""

    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = envelope_pb2.ERROR_REASON_ROLE_REQUIRED


class NotFoundError(XhubError):
    """The object asked for does not exist (NOT_FOUND)."""

    code = grpc.StatusCode.NOT_FOUND
    default_reason = envelope_pb2.ERROR_REASON_NOT_FOUND


class ResourceExhaustedError(XhubError):
    """A limit was hit, e.g. the maximum material size (RESOURCE_EXHAUSTED)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = envelope_pb2.ERROR_REASON_TOO_LARGE


class UnavailableError(XhubError):
    """Retryable: the hub is busy or stopping (UNAVAILABLE)."""

    code = grpc.StatusCode.UNAVAILABLE
    default_reason = envelope_pb2.ERROR_REASON_HUB_BUSY


class BadResponseError(XhubError):
    """A response failed verification at the client; never retried."""

    code = grpc.StatusCode.DATA_LOSS
    default_reason = envelope_pb2.ERROR_REASON_BAD_RESPONSE


_FAMILIES: dict[grpc.StatusCode, type[XhubError]] = {
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
        BadResponseError,
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


def from_rpc_error(exc: grpc.RpcError) -> XhubError | None:
    """Rebuild the typed error from a refused call; None for transport failures."""
    if not isinstance(exc, grpc.Call):
        return None
    info = error_info_of(exc)
    if info is None:
        return None
    family = _FAMILIES.get(exc.code(), XhubError)
    try:
        reason = envelope_pb2.ErrorReason.Value("ERROR_REASON_" + info.reason)
    except ValueError:
        reason = envelope_pb2.ERROR_REASON_UNSPECIFIED
    if reason == envelope_pb2.ERROR_REASON_REPLAYED_MESSAGE:
        family = ReplayError
    error = family(exc.details() or "", reason=reason, metadata=dict(info.metadata))
    error.code = exc.code()
    return error
