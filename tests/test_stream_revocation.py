"""Revocation and expiry reach open streams (SQLite and PostgreSQL).

A member revoked (committed to the database by the registry store, as `xhub member revoke`
does from another process) or whose certificate expires while a subscription is open
receives nothing after that commit: each batch is read, then the member checked, right
before sending, and every open stream re-checks its member every
``member_recheck_seconds`` while idle. The stream ends with UNAUTHENTICATED
``MEMBER_REVOKED`` / ``MEMBER_EXPIRED`` within a few seconds, and its end is audited.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from cases_world import (
    ACCEPTED,
    COMPANY,
    PLAN,
    UNDER_REVIEW,
    Desk,
    count_events,
    stage_at,
)
from helpers import refused_on_the_wire
from sqlalchemy import func, select, update

from xhub.connectors import XhubError
from xhub.hub.cases.service import CaseService
from xhub.hub.core.db import CaseDepartmentRow, CaseEventRow, MaterialRow
from xhub.v1 import audit_pb2, certificate_pb2, material_pb2

ENDS_WITHIN = 6.0  # member_recheck_seconds is 2 by default


@dataclass
class Watched:
    """A subscription read on a thread: what arrived and how it ended."""

    received: list[Any] = field(default_factory=list)
    error: BaseException | None = None
    ended_at: float | None = None
    thread: threading.Thread | None = None

    def wait_for(self, count: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.received) < count:
            assert time.monotonic() < deadline, f"only {len(self.received)} events arrived"
            time.sleep(0.02)

    def ended(self, timeout: float) -> XhubError:
        assert self.thread is not None
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"the stream stayed open for {timeout} s"
        assert isinstance(self.error, XhubError), self.error
        return self.error


def watch(subscribe: Callable[..., Iterator[Any]]) -> Watched:
    watched = Watched()

    def run() -> None:
        try:
            for event in subscribe(0, timeout=30):
                watched.received.append(event)
        except BaseException as exc:
            watched.error = exc
        watched.ended_at = time.monotonic()

    watched.thread = threading.Thread(target=run, daemon=True)
    watched.thread.start()
    return watched


def _audited_end(desk: Desk, member: str, method: str, reason: str) -> bool:
    return any(
        audit_pb2.AuditEntry.FromString(r.entry).reason == reason
        for r in desk.auditor.query_audit(method=method, member_id=member)
    )


def test_revoked_department_gets_no_new_case_and_its_stream_ends(any_desk: Desk) -> None:
    desk = any_desk
    kit = desk.kit
    stream = watch(desk.department.subscribe_cases)
    first = desk.submit().case_number
    stream.wait_for(1)
    assert stream.received[0].case_number == first
    kit.revoke("department")  # committed, as `xhub member revoke` does
    revoked_at = time.monotonic()
    second = desk.submit().case_number  # dispatched to the revoked department
    error = stream.ended(ENDS_WITHIN)
    assert error.reason_name == "MEMBER_REVOKED", error
    assert error.code.name == "UNAUTHENTICATED"
    assert [c.case_number for c in stream.received] == [first]
    assert second != first and stage_at(kit, second, "department")
    assert stream.ended_at is not None and stream.ended_at - revoked_at < ENDS_WITHIN
    assert _audited_end(
        desk, kit.member_id("department"), "/xhub.v1.CaseService/SubscribeCases", "MEMBER_REVOKED"
    )


def test_revoked_platform_gets_no_new_status_and_its_stream_ends(any_desk: Desk) -> None:
    desk = any_desk
    kit = desk.kit
    case = desk.submit().case_number
    stream = watch(desk.platform.subscribe_status)
    desk.walk(case, [ACCEPTED])
    stream.wait_for(1)
    before = len(stream.received)
    kit.revoke("platform")
    desk.walk(case, [UNDER_REVIEW])  # the department goes on; the platform may not hear it
    error = stream.ended(ENDS_WITHIN)
    assert error.reason_name == "MEMBER_REVOKED", error
    assert len(stream.received) == before
    assert all(e.stage != UNDER_REVIEW for e in stream.received)
    assert _audited_end(
        desk, kit.member_id("platform"), "/xhub.v1.CaseService/SubscribeStatus", "MEMBER_REVOKED"
    )


def test_revoked_auditor_gets_no_supervision_event_and_its_stream_ends(any_desk: Desk) -> None:
    desk = any_desk
    kit = desk.kit
    assert kit.running is not None
    case = desk.submit().case_number
    desk.walk(case, [ACCEPTED, UNDER_REVIEW])
    today = datetime.now(UTC).date()
    with kit.session() as session:  # long overdue: the next supervision round escalates
        session.execute(
            update(CaseDepartmentRow)
            .where(CaseDepartmentRow.case_number == case)
            .values(
                accepted_on=(today - timedelta(days=60)).isoformat(),
                deadline=(today - timedelta(days=30)).isoformat(),
            )
        )
    stream = watch(desk.auditor.subscribe_supervision)
    time.sleep(0.5)  # the subscription is open
    kit.revoke("auditor")
    CaseService(kit.running.runtime).supervise(today=today)
    assert count_events(kit, CaseEventRow.kind == "supervision", CaseEventRow.case_number == case)
    error = stream.ended(ENDS_WITHIN)
    assert error.reason_name == "MEMBER_REVOKED", error
    assert stream.received == []


def test_expiry_during_a_stream_ends_it_with_member_expired(any_desk: Desk) -> None:
    desk = any_desk
    kit = desk.kit
    stream = watch(desk.department.subscribe_cases)
    time.sleep(0.3)
    kit.expire("department")  # nothing to send: the periodic re-check finds it
    error = stream.ended(ENDS_WITHIN)
    assert error.reason_name == "MEMBER_EXPIRED", error
    assert stream.received == []


def test_an_upload_in_progress_ends_when_its_platform_is_revoked(any_desk: Desk) -> None:
    desk = any_desk
    kit = desk.kit
    transport = desk.platform.transport
    chunk = b"%PDF-" + b"x" * 1000
    manifest = material_pb2.MaterialManifest(
        material_type=PLAN,
        applicant_code=COMPANY,
        applicant_code_type=certificate_pb2.HOLDER_CODE_TYPE_USCC,
        size=len(chunk) * 1000,  # far more than will be sent before the revocation
        sha256=hashlib.sha256(b"never").digest(),
        media_type="application/pdf",
        name="plan.pdf",
    )
    envelope = transport.seal(manifest)
    revoked = threading.Event()

    def slowly() -> Iterator[material_pb2.UploadRequest]:
        yield material_pb2.UploadRequest(manifest=envelope)
        for i in range(100):
            yield material_pb2.UploadRequest(chunk=chunk)
            if i == 1:
                kit.revoke("platform")
                revoked.set()
            time.sleep(0.1)

    started = time.monotonic()
    error = refused_on_the_wire(
        lambda: transport.materials.Upload(slowly(), timeout=30),
        grpc.StatusCode.UNAUTHENTICATED,
        "MEMBER_REVOKED",
    )
    assert revoked.is_set() and time.monotonic() - started < ENDS_WITHIN
    assert "revoked" in (error.details() or "")
    with kit.session() as session:
        assert session.scalar(select(func.count()).select_from(MaterialRow)) == 0
