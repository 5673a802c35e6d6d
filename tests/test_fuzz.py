"""A bounded fuzz test of the hub's front door (issue 12), over mTLS to a real hub.

The SDK first calls every RPC of the contract once (``fuzz_world.play_story``: each call is
accepted, and its exact request recorded). Then, for every method, ``PER_METHOD`` seeded
mutations of that request (``fuzz_mutations``: raw bytes, envelope fields, re-signed header
fields, other members' keys, other methods' payloads) go to the same hub over the sender's
own connection. Every one must be refused — only the byte-identical request was ever valid,
and it was accepted once already — with a refusal status carrying ErrorInfo (domain
``xhub.v1``) and the reason the mutation calls for, a short text and no internals. At the
end the hub still serves and its audit log is whole (every refusal logged, the Merkle tree
recomputed from the stored entries matches the signed checkpoint).

Deterministic (one seed per method) and bounded: ``XHUB_FUZZ_PER_METHOD`` (default 300;
22 methods, about 30 s) sets the count, e.g. ``XHUB_FUZZ_PER_METHOD=3000`` for a deep run,
and ``XHUB_FUZZ_BACKEND=postgres`` runs it against a hub on PostgreSQL instead of SQLite.
"""

from __future__ import annotations

import dataclasses
import os
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta

import grpc
import pytest
from audit_world import wait_all_sequenced
from fuzz_mutations import Base, Envelope, Mutation, World, mutations
from fuzz_world import (
    Method,
    Recorded,
    Tally,
    contract_methods,
    judge,
    play_story,
    send_raw,
    summary,
)
from hubkit import HubKit
from rejections_world import sealed_lookup

from xhub.connectors.sdk.client import secure_channel
from xhub.protocol.signing import ECDSA_P256, KeySigner, generate_private_key

PER_METHOD = int(os.environ.get("XHUB_FUZZ_PER_METHOD", "300"))
IN_FLIGHT = 8
TIMEOUT = 10.0
METHODS = contract_methods()

# Requests bound to their prepared case: another case id or purpose must be refused.
BOUND = frozenset(
    {
        "/xhub.v1.IntakeService/PullCertificates",
        "/xhub.v1.MaterialService/FindMaterials",
        "/xhub.v1.MaterialService/Download",
        "/xhub.v1.CaseService/SubmitCase",
    }
)
# A unary call records its message id with its effect, at the end of its transaction, so a
# write whose own rule refuses a repeat answers that refusal before the replay check.
REPLAY: dict[str, frozenset[str]] = {
    "/xhub.v1.CertificateService/ChangeCertificateStatus": frozenset(
        {"REPLAYED_MESSAGE", "STATUS_TRANSITION"}  # revoked already
    ),
    "/xhub.v1.RegistryService/RotateSigningKey": frozenset(
        {"REPLAYED_MESSAGE", "UNKNOWN_KEY"}  # its key is no longer the current one
    ),
    "/xhub.v1.CaseService/SubmitCase": frozenset(
        {"REPLAYED_MESSAGE", "STATUS_TRANSITION"}  # this prepared case was already submitted
    ),
}


@dataclass
class Fuzz:
    kit: HubKit
    world: World
    recorded: dict[str, Recorded]
    channels: dict[str, grpc.Channel]
    entries_before: int
    tally: Tally = field(default_factory=Tally)


@pytest.fixture(scope="module")
def fuzz(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fuzz]:
    postgres = os.environ.get("XHUB_FUZZ_BACKEND", "sqlite") == "postgres"
    database_url = request.getfixturevalue("pg_server").create_database() if postgres else ""
    # Its own hub, auditing every refusal (no per-sender budget): the fuzz checks that each
    # one is recorded and that the log stays whole under thousands of them.
    kit = HubKit(tmp_path_factory.mktemp("fuzz-hub"), database_url=database_url)
    # The story's rotation leaves the old key valid for a while, so the mutations of the
    # recorded rotation (signed by it) still reach the checks they aim at.
    kit.config = dataclasses.replace(kit.config, key_rotation_overlap_seconds=3600)
    kit.start()
    request.addfinalizer(kit.close)
    recorded = play_story(kit, tmp_path_factory.mktemp("fuzz-files"))
    by_path = {method.path: method for method in METHODS}
    world = World(
        hub_id=kit.hub_id,
        member_ids={key: kit.member_id(key) for key in kit.members},
        signers={key: kit.bundle(key).signer for key in kit.members},
        stranger=KeySigner(generate_private_key(ECDSA_P256)),
        envelopes={
            path: by_path[path].envelope_of(call.messages[0]) for path, call in recorded.items()
        },
        clock_skew=timedelta(seconds=kit.config.clock_skew_seconds),
    )
    channels = {key: secure_channel(kit.bundle(key)) for key in kit.members}
    try:
        yield Fuzz(kit, world, recorded, channels, entries_before=wait_all_sequenced(kit))
    finally:
        for channel in channels.values():
            channel.close()


def test_the_story_calls_every_method_of_the_contract(fuzz: Fuzz) -> None:
    assert sorted(fuzz.recorded) == sorted(method.path for method in METHODS)


@pytest.mark.parametrize("method", METHODS, ids=lambda method: method.name)
def test_mutations_are_refused_with_a_clear_status(fuzz: Fuzz, method: Method) -> None:
    call = fuzz.recorded[method.path]
    base = Base(
        method,
        call.member,
        tuple(call.messages),
        fuzz.world,
        replay=REPLAY.get(method.path, frozenset({"REPLAYED_MESSAGE"})),
        bound=method.path in BOUND,
    )
    batch = mutations(base, seed=zlib.crc32(method.path.encode()), count=PER_METHOD)
    channel = fuzz.channels[call.member]

    def send(mutation: Mutation) -> grpc.Call | None:
        return send_raw(channel, method, mutation.messages, TIMEOUT)

    with ThreadPoolExecutor(max_workers=IN_FLIGHT) as pool:
        answers = list(pool.map(send, batch))
    secrets = (str(fuzz.kit.root),)
    tally = Tally(sent=len(batch), undecodable=sum(m.undecodable for m in batch))
    for mutation, answer in zip(batch, answers, strict=True):
        problem = judge(answer, mutation.expect, secrets)
        if problem:
            tally.failures.append(f"{method.name} {mutation.kind}: {problem}")
    fuzz.tally.add(tally)
    assert not tally.failures, summary(tally.failures)


def test_the_hub_serves_and_its_audit_log_is_whole_after_the_fuzz(fuzz: Fuzz) -> None:
    kit = fuzz.kit
    platform = kit.client("platform")
    assert platform.health() == "SERVING"
    assert platform.get_member(kit.member_id("issuer")).member_id == kit.member_id("issuer")
    total = wait_all_sequenced(kit)
    assert kit.running is not None
    size, _ = kit.running.runtime.audit.check_integrity()
    assert size == total
    # Every refusal is logged, undecodable bytes included.
    assert total - fuzz.entries_before >= fuzz.tally.sent


# -- the holes the fuzz found, one test each -------------------------------------------------


def test_a_huge_payload_type_is_refused_without_being_echoed_back(fuzz: Fuzz) -> None:
    """It was quoted whole in the refusal's text: past 16 KiB of trailers gRPC dropped the
    status, and the caller got RESOURCE_EXHAUSTED "Stream removed" without ErrorInfo."""
    method = next(m for m in METHODS if m.name == "GetMember")
    envelope = Envelope()
    envelope.CopyFrom(fuzz.world.envelopes[method.path])
    envelope.payload_type += "x" * 20_000
    answer = send_raw(fuzz.channels["platform"], method, [method.wrap(envelope)], TIMEOUT)
    assert judge(answer, frozenset({"WRONG_PAYLOAD_TYPE"})) == ""


@pytest.mark.parametrize(
    "method",
    [m for m in METHODS if m.path.startswith("/xhub.v1.AuditService/")],
    ids=lambda method: method.name,
)
def test_undecodable_bytes_to_the_audit_service_are_malformed_envelopes(
    fuzz: Fuzz, method: Method
) -> None:
    answer = send_raw(fuzz.channels["auditor"], method, [b"\xff\xff garbage"], TIMEOUT)
    assert judge(answer, frozenset({"MALFORMED_ENVELOPE"})) == ""


@pytest.mark.postgres
def test_a_nul_in_a_key_id_is_refused_on_postgresql(shared_hub_kit_pg: HubKit) -> None:
    kit = shared_hub_kit_pg
    method = next(m for m in METHODS if m.name == "GetMember")
    envelope = sealed_lookup(kit.client("platform"), kit.member_id("issuer"))
    envelope.signatures[0].key_id = "\x00" + envelope.signatures[0].key_id[1:]
    with secure_channel(kit.bundle("platform")) as channel:
        answer = send_raw(channel, method, [method.wrap(envelope)], TIMEOUT)
    assert judge(answer, frozenset({"UNKNOWN_KEY", "MALFORMED_ENVELOPE"})) == ""
