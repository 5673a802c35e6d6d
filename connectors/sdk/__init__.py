"""The public SDK: ``HubClient`` and what its signatures name.

Everything else under ``xhub.connectors.sdk`` is either a group of HubClient's operations
(``services``) or plumbing (``_internal``: transport, offline verification, log proofs).
"""

from xhub.connectors.sdk.client import HubClient, RetryPolicy, VerifiedCheckpoint

__all__ = ["HubClient", "RetryPolicy", "VerifiedCheckpoint"]
