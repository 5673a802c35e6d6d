"""`make demo`: a hub on SQLite and a real end-to-end exchange in the demo region.

Creates a fresh data directory, registers the members of DOMAIN.md's demo
region, starts `xhub serve` as a real process, runs signed round trips between
province, municipal and district members, shows a tampered and a replayed
message being refused, stops the hub with SIGTERM and exits 0.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from xhub.v1 import case_pb2, certificate_pb2, intake_pb2, registry_pb2

from certificates_store.model import CITIZEN_ID, USCC, new_certificate
from connectors import HubClient, XhubError
from hub.codes import division_level, make_citizen_id, make_uscc
from hub.db import make_engine
from hub.demo_region import DEMO_MEMBERS, HUB_ID, HUB_NAME
from hub.envelope import verify_signature_by
from hub.errors import from_rpc_error
from hub.registry import validate_member
from hub.setup import add_member_with_bundle, init_data_dir, open_config
from hub.signing import ECDSA_P256, ED25519

LEVELS = {1: "省", 2: "市", 3: "区"}


def say(line: str = "") -> None:
    print(line, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class HubProcess:
    """`xhub serve` as a real process that the demo can stop and start again."""

    def __init__(self, data_dir: Path, port: int) -> None:
        self.data_dir = data_dir
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None

    def start(self) -> None:
        with open(self.data_dir / "hub.log", "ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "hub.cli",
                    "serve",
                    "--data-dir",
                    str(self.data_dir),
                    "--listen",
                    f"127.0.0.1:{self.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def stop(self) -> int:
        """SIGTERM: health NOT_SERVING, drain, exit."""
        process = self.process
        if process is None:
            return 0
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.process = None
        self.returncode = process.returncode
        return process.returncode

    @property
    def pid(self) -> int:
        return self.process.pid if self.process else 0


@contextmanager
def running_hub(data_dir: Path, port: int) -> Iterator[HubProcess]:
    hub = HubProcess(data_dir, port)
    hub.start()
    try:
        yield hub
    finally:
        hub.stop()


def refusal(exc: BaseException) -> str:
    typed = from_rpc_error(exc) if isinstance(exc, grpc.RpcError) else exc
    if isinstance(typed, XhubError):
        return f"{typed.code.name} {typed.reason_name}"
    return f"{type(exc).__name__}: {exc}"


def run(data_dir: Path) -> int:
    port = free_port()
    say(f"== xhub demo: {HUB_NAME}")
    init_data_dir(data_dir, hub_id=HUB_ID, hub_name=HUB_NAME, listen=f"127.0.0.1:{port}")
    say(f"hub {HUB_ID} initialised in {data_dir} (SQLite, CA and keys created)")
    bundles: dict[str, Path] = {}
    for member in DEMO_MEMBERS:
        spec = validate_member(
            name=member.name,
            uscc=member.uscc,
            division=member.division,
            roles=[member.roles],
            subsystem=member.subsystem,
        )
        algorithm = ED25519 if member.signing_alg == "ed25519" else ECDSA_P256
        added = add_member_with_bundle(open_config(data_dir), spec, signing_algorithm=algorithm)
        bundles[member.key] = added.bundle_dir
        say(
            f"  member {LEVELS[int(spec.level)]} {member.name:<14} {added.member_id}"
            f"  [{member.roles}; signs with {member.signing_alg}]"
        )

    with running_hub(data_dir, port) as hub:
        clients = {key: HubClient.from_bundle(path) for key, path in bundles.items()}
        try:
            clients["lw_center"].wait_until_serving(timeout=30)
            say(f"\nhub serving on 127.0.0.1:{port} over mutual TLS (pid {hub.pid})")
            say(
                "\n-- signed round trips between levels (request signed by the member, "
                "response signed by the hub, both verified)"
            )
            pairs = [
                ("lw_center", "gz_market"),  # district → municipal
                ("gz_market", "gd_police"),  # municipal → province
                ("gd_police", "lw_health"),  # province → district (Ed25519 member)
                ("lw_health", "lw_center"),  # Ed25519 signer asks
            ]
            for asker, target in pairs:
                client = clients[asker]
                target_id = clients[target].member_id
                found = client.get_member(target_id)
                client.verified_certificate(found)
                say(
                    f"  {_label(asker)} → hub → {_label(target)}: {found.name} "
                    f"(level {LEVELS[found.level]}, {len(found.signing_keys)} key(s), "
                    "certificate chains to hub CA ✓)"
                )
            district = list(clients["gd_police"].list_members(division_prefix="440103"))
            issuers = list(clients["lw_center"].list_members(role=registry_pb2.ROLE_ISSUER))
            say(
                f"  province lists Liwan district members: {len(district)}; "
                f"platform lists issuers: {len(issuers)}"
            )

            say("\n-- refusals")
            platform = clients["lw_center"]
            lookup = registry_pb2.MemberLookup(member_id=clients["gz_market"].member_id)
            tampered = platform.seal(lookup)
            tampered.payload = tampered.payload.replace(b"440100", b"440000", 1)
            try:
                platform.registry.GetMember(
                    registry_pb2.GetMemberRequest(envelope=tampered), timeout=5
                )
                say("  tampered message: ACCEPTED (this is a bug)")
                return 1
            except grpc.RpcError as exc:
                say(
                    f"  tampered message (one payload byte changed after signing): "
                    f"refused {refusal(exc)}"
                )
            original = platform.seal(lookup)
            platform.registry.GetMember(registry_pb2.GetMemberRequest(envelope=original), timeout=5)
            try:
                platform.registry.GetMember(
                    registry_pb2.GetMemberRequest(envelope=original), timeout=5
                )
                say("  replayed message: ACCEPTED (this is a bug)")
                return 1
            except grpc.RpcError as exc:
                say(
                    f"  replayed message (same envelope sent twice): first accepted, "
                    f"second refused {refusal(exc)}"
                )
            tally = Tally()
            food = FoodCase()
            if not intake_section(data_dir, clients, tally, food):
                return 1
            if not second_application(data_dir, clients, tally):
                return 1
            if not case_section(data_dir, clients, bundles, hub, food):
                return 1
            if not audit_section(data_dir, clients, bundles, port):
                return 1
        finally:
            for client in clients.values():
                client.close()
        say("\nstopping hub (SIGTERM: health NOT_SERVING, then drain)")
    code = hub.returncode
    say(f"hub exited with status {code}")
    if code != 0:
        say("demo FAILED: hub did not stop cleanly")
        return 1
    if not tamper_section(data_dir, port):
        return 1
    say("\ndemo complete ✓")
    return 0


def xhub(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hub.cli", *args], capture_output=True, text=True, check=False
    )


def show(result: subprocess.CompletedProcess[str], indent: str = "    ") -> None:
    for line in (result.stdout + result.stderr).rstrip().splitlines():
        say(indent + line)


CATALOG = Path(__file__).resolve().parent.parent / "catalog" / "demo-items.yaml"
BUSINESS_LICENCE = "11100000000013338W001"
RESIDENT_ID = "11100000000013338W002"
REAL_ESTATE_TITLE = "11100000000013338W003"
FOOD_LICENCE = "11100000000013338W004"
LEGAL_REP_ROLE = intake_pb2.HOLDER_ROLE_LEGAL_REPRESENTATIVE
COMPANY = make_uscc("9", "1", "440103", "MA5FD001")  # a synthetic restaurant company
LEGAL_REP = make_citizen_id("440103", "19850317", "051")  # synthetic, not a real person


@dataclass
class Tally:
    """What the applicant did not have to hand over again, across applications."""

    required: int = 0
    brought: int = 0
    fields: int = 0  # certificate fields (照面信息) nobody had to type in

    def count(
        self, checklist: intake_pb2.Checklist, pulled: list[certificate_pb2.PulledCertificate]
    ) -> None:
        self.required += len(checklist.lines)
        self.brought += sum(1 for line in checklist.lines if not line.satisfied)
        for copy in pulled:
            cert = certificate_pb2.ElectronicCertificate()
            cert.ParseFromString(copy.certificate.payload)
            self.fields += len(cert.ListFields()) + len(cert.extensions)


@dataclass
class FoodCase:
    """The prepared food-business case and what it used, by reference."""

    case_id: str = ""
    purpose: str = ""
    certificates: list[str] = field(default_factory=list)
    materials: list[str] = field(default_factory=list)


def intake_section(
    data_dir: Path, clients: dict[str, HubClient], tally: Tally, food: FoodCase
) -> str:
    """The food-business case; returns its case id ("" on failure)."""
    say("\n-- one-window intake (一窗受理) at 荔湾区政务服务中心")
    say("  $ xhub catalog load catalog/demo-items.yaml")
    result = xhub("catalog", "load", str(CATALOG), "--data-dir", str(data_dir))
    show(result)
    if result.returncode != 0:
        return ""
    issued = [
        (
            "gz_market",
            BUSINESS_LICENCE,
            "营业执照",
            "BL2024000317",
            "440103000317001",
            "广州市荔湾区粤味餐饮有限公司",
            COMPANY,
            USCC,
            "",
        ),
        (
            "gd_police",
            RESIDENT_ID,
            "居民身份证",
            "ID440103017",
            "440103198503170511",
            "陈某某",
            LEGAL_REP,
            CITIZEN_ID,
            "2035-03-17",
        ),
        (
            "gz_land",
            REAL_ESTATE_TITLE,
            "不动产权证书",
            "RE2023000881",
            "粤(2023)广州市不动产权第0088100号",
            "广州市荔湾区粤味餐饮有限公司",
            COMPANY,
            USCC,
            "",
        ),
    ]
    for key, type_code, type_name, serial, number, holder, code, code_type, until in issued:
        client = clients[key]
        issuer = next(m for m in DEMO_MEMBERS if m.key == key)
        cert = new_certificate(
            type_code=type_code,
            type_name=type_name,
            issuer_code=issuer.uscc,
            issuer_name=issuer.name,
            serial=serial,
            number=number,
            holder_name=holder,
            holder_code=code,
            holder_code_type=code_type,
            issue_date="2023-06-01",
            valid_from="2023-06-01",
            valid_until=until,
            division_code=issuer.division,
        )
        client.publish_certificate(cert)
        say(f"  {issuer.name} publishes {type_name}: {cert.identifier}")
    platform = clients["lw_center"]
    checklist = platform.prepare_case(
        "FOOD-BIZ-NEW",
        COMPANY,
        purpose="食品经营许可(新办)受理",
        legal_representative_code=LEGAL_REP,
    )
    say(f"\n  checklist (一次性告知) for {checklist.item.name}, case {checklist.case_id}:")
    for line in checklist.lines:
        mark = "✓ from library" if line.satisfied else "✗ applicant brings"
        detail = ""
        if line.satisfied:
            ref = line.certificate
            until = ref.valid_until or "长期"
            detail = f" — {ref.type_name} by {ref.issuer_name}, valid {ref.valid_from}–{until}"
        say(f"    {mark:<18} {line.material.name}{detail}")
    purpose = "食品经营许可(新办)受理"
    pulled = platform.pull_certificates(
        checklist.case_id, COMPANY, [BUSINESS_LICENCE, REAL_ESTATE_TITLE], purpose=purpose
    ) + platform.pull_certificates(checklist.case_id, LEGAL_REP, [RESIDENT_ID], purpose=purpose)
    say(
        f"  platform pulls {len(pulled)} certificates once, each verified against its issuer's "
        f"key (use copy bound to case {checklist.case_id})"
    )
    try:
        platform.pull_certificates(checklist.case_id, COMPANY, [FOOD_LICENCE], purpose=purpose)
        say("  pull of an unneeded type: ACCEPTED (this is a bug)")
        return ""
    except XhubError as exc:
        say(
            f"  pull of a type the item does not need (食品经营许可证): refused "
            f"{exc.code.name} {exc.reason_name} (logged)"
        )
    brought = sum(1 for line in checklist.lines if not line.satisfied)
    say(
        f"  the applicant hands over {brought} of {len(checklist.lines)} materials; "
        f"{len(checklist.lines) - brought} come from the library"
    )
    tally.count(checklist, pulled)
    # The two materials handed over go into the material library, once.
    for material_type, name in (
        ("FOOD_SAFETY_RULES", "食品安全管理制度.pdf"),
        ("FLOOR_PLAN", "经营场所平面布局图及操作流程.pdf"),
    ):
        path = data_dir / name
        path.write_bytes(f"%PDF-1.7 demo {name}\n".encode() * 2000)
        receipt = platform.upload_material(
            path,
            material_type=material_type,
            applicant_code=COMPANY,
            media_type="application/pdf",
            source_case=checklist.case_id,
            valid_until="2027-12-31",
        )
        say(
            f"  uploaded {name} ({receipt.material.size} bytes, SHA-256 "
            f"{receipt.material.sha256.hex()[:12]}…) to the material library (材料库)"
        )
        food.materials.append(receipt.material.material_id)
    food.case_id, food.purpose = checklist.case_id, purpose
    food.certificates = [line.certificate.identifier for line in checklist.lines if line.satisfied]
    return checklist.case_id


def second_application(data_dir: Path, clients: dict[str, HubClient], tally: Tally) -> bool:
    say("\n-- the same company applies for 公共场所卫生许可 (second application)")
    platform = clients["lw_center"]
    purpose = "公共场所卫生许可受理"
    checklist = platform.prepare_case(
        "PUBLIC-HYGIENE", COMPANY, purpose=purpose, legal_representative_code=LEGAL_REP
    )
    pulled: list[certificate_pb2.PulledCertificate] = []
    for line in checklist.lines:
        if line.satisfied and line.HasField("earlier_material"):
            earlier = line.earlier_material
            target = data_dir / f"reused-{earlier.material_id}.pdf"
            platform.download_material(
                checklist.case_id, earlier.material_id, target, purpose=purpose
            )
            say(
                f"    ✓ reused material  {line.material.name} — from case {earlier.source_case}"
                f" (downloaded, hash verified)"
            )
        elif line.satisfied:
            holder = LEGAL_REP if line.material.holder == LEGAL_REP_ROLE else COMPANY
            pulled += platform.pull_certificates(
                checklist.case_id, holder, [line.certificate.type_code], purpose=purpose
            )
            say(f"    ✓ from library     {line.material.name} — {line.certificate.type_name}")
        else:
            say(f"    ✗ applicant brings {line.material.name}")
    tally.count(checklist, pulled)
    saved = tally.required - tally.brought
    say(
        f"\n  across both applications: {tally.required} materials required, the applicant "
        f"handed over {tally.brought}; {saved} ({saved / tally.required:.0%}) were not asked "
        f"for again, and {tally.fields} certificate fields were not typed in by anyone"
    )
    return tally.brought < tally.required


DEPARTMENT_CONFIG = """\
[hub]
bundle = "{bundle}"
address = "127.0.0.1:{port}"
retry_initial_seconds = 0.2
retry_max_seconds = 1
once_attempts = 10
subscribe_seconds = 1

[department]
url = "sqlite:///{database}"
status_table = "approval_log"
key_column = "id"
case_column = "case_no"
status_column = "status_code"
updated_at_column = "updated_at"
note_column = "opinion"
certificate_column = "licence_id"

[status_codes]
"01" = "受理"
"02" = "审核"
"03" = "审批通过"
"04" = "办结"
"05" = "出件"

[state]
path = "{state}"
"""
FOOD_LICENCE_NAME = "食品经营许可证"


def case_section(
    data_dir: Path,
    clients: dict[str, HubClient],
    bundles: dict[str, Path],
    hub: HubProcess,
    food: FoodCase,
) -> bool:
    from sqlalchemy import text  # the department's own system, as plain SQL

    from connectors.department import DepartmentConnector

    say("\n-- submit once, dispatch, status back (办件派发与状态回传)")
    platform, market = clients["lw_center"], clients["lw_market"]
    receipt = platform.submit_case(
        food.case_id,
        purpose=food.purpose,
        certificate_identifiers=food.certificates,
        material_ids=food.materials,
        applicant_name="广州市荔湾区粤味餐饮有限公司",
        form={"经营项目": "热食类食品制售", "经营场所": "荔湾区多宝路1号"},
    )
    case_number = receipt.case_number
    say(
        f"  platform submits case {case_number} once; the hub dispatches it to "
        f"{market.bundle.name} (references to {len(food.certificates)} certificates and "
        f"{len(food.materials)} materials, no copies)"
    )
    database = data_dir / "lw_market_approval.db"
    engine = make_engine(f"sqlite:///{database}")
    with engine.begin() as db:
        db.execute(
            text(
                "CREATE TABLE approval_log (id INTEGER PRIMARY KEY, case_no TEXT, status_code TEXT,"
                " updated_at TEXT, opinion TEXT, licence_id TEXT)"
            )
        )
    config = data_dir / "lw_market_connector.toml"
    config.write_text(
        DEPARTMENT_CONFIG.format(
            bundle=bundles["lw_market"],
            port=hub.port,
            database=database,
            state=data_dir / "lw_market_connector.sqlite",
        ),
        "utf-8",
    )
    steps = iter(range(1, 100))

    def department_records(code: str, opinion: str, licence: str = "") -> None:
        with engine.begin() as db:
            db.execute(
                text(
                    "INSERT INTO approval_log (case_no, status_code, updated_at, opinion, "
                    "licence_id) VALUES (:c, :s, :u, :o, :l)"
                ),
                {
                    "c": case_number,
                    "s": code,
                    "u": f"2026-11-23T10:00:{next(steps):02d}",
                    "o": opinion,
                    "l": licence,
                },
            )

    with DepartmentConnector.from_file(config) as connector:
        result = connector.run_once()
        with engine.connect() as db:
            row = db.execute(text("SELECT case_number, applicant_name, item_name FROM xhub_inbox"))
            inbox = row.first()
        case_no, applicant, item_name = inbox if inbox else ("—", "", "")
        say(
            f"  connector (前置机) wrote {result.received} case into the department's own inbox "
            f"table: {case_no} {item_name} for {applicant}"
        )
        say(
            "  checked end to end first (端到端核验): applicant, form and every reference are "
            f"the platform's own signed submission ({len(result.unverified)} refused)"
        )
        department_records("01", "材料齐全，予以受理")
        department_records("02", "现场核查")
        result = connector.run_once()
        say(f"  the department records 受理 and 审核 in its own system → {result.sent} pushes sent")
        say("\n  hub stopped (maintenance window); the department keeps working:")
        hub.stop()
        department_records("03", "准予许可")
        result = connector.run_once()
        say(
            f"    records 审批通过 → hub unreachable, {result.pending} push waits in the "
            f"durable outbox"
        )
        hub.start()
        platform.wait_until_serving(timeout=30)
        say("  hub restarted (start-up integrity check passed)")
        result = connector.run_once()
        say(f"  connector delivers the waiting push: {result.sent} sent, {result.pending} pending")
        issuer = next(m for m in DEMO_MEMBERS if m.key == "lw_market")
        licence = new_certificate(
            type_code=FOOD_LICENCE,
            type_name=FOOD_LICENCE_NAME,
            issuer_code=issuer.uscc,
            issuer_name=issuer.name,
            serial="JY24401030017",
            number="JY24401030017",
            holder_name="广州市荔湾区粤味餐饮有限公司",
            holder_code=COMPANY,
            holder_code_type=USCC,
            issue_date="2026-11-23",
            valid_from="2026-11-23",
            valid_until="2031-11-22",
            division_code=issuer.division,
        )
        market.publish_certificate(licence)
        department_records("04", "办结，核发食品经营许可证", licence.identifier)
        department_records("05", "已送达")
        result = connector.run_once()
        say(
            f"  department issues {FOOD_LICENCE_NAME} {licence.identifier}, records 办结 and 出件 "
            f"→ {result.sent} pushes sent"
        )
    engine.dispose()
    events = [e for e in platform.subscribe_status(0, timeout=3) if e.case_number == case_number]
    say("\n  the platform's status stream for the case:")
    for event in events:
        verify_signature_by(event.origin, market.bundle.signer.verifier())
        stage = case_pb2.CaseStage.Name(event.stage).removeprefix("CASE_STAGE_")
        overall = case_pb2.CaseStage.Name(event.overall).removeprefix("CASE_STAGE_")
        extra = f" licence {event.certificate_identifier}" if event.certificate_identifier else ""
        say(
            f"    #{event.cursor:<3} {stage:<13} overall {overall:<13} (department's own "
            f"signature verified){extra}"
        )
    ids = [e.event_id for e in events]
    if len(ids) != 5 or len(set(ids)) != 5:
        say(f"  expected 5 distinct events, got {len(ids)} ({len(set(ids))} distinct)")
        return False
    say("  every status arrived exactly once, across the outage")
    checklist = platform.prepare_case("FOOD-BIZ-CHANGE", COMPANY, purpose="食品经营许可(变更)受理")
    line = next(ln for ln in checklist.lines if ln.material.code == "FOOD_LICENCE")
    say(
        f"\n  a later application ({checklist.item.name}): {line.material.name} → "
        f"{'✓ from library: ' + line.certificate.identifier if line.satisfied else '✗ bring'}"
    )
    return line.satisfied and line.certificate.identifier == licence.identifier


def audit_section(
    data_dir: Path, clients: dict[str, HubClient], bundles: dict[str, Path], port: int
) -> bool:
    say(
        "\n-- audit log (审计): every call above, allowed or refused, is a leaf of an RFC 9162 tree"
    )
    platform = clients["lw_center"]
    platform.get_member(clients["gz_market"].member_id)
    receipt = platform.last_receipt
    assert receipt is not None
    first = platform.checkpoint()
    checkpoint, index = platform.prove_logged(receipt)
    say(
        f"  platform's receipt for its last lookup: leaf {receipt.leaf_hash.hex()[:16]}…, "
        f"proven at index {index} of signed checkpoint size {checkpoint.size} ✓"
    )
    platform.prove_consistent(first, checkpoint)
    say(f"  checkpoint {first.size} → {checkpoint.size} proven append-only (consistency proof) ✓")
    try:
        next(platform.query_audit())
        say("  non-auditor query: ACCEPTED (this is a bug)")
        return False
    except XhubError as exc:
        say(
            f"  platform tries to query the log: refused {exc.code.name} {exc.reason_name} (logged)"
        )
    hub = f"127.0.0.1:{port}"
    auditor = str(bundles["lw_audit"])
    platform_id = platform.member_id
    say(f"\n  $ xhub audit query --bundle <效能监察> --member {platform_id}")
    result = xhub("audit", "query", "--bundle", auditor, "--hub", hub, "--member", platform_id)
    show(result)
    if result.returncode != 0:
        return False
    evidence = data_dir / "evidence.json"
    say("\n  $ xhub audit export --bundle <效能监察> --out evidence.json")
    result = xhub("audit", "export", "--bundle", auditor, "--hub", hub, "--out", str(evidence))
    show(result)
    if result.returncode != 0:
        return False
    log_key = xhub("audit", "log-key", "--data-dir", str(data_dir)).stdout.strip()
    say("\n  $ xhub audit verify evidence.json --log-key <log key>")
    result = xhub("audit", "verify", str(evidence), "--log-key", log_key)
    show(result)
    if result.returncode != 0:
        return False
    tampered = data_dir / "evidence-tampered.json"
    document = json.loads(evidence.read_text("utf-8"))
    victim = document["entries"][len(document["entries"]) // 2]
    entry = bytearray(base64.b64decode(victim["entry"]))
    entry[-3] ^= 0x01
    victim["entry"] = base64.b64encode(bytes(entry)).decode()
    tampered.write_text(json.dumps(document), "utf-8")
    say(f"\n  one bit of entry #{victim['leaf_index']} flipped in a copy of the bundle:")
    say("  $ xhub audit verify evidence-tampered.json --log-key <log key>")
    result = xhub("audit", "verify", str(tampered), "--log-key", log_key)
    show(result)
    return result.returncode == 1


def tamper_section(data_dir: Path, port: int) -> bool:
    say("\n-- someone with write access edits one audit row in the hub database")
    result = xhub("audit", "check", "--data-dir", str(data_dir))
    show(result, "  before: ")
    with sqlite3.connect(data_dir / "xhub.db") as db:
        db.execute(
            "UPDATE audit_entries SET entry = CAST(entry || x'00' AS BLOB) WHERE leaf_index = "
            "(SELECT MAX(leaf_index) / 2 FROM audit_entries)"
        )
    result = xhub("serve", "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{port}")
    say(f"  $ xhub serve → exit status {result.returncode}")
    for line in result.stderr.strip().splitlines()[-1:]:
        say("    " + line[:300])
    return result.returncode == 4


def _label(key: str) -> str:
    member = next(m for m in DEMO_MEMBERS if m.key == key)
    return f"{member.name}({LEVELS[int(division_level(member.division))]})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--data-dir", type=Path, help="keep the demo hub here (default: a temp dir)"
    )
    args = parser.parse_args()
    if args.data_dir:
        if args.data_dir.exists():
            shutil.rmtree(args.data_dir)
        return run(args.data_dir)
    with tempfile.TemporaryDirectory(prefix="xhub-demo-") as tmp:
        return run(Path(tmp) / "hub")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
