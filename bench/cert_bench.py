"""Certificate pull rows: latency as the store grows, throughput against a bare echo.

The pull is the real path: signed request, admission, purpose binding against
the prepared case, index lookup, hub-signed response, audit entry, and the SDK
verifying the issuer's signature on every certificate it receives.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import grpc
from sqlalchemy import func, insert, select

from bench.echo_server import ECHO_METHOD, SIGNED_METHOD
from bench.harness import Row, measure, ratio_row
from bench.hubproc import process, setup, wait_echo
from xhub.certificates_store import store
from xhub.certificates_store.model import CITIZEN_ID, USCC, new_certificate, sign_certificate
from xhub.certificates_store.schema import CertificateRow
from xhub.connectors import HubClient
from xhub.connectors.sdk.client import secure_channel
from xhub.demo.process import free_port
from xhub.demo.region import DEMO_MEMBERS
from xhub.hub.catalog import store as catalog
from xhub.hub.core.db import make_engine, session_factory, table_of
from xhub.hub.setup import open_config
from xhub.protocol.bundle import MemberBundle
from xhub.protocol.codes import make_citizen_id, make_uscc
from xhub.v1 import intake_pb2

BUSINESS_LICENCE = "11100000000013338W001"
RESIDENT_ID = "11100000000013338W002"
ITEM = intake_pb2.Item(
    code="BENCH-ITEM",
    name="bench item",
    time_limit_days=10,
    materials=[
        intake_pb2.RequiredMaterial(
            code="M1", name="营业执照", certificate_types=[BUSINESS_LICENCE]
        ),
        intake_pb2.RequiredMaterial(
            code="M2",
            name="法定代表人身份证",
            certificate_types=[RESIDENT_ID],
            holder=intake_pb2.HOLDER_ROLE_LEGAL_REPRESENTATIVE,
        ),
    ],
)
certificates = table_of(CertificateRow)


def _filler_rows(start: int, count: int, template: bytes) -> Iterator[dict[str, object]]:
    now = datetime.now(UTC)
    for i in range(start, start + count):
        ident = f"1.2.156.3005.2.{BUSINESS_LICENCE}.FILLER.{i:010d}.001.0"
        yield {
            "identifier": ident,
            "base_identifier": ident[:-6],
            "type_code": BUSINESS_LICENCE,
            "type_name": "营业执照",
            "number": f"N{i:012d}",
            "version": 1,
            "issuer_code": "FILLER",
            "issuer_name": "filler",
            "issuer_member_id": "filler",
            "holder_code": f"H{i:017d}",
            "holder_code_type": 1,
            "valid_from": "2024-01-01",
            "valid_until": "",
            "status": 1,
            "raw_status_code": "01",
            "status_reason": "",
            "is_latest": 1,
            "predecessor": "",
            "file_sha256": None,
            "envelope": template,
            "published_at": now,
            "updated_at": now,
        }


def grow_store(url: str, size: int, template: bytes) -> None:
    """Fill the store with other holders' certificates up to ``size`` rows."""
    engine = make_engine(url)
    with engine.begin() as connection:
        current = connection.execute(select(func.count()).select_from(certificates)).scalar_one()
        chunk = 20_000
        while current < size:
            count = min(chunk, size - current)
            connection.execute(insert(certificates), list(_filler_rows(current, count, template)))
            current += count
    engine.dispose()


def _signed_floor(
    client: HubClient,
    stub: grpc.UnaryUnaryMultiCallable[
        intake_pb2.PullCertificatesRequest, intake_pb2.PullCertificatesResponse
    ],
    template: intake_pb2.CertificatePull,
    case_id: str,
) -> None:
    """The client half of a pull with nothing but its signatures: seal, send, verify the
    hub signature, verify each certificate's issuer signature."""
    request = intake_pb2.CertificatePull()
    request.CopyFrom(template)  # one message per call: threads must not share a header
    envelope = client.transport.seal(request, case_id=case_id, purpose="bench")
    answer = stub(intake_pb2.PullCertificatesRequest(envelope=envelope), timeout=10)
    result = client.transport.open_response(
        answer.envelope, intake_pb2.PulledCertificates, request.header.message_id
    )
    for pulled in result.certificates:
        client.verify_issuer_signature(pulled)


def _uscc(key: str) -> str:
    return next(member.uscc for member in DEMO_MEMBERS if member.key == key)


def bench_pull(root: Path, calls: int, store_sizes: list[int]) -> list[Row]:
    hub_port, echo_port = free_port(), free_port()
    bundles = setup(root, hub_port)
    config = open_config(root)
    market = MemberBundle.load(bundles["gz_market"])
    police = MemberBundle.load(bundles["gd_police"])
    company = make_uscc("9", "1", "440103", "MA5BENCH")
    person = make_citizen_id("440103", "19800101", "123")
    licence = new_certificate(
        type_code=BUSINESS_LICENCE,
        type_name="营业执照",
        issuer_code=_uscc("gz_market"),
        issuer_name=market.name,
        serial="BENCH0001",
        number="440103000000001",
        holder_name="广州市荔湾区某某餐饮有限公司",
        holder_code=company,
        holder_code_type=USCC,
        issue_date="2024-01-02",
        valid_from="2024-01-02",
    )
    resident = new_certificate(
        type_code=RESIDENT_ID,
        type_name="居民身份证",
        issuer_code=_uscc("gd_police"),
        issuer_name=police.name,
        serial="BENCHID01",
        number="ID0001",
        holder_name="张三",
        holder_code=person,
        holder_code_type=CITIZEN_ID,
        issue_date="2020-01-01",
        valid_from="2020-01-01",
        valid_until="2040-01-01",
    )
    engine = make_engine(config.effective_database_url)
    licence_envelope = sign_certificate(licence, market.signer)
    with session_factory(engine).begin() as session:
        catalog.put_items(session, [ITEM])
        store.publish(session, envelope=licence_envelope, issuer_member_id=market.member_id)
        store.publish(
            session,
            envelope=sign_certificate(resident, police.signer),
            issuer_member_id=police.member_id,
        )
    engine.dispose()
    template = licence_envelope.SerializeToString()
    rows: list[Row] = []
    with (
        process(["-m", "xhub.cli.main", "serve", "--data-dir", str(root)], root / "hub.log"),
        HubClient.from_bundle(bundles["lw_center"]) as client,
    ):
        client.wait_until_serving()
        checklist = client.prepare_case(
            ITEM.code, company, purpose="bench", legal_representative_code=person
        )
        pull = partial(
            client.pull_certificates,
            checklist.case_id,
            company,
            [BUSINESS_LICENCE],
            purpose="bench",
        )
        pull()
        # The echo carries exactly as many bytes as the signed pull and its answer.
        raw = intake_pb2.PullCertificatesRequest(
            envelope=client.transport.seal(
                intake_pb2.CertificatePull(holder_code=company, type_codes=[BUSINESS_LICENCE]),
                case_id=checklist.case_id,
                purpose="bench",
            )
        )
        request_size = len(raw.SerializeToString())
        response_size = len(
            client.transport.intake.PullCertificates(raw, timeout=10).SerializeToString()
        )
        answer_file = root / "pull-answer.bin"
        answer_file.write_bytes(
            intake_pb2.PulledCertificates(certificates=pull().certificates).SerializeToString()
        )
        with process(
            [
                "-m",
                "bench.echo_server",
                "--data-dir",
                str(root),
                "--port",
                str(echo_port),
                "--response-size",
                str(response_size),
                "--signed-template",
                str(answer_file),
            ],
            root / "echo.log",
        ):
            channel = secure_channel(client.bundle, address=f"127.0.0.1:{echo_port}")
            echo: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(ECHO_METHOD)
            wait_echo(echo)
            payload = os.urandom(request_size)
            bare = partial(echo, payload, timeout=10)
            floor = partial(
                _signed_floor,
                client,
                channel.unary_unary(
                    SIGNED_METHOD,
                    request_serializer=intake_pb2.PullCertificatesRequest.SerializeToString,
                    response_deserializer=intake_pb2.PullCertificatesResponse.FromString,
                ),
                intake_pb2.CertificatePull(holder_code=company, type_codes=[BUSINESS_LICENCE]),
                checklist.case_id,
            )
            for size in store_sizes:
                print(f"  growing the certificate store to {size} rows", flush=True)
                grow_store(config.effective_database_url, size, template)
                measure(pull, calls=100)
                measure(bare, calls=100)
                hub = measure(pull, calls=calls // 2)
                base = measure(bare, calls=calls // 2)
                label = f"1e{len(str(size)) - 1}" if str(size).strip("0") == "1" else str(size)
                rows.append(
                    ratio_row(f"pull_p50_latency_store_{label}", hub.p50_ms, "ms", base.p50_ms)
                )
                print(
                    f"  store {size}: pull p50 {hub.p50_ms:.2f} ms (echo {base.p50_ms:.2f})",
                    flush=True,
                )
            measure(floor, calls=100)
            hub = measure(pull, calls=calls, threads=4)
            base = measure(bare, calls=calls, threads=4)
            signed = measure(floor, calls=calls, threads=4)
            rows.append(
                ratio_row(
                    "pull_throughput_4threads",
                    hub.calls_per_second,
                    "calls/s",
                    base.calls_per_second,
                )
            )
            # The ceiling the required signatures alone leave, against the same bare echo,
            # and the pull against that ceiling: what admission, binding, the store and
            # the audit log cost on top of the cryptography.
            rows.append(
                ratio_row(
                    "signatures_only_floor_4threads",
                    signed.calls_per_second,
                    "calls/s",
                    base.calls_per_second,
                )
            )
            rows.append(
                ratio_row(
                    "pull_vs_signatures_only_4threads",
                    hub.calls_per_second,
                    "calls/s",
                    signed.calls_per_second,
                )
            )
            channel.close()
    return rows
