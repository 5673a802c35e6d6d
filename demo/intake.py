"""The intake part of the demo: certificates pulled once, materials uploaded once and reused."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from xhub.certificates_store.model import CITIZEN_ID, USCC, new_certificate
from xhub.connectors import HubClient, XhubError
from xhub.demo.process import say, show, xhub
from xhub.demo.region import DEMO_MEMBERS
from xhub.protocol.codes import make_citizen_id, make_uscc
from xhub.v1 import certificate_pb2, intake_pb2

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
    pulled = [
        *platform.pull_certificates(
            checklist.case_id, COMPANY, [BUSINESS_LICENCE, REAL_ESTATE_TITLE], purpose=purpose
        ).certificates,
        *platform.pull_certificates(
            checklist.case_id, LEGAL_REP, [RESIDENT_ID], purpose=purpose
        ).certificates,
    ]
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
            ).certificates
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
