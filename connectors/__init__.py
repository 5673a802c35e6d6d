"""xhub connectors and client SDK (前置机 / 客户端).

Public API::

    from xhub.connectors import HubClient
    with HubClient.from_bundle("member") as hub:  # its keys + the installed bundle
        member = hub.get_member("CN.440100....")
"""

from xhub.connectors.sdk import HubClient, RetryPolicy, VerifiedCheckpoint
from xhub.protocol.bundle import BundleError, MemberBundle
from xhub.protocol.errors import (
    AuthenticationError,
    BadResponseError,
    MalformedError,
    NotFoundError,
    PermissionDeniedError,
    RefusedError,
    ReplayError,
    TransportError,
    VerificationError,
    XhubError,
)

__all__ = [
    "AuthenticationError",
    "BadResponseError",
    "BundleError",
    "HubClient",
    "MalformedError",
    "MemberBundle",
    "NotFoundError",
    "PermissionDeniedError",
    "RefusedError",
    "ReplayError",
    "RetryPolicy",
    "TransportError",
    "VerificationError",
    "VerifiedCheckpoint",
    "XhubError",
]
