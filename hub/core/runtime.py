"""What every signed RPC shares: admission off the event loop, a signed reply, errors.

A servicer method states its payload type and hands a synchronous handler to
``HubRuntime.unary``; the handler sees only an admitted request and returns the
response payload. The runtime stamps the response header, signs it with the
hub key and turns every ``RefusedError`` into a gRPC status with ErrorInfo.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Generic, TypeVar

import grpc
from cryptography import x509
from google.protobuf.message import Message
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from xhub.hub.core.audit_log import (
    ALLOWED,
    DENIED,
    AuditDraft,
    AuditLog,
    LoggedEntry,
    load_log_signer,
)
from xhub.hub.core.config import HubConfig
from xhub.hub.core.db import make_engine, session_factory
from xhub.hub.core.failures import log_internal_error
from xhub.hub.core.gate import Admitted, Caller, Gate, peer_member_id
from xhub.hub.core.log_keys import log_key_history
from xhub.hub.core.metrics import HubMetrics
from xhub.hub.core.refusals import SUMMARY_METHOD, RefusalBudget, Summary
from xhub.protocol.envelope import new_header, seal
from xhub.protocol.errors import PermissionDeniedError, RefusedError, clip
from xhub.protocol.pki import load_certificate
from xhub.protocol.signing import KeySigner, load_signer
from xhub.v1 import audit_pb2, envelope_pb2, registry_pb2

log = logging.getLogger("xhub.runtime")

M = TypeVar("M", bound=Message)
T = TypeVar("T")


@dataclass(frozen=True)
class HubIdentity:
    """The hub's own keys and certificates, loaded from the data directory."""

    hub_id: str
    signer: KeySigner
    ca_cert: x509.Certificate
    signing_cert: x509.Certificate

    @classmethod
    def load(cls, config: HubConfig) -> HubIdentity:
        paths = config.paths
        return cls(
            hub_id=config.hub_id,
            signer=load_signer(paths.signing_key),
            ca_cert=load_certificate(paths.ca_cert.read_bytes()),
            signing_cert=load_certificate(paths.signing_cert.read_bytes()),
        )


def peer_certificate(context: grpc.aio.ServicerContext[Any, Any]) -> bytes | None:
    certs = list(context.auth_context().get("x509_pem_cert", []))
    return certs[0] if certs else None


@dataclass
class Call(Generic[M]):
    """An admitted request as a handler sees it: message, caller, session, audit notes."""

    admitted: Admitted[M]
    session: Session
    audit: AuditDraft
    after_commit: list[Callable[[], None]] = field(default_factory=list)

    @property
    def message(self) -> M:
        return self.admitted.message

    @property
    def header(self) -> envelope_pb2.Header:
        return self.admitted.header

    @property
    def caller(self) -> Caller:
        return self.admitted.caller


class Notifier:
    """Wakes waiting streams in this process when something they serve was committed.

    Other processes' commits are found by polling; this only cuts the latency of the
    common case where the writer and the stream share a process.
    """

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._event = asyncio.Event()

    def notify(self) -> None:
        """Thread-safe: called from worker threads after a commit."""
        if self._loop is not None and self._event is not None:
            self._loop.call_soon_threadsafe(self._event.set)

    async def wait(self, timeout: float) -> None:
        if self._event is None:
            await asyncio.sleep(timeout)
            return
        event = self._event
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            return
        # Every waiter has seen this wake-up once it returns; arm the next one.
        if event is self._event:
            self._event = asyncio.Event()


class _NothingDone(Exception):
    """A hub action found nothing to do: its transaction is rolled back, nothing logged."""


class HubRuntime:
    def __init__(self, config: HubConfig, *, engine: Engine | None = None) -> None:
        self.config = config
        self.identity = HubIdentity.load(config)
        self.engine = engine or make_engine(config.effective_database_url, pool_size=config.workers)
        self.sessions: sessionmaker[Session] = session_factory(self.engine)
        self.gate = Gate(
            self.sessions,
            config.hub_id,
            clock_skew=timedelta(seconds=config.clock_skew_seconds),
        )
        log_signer = load_log_signer(config.effective_log_origin, config.paths.log_key)
        self.audit = AuditLog(
            self.engine,
            hub_id=config.hub_id,
            origin=config.effective_log_origin,
            signer=log_signer,
            subject_key=config.paths.subject_key.read_bytes(),
            merge_delay=timedelta(seconds=config.audit_merge_delay_seconds),
            log_keys=log_key_history(config.paths.log_handovers, log_signer.verifier()),
        )
        self.notifier = Notifier()
        self.refusals = RefusalBudget(config.refusals_logged_per_minute)
        self.metrics = HubMetrics()
        # SQLite has a single writer, and a writer that finds it taken sleeps in SQLite's
        # busy handler (1, 2, 5, 10… ms). Writers of this process queue on a lock instead,
        # which hands the database on at once. PostgreSQL locks rows and needs none.
        self.write_lock: AbstractContextManager[Any] = (
            threading.RLock() if self.engine.dialect.name == "sqlite" else nullcontext()
        )
        self.executor = ThreadPoolExecutor(
            max_workers=config.workers, thread_name_prefix="xhub-worker"
        )

    async def run_blocking(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn)

    def writing(self, fn: Callable[[], T]) -> T:
        """Run a function that writes in its own transaction, holding the write lock."""
        with self.write_lock:
            return fn()

    async def unary(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        envelope: envelope_pb2.Envelope | None,
        message_type: type[M],
        handler: Callable[[Call[M]], Message],
        *,
        method: str,
        require_role: registry_pb2.Role.ValueType | None = None,
        envelope_bytes: bytes = b"",
    ) -> envelope_pb2.Envelope:
        """Admit, handle, audit and sign one request; abort the RPC with a status on refusal.

        ``envelope_bytes`` are the envelope's bytes exactly as received (the edge cuts them
        out of the request); the audit entry hashes and stores those."""
        peer_pem = peer_certificate(context)

        def work() -> envelope_pb2.Envelope:
            draft = AuditDraft.for_request(
                method, envelope, peer_member_id(peer_pem), envelope_bytes
            )
            admitted: Admitted[M] | None = None
            try:
                with self.sessions() as session:
                    # The call's effect, its replay record and its audit entry commit together.
                    admitted = self.gate.admit(
                        envelope,
                        message_type,
                        peer_pem,
                        on_verified=draft.note_header,
                        session=session,
                        envelope_bytes=draft.envelope_bytes,
                    )
                    if require_role is not None and not admitted.caller.has(require_role):
                        raise PermissionDeniedError(
                            f"{admitted.caller.member_id} lacks the "
                            f"{registry_pb2.Role.Name(require_role)} role",
                            metadata={"required_role": registry_pb2.Role.Name(require_role)},
                        )
                    call = Call(admitted, session, draft)
                    response, receipt = self._commit(call, handler, record=True)
                return self.sign_response(response, admitted.header, receipt)
            except RefusedError as exc:
                self._refused(draft, exc.reason_name, exc, admitted)
                raise
            except Exception as exc:
                self._refused(draft, "INTERNAL", exc, admitted)
                raise

        try:
            return await self.run_blocking(work)
        except RefusedError as exc:
            await context.abort_with_status(exc.to_status())
            raise AssertionError("unreachable") from exc  # abort_with_status always raises
        except Exception as exc:
            # Never hand internals (SQL, parameters, paths) to a caller; the log has them.
            log_internal_error(log, method, exc)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; the hub has logged it")
            raise

    # -- streaming calls: admission, then a body, then one completing transaction --------

    async def admit(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        envelope: envelope_pb2.Envelope | None,
        message_type: type[M],
        *,
        method: str,
        require_role: registry_pb2.Role.ValueType | None = None,
        subject: Callable[[M], str] | None = None,
        envelope_bytes: bytes = b"",
    ) -> tuple[Admitted[M], AuditDraft]:
        """Admit the opening message of a stream (its id recorded at once); abort if refused.

        ``subject`` names the audit subject from the admitted message, so even a stream the
        client abandons during admission is logged under it."""
        peer_pem = peer_certificate(context)

        def work() -> tuple[Admitted[M], AuditDraft]:
            draft = AuditDraft.for_request(
                method, envelope, peer_member_id(peer_pem), envelope_bytes
            )
            try:
                admitted = self.gate.admit(
                    envelope,
                    message_type,
                    peer_pem,
                    on_verified=draft.note_header,
                    envelope_bytes=draft.envelope_bytes,
                )
                if require_role is not None and not admitted.caller.has(require_role):
                    raise PermissionDeniedError(
                        f"{admitted.caller.member_id} lacks the "
                        f"{registry_pb2.Role.Name(require_role)} role",
                        metadata={"required_role": registry_pb2.Role.Name(require_role)},
                    )
            except RefusedError as exc:
                self._refused(draft, exc.reason_name, exc, None)
                raise
            if subject is not None:
                draft.subject = subject(admitted.message)
            return admitted, draft

        job = asyncio.ensure_future(self.run_blocking(work))
        try:
            return await asyncio.shield(job)
        except RefusedError as exc:
            await context.abort_with_status(exc.to_status())
            raise AssertionError("unreachable") from exc
        except asyncio.CancelledError:
            # The client went away while its opening message was being admitted: admission
            # still finishes, and a stream admitted but never run is audited as ABORTED.
            await asyncio.shield(asyncio.ensure_future(self._abandoned(job)))
            raise

    async def _abandoned(self, job: asyncio.Future[tuple[Admitted[Any], AuditDraft]]) -> None:
        try:
            _, draft = await job
        except Exception:  # refused (and audited as such) or failed: nothing to add
            return
        await self.run_blocking(lambda: self.audit_refusal(draft, "ABORTED"))

    async def refuse(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        draft: AuditDraft,
        exc: RefusedError,
    ) -> None:
        """Audit a refusal found after admission (bad content, binding) and abort the RPC."""
        # Shielded: the call may be cancelled already (client gone); the record must land.
        await asyncio.shield(self.run_blocking(lambda: self.record_refusal(draft, exc)))
        await context.abort_with_status(exc.to_status())

    def record_refusal(self, draft: AuditDraft, exc: RefusedError) -> None:
        """The audit entry (and log line) of a refusal found after admission, for a caller
        that must do more in the same shielded job (see ``refuse``)."""
        self._refused(draft, exc.reason_name, exc, None)

    def complete(
        self,
        admitted: Admitted[M],
        draft: AuditDraft,
        effect: Callable[[Call[M]], Message],
    ) -> envelope_pb2.Envelope:
        """Run a streaming call's effect with its audit entry in one transaction; sign."""
        with self.sessions() as session:
            # A long call's effect commits only while its member is still in good standing.
            self.gate.recheck(session.connection(), admitted.peer_pem)
            # A stream's opening message was recorded at admission: no replay record here.
            response, receipt = self._commit(Call(admitted, session, draft), effect, record=False)
        return self.sign_response(response, admitted.header, receipt)

    def _commit(
        self, call: Call[M], effect: Callable[[Call[M]], Message], *, record: bool
    ) -> tuple[Message, envelope_pb2.AuditReceipt | None]:
        """The call's effect, its replay record and its audit entry: one transaction, so
        all land or none; then the hooks that wait for the commit."""

        def effect_and_record() -> Message:
            response = effect(call)
            if record:
                self.gate.record(call.session, call.admitted)
            return response

        response, logged = self._audited(call.session, call.audit, effect_and_record)
        self.metrics.decided(call.audit.method, "")
        for hook in call.after_commit:
            hook()
        return response, logged.receipt if logged is not None else None

    def hub_action(
        self,
        method: str,
        effect: Callable[[Session], bool],
        *,
        recipient: str,
        case_id: str,
        reason: str,
    ) -> bool:
        """An action the hub takes by itself (no request), e.g. a supervision escalation:
        ``effect`` and its audit entry, sent by the hub, in one transaction. ``effect``
        returns False when there was nothing to do; then nothing is written or logged."""
        draft = AuditDraft(
            method=method, sender=self.identity.hub_id, recipient=recipient, case_id=case_id
        )

        def act(session: Session) -> None:
            if not effect(session):
                raise _NothingDone

        try:
            with self.sessions() as session:
                self._audited(session, draft, lambda: act(session), reason=reason)
        except _NothingDone:
            return False
        return True

    def recheck_member(self, peer_pem: bytes | None) -> Caller:
        """``Gate.recheck`` on a connection of its own (an open stream's periodic check)."""
        with self.engine.connect() as connection:
            return self.gate.recheck(connection, peer_pem)

    def audit_refusal(self, draft: AuditDraft, reason: str) -> None:
        """Log a call that ended without an RefusedError (e.g. the client went away)."""
        self._refused(draft, reason, RuntimeError(reason), None)

    def _refused(
        self, draft: AuditDraft, reason: str, exc: Exception, admitted: Admitted[Any] | None
    ) -> None:
        """A refused call's transaction rolled back: keep its message id (if it was admitted)
        and log the refusal, each in its own transaction — one hub log line and one audit
        entry per refusal, until its sender is over ``refusals_logged_per_minute``; beyond,
        refusals are counted into the sender's summary of the minute."""
        self.metrics.decided(draft.method, reason)
        if isinstance(exc, SQLAlchemyError):
            self.metrics.database_errors.inc()
        if admitted is not None:
            self.writing(lambda: self.gate.remember(admitted.caller.member_id, admitted.header))
        alone, ended = self.refusals.take(draft.sender, reason)
        self._summarise(ended)
        sender = draft.sender or "a peer naming no member"
        if not alone:
            log.debug("refused %s from %s: %s (counted)", draft.method, sender, reason)
            return
        if isinstance(exc, RefusedError):
            log.info("refused %s from %s: %s", draft.method, sender, clip(str(exc), 512))
        if not self.config.audit_enabled:
            return
        try:
            with self.sessions() as session:
                _, logged = self._audited(
                    session, draft, lambda: None, decision=DENIED, reason=reason
                )
        except Exception:
            log.exception("could not audit a refused %s call", draft.method)
            return
        if logged is not None and isinstance(exc, RefusedError):
            exc.metadata["audit_leaf"] = logged.leaf_hash.hex()

    def _summarise(self, summaries: list[Summary]) -> None:
        """One hub log line and one audit entry per sender-minute of counted refusals."""
        for summary in summaries:
            log.warning(
                "%d refused calls from %s between %s and %s were counted, not logged one by "
                "one (over refusals_logged_per_minute): %s",
                summary.total,
                summary.sender or "peers naming no member",
                summary.since.isoformat(timespec="seconds"),
                summary.until.isoformat(timespec="seconds"),
                summary.reason,
            )
            if not self.config.audit_enabled:
                continue
            draft = AuditDraft(
                method=SUMMARY_METHOD,
                sender=summary.sender,
                recipient=self.identity.hub_id,
                time=summary.until,
            )
            try:
                with self.sessions() as session:
                    self._audited(
                        session, draft, lambda: None, decision=DENIED, reason=summary.reason
                    )
            except Exception:
                log.exception("could not audit a summary of refused calls")

    def flush_refusal_summaries(self, *, all_pending: bool = False) -> int:
        """Log the summaries of ended minutes (every pending one with ``all_pending``)."""
        summaries = self.refusals.flush() if all_pending else self.refusals.sweep()
        self._summarise(summaries)
        return len(summaries)

    def _audited(
        self,
        session: Session,
        draft: AuditDraft,
        effect: Callable[[], T],
        *,
        decision: audit_pb2.AuditDecision.ValueType = ALLOWED,
        reason: str = "",
    ) -> tuple[T, LoggedEntry | None]:
        """The one audit path: ``effect``, then ``draft``'s entry (unless auditing is off),
        then the commit, in ``session``'s transaction under the write lock; all land or
        none."""
        with self.write_lock:
            try:
                result = effect()
                logged = None
                if self.config.audit_enabled:
                    logged = self.audit.append(session, draft, decision, reason)
                session.commit()
            except BaseException:
                session.rollback()  # inside the lock: release the database too
                raise
        return result, logged

    def sign_response(
        self,
        response: Message,
        request: envelope_pb2.Header,
        receipt: envelope_pb2.AuditReceipt | None = None,
    ) -> envelope_pb2.Envelope:
        header = new_header(
            self.identity.hub_id,
            request.sender,
            case_id=request.case_id,
            purpose=request.purpose,
            in_reply_to=request.message_id,
        )
        if receipt is not None:
            header.receipt.CopyFrom(receipt)
        getattr(response, "header").CopyFrom(header)  # noqa: B009
        return seal(response, self.identity.signer)

    def prune(self) -> int:
        """Forget expired message ids; also log the refusal summaries of ended minutes (the
        prune loop runs every ``replay_prune_interval_seconds``)."""
        self.flush_refusal_summaries()
        return self.writing(self.gate.prune_seen)

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
        try:
            self.flush_refusal_summaries(all_pending=True)
        except Exception:  # closing anyway: the counts are in the log line at worst
            log.exception("could not log the last refusal summaries")
        self.engine.dispose()
