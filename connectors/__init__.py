"""xhub connectors and client SDK (前置机 / 客户端).

Public API::

    from connectors import HubClient
    with HubClient.from_bundle("bundles/CN.440103....") as hub:
        member = hub.get_member("CN.440100....")
"""

from connectors.client import HubClient, RetryPolicy, TransportError
from hub.bundle import BundleError, MemberBundle
from hub.errors import (
    AuthenticationError,
    BadResponseError,
    MalformedError,
    NotFoundError,
    PermissionDeniedError,
    ReplayError,
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
    "ReplayError",
    "RetryPolicy",
    "TransportError",
    "XhubError",
]
