"""The hub server over real mTLS: health, reflection, signed round trips, graceful stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from hubkit import HubKit, free_port

from xhub.connectors import BadResponseError, HubClient
from xhub.connectors.sdk.client import secure_channel
from xhub.hub.server import SERVICE_NAMES
from xhub.protocol.envelope import pae, verify_signature_by
from xhub.protocol.errors import error_info_of
from xhub.v1 import registry_pb2

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
REGISTRY_SERVICE = "xhub.v1.RegistryService"
HEALTH_SERVICE = "grpc.health.v1.Health"
REFLECTION_SERVICE = "grpc.reflection.v1alpha.ServerReflection"
XHUB = Path(sys.executable).with_name("xhub")
SPKI = PublicFormat.SubjectPublicKeyInfo


@pytest.fixture
def channel(shared_hub_kit: HubKit) -> Iterator[grpc.Channel]:
    """A plain mTLS channel to the hub using the platform member's certificate."""
    with secure_channel(shared_hub_kit.bundle("platform"), address=shared_hub_kit.address) as ch:
        yield ch


# -- health -------------------------------------------------------------------------------


@pytest.mark.parametrize("service", ["", REGISTRY_SERVICE])
def test_health_check_is_serving(channel: grpc.Channel, service: str) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    assert response.status == SERVING


def test_every_hub_service_reports_health(channel: grpc.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    assert REGISTRY_SERVICE in SERVICE_NAMES
    for service in SERVICE_NAMES:
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert response.status == SERVING, service


def test_health_check_of_unknown_service_is_not_found(channel: grpc.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    with pytest.raises(grpc.RpcError) as caught:
        stub.Check(health_pb2.HealthCheckRequest(service="xhub.v1.NoSuchService"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_graceful_stop_turns_health_not_serving_first(hub_kit: HubKit) -> None:
    """A watcher sees NOT_SERVING as soon as the stop begins, before the server goes away."""
    running = hub_kit.running
    assert running is not None
    with secure_channel(hub_kit.bundle("platform"), address=hub_kit.address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        watch = stub.Watch(health_pb2.HealthCheckRequest(service=REGISTRY_SERVICE), timeout=15)
        assert next(watch).status == SERVING
        stopping = hub_kit.begin_stop(grace=5.0)
        started = time.monotonic()
        assert next(watch).status == NOT_SERVING
        assert not stopping.done(), "NOT_SERVING must be announced while calls still drain"
        watch.cancel()  # let the drain finish early: nothing else is in flight
        stopping.result(timeout=10)
        assert time.monotonic() - started < 5.0

        # the servicer keeps reporting NOT_SERVING for every service
        for service in ("", REGISTRY_SERVICE):
            response = hub_kit.run(
                running.health.Check(health_pb2.HealthCheckRequest(service=service), None)
            )
            assert response.status == NOT_SERVING

        # and the port no longer answers
        with pytest.raises(grpc.RpcError) as caught:
            stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
        assert caught.value.code() in {
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
        }


def test_restart_serves_again_on_the_same_port(hub_kit: HubKit) -> None:
    client = hub_kit.client("auditor")
    assert client.get_member(hub_kit.member_id("issuer"))
    hub_kit.restart()
    assert hub_kit.running is not None and hub_kit.running.port == hub_kit.port
    assert client.get_member(hub_kit.member_id("issuer")).member_id == hub_kit.member_id("issuer")


# -- reflection ---------------------------------------------------------------------------


def _reflect(channel: grpc.Channel, **request: str) -> reflection_pb2.ServerReflectionResponse:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(**request)]), timeout=5
    )
    (response,) = list(responses)
    return response


def test_reflection_lists_the_services(channel: grpc.Channel) -> None:
    response = _reflect(channel, list_services="")
    names = {s.name for s in response.list_services_response.service}
    assert {REGISTRY_SERVICE, HEALTH_SERVICE, REFLECTION_SERVICE} <= names
    # exactly the hub's own services plus health and reflection
    assert names == {*SERVICE_NAMES, HEALTH_SERVICE, REFLECTION_SERVICE}


def test_reflection_describes_the_registry_contract(channel: grpc.Channel) -> None:
    response = _reflect(channel, file_containing_symbol=REGISTRY_SERVICE)
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in response.file_descriptor_response.file_descriptor_proto
    ]
    by_name = {f.name: f for f in files}
    assert "xhub/v1/registry.proto" in by_name
    (service,) = by_name["xhub/v1/registry.proto"].service
    assert {m.name for m in service.method} == {
        "GetMember",
        "ListMembers",
        "RotateSigningKey",
        "GetHubKeys",
    }


# -- signed round trips between levels -----------------------------------------------------

MEMBER_KEYS = ["issuer", "platform", "department", "auditor"]


@pytest.mark.parametrize("asker", MEMBER_KEYS)
def test_every_member_looks_up_every_member(shared_hub_kit: HubKit, asker: str) -> None:
    """Province ↔ municipal ↔ district, P-256 and Ed25519 signers, in both directions."""
    client = shared_hub_kit.client(asker)
    for target in MEMBER_KEYS:
        expected = shared_hub_kit.members[target]
        bundle = shared_hub_kit.bundle(target)
        member = client.get_member(expected.member_id)

        assert member.member_id == expected.member_id
        assert member.name == expected.spec.name
        assert member.uscc == expected.spec.uscc
        assert member.division_code == expected.division
        assert member.level == expected.level
        assert tuple(member.roles) == expected.roles
        assert member.subsystem == expected.spec.subsystem
        assert member.status == registry_pb2.MEMBER_STATUS_ACTIVE
        assert member.certificate_der == bundle.tls_cert.public_bytes(Encoding.DER)

        keys = {k.key_id: k for k in member.signing_keys}
        signing = keys[bundle.signer.key_id]
        assert signing.algorithm == expected.signing_algorithm
        # only the member's signing key: its TLS key is for mutual TLS, never for messages
        assert list(keys) == [bundle.signer.key_id]

        # the SDK verifies the certificate it got, offline, against the hub CA
        cert = client.verified_certificate(member)
        assert cert.public_key().public_bytes(Encoding.DER, SPKI) == (
            bundle.tls_cert.public_key().public_bytes(Encoding.DER, SPKI)
        )


def test_levels_follow_the_division_codes(shared_hub_kit: HubKit) -> None:
    client = shared_hub_kit.client("department")
    levels = {
        key: client.get_member(shared_hub_kit.member_id(key)).level
        for key in ("issuer", "platform", "department")
    }
    assert levels == {
        "issuer": registry_pb2.LEVEL_PROVINCE,
        "platform": registry_pb2.LEVEL_MUNICIPAL,
        "department": registry_pb2.LEVEL_DISTRICT,
    }


def test_verified_certificate_refuses_a_member_with_a_swapped_certificate(
    shared_hub_kit: HubKit,
) -> None:
    client = shared_hub_kit.client("platform")
    member = client.get_member(shared_hub_kit.member_id("issuer"))
    other = client.get_member(shared_hub_kit.member_id("auditor"))
    member.certificate_der = other.certificate_der
    with pytest.raises(BadResponseError):
        client.verified_certificate(member)
    member.certificate_der = b"not a certificate"
    with pytest.raises(BadResponseError):
        client.verified_certificate(member)


def test_response_is_signed_by_the_hub_and_answers_this_request(shared_hub_kit: HubKit) -> None:
    client = shared_hub_kit.client("department")
    payload = registry_pb2.MemberLookup(member_id=shared_hub_kit.member_id("platform"))
    envelope = client.transport.seal(payload)
    response = client.transport.registry.GetMember(
        registry_pb2.GetMemberRequest(envelope=envelope), timeout=5
    )
    answer = response.envelope
    assert answer.payload_type == "xhub.v1.MemberLookupResult"
    verify_signature_by(answer, client.bundle.hub_verifier)
    hub_verifier = client.bundle.hub_verifier
    hub_verifier.verify(answer.signatures[0].sig, pae(answer.payload_type, answer.payload))

    result = client.transport.open_response(
        answer, registry_pb2.MemberLookupResult, payload.header.message_id
    )
    assert result.header.sender == shared_hub_kit.hub_id
    assert result.header.recipient == client.member_id
    assert result.header.in_reply_to == payload.header.message_id
    assert result.member.member_id == shared_hub_kit.member_id("platform")

    # the SDK refuses a response that answers another request, or was altered
    with pytest.raises(BadResponseError):
        client.transport.open_response(answer, registry_pb2.MemberLookupResult, "another-request")
    tampered = registry_pb2.GetMemberResponse()
    tampered.CopyFrom(response)
    tampered.envelope.payload = answer.payload[:-1] + bytes([answer.payload[-1] ^ 1])
    with pytest.raises(BadResponseError):
        client.transport.open_response(
            tampered.envelope, registry_pb2.MemberLookupResult, payload.header.message_id
        )
    # ...and one meant for another member
    other = shared_hub_kit.client("platform")
    with pytest.raises(BadResponseError):
        other.transport.open_response(
            answer, registry_pb2.MemberLookupResult, payload.header.message_id
        )


ALL = ("issuer", "platform", "department", "auditor")


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({}, ALL),
        ({"level": registry_pb2.LEVEL_PROVINCE}, ("issuer", "auditor")),
        ({"level": registry_pb2.LEVEL_MUNICIPAL}, ("platform",)),
        ({"level": registry_pb2.LEVEL_DISTRICT}, ("department",)),
        ({"role": registry_pb2.ROLE_ISSUER}, ("issuer", "department")),
        ({"role": registry_pb2.ROLE_PLATFORM}, ("platform",)),
        ({"role": registry_pb2.ROLE_DEPARTMENT}, ("department",)),
        ({"role": registry_pb2.ROLE_AUDITOR}, ("auditor",)),
        ({"role": registry_pb2.ROLE_ADMIN}, ()),  # the hub itself is not a listed member
        ({"division_prefix": "44"}, ALL),
        ({"division_prefix": "4401"}, ("platform", "department")),
        ({"division_prefix": "440103"}, ("department",)),
        ({"division_prefix": "4400"}, ("issuer", "auditor")),
        ({"division_prefix": "45"}, ()),
        (
            {"level": registry_pb2.LEVEL_DISTRICT, "role": registry_pb2.ROLE_ISSUER},
            ("department",),
        ),
        (
            {"division_prefix": "4401", "role": registry_pb2.ROLE_PLATFORM},
            ("platform",),
        ),
    ],
    ids=lambda v: (
        (",".join(f"{k}={v[k]}" for k in v) or "no-filter")
        if isinstance(v, dict)
        else ("+".join(v) or "none")
    ),
)
@pytest.mark.parametrize("asker", ["platform", "department"])
def test_list_members_filters_and_pages(
    shared_hub_kit: HubKit, asker: str, filters: dict[str, object], expected: tuple[str, ...]
) -> None:
    client = shared_hub_kit.client(asker)
    want = sorted(shared_hub_kit.member_id(k) for k in expected)

    whole = [m.member_id for m in client.list_members(**filters)]  # type: ignore[arg-type]
    assert whole == want

    pages = _count_calls(client)
    paged = [m.member_id for m in client.list_members(page_size=1, **filters)]  # type: ignore[arg-type]
    assert paged == want
    assert pages() == max(len(want), 1), "page_size=1 must fetch one member per page"


def _count_calls(client: HubClient):  # type: ignore[no-untyped-def]
    calls = 0
    original = client.transport.registry.ListMembers

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        return original(*args, **kwargs)

    setattr(client.transport.registry, "ListMembers", counting)  # noqa: B010
    return lambda: calls


def test_list_page_carries_a_token_until_the_last_page(shared_hub_kit: HubKit) -> None:
    client = shared_hub_kit.client("auditor")
    token, seen = "", []
    for _ in range(10):
        page = client.transport.call(
            client.transport.registry.ListMembers,
            registry_pb2.ListMembersRequest,
            registry_pb2.MemberListQuery(page_size=3, page_token=token),
            registry_pb2.MemberListResult,
            idempotent=True,
        )
        seen.append([m.member_id for m in page.members])
        token = page.next_page_token
        if not token:
            break
    assert [len(p) for p in seen] == [3, 1]
    assert [m for page in seen for m in page] == sorted(shared_hub_kit.member_id(k) for k in ALL)


@pytest.mark.parametrize(
    ("query", "field"),
    [
        (registry_pb2.MemberListQuery(page_size=-1), "page_size"),
        (registry_pb2.MemberListQuery(division_prefix="44a"), "division_prefix"),
        (registry_pb2.MemberListQuery(page_token="CN.440100\x00"), "page_token"),
    ],
    ids=["negative-page-size", "non-digit-prefix", "nul-in-page-token"],
)
@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_list_members_refuses_bad_queries(
    request: pytest.FixtureRequest, backend: str, query: registry_pb2.MemberListQuery, field: str
) -> None:
    kit: HubKit = request.getfixturevalue(
        "shared_hub_kit" if backend == "sqlite" else "shared_hub_kit_pg"
    )
    client = kit.client("platform")
    with pytest.raises(grpc.RpcError) as caught:
        client.transport.registry.ListMembers(
            registry_pb2.ListMembersRequest(envelope=client.transport.seal(query)), timeout=5
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info_of(caught.value)  # type: ignore[arg-type]
    assert info is not None
    assert (info.reason, info.metadata["field"]) == ("INVALID_FIELD", field)


def test_round_trip_on_postgres(shared_hub_kit_pg: HubKit) -> None:
    district = shared_hub_kit_pg.client("department")
    province = shared_hub_kit_pg.client("issuer")
    assert province.get_member(shared_hub_kit_pg.member_id("department")).level == (
        registry_pb2.LEVEL_DISTRICT
    )
    assert (
        district.get_member(shared_hub_kit_pg.member_id("issuer")).level
        == registry_pb2.LEVEL_PROVINCE
    )
    listed = [m.member_id for m in district.list_members(division_prefix="4401", page_size=1)]
    assert listed == sorted(shared_hub_kit_pg.member_id(k) for k in ("platform", "department"))


# -- `xhub serve` as a real process --------------------------------------------------------


def test_xhub_serve_exits_cleanly_on_sigterm(tmp_path: Path) -> None:
    kit = HubKit(tmp_path)  # data directory and members only; the subprocess serves
    grace = 3.0
    metrics_port = free_port()
    env = {
        **os.environ,
        "XHUB_SHUTDOWN_GRACE_SECONDS": str(grace),
        "XHUB_DRAIN_SECONDS": "1",
        "XHUB_METRICS_LISTEN": f"127.0.0.1:{metrics_port}",
    }
    proc = subprocess.Popen(
        [str(XHUB), "serve", "--data-dir", str(kit.config.data_dir), "--listen", kit.address],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        with secure_channel(kit.bundle("platform"), address=kit.address) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            ready = stub.Check(health_pb2.HealthCheckRequest(), timeout=20, wait_for_ready=True)
            assert ready.status == SERVING
            # a real signed call against the subprocess
            client = HubClient(kit.bundle("platform"), channel=ch)
            assert client.get_member(kit.member_id("department")).level == (
                registry_pb2.LEVEL_DISTRICT
            )

            watch = stub.Watch(health_pb2.HealthCheckRequest(), timeout=20)
            assert next(watch).status == SERVING
            started = time.monotonic()
            readyz = f"http://127.0.0.1:{metrics_port}/readyz"
            with urllib.request.urlopen(readyz, timeout=5) as response:
                assert response.status == 200
            proc.send_signal(signal.SIGTERM)
            assert next(watch).status == NOT_SERVING
            watch.cancel()
            # The drain: not ready on the operations port too, while the process runs on.
            with pytest.raises(urllib.error.HTTPError) as not_ready:
                urllib.request.urlopen(readyz, timeout=5)
            assert not_ready.value.code == 503
        rc = proc.wait(timeout=grace + 5)
        elapsed = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        kit.close()
    output = proc.stdout.read().decode() if proc.stdout else ""
    assert rc == 0, output
    assert elapsed < grace + 5
    assert "stopped" in output
