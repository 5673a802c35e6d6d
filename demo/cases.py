"""The case part of the demo: dispatch to departments, statuses through the connector, an outage."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from xhub.certificates_store.model import USCC, new_certificate
from xhub.connectors import HubClient
from xhub.demo.intake import COMPANY, FOOD_LICENCE, FoodCase
from xhub.demo.process import HubProcess, say
from xhub.demo.region import DEMO_MEMBERS
from xhub.hub.core.db import make_engine
from xhub.protocol.envelope import verify_signature_by
from xhub.v1 import case_pb2

if TYPE_CHECKING:
    from xhub.connectors.department.connector import DepartmentConnector

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

    from xhub.connectors.department.connector import DepartmentConnector

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
            "  checked end to end first (端到端核验): the applicant (code and type), the item, "
            "the prepared case, the form and every reference are the platform's own signed "
            f"submission ({len(result.unverified)} refused)"
        )
        opened = _open_floor_plan(connector, market, case_number)
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
    return opened and line.satisfied and line.certificate.identifier == licence.identifier


def _open_floor_plan(connector: DepartmentConnector, market: HubClient, case_number: str) -> bool:
    """部门调阅材料: the connector fetched the case's references into the department's own
    system; the department opens the floor plan the platform uploaded."""
    from xhub.connectors.department import attachments as fetch

    done = [a for a in connector.attachments.all() if a.case_number == case_number]
    fetched = [a for a in done if a.state == fetch.FETCHED]
    say(
        f"  the connector fetched the case's references into the department's own system "
        f"(部门调阅材料): {len(fetched)} of {len(done)} attachments, each verified end to end"
    )
    plan = next((a for a in fetched if "平面" in a.name), None)
    if plan is None:
        say("  the floor plan was not fetched")
        return False
    data = connector.attachments.file(plan).read_bytes()
    # Opened again through the SDK as the department (bound to this case, audited).
    again = connector.attachments.directory / ".demo-plan"
    descriptor = market.download_case_material(case_number, plan.ref, again)
    # download_case_material checked the bytes against the uploader's signed manifest.
    signed = descriptor.manifest.ByteSize() > 0
    same = again.read_bytes() == data and descriptor.material.sha256.hex() == plan.sha256
    again.unlink()
    matches = signed and same and hashlib.sha256(data).hexdigest() == plan.sha256
    verdict = "matches the platform's signed manifest ✓" if matches else "DIFFERS ✗"
    say(
        f"  the department opens {plan.name}: {len(data)} bytes, "
        f"SHA-256 {plan.sha256[:16]}… {verdict}"
    )
    return matches
