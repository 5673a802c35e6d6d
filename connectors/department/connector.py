"""Department connector (审批部门前置机): cases in, approval status out, through the 前置库.

A department's approval system knows nothing of xhub. The connector adapts it with two
tables in the department's own database, so the department keeps working in its own
system even while the hub is unreachable:

* inbound (接收办件): cases the hub dispatches on the SubscribeCases stream are written to
  an *inbox table* (``inbox.py``, created if missing), upserted by case number; a withdrawal
  (撤回) sets its ``withdrawn`` flag. The subscription cursor is saved only after the inbox
  row is committed: delivery is at-least-once and a repeated delivery changes nothing.
* outbound (状态回传): new or changed rows of the department's *status table* are read by an
  updated-at watermark, their native status codes mapped to stages, and each becomes a push
  in a durable local *outbox* (``outbox.py``), in the same state-file transaction that moves
  the watermark. A sender drains the outbox oldest first and calls PushStatus; the event id
  is derived from the row (key, status, updated_at), so a push sent twice is applied once.

    xhub-connector run department.toml [--once]

The configuration is described in ``config.py``; the command in ``cli.py``.

Receiving cases: every dispatched case is checked end to end before it reaches the inbox
(端到端核验, ``HubClient.verify_submission``): the platform's signed submission and
resubmissions travel with the case, and its applicant, form and references must be the ones
the platform signed. A case that fails is kept out of the inbox, logged as an error and
reported (``PassResult.unverified``; ``--once`` exits 1); the cursor moves past it, since
the hub would only deliver the same bytes again.

Stages a department may report: ACCEPTED 受理, NOT_ACCEPTED 不予受理, UNDER_REVIEW 审核,
SUPPLEMENT_REQUIRED 补正, APPROVED 审批通过, REJECTED 不予许可, COMPLETED 办结, DELIVERED 出件.

Status rows are read in ``(updated_at, key)`` order, so ``updated_at`` must grow as rows are
written. A process log (one row per step) reports every step; a table updated in place
reports only the latest status of each poll, so a case moved through two stages within one
poll skips a stage and the hub refuses the push. A row repeating the stage last queued for
its case (only the note changed, say) is not pushed (STAGE_UNCHANGED).

Nothing is dropped silently: every row read is queued or *passed over* with a reason code
(``reasons.py``): NO_CASE_NUMBER and UNMAPPED_STATUS_CODE are errors in the row;
CASE_NOT_DISPATCHED (a case the hub never dispatched here: the department's own counter
case, or a mistyped number) is one too with ``counter_cases = false``; INTERNAL_STEP and
STAGE_UNCHANGED are by design. Each is recorded in the state file (the ``row_status`` view,
see ``outbox.py``) and, unless by design, logged as a WARNING naming the row's key, case
number, status code and reason, never its note; ``--once`` prints the errors and exits 1.
``xhub-connector status department.toml [--json]`` (``status.py``) lists pending, sent,
refused and passed-over rows. A row is reported once: read again, it is known by its event
id. Rows committed late, with an updated_at below the watermark, are still read and sent:
each pass re-reads from ``overlap_seconds`` below the watermark (``common/state.py``); a
late row may then reach the hub after a later step of its case, which the hub refuses as
an illegal transition (recorded as refused) rather than the row being lost.

Delivery of pushes: the outbox is drained strictly in the order rows were read, so a
case's later push is never sent before an earlier one. While the hub is unreachable
(transport failure, UNAVAILABLE) the head push is retried with exponential backoff and
jitter and stays in the outbox. When the hub *refuses* a push (FAILED_PRECONDITION, e.g. an
illegal transition; INVALID_ARGUMENT; NOT_FOUND; PERMISSION_DENIED for the case) the refusal
is recorded on the outbox row (state ``failed``), logged as an error, and the sender moves
on. We chose moving on over holding the case: a refused push changed nothing at the hub,
and the hub checks every later push against the case's real stage, so nothing can be
applied out of order; holding would freeze the case until an operator stepped in, whereas a
department usually corrects its record by writing a new status row. A refusal of the
connector itself (revoked member, bad signature, missing role) leaves the push queued and
stops the connector.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Final, TypeVar

import grpc
from sqlalchemy import Engine, MetaData, Table, create_engine, select
from sqlalchemy.exc import SQLAlchemyError

from xhub.connectors.common.retry import call_hub, retryable
from xhub.connectors.common.state import RowError, scan_rows
from xhub.connectors.department.attachments import Attachments
from xhub.connectors.department.config import (
    DepartmentConfig,
    DepartmentConfigError,
    load_department_config,
)
from xhub.connectors.department.inbox import open_inbox, store_case
from xhub.connectors.department.outbox import (
    PENDING,
    DepartmentState,
    Ingested,
    OutboxEntry,
    PassedRow,
)
from xhub.connectors.department.reasons import (
    CASE_NOT_DISPATCHED,
    INTERNAL_STEP,
    NO_CASE_NUMBER,
    STAGE_UNCHANGED,
    UNMAPPED_STATUS_CODE,
)
from xhub.connectors.department.rows import map_status_row, text_of
from xhub.connectors.sdk.client import HubClient, RetryPolicy, secure_channel
from xhub.protocol.bundle import MemberBundle
from xhub.protocol.errors import BadResponseError, RefusedError, XhubError
from xhub.v1 import case_pb2

log = logging.getLogger("xhub.connector.department")
T = TypeVar("T")

# -- the connector --------------------------------------------------------------------------------


_BY_DESIGN: Final = frozenset({INTERNAL_STEP, STAGE_UNCHANGED})
"""Rows passed over as configured: recorded, logged at DEBUG only."""

_ZH_OUTCOME: Final = MappingProxyType(
    {"new": "已接收", "updated": "已更新", "withdrawn": "已撤回", "duplicate": "重复"}
)


@dataclass
class PassResult:
    """What a pass did (run_once), or what the loop has done so far."""

    received: int = 0
    withdrawn: int = 0
    duplicates: int = 0
    queued: int = 0
    unchanged: int = 0
    ignored: int = 0
    foreign: int = 0
    skipped: list[RowError] = field(default_factory=list)  # passed over for an error
    passed_over: list[PassedRow] = field(default_factory=list)  # every row passed over
    row_errors: int = 0  # rows passed over that a person must fix (config.row_errors)
    unverified: list[RowError] = field(default_factory=list)  # cases kept out of the inbox
    fetched: int = 0  # attachments fetched (部门调阅材料)
    fetch_failed: int = 0  # attachments the hub refused or that failed verification
    sent: int = 0
    failed: list[OutboxEntry] = field(default_factory=list)
    pending: int = 0
    unreachable: str = ""

    def summary(self) -> str:
        text = (
            f"inbound (收件): {self.received} case(s), {self.withdrawn} withdrawn (撤回), "
            f"{self.duplicates} repeated; outbound (状态回传): {self.queued} queued, "
            f"{self.sent} sent, {len(self.failed)} refused, {self.pending} waiting in the "
            f"outbox; {len(self.skipped)} row(s) skipped, {len(self.passed_over)} passed over"
        )
        if self.unverified:
            text += f"; {len(self.unverified)} case(s) failed end-to-end verification"
        if self.fetched or self.fetch_failed:
            text += f"; attachments: {self.fetched} fetched, {self.fetch_failed} failed"
        if self.unreachable:
            text += f"; hub unreachable: {self.unreachable}"
        return text


def is_push_refusal(exc: XhubError) -> bool:
    """True when the hub refused this push (its case, stage or fields), not the connector."""
    code = exc.code
    if code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND):
        return True
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return exc.reason_name == "INVALID_FIELD"  # not a malformed envelope or wrong recipient
    if code == grpc.StatusCode.PERMISSION_DENIED:
        # "not dispatched to you" comes with the case; a missing role names the role.
        return isinstance(exc, RefusedError) and "required_role" not in exc.metadata
    return False


class DepartmentConnector:
    """Receives dispatched cases into the inbox table and sends status rows back via the outbox.

    ``run_once()`` does one bounded pass (tests, cron, ``--once``); ``run(stop)`` keeps
    running until ``stop`` is set, with the receiver, the status reader and the sender each
    on its own thread, so a hub outage never stops the department's rows being queued.
    """

    def __init__(self, config: DepartmentConfig) -> None:
        self.config = config
        self.stop = threading.Event()
        self._wake = threading.Event()
        self._fatal: BaseException | None = None
        self.state = DepartmentState(config.state_path)
        self.attachments = Attachments(self.state.engine, config.attachments_path)
        self.department: Engine = create_engine(config.department_url)
        self.client: HubClient | None = None
        try:
            self.inbox = open_inbox(self.department, config.inbox_table)
            self.status = self._open_status()
            self.client = self._new_client()
        except SQLAlchemyError as exc:
            self.close()
            raise DepartmentConfigError(f"department database: {exc}") from exc
        except BaseException:
            self.close()
            raise

    @classmethod
    def from_file(cls, path: Path) -> DepartmentConnector:
        return cls(load_department_config(path))

    def _new_client(self) -> HubClient:
        bundle = MemberBundle.load(self.config.bundle, hub_address=self.config.address)
        # One retry layer only: ours, which can wait for the hub for as long as it takes.
        return HubClient(
            bundle,
            channel=secure_channel(
                bundle,
                reconnect_initial=self.config.backoff.initial_seconds,
                reconnect_max=self.config.backoff.max_seconds,
            ),
            retry=RetryPolicy(attempts=1),
        )

    def _open_status(self) -> Table:
        name = self.config.status_table
        try:
            table = Table(name, MetaData(), autoload_with=self.department)
        except SQLAlchemyError as exc:
            raise DepartmentConfigError(f"status table {name!r}: {exc}") from exc
        columns = self.config.columns
        missing = [c for c in columns.required() + columns.optional() if c not in table.c]
        if missing:
            raise DepartmentConfigError(f"status table {name!r} lacks: {', '.join(missing)}")
        return table

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        self.department.dispose()
        self.state.close()

    def __enter__(self) -> DepartmentConnector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- inbound: dispatched cases into the inbox -------------------------------------------

    def receive(self, case: case_pb2.DispatchedCase, result: PassResult | None = None) -> str:
        """Write one dispatched case to the inbox, then save its cursor (at-least-once).

        Returns "new", "updated" (resubmitted after 补正), "withdrawn", "duplicate" or
        "unverified" (it fails the end-to-end check and stays out of the inbox).
        """
        try:
            self._hub().verify_submission(case)
        except BadResponseError as exc:
            log.error("case %s kept out of the inbox (端到端核验失败): %s", case.case_number, exc)
            self.state.advance_cursor(case.cursor)
            if result is not None:
                result.unverified.append(RowError(case.case_number, exc.message))
            return "unverified"
        outcome = store_case(self.department, self.inbox, case)
        if case.stage != case_pb2.CASE_STAGE_WITHDRAWN:
            self.attachments.enqueue(case)  # before the cursor moves: never lost in a crash
        resubmitted = (
            case.case_number
            if outcome == "updated" and case.stage == case_pb2.CASE_STAGE_SUBMITTED
            else ""
        )
        self.state.advance_cursor(case.cursor, resubmitted=resubmitted)
        if result is not None:
            if outcome in ("new", "updated"):
                result.received += 1
            elif outcome == "withdrawn":
                result.withdrawn += 1
            else:
                result.duplicates += 1
        if outcome != "duplicate":
            log.info("case %s: %s (办件%s)", case.case_number, outcome, _ZH_OUTCOME[outcome])
        return outcome

    def receive_bounded(self, result: PassResult) -> None:
        """One short subscription from the saved cursor (``--once``)."""
        client = self._hub()

        def attempt() -> None:
            stream = client.subscribe_cases(
                self.state.cursor(), timeout=self.config.subscribe_seconds
            )
            for case in stream:
                self.receive(case, result)

        self._call(attempt, bounded=True)
        self.fetch_attachments(result)

    def fetch_attachments(self, result: PassResult | None = None) -> None:
        """Fetch the pending certificates and materials of received cases (部门调阅材料), each
        with the retry policy; raises a TransportError when the hub stays unreachable (the
        rest stay pending for the next pass)."""
        client = self._hub()

        def call(fn: Callable[[], None], on_retry: Callable[[BaseException], None]) -> None:
            self._call(fn, bounded=True, on_retry=on_retry)

        fetched, failed = self.attachments.fetch_pending(client, call, stop=self.stop.is_set)
        if result is not None:
            result.fetched += fetched
            result.fetch_failed += failed
        if failed:
            log.error("%d attachment(s) could not be fetched; see the status command", failed)

    def _receive_forever(self, client: HubClient) -> None:
        """Loop mode: follow the stream across hub restarts until stopped."""
        while not self.stop.is_set():
            try:
                events: Iterator[case_pb2.DispatchedCase] = client.follow(
                    client.subscribe_cases, self.state.cursor(), stop=self.stop.is_set
                )
                self.fetch_attachments()
                for case in events:
                    self.receive(case)
                    self.fetch_attachments()
            except SQLAlchemyError as exc:
                # The cursor did not move: the same case is delivered again after the pause.
                log.warning(
                    "inbox write failed: %s; retrying in %ss", exc, self.config.poll_seconds
                )
                self.stop.wait(self.config.poll_seconds)
            except XhubError as exc:
                if self.stop.is_set():
                    return
                if not retryable(exc):
                    self._fail("the hub refused the case subscription", exc)
                    return
                log.warning("case stream interrupted: %s; resubscribing", exc)
                self.stop.wait(self.config.backoff.initial_seconds)
            except Exception as exc:  # pragma: no cover - a bug: stop loudly, not silently
                self._fail("the case receiver crashed", exc)
                return

    # -- outbound: status rows into the outbox ---------------------------------------------------

    def _ours(self, case_numbers: set[str]) -> set[str]:
        if not case_numbers:
            return set()
        column = self.inbox.c.case_number
        with self.department.connect() as connection:
            return set(connection.scalars(select(column).where(column.in_(case_numbers))))

    def collect(self, result: PassResult | None = None) -> int:
        """Queue every status row from the watermark's overlap window on; returns the pushes
        queued. Rows read before are recognised by event id and change nothing."""
        result = result if result is not None else PassResult()
        columns = self.config.columns
        queued = 0
        batches = scan_rows(
            self.department,
            self.status,
            updated_at_column=columns.updated_at,
            key_column=columns.key,
            watermark=self.state.watermark(),
            overlap_seconds=self.config.overlap_seconds,
            limit=self.config.batch_size,
        )
        for rows in batches:
            if self.stop.is_set():
                break
            ours = self._ours({text_of(r[columns.case]) for r in rows} - {""})
            done = self.state.ingest([map_status_row(self.config, row, ours) for row in rows])
            self._report(done, result)
            queued += done.queued
        if queued:
            self._wake.set()
        return queued

    def _report(self, done: Ingested, result: PassResult) -> None:
        """Count what a batch did, and log each row passed over (WARNING unless by design)."""
        result.queued += done.queued
        for row in done.passed:
            result.passed_over.append(row)
            if row.reason_code == STAGE_UNCHANGED:
                result.unchanged += 1
            elif row.reason_code == INTERNAL_STEP:
                result.ignored += 1
            if row.reason_code == CASE_NOT_DISPATCHED:
                result.foreign += 1
            if row.reason_code in self.config.row_errors:
                result.row_errors += 1
            if row.reason_code in (NO_CASE_NUMBER, UNMAPPED_STATUS_CODE):
                result.skipped.append(RowError(row.key, row.reason))
            level = logging.DEBUG if row.reason_code in _BY_DESIGN else logging.WARNING
            log.log(
                level,
                "status row %r (case %s, status code %r) passed over (未回传), %s: %s",
                row.key,
                row.case_number or "-",
                row.native_code,
                row.reason_code,
                row.reason,
            )

    # -- outbound: the sender ---------------------------------------------------------------------

    def drain(self, result: PassResult | None = None, *, bounded: bool = True) -> None:
        """Send queued pushes oldest first until the outbox is empty or the hub is away."""
        result = result if result is not None else PassResult()
        client = self._hub()
        while not self.stop.is_set():
            entry = self.state.next_pending()
            if entry is None:
                break
            try:
                answer = self._push(client, entry, bounded=bounded)
            except XhubError as exc:
                if not is_push_refusal(exc):
                    raise  # the hub is away, or refuses the connector: the push stays queued
                reason = f"{exc.code.name} {exc.reason_name}: {exc.message}"
                self.state.mark_failed(entry, reason)
                result.failed.append(entry)
                log.error(
                    "push %s refused (推送被拒), case %s → %s (native code %r): %s; recorded in "
                    "the outbox as failed, moving on to the next push",
                    entry.event_id,
                    entry.case_number,
                    entry.stage.label,
                    entry.native_code,
                    reason,
                )
                continue
            self.state.mark_sent(entry, answer)
            result.sent += 1
            log.info(
                "case %s → %s sent (已回传)%s",
                entry.case_number,
                entry.stage.label,
                " (already applied 重复)" if answer.duplicate else "",
            )
        self.state.prune_sent(
            timedelta(days=self.config.keep_sent_days),
            overlap_seconds=self.config.overlap_seconds,
            errors=self.config.row_errors,
        )

    def _push(
        self, client: HubClient, entry: OutboxEntry, *, bounded: bool
    ) -> case_pb2.StatusPushResult:
        def send(expected: int = 0) -> case_pb2.StatusPushResult:
            return client.push_status(
                entry.case_number,
                case_pb2.CaseStage.Value(f"CASE_STAGE_{entry.stage.name}"),
                event_id=entry.event_id,
                note=entry.note,
                missing_items=list(entry.missing_items),
                certificate_identifier=entry.certificate_identifier,
                sequence=self.state.push_number(entry, expected=expected),
            )

        def send_numbered() -> case_pb2.StatusPushResult:
            try:
                return send()
            except RefusedError as exc:
                # The hub counts this case's pushes otherwise (e.g. a state file restored
                # from a backup): take its number once. A wrong one only shows the platform
                # a gap, which the platform reports.
                expected = exc.metadata.get("expected_sequence", "")
                if exc.metadata.get("field") != "sequence" or not expected.isdigit():
                    raise
                log.warning(
                    "case %s: the hub expects push number %s (回传序号); adopting it",
                    entry.case_number,
                    expected,
                )
                return send(int(expected))

        return self._call(
            send_numbered,
            bounded=bounded,
            on_retry=lambda exc: self.state.note_attempt(entry.seq, str(exc)),
        )

    def _send_forever(self) -> None:
        while not self.stop.is_set():
            self._wake.clear()
            try:
                self.drain(bounded=False)
            except XhubError as exc:
                if self.stop.is_set() and retryable(exc):
                    return  # asked to stop while waiting for the hub
                self._fail("the hub refused the connector's push", exc)
                return
            except Exception as exc:
                self._fail("the sender crashed", exc)
                return
            self._wake.wait(self.config.poll_seconds)

    # -- hub calls, retried while the hub is unreachable -----------------------------------------

    def _hub(self) -> HubClient:
        if self.client is None:
            raise RuntimeError("connector is closed")
        return self.client

    def _call(
        self,
        fn: Callable[[], T],
        *,
        bounded: bool,
        on_retry: Callable[[BaseException], None] | None = None,
    ) -> T:
        return call_hub(
            fn,
            backoff=self.config.backoff,
            bounded=bounded,
            stop=self.stop,
            log=log,
            on_retry=on_retry,
        )

    # -- passes -----------------------------------------------------------------------------------

    def run_once(self) -> PassResult:
        """One inbound pass, one read of the status table, one drain of the outbox.

        The hub being unreachable is not an error here: the pushes wait in the outbox and
        ``unreachable`` says why.
        """
        result = PassResult()
        try:
            self.receive_bounded(result)
        except XhubError as exc:
            if not retryable(exc):
                raise
            result.unreachable = str(exc)
        self.collect(result)
        if not result.unreachable:
            try:
                self.drain(result, bounded=True)
            except XhubError as exc:
                if not retryable(exc):
                    raise
                result.unreachable = str(exc)
        result.pending = len(self.state.outbox(PENDING))
        return result

    def run(self, stop: threading.Event | None = None) -> None:
        """Loop mode until ``stop`` is set (it is also set if the connector must give up).

        Raises what made it give up: the hub refusing the connector itself (revoked member,
        bad key) or a broken state file. Hub outages and department-database hiccups are
        waited out.
        """
        if stop is not None:
            self.stop = stop
        stream_client = self._new_client()
        threads = [
            threading.Thread(
                target=self._receive_forever, args=(stream_client,), name="xhub-receiver"
            ),
            threading.Thread(target=self._send_forever, name="xhub-sender"),
        ]
        for thread in threads:
            thread.start()
        try:
            while not self.stop.is_set():
                try:
                    self.collect()
                except SQLAlchemyError as exc:
                    log.warning(
                        "department database: %s; retrying in %ss", exc, self.config.poll_seconds
                    )
                self.stop.wait(self.config.poll_seconds)
        finally:
            self.stop.set()
            self._wake.set()
            stream_client.close()  # ends a subscription waiting for the next case
            for thread in threads:
                thread.join()
        if self._fatal is not None:
            raise self._fatal

    def _fail(self, what: str, exc: BaseException) -> None:
        log.error("%s: %s; stopping the connector (前置机停止)", what, exc)
        if self._fatal is None:
            self._fatal = exc
        self.stop.set()
