"""Assertions every feature's tests share (one place for each)."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest

from xhub.protocol.errors import ERROR_DOMAIN, XhubError, error_info_of

Code = grpc.StatusCode


def refused(fn: Callable[[], object], code: Code, reason: str) -> XhubError:
    """Run an SDK call the hub (or the SDK's own checks) must refuse with ``code`` and
    ErrorInfo ``reason``; return the error for further checks."""
    with pytest.raises(XhubError) as caught:
        fn()
    error = caught.value
    assert (error.code, error.reason_name) == (code, reason), str(error)
    return error


def refused_on_the_wire(send: Callable[[], object], code: Code, reason: str) -> grpc.Call:
    """Run a raw gRPC ``send``; assert it fails with ``code`` and ErrorInfo ``reason``."""
    with pytest.raises(grpc.RpcError) as caught:
        send()
    error = caught.value
    assert isinstance(error, grpc.Call)
    info = error_info_of(error)
    assert (error.code(), info.reason if info else None) == (code, reason), error.details()
    assert info is not None and info.domain == ERROR_DOMAIN
    assert error.details(), "a refusal must say what was wrong"
    return error
