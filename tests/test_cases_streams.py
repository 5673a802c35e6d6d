"""The case streams over a running hub: served from ``case_events`` by cursor — ordered,
resumable, private to their subscriber, hub-signed, the department's own signed push inside
each status event — and, on PostgreSQL, a subscriber on one hub process sees every event
written through another, even one committed after a later cursor."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from cases_world import (
    ACCEPTED,
    APPROVED,
    HAPPY_PATH,
    ITEM,
    ITEM2,
    UNDER_REVIEW,
    Code,
    Desk,
    count_events,
    drain,
    event_id,
    make_kit,
    race,
    registered_keys,
    signer_key,
)
from hubkit import HubKit
from sqlalchemy import insert, select, text

from xhub.connectors import BadResponseError, HubClient, TransportError, XhubError
from xhub.hub.core.db import CaseEventRow, SeenMessageRow
from xhub.protocol.envelope import parse_verified, verify_signature_by
from xhub.protocol.errors import AuthenticationError
from xhub.protocol.signing import ED25519
from xhub.v1 import case_pb2

# -- streams -----------------------------------------------------------------------------------


def test_streams_deliver_in_cursor_order_and_resume_after_a_cursor(desk: Desk) -> None:
    cases = [desk.submit().case_number for _ in range(3)]
    dispatched = drain(desk.department.subscribe_cases)
    assert [d.case_number for d in dispatched] == cases
    cursors = [d.cursor for d in dispatched]
    assert cursors == sorted(set(cursors))
    resumed = drain(desk.department.subscribe_cases, after=cursors[0])
    assert [(d.cursor, d.case_number) for d in resumed] == [
        (d.cursor, d.case_number) for d in dispatched[1:]
    ]
    assert drain(desk.department.subscribe_cases, after=cursors[-1]) == []

    pushed = []
    for stage in (ACCEPTED, UNDER_REVIEW, APPROVED):
        for case in cases:
            pushed.append(eid := event_id())
            desk.department.push_status(case, stage, event_id=eid)
    events = drain(desk.platform.subscribe_status)
    assert [e.event_id for e in events] == pushed
    cursors = [e.cursor for e in events]
    assert cursors == sorted(set(cursors))
    for k in (0, 4, len(events) - 1):
        tail = drain(desk.platform.subscribe_status, after=cursors[k])
        assert [(e.cursor, e.event_id) for e in tail] == [
            (e.cursor, e.event_id) for e in events[k + 1 :]
        ]


def test_a_live_subscriber_receives_events_as_they_are_pushed(desk: Desk) -> None:
    case = desk.submit().case_number
    seen: list[case_pb2.StatusEvent] = []
    stream = desk.platform.subscribe_status(0, timeout=15)

    def read() -> None:
        for event in stream:
            seen.append(event)
            if len(seen) == len(HAPPY_PATH):
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    time.sleep(0.3)  # the subscription is open before anything is pushed
    desk.walk(case, HAPPY_PATH)
    reader.join(timeout=10)
    assert [e.stage for e in seen] == list(HAPPY_PATH)


def test_a_subscriber_sees_only_its_own_events(desk: Desk) -> None:
    platform2 = desk.kit.client("platform2")
    mine = desk.submit(ITEM).case_number  # platform → department
    theirs = desk.submit(ITEM2, platform=platform2).case_number  # platform2 → department2
    desk.walk(mine, [ACCEPTED, UNDER_REVIEW])
    desk.walk(theirs, [ACCEPTED], client=desk.department2)
    assert {d.case_number for d in drain(desk.department.subscribe_cases)} == {mine}
    assert {d.case_number for d in drain(desk.department2.subscribe_cases)} == {theirs}
    assert [e.case_number for e in drain(desk.platform.subscribe_status)] == [mine, mine]
    assert [e.case_number for e in drain(platform2.subscribe_status)] == [theirs]
    # A member without the role gets no stream at all.
    for client, subscribe in (
        (desk.department, desk.department.subscribe_status),
        (desk.platform, desk.platform.subscribe_cases),
        (desk.auditor, desk.auditor.subscribe_cases),
        (desk.auditor, desk.auditor.subscribe_status),
    ):
        with pytest.raises(XhubError) as caught:
            drain(subscribe)
        assert (caught.value.code, caught.value.reason_name) == (
            Code.PERMISSION_DENIED,
            "ROLE_REQUIRED",
        ), client.member_id


def _raw_status_stream(client: HubClient, after: int = 0) -> tuple[str, list[Any]]:
    """The hub's signed envelopes as they arrive, without the SDK's checks."""
    payload = case_pb2.CaseSubscription(after_cursor=after)
    envelope = client.transport.seal(payload)
    responses: list[Any] = []
    try:
        for message in client.transport.cases.SubscribeStatus(
            case_pb2.SubscribeStatusRequest(envelope=envelope), timeout=1.0
        ):
            responses.append(message.envelope)
    except grpc.RpcError as exc:
        assert exc.code() == Code.DEADLINE_EXCEEDED
    return payload.header.message_id, responses


def test_stream_events_are_hub_signed_and_the_sdk_checks_them(desk: Desk) -> None:
    case = desk.submit().case_number
    desk.walk(case, [ACCEPTED, UNDER_REVIEW])
    request_id, envelopes = _raw_status_stream(desk.platform)
    assert len(envelopes) == 2
    for envelope in envelopes:
        assert envelope.payload_type == "xhub.v1.StatusEvent"
        verify_signature_by(envelope, desk.platform.bundle.hub_verifier)
        event = desk.platform.transport.open_response(envelope, case_pb2.StatusEvent, request_id)
        assert event.header.sender == desk.kit.hub_id
        assert event.header.recipient == desk.kit.member_id("platform")
        # Altered in transit, or answering another subscription: the SDK refuses it.
        tampered = type(envelope)()
        tampered.CopyFrom(envelope)
        tampered.payload = envelope.payload.replace(case.encode(), case[:-1].encode() + b"X")
        with pytest.raises(BadResponseError):
            desk.platform.transport.open_response(tampered, case_pb2.StatusEvent, request_id)
        with pytest.raises(BadResponseError):
            desk.platform.transport.open_response(envelope, case_pb2.StatusEvent, "another-request")
        with pytest.raises(BadResponseError):  # the right bytes, but for another recipient
            desk.department.transport.open_response(envelope, case_pb2.StatusEvent, request_id)


def test_a_status_event_carries_the_departments_own_signed_push(desk: Desk) -> None:
    case = desk.submit().case_number
    desk.department.push_status(case, ACCEPTED, event_id="sig-1", note="材料齐全,予以受理")
    (event,) = drain(desk.platform.subscribe_status)
    department_id = desk.kit.member_id("department")
    department_key = signer_key(desk.platform, department_id, event.origin)
    assert department_key.key_id == desk.kit.bundle("department").signer.key_id
    assert department_key.algorithm == ED25519
    verify_signature_by(event.origin, department_key)  # the department's own Ed25519 key
    push = parse_verified(event.origin, case_pb2.StatusPush)
    assert (push.header.sender, push.case_number, push.stage, push.event_id, push.note) == (
        department_id,
        case,
        ACCEPTED,
        "sig-1",
        "材料齐全,予以受理",
    )
    assert (event.department, event.stage, event.event_id) == (department_id, ACCEPTED, "sig-1")
    # The origin is the department's signature, not the hub's or the platform's.
    for other in (
        desk.platform.bundle.hub_verifier,
        *registered_keys(desk.platform, desk.kit.member_id("platform")).values(),
    ):
        with pytest.raises(AuthenticationError):
            verify_signature_by(event.origin, other)
    forged = type(event.origin)()
    forged.CopyFrom(event.origin)
    forged.payload = event.origin.payload.replace(b"sig-1", b"sig-2")
    with pytest.raises(AuthenticationError):
        verify_signature_by(forged, department_key)


# -- several hub processes on one PostgreSQL database ------------------------------------------


@pytest.fixture
def pg_kit(tmp_path: Path, pg_url: str) -> Iterator[HubKit]:
    with make_kit(tmp_path, pg_url).start() as running:
        yield running


def _follow_status(
    client: HubClient, into: list[case_pb2.StatusEvent], stop: threading.Event, *, until: int
) -> threading.Thread:
    """Follow the status stream in a thread until ``until`` events arrived (or ``stop``)."""

    def run() -> None:
        try:
            for event in client.follow(client.subscribe_status, 0, stop=stop.is_set):
                into.append(event)
                if len(into) >= until:
                    return
        except (TransportError, XhubError):
            if not stop.is_set():
                raise

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.postgres
def test_a_subscriber_on_one_hub_sees_every_event_pushed_through_another(pg_kit: HubKit) -> None:
    replica = pg_kit.start_replica()
    desk = Desk(pg_kit)  # the platform subscribes through the main hub process
    pushers = [pg_kit.client("department", address=replica) for _ in range(4)]
    cases = [desk.submit().case_number for _ in range(len(pushers) * 2)]
    expected = len(cases) * len(HAPPY_PATH)
    received: list[case_pb2.StatusEvent] = []
    stop = threading.Event()
    follower = _follow_status(desk.platform, received, stop, until=expected)

    def walk(i: int) -> None:
        for stage in HAPPY_PATH:
            for case in cases[i::len(pushers)]:  # fmt: skip
                pushers[i].push_status(case, stage, event_id=f"r-{case}-{stage}")

    outcomes = race(len(pushers), walk)
    assert not [o for o in outcomes if isinstance(o, Exception)], outcomes
    follower.join(timeout=15)
    stop.set()
    assert len(received) == expected, (
        f"the subscriber saw {len(received)} of {expected} events; "
        f"in the database: {count_events(pg_kit, CaseEventRow.kind == 'status')}"
    )
    assert len({e.event_id for e in received}) == expected
    cursors = [e.cursor for e in received]
    assert cursors == sorted(set(cursors))


def _ids(events: list[case_pb2.StatusEvent]) -> list[str]:
    return [e.event_id for e in events]


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.mark.postgres
def test_an_event_committed_after_a_later_cursor_is_still_delivered(pg_kit: HubKit) -> None:
    """Cursor order is not commit order on PostgreSQL: a push that took cursor N but commits
    after the push that took N+1 must still reach a subscriber that already read N+1."""
    replica = pg_kit.start_replica()
    desk = Desk(pg_kit)
    slow_client = pg_kit.client("department", address=replica)
    slow_case, fast_case = desk.submit().case_number, desk.submit().case_number
    events: list[case_pb2.StatusEvent] = []
    stop = threading.Event()
    follower = _follow_status(desk.platform, events, stop, until=2)
    time.sleep(0.3)

    # The slow push: its transaction inserts its case event (taking cursor N), then waits
    # on the replay-store row this test holds uncommitted with the same message id.
    payload = case_pb2.StatusPush(
        case_number=slow_case, stage=ACCEPTED, event_id="slow-1", sequence=1
    )
    envelope = slow_client.transport.seal(payload, case_id=slow_case)
    header = payload.header
    outcome: list[Any] = []
    with pg_kit.engine.connect() as blocker:
        transaction = blocker.begin()
        blocker.execute(
            insert(SeenMessageRow).values(
                sender=header.sender,
                message_id=header.message_id,
                seen_at=datetime.now(UTC),
                issued_at=header.issued_at.ToDatetime(tzinfo=UTC),
            )
        )

        def slow_push() -> None:
            try:
                outcome.append(
                    slow_client.transport.cases.PushStatus(
                        case_pb2.PushStatusRequest(envelope=envelope), timeout=30
                    )
                )
            except grpc.RpcError as exc:
                outcome.append(exc)

        slow = threading.Thread(target=slow_push, daemon=True)
        slow.start()
        with pg_kit.engine.connect() as probe:

            def slow_push_is_waiting() -> bool:
                waiting = probe.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                        "AND wait_event_type = 'Lock' "
                        "AND query ILIKE 'INSERT INTO seen_messages%'"
                    )
                ).scalar()
                probe.rollback()
                return bool(waiting)

            _wait_for(slow_push_is_waiting, 15, "the slow push to hold its cursor")
        # The fast push would take cursor N+1; the hub must not let it commit (and a
        # subscriber read it) before cursor N commits. It waits for the slow push.
        fast = threading.Thread(
            target=lambda: desk.department.push_status(fast_case, ACCEPTED, event_id="fast-1"),
            daemon=True,
        )
        fast.start()
        time.sleep(1.0)
        assert "fast-1" not in _ids(events), "a later cursor became visible before an earlier"
        transaction.rollback()  # the slow push goes on and commits cursor N
    slow.join(timeout=15)
    fast.join(timeout=15)
    assert outcome and not isinstance(outcome[0], grpc.RpcError), outcome
    assert count_events(pg_kit, CaseEventRow.event_id == "slow-1") == 1
    with pg_kit.session() as session:
        by_id = dict(
            session.execute(
                select(CaseEventRow.event_id, CaseEventRow.cursor).where(
                    CaseEventRow.event_id.in_(["slow-1", "fast-1"])
                )
            ).all()
        )
    assert by_id["slow-1"] < by_id["fast-1"]  # the situation this test is about
    follower.join(timeout=5)
    stop.set()
    received = _ids(events)
    assert sorted(received) == ["fast-1", "slow-1"], (
        f"the subscriber never received slow-1 (cursor {by_id['slow-1']}), committed after "
        f"fast-1 (cursor {by_id['fast-1']}) which it had already read: received {received}"
    )
