"""Status streaming rows: department push → platform stream, end to end, vs a bare stream.

Each event is a signed push, admitted, checked against the stage machine, stored,
audited, then served to the platform's stream hub-signed and verified by the SDK.
The bare baseline streams the same number of messages of the same size over the
same mTLS from a server that does nothing else. Latency is push-sent to
event-received, per event.
"""

from __future__ import annotations

import statistics
import threading
import time
from functools import partial
from pathlib import Path

import grpc

from bench.echo_server import ECHO_METHOD, EVENTS_METHOD
from bench.harness import Row, measure, ratio_row
from bench.hubproc import process, setup, wait_echo
from xhub.connectors import HubClient
from xhub.connectors.sdk.client import secure_channel
from xhub.demo.process import free_port
from xhub.hub.catalog import store as catalog
from xhub.hub.core.db import make_engine, session_factory
from xhub.hub.setup import open_config
from xhub.protocol.bundle import MemberBundle
from xhub.protocol.codes import make_uscc
from xhub.v1 import case_pb2, intake_pb2

PUSHERS = 4  # a department connector drains its outbox with a few workers
STAGES = (
    case_pb2.CASE_STAGE_ACCEPTED,
    case_pb2.CASE_STAGE_UNDER_REVIEW,
    case_pb2.CASE_STAGE_APPROVED,
    case_pb2.CASE_STAGE_COMPLETED,
    case_pb2.CASE_STAGE_DELIVERED,
)


def bench_status_stream(root: Path, cases: int = 120) -> list[Row]:
    hub_port, echo_port = free_port(), free_port()
    bundles = setup(root, hub_port)
    config = open_config(root)
    department = MemberBundle.load(bundles["lw_market"]).member_id
    item = intake_pb2.Item(
        code="BENCH-CASE",
        name="bench",
        departments=[department],
        time_limit_days=10,
        materials=[intake_pb2.RequiredMaterial(code="M1", name="x", material_types=["X"])],
    )
    engine = make_engine(config.effective_database_url)
    with session_factory(engine).begin() as session:
        catalog.put_items(session, [item])
    engine.dispose()
    rows: list[Row] = []
    with (
        process(["-m", "xhub.cli.main", "serve", "--data-dir", str(root)], root / "hub.log"),
        process(
            ["-m", "bench.echo_server", "--data-dir", str(root), "--port", str(echo_port)],
            root / "echo.log",
        ),
        HubClient.from_bundle(bundles["lw_center"]) as platform,
        HubClient.from_bundle(bundles["lw_market"]) as market,
    ):
        platform.wait_until_serving()
        numbers = []
        for i in range(cases):
            checklist = platform.prepare_case(
                item.code, make_uscc("9", "1", "440103", f"MA{i:06d}"), purpose="bench"
            )
            numbers.append(platform.submit_case(checklist.case_id, purpose="bench").case_number)
        total = cases * len(STAGES)
        sent: dict[str, float] = {}
        received: dict[str, float] = {}
        size = 0
        done = threading.Event()

        def listen() -> None:
            nonlocal size
            for event in platform.follow(platform.subscribe_status, stop=done.is_set):
                received.setdefault(event.event_id, time.perf_counter())
                size = max(size, event.ByteSize())
                if len(received) >= total:
                    done.set()

        listener = threading.Thread(target=listen, daemon=True)
        listener.start()
        time.sleep(0.5)

        def push(share: list[str]) -> None:  # per case in stage order, cases interleaved
            for stage in STAGES:
                for number in share:
                    event_id = f"{number}-{stage}"
                    sent[event_id] = time.perf_counter()
                    market.push_status(number, stage, event_id=event_id)

        started = time.perf_counter()
        pushers = [
            threading.Thread(target=push, args=(numbers[i::PUSHERS],)) for i in range(PUSHERS)
        ]
        for thread in pushers:
            thread.start()
        for thread in pushers:
            thread.join()
        done.wait(timeout=120)
        elapsed = max(received.values()) - started
        latencies = sorted(received[k] - sent[k] for k in sent if k in received)
        channel = secure_channel(platform.bundle, address=f"127.0.0.1:{echo_port}")
        grpc.channel_ready_future(channel).result(timeout=20)
        events: grpc.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(EVENTS_METHOD)
        request = total.to_bytes(8, "big") + max(size, 1).to_bytes(8, "big")
        bare_started = time.perf_counter()
        count = sum(1 for _ in events(request, timeout=60))
        bare_elapsed = time.perf_counter() - bare_started
        # Each status is its own signed unary push (an idempotent, individually
        # acknowledged event): a bare unary call of the same size, with the pushers'
        # concurrency, is the ceiling that design leaves against the bare stream.
        echo: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(ECHO_METHOD)
        wait_echo(echo)
        payload = b"\x01" * max(size, 1)
        unary = measure(partial(echo, payload, timeout=10), calls=total, threads=PUSHERS)
        channel.close()
    rows.append(
        ratio_row(
            "status_events_end_to_end", len(received) / elapsed, "events/s", count / bare_elapsed
        )
    )
    rows.append(
        ratio_row(
            "bare_unary_push_ceiling", unary.calls_per_second, "calls/s", count / bare_elapsed
        )
    )
    rows.append(
        Row("status_push_to_receive_p50", round(statistics.median(latencies) * 1000, 3), "ms")
    )
    rows.append(
        Row(
            "status_push_to_receive_p99",
            round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 3),
            "ms",
        )
    )
    print(
        f"  {len(received)}/{total} events in {elapsed:.1f}s; p50 "
        f"{statistics.median(latencies) * 1000:.1f} ms",
        flush=True,
    )
    return rows
