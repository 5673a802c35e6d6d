"""HubClient: the synchronous SDK department integrators call from plain Python.

Each public method is one operation an integrator performs. Every request is signed with
the member's key; every answer is checked against the hub's key before it is parsed, and
must answer this very request. Every call has a deadline; only idempotent calls are
retried, and only when the error is ``retryable``.

**Receipts.** The hub's answer to every call carries that call's audit receipt in its
signed header, so a method returns the verified answer and the receipt is
``answer.header.receipt`` — there is no "last receipt" on the client (e.g.
``pull_certificates(...).certificates`` are verified, ``.header.receipt`` proves the pull,
not the issuer look-ups made to verify them). Three conveniences
return just what was asked for: ``get_member`` (the member of ``lookup_member``'s answer),
``list_members`` and ``query_audit`` (the items of the pages that ``member_pages`` and
``audit_pages`` yield, each page an answer with its receipt). ``checkpoint`` returns a
``VerifiedCheckpoint`` whose ``receipt`` is its call's.

**Errors** (all ``XhubError``, see ``xhub.protocol.errors``): a hub refusal is the
``RefusedError`` subclass of its status, carrying the ``reason``; a call that reached no
decision is a ``TransportError``; an answer that fails the client's own checks is a
``VerificationError`` (``BadResponseError``). Every signed call can raise
``TransportError`` and ``BadResponseError``; the ``Raises:`` lines name the refusals.

Plumbing (channel, stubs, signing, retries, opening answers) is in ``_internal.transport``;
the offline checks in ``_internal.verify`` and ``_internal.proofs`` do no network I/O — a
method fetches what a check needs (e.g. issuers' keys) first, then verifies.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from xhub.connectors.sdk._internal.lru import DEFAULT_CASE_MEMORY, LruDict
from xhub.connectors.sdk._internal.proofs import LogState, VerifiedCheckpoint
from xhub.connectors.sdk._internal.transport import RetryPolicy, Transport, secure_channel
from xhub.connectors.sdk._internal.verify import TrustedMembers
from xhub.connectors.sdk.services.audit_log import AuditLogCalls
from xhub.connectors.sdk.services.cases import CaseCalls
from xhub.connectors.sdk.services.certificates import CertificateCalls
from xhub.connectors.sdk.services.intake import IntakeCalls
from xhub.connectors.sdk.services.keys import KeyCalls
from xhub.connectors.sdk.services.materials import MaterialCalls
from xhub.protocol.bundle import MemberBundle
from xhub.protocol.errors import TransportError, XhubError, typed_error
from xhub.v1 import intake_pb2

# RetryPolicy, VerifiedCheckpoint and secure_channel are re-exported: callers name them here.
__all__ = ["HubClient", "RetryPolicy", "VerifiedCheckpoint", "secure_channel"]


class HubClient(IntakeCalls, CaseCalls, KeyCalls, MaterialCalls, CertificateCalls, AuditLogCalls):
    """One member's client of one hub; use as a context manager or ``close()`` it.

    ``transport`` is the signed plumbing underneath (for the project's tests and tools
    that send hand-made messages); integrators need only the methods.

    ``case_memory`` bounds what the client remembers per case, in memory only: the
    checklists of ``prepare_case`` (which ``submit_case`` signs and ``pull_certificates``
    / ``download_material`` check holders against) and the last push number of each case
    (``push_status``) — default 10 000 cases each, the least recently used forgotten
    first. Forgotten, a case still works: pass ``checklist=`` to ``submit_case`` (else the
    hub refuses PURPOSE_NOT_BOUND), pulls and downloads are checked against the holder
    asked only, and ``push_status`` adopts the hub's next number once. Raises ValueError
    for a ``case_memory`` below 1.
    """

    def __init__(
        self,
        bundle: MemberBundle,
        *,
        channel: grpc.Channel | None = None,
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        clock_skew: timedelta = timedelta(minutes=5),
        sleep: Callable[[float], None] | None = None,
        log_state_file: Path | str | None = None,
        case_memory: int = DEFAULT_CASE_MEMORY,
        bundle_dir: Path | None = None,
    ) -> None:
        self.bundle = bundle
        # Where the bundle was loaded from: a key rotation switches its files over.
        self.bundle_dir = bundle_dir
        self.member_id = bundle.member_id
        self.hub_id = bundle.hub_id
        # A client that made its own channel makes a new one when it learns new CA roots.
        self.owns_channel = channel is None
        self.transport = Transport(
            bundle,
            channel or secure_channel(bundle),
            timeout=timeout,
            retry=retry or RetryPolicy(),
            clock_skew=clock_skew,
            sleep=sleep,
        )
        # Members whose signatures this client checks (issuers, platforms), once fetched.
        self._trusted = TrustedMembers(bundle.ca_certs, clock_skew=clock_skew)
        self._prepared: LruDict[str, intake_pb2.Checklist] = LruDict(case_memory)
        self._holders: LruDict[str, frozenset[str]] = LruDict(case_memory)
        self._pushed: LruDict[str, int] = LruDict(case_memory)
        # The last checkpoint verified; log_state_file keeps it across restarts.
        self._log_state = LogState()
        self._log_state_path = None
        if log_state_file is not None:
            self.use_log_state_file(Path(log_state_file))

    @classmethod
    def from_bundle(
        cls, path: Path | str, *, hub_address: str | None = None, **kwargs: Any
    ) -> HubClient:
        """A client for the member bundle in ``path``. Raises: BundleError."""
        bundle = MemberBundle.load(Path(path), hub_address=hub_address)
        return cls(bundle, bundle_dir=Path(path), **kwargs)

    def __enter__(self) -> HubClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self.transport.close()

    # -- health ---------------------------------------------------------------

    def health(self, service: str = "") -> str:
        """SERVING / NOT_SERVING / … from the standard health service (unsigned).

        Raises: TransportError when the hub cannot be reached.
        """
        stub = health_pb2_grpc.HealthStub(self.transport.channel)
        request = health_pb2.HealthCheckRequest(service=service)
        try:
            response = stub.Check(request, timeout=self.transport.timeout)
        except grpc.RpcError as exc:
            raise typed_error(exc) from exc
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    def wait_until_serving(self, timeout: float = 30.0) -> None:
        """Block until the hub reports SERVING (e.g. right after starting it).

        Raises: TransportError (UNAVAILABLE) when it does not within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.health() == "SERVING":
                    return
            except XhubError:
                pass
            if time.monotonic() > deadline:
                raise TransportError(
                    grpc.StatusCode.UNAVAILABLE, f"hub not serving after {timeout}s"
                )
            time.sleep(0.1)
