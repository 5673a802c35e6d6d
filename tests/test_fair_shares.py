"""Fair shares (issue 12): no member can take every stream slot, stall an upload for ever, or
lock others out with a flood of idle connections.

Caps are set small here (two streams, one upload, short idle and lifetime limits); every loop
and wait is bounded; all traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from helpers import refused, refused_on_the_wire
from hubkit import HubKit

from xhub.connectors import HubClient, RefusedError
from xhub.connectors.sdk.client import secure_channel
from xhub.v1 import audit_pb2

Code = grpc.StatusCode


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[HubKit]:
    kit = HubKit(tmp_path)
    kit.config = dataclasses.replace(
        kit.config,
        max_streams_per_member=2,
        max_uploads_per_member=1,
        upload_idle_seconds=0.5,
        stream_lifetime_seconds=30.0,
        handshake_timeout_seconds=1.0,
    )
    with kit.start():
        yield kit


def _hold(client: HubClient) -> None:
    """Keep one status subscription open (it ends when the client closes, or after 20 s)."""
    with contextlib.suppress(Exception):  # the client closed under it ends the stream
        for _ in client.subscribe_status(0, timeout=20):
            pass


def _open_count(kit: HubKit, kind: str) -> int:
    assert kit.running is not None
    return kit.running.open_streams.counts.get((kit.member_id("platform"), kind), 0)


def _wait_for(kit: HubKit, kind: str, count: int) -> None:
    deadline = time.monotonic() + 10
    while _open_count(kit, kind) != count:
        assert time.monotonic() < deadline, f"{_open_count(kit, kind)} {kind} open, not {count}"
        time.sleep(0.05)


def _open_streams(kit: HubKit, count: int) -> list[HubClient]:
    clients = [kit.client("platform") for _ in range(count)]
    for client in clients:
        threading.Thread(target=_hold, args=(client,), daemon=True).start()
    _wait_for(kit, "streams", count)
    return clients


def test_one_member_cannot_take_every_stream_slot(kit: HubKit) -> None:
    holders = _open_streams(kit, 2)
    platform = kit.client("platform")
    error = refused(
        lambda: list(platform.subscribe_status(0, timeout=5)),
        Code.RESOURCE_EXHAUSTED,
        "TOO_MANY_STREAMS",
    )
    assert isinstance(error, RefusedError)
    leaf = error.metadata.pop("audit_leaf")  # the refusal is audited like any other
    assert len(bytes.fromhex(leaf)) == 32
    assert error.metadata == {"cap": "2", "setting": "max_streams_per_member"}
    # Another member still gets streams and calls, and the health check answers.
    auditor = kit.client("auditor")
    assert list(auditor.subscribe_supervision(0, timeout=0.5)) == []
    assert auditor.health() == "SERVING"
    assert auditor.get_member(kit.member_id("platform")).member_id
    # Closing a stream frees its slot.
    holders[0].close()
    _wait_for(kit, "streams", 1)
    assert list(platform.subscribe_status(0, timeout=0.5)) == []


def test_a_stalled_upload_is_refused_and_its_slot_released(kit: HubKit) -> None:
    release = threading.Event()

    def stalled() -> Iterator[bytes]:
        release.wait(10)  # sends nothing: the hub must not wait for ever
        return
        yield b""

    with secure_channel(kit.bundle("platform")) as channel:
        upload = channel.stream_unary(
            "/xhub.v1.MaterialService/Upload",
            request_serializer=None,
            response_deserializer=None,
        )
        started = time.monotonic()
        refused_on_the_wire(
            lambda: upload(stalled(), timeout=10), Code.RESOURCE_EXHAUSTED, "IDLE_TIMEOUT"
        )
        assert time.monotonic() - started < 5
        release.set()
        auditor = kit.client("auditor")
        entries = [
            audit_pb2.AuditEntry.FromString(record.entry)
            for record in auditor.query_audit(
                method="/xhub.v1.MaterialService/Upload", decision=audit_pb2.AUDIT_DECISION_DENIED
            )
        ]
        assert [e.reason for e in entries] == ["IDLE_TIMEOUT"]
        # The slot is free again: the next (stalled) upload is refused as idle, not as over the cap.
        release.clear()
        refused_on_the_wire(
            lambda: upload(stalled(), timeout=10), Code.RESOURCE_EXHAUSTED, "IDLE_TIMEOUT"
        )
        release.set()


def test_a_stream_ends_cleanly_when_its_lifetime_is_up(tmp_path: Path) -> None:
    kit = HubKit(tmp_path)
    kit.config = dataclasses.replace(kit.config, stream_lifetime_seconds=0.5)
    with kit.start():
        platform = kit.client("platform")
        started = time.monotonic()
        assert list(platform.subscribe_status(0, timeout=20)) == []  # ended, no error
        assert 0.4 < time.monotonic() - started < 10


def test_an_idle_connection_flood_neither_locks_members_out_nor_lingers(kit: HubKit) -> None:
    flood: list[socket.socket] = []
    try:
        for _ in range(1100):  # no TLS handshake, ever
            flood.append(socket.create_connection(("127.0.0.1", kit.port), timeout=5))
        platform = kit.client("platform")
        assert platform.get_member(kit.member_id("platform")).member_id
        # The hub closes connections that did not finish a handshake in time.
        deadline = time.monotonic() + 15
        for sock in flood:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ConnectionResetError):  # closed, one way or the other
                assert sock.recv(1) == b""
    finally:
        for sock in flood:
            sock.close()
