"""The material library's test world (DESIGN.md §5 Material, §6 flows 2–3): the item, the
upload and audit helpers, and one module-wide library per test module (``library``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from hubkit import HubKit, MemberDef
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from xhub.connectors import HubClient, XhubError
from xhub.hub.catalog import store as catalog
from xhub.hub.core.db import BlobIntentRow, MaterialRow, session_factory
from xhub.hub.materials.blobstore import CHUNK, LocalBlobStore
from xhub.protocol.codes import make_citizen_id, make_uscc
from xhub.protocol.errors import from_rpc_error
from xhub.protocol.log import merkle
from xhub.v1 import audit_pb2, certificate_pb2, intake_pb2, material_pb2

Code = grpc.StatusCode
USCC = certificate_pb2.HOLDER_CODE_TYPE_USCC
CITIZEN_ID = certificate_pb2.HOLDER_CODE_TYPE_CITIZEN_ID
LEGAL_REP = intake_pb2.HOLDER_ROLE_LEGAL_REPRESENTATIVE
DENIED = audit_pb2.AUDIT_DECISION_DENIED
ALLOWED = audit_pb2.AUDIT_DECISION_ALLOWED
UPLOAD = "/xhub.v1.MaterialService/Upload"
FIND = "/xhub.v1.MaterialService/FindMaterials"
DOWNLOAD = "/xhub.v1.MaterialService/Download"

TITLE_TYPE = make_uscc("1", "1", "100000", "MB0A0005") + "009"  # 不动产权证书
ID_TYPE = make_uscc("1", "1", "100000", "MB0A0002") + "111"  # 居民身份证
COMPANY = make_uscc("9", "1", "440103", "MA5CQ8XY")
OTHER_COMPANY = make_uscc("9", "1", "440103", "MA5CQ9AB")
PERSON = make_citizen_id("440103", "19800101", "123")  # synthetic
PURPOSE = "食品经营许可(新办)受理"
ITEM_CODE = "11440103MB0A0007XY-FOOD-MATERIALS"
PLAN, LEASE, RULES, ID_COPY, HYGIENE = (
    "FLOOR_PLAN",
    "LEASE_CONTRACT",
    "FOOD_SAFETY_RULES",
    "ID_COPY",
    "HYGIENE_REPORT",  # never required by the item
)
PLAN_LINE, LEASE_LINE, RULES_LINE, ID_LINE = range(4)

ITEM = intake_pb2.Item(
    code=ITEM_CODE,
    name="食品经营许可(新办)",
    time_limit_days=10,
    materials=[
        intake_pb2.RequiredMaterial(code="M01", name="经营场所平面布局图", material_types=[PLAN]),
        intake_pb2.RequiredMaterial(
            code="M02", name="经营场所证明", certificate_types=[TITLE_TYPE], material_types=[LEASE]
        ),
        intake_pb2.RequiredMaterial(code="M03", name="食品安全管理制度", material_types=[RULES]),
        intake_pb2.RequiredMaterial(
            code="M04",
            name="法定代表人身份证明",
            certificate_types=[ID_TYPE],
            material_types=[ID_COPY],
            holder=LEGAL_REP,
        ),
    ],
)

PLATFORM2 = MemberDef(
    "platform2", "广州市荔湾区政务服务中心", "440103", ("platform",), "MB2C9074", "onewindow"
)


def today() -> str:
    return datetime.now(UTC).date().isoformat()


def days_from_now(days: int) -> str:
    return (datetime.now(UTC).date() + timedelta(days=days)).isoformat()


FUTURE = days_from_now(365)

_applicants = itertools.count(1)


def fresh_applicant() -> str:
    """A valid USCC nobody else in the module uses (the shared hub keeps every material)."""
    return make_uscc("9", "1", "440103", f"MA6D{next(_applicants):04d}")


def content(label: str, size: int = 3000) -> bytes:
    """Deterministic, distinct content of ``size`` bytes."""
    seed = hashlib.sha256(label.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture(name="kit")
def kit_fixture(kit: HubKit) -> HubKit:
    """The fresh hub of each backend (tests/conftest.py ``kit``), with the item loaded."""
    load_item(kit)
    return kit


def load_item(kit: HubKit, item: intake_pb2.Item = ITEM) -> None:
    with kit.session() as session:
        copy = intake_pb2.Item()
        copy.CopyFrom(item)
        copy.departments.append(kit.member_id("department"))
        catalog.put_items(session, [copy])


def upload(
    client: HubClient, folder: Path, data: bytes, **fields: Any
) -> material_pb2.MaterialReceipt:
    """Upload ``data`` through the SDK (a file, hashed and streamed in chunks)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{uuid.uuid4().hex[:8]}.pdf"
    path.write_bytes(data)
    fields.setdefault("material_type", PLAN)
    fields.setdefault("applicant_code", COMPANY)
    fields.setdefault("media_type", "application/pdf")
    fields.setdefault("source_case", "SC-2024-0001")
    fields.setdefault("valid_until", FUTURE)
    return client.upload_material(path, **fields)


def manifest(client: HubClient, data: bytes, **overrides: Any) -> material_pb2.UploadRequest:
    """A signed manifest message describing ``data`` (fields overridable)."""
    fields: dict[str, Any] = {
        "material_type": PLAN,
        "applicant_code": COMPANY,
        "applicant_code_type": USCC,
        "size": len(data),
        "sha256": hashlib.sha256(data).digest(),
        "media_type": "application/pdf",
        "source_case": "SC-2024-0001",
        "valid_until": FUTURE,
        "name": "经营场所平面布局图.pdf",
    }
    fields.update(overrides)
    envelope = client.transport.seal(material_pb2.MaterialManifest(**fields))
    return material_pb2.UploadRequest(manifest=envelope)


def chunks(data: bytes, size: int = CHUNK) -> list[material_pb2.UploadRequest]:
    return [material_pb2.UploadRequest(chunk=data[i : i + size]) for i in range(0, len(data), size)]


def send(client: HubClient, messages: Any, timeout: float = 15.0) -> material_pb2.UploadResponse:
    """The raw client-streaming call; a refusal comes back as the typed XhubError."""
    try:
        response: material_pb2.UploadResponse = client.transport.materials.Upload(
            iter(messages), timeout=timeout
        )
    except grpc.RpcError as exc:
        typed = from_rpc_error(exc)
        if typed is None:
            raise
        raise typed from exc
    return response


def audit_entry(auditor: HubClient, leaf_hex: str, method: str) -> audit_pb2.AuditEntry:
    """The auditor's view of the refused call whose ErrorInfo named this leaf."""
    leaf = bytes.fromhex(leaf_hex)
    for record in auditor.query_audit(method=method, decision=DENIED):
        if merkle.leaf_hash(record.entry) == leaf:
            return audit_pb2.AuditEntry.FromString(record.entry)
    raise AssertionError(f"no DENIED {method} audit record with leaf {leaf_hex}")


def assert_denied_and_audited(
    auditor: HubClient, error: XhubError, method: str, sender: str
) -> audit_pb2.AuditEntry:
    entry = audit_entry(auditor, error.metadata["audit_leaf"], method)
    assert (entry.sender, entry.decision, entry.reason) == (sender, DENIED, error.reason_name)
    return entry


def blob_store(kit: HubKit) -> LocalBlobStore:
    return LocalBlobStore(kit.config.paths.blobs)


def sessions_of(kit: HubKit) -> sessionmaker[Session]:
    return session_factory(kit.engine)


@dataclass(frozen=True)
class StoreState:
    """Everything an upload may leave behind."""

    rows: int
    intents: int
    blobs: frozenset[str]
    temporaries: tuple[str, ...]
    trash: tuple[str, ...]


def store_state(kit: HubKit) -> StoreState:
    root = kit.config.paths.blobs
    with kit.session() as session:
        rows = session.scalar(select(func.count()).select_from(MaterialRow)) or 0
        intents = session.scalar(select(func.count()).select_from(BlobIntentRow)) or 0
    return StoreState(
        rows=int(rows),
        intents=int(intents),
        blobs=frozenset(blob_store(kit).all()),
        temporaries=tuple(sorted(p.name for p in (root / "tmp").iterdir())),
        trash=tuple(sorted(p.name for p in (root / "trash").iterdir())),
    )


def assert_nothing_left(kit: HubKit, before: StoreState) -> None:
    """No row, no intent, no blob, no temporary file beyond what was there before."""
    assert store_state(kit) == dataclasses.replace(before, intents=0, temporaries=(), trash=())


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


# -- a module-wide library: one hub, the item, two platforms, a few materials -----------------


@dataclass
class Library:
    kit: HubKit
    folder: Path
    platform: HubClient
    platform2: HubClient
    auditor: HubClient
    mine: material_pb2.MaterialReceipt  # FLOOR_PLAN of COMPANY, valid
    theirs: material_pb2.MaterialReceipt  # FLOOR_PLAN of OTHER_COMPANY, valid
    unrequired: material_pb2.MaterialReceipt  # HYGIENE_REPORT of COMPANY
    expired: material_pb2.MaterialReceipt  # FLOOR_PLAN of COMPANY, expired yesterday

    def prepare(self, applicant: str = COMPANY, **kwargs: Any) -> intake_pb2.Checklist:
        kwargs.setdefault("purpose", PURPOSE)
        kwargs.setdefault("legal_representative_code", PERSON)
        return self.platform.prepare_case(ITEM_CODE, applicant, **kwargs)

    def upload(self, data: bytes, **fields: Any) -> material_pb2.MaterialReceipt:
        return upload(self.platform, self.folder, data, **fields)


@pytest.fixture(name="library", scope="module")
def library_fixture(shared_hub_kit: HubKit, tmp_path_factory: pytest.TempPathFactory) -> Library:
    kit = shared_hub_kit
    load_item(kit)
    if PLATFORM2.key not in kit.members:
        kit.add_member(PLATFORM2)
    folder = tmp_path_factory.mktemp("library-files")
    platform = kit.client("platform")
    return Library(
        kit=kit,
        folder=folder,
        platform=platform,
        platform2=kit.client("platform2"),
        auditor=kit.client("auditor"),
        mine=upload(platform, folder, content("mine"), source_case="SC-MINE"),
        theirs=upload(platform, folder, content("theirs"), applicant_code=OTHER_COMPANY),
        unrequired=upload(platform, folder, content("hygiene"), material_type=HYGIENE),
        expired=upload(platform, folder, content("expired"), valid_until=days_from_now(-1)),
    )
