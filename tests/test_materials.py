"""The material library over a running hub (DESIGN.md §5 Material, §6 flows 2–3, MaterialService).

Upload: a platform member's signed manifest first (type, applicant, declared size and
SHA-256, media type, source case, valid-until), then chunks of at most 1 MiB.  The material
becomes visible only when size and hash match; any refused, mismatching or interrupted upload
leaves nothing behind: no materials row, no blob_intents row, no blob file, an empty tmp/.
A manifest over the size limit is RESOURCE_EXHAUSTED TOO_LARGE before any content is read.
Identical content is stored once (one blob file, one row per upload).

Reuse: PrepareCase offers an applicant's earlier, still valid material for a requirement it
satisfies, naming its source case and date; never an expired one, never another applicant's.
FindMaterials and Download are purpose-bound like certificate pulls (the platform's own
prepared case, its purpose, its applicant, a type its item requires); anything else is
PERMISSION_DENIED PURPOSE_NOT_BOUND and audited.  The SDK checks a download's size and hash
and leaves no file when they differ.

Garbage collection deletes only unreferenced blobs and is safe while uploads run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import os
import random
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from helpers import refused
from hubkit import HubKit, MemberDef
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from xhub.connectors import HubClient, XhubError
from xhub.hub.catalog import file as catalog_file
from xhub.hub.catalog import store as catalog
from xhub.hub.core.db import BlobIntentRow, MaterialRow, PreparedCaseRow, session_factory
from xhub.hub.materials import store as materials
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


@pytest.fixture(
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
    ids=["sqlite", "postgres"],
)
def kit(request: pytest.FixtureRequest) -> HubKit:
    """A fresh running hub, once on SQLite and once on PostgreSQL."""
    name = "hub_kit" if request.param == "sqlite" else "hub_kit_pg"
    fixture: HubKit = request.getfixturevalue(name)
    load_item(fixture)
    return fixture


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


@pytest.fixture(scope="module")
def library(shared_hub_kit: HubKit, tmp_path_factory: pytest.TempPathFactory) -> Library:
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


# == Upload: the good path, on both databases ==================================================


def test_upload_stores_a_verified_material(kit: HubKit, tmp_path: Path) -> None:
    platform = kit.client("platform")
    data = content("big", 2 * CHUNK + 12345)  # three chunks
    receipt = upload(
        platform,
        tmp_path,
        data,
        name="经营场所平面布局图.pdf",
        source_case="SC-2024-0042",
        media_type="image/png",
    )
    ref = receipt.material
    assert not receipt.deduplicated
    assert ref.material_id.startswith("MT")
    assert (ref.material_type, ref.name, ref.media_type, ref.source_case) == (
        PLAN,
        "经营场所平面布局图.pdf",
        "image/png",
        "SC-2024-0042",
    )
    assert (ref.sha256, ref.size, ref.valid_until) == (
        hashlib.sha256(data).digest(),
        len(data),
        FUTURE,
    )
    assert ref.uploader == platform.member_id
    assert abs(ref.uploaded_at.ToDatetime(tzinfo=UTC) - datetime.now(UTC)) < timedelta(minutes=1)
    # Metadata in the database, content in the blob store, nothing temporary left.
    state = store_state(kit)
    assert state == StoreState(1, 0, frozenset({sha(data)}), (), ())
    with kit.session() as session:
        row = session.get(MaterialRow, ref.material_id)
        assert row is not None
        assert (row.applicant_code, row.uploader, row.sha256) == (
            COMPANY,
            platform.member_id,
            sha(data),
        )
    with blob_store(kit).open(sha(data)) as blob:
        assert blob.read() == data
    # The upload is audited as allowed, with its own receipt.
    assert receipt.header.HasField("receipt")
    records = list(kit.client("auditor").query_audit(method=UPLOAD, decision=ALLOWED))
    assert [audit_pb2.AuditEntry.FromString(r.entry).sender for r in records] == [
        platform.member_id
    ]
    assert records[0].subject == COMPANY


def test_identical_content_is_stored_once(kit: HubKit, tmp_path: Path) -> None:
    platform = kit.client("platform")
    data = content("same", CHUNK + 7)
    first = upload(platform, tmp_path, data)
    second = upload(platform, tmp_path, data, applicant_code=OTHER_COMPANY, material_type=LEASE)
    third = upload(platform, tmp_path, content("different"))
    assert (first.deduplicated, second.deduplicated, third.deduplicated) == (False, True, False)
    assert len({first.material.material_id, second.material.material_id}) == 2
    assert first.material.sha256 == second.material.sha256
    state = store_state(kit)
    assert state == StoreState(3, 0, frozenset({sha(data), sha(content("different"))}), (), ())
    files = [p for p in kit.config.paths.blobs.rglob("*") if p.is_file()]
    assert sorted(p.name for p in files) == sorted(state.blobs)


def test_upload_size_limit_from_config(tmp_path: Path) -> None:
    """A lowered max_material_bytes: the limit itself passes, one byte more is TOO_LARGE."""
    kit = HubKit(tmp_path)
    kit.config = dataclasses.replace(kit.config, max_material_bytes=4096)
    with kit:
        kit.start()
        load_item(kit)
        platform = kit.client("platform")
        assert upload(platform, tmp_path / "ok", content("limit", 4096)).material.size == 4096
        before = store_state(kit)
        error = refused(
            lambda: upload(platform, tmp_path / "big", content("over", 4097)),
            Code.RESOURCE_EXHAUSTED,
            "TOO_LARGE",
        )
        assert error.metadata["max_bytes"] == "4096"
        assert_nothing_left(kit, before)
        assert_denied_and_audited(kit.client("auditor"), error, UPLOAD, platform.member_id)


# == Upload refusals: nothing is left behind ====================================================


def _manifest_only(c: HubClient, data: bytes) -> list[material_pb2.UploadRequest]:
    return [manifest(c, data)]


BadStream = Callable[[HubClient, bytes], list[material_pb2.UploadRequest]]
OTHER = content("other")
BIG = content("big-chunk", CHUNK + 1)

BAD_STREAMS: list[tuple[str, BadStream, Code, str]] = [
    (
        "hash-mismatch",
        lambda c, d: [manifest(c, d, sha256=hashlib.sha256(OTHER).digest()), *chunks(d)],
        Code.INVALID_ARGUMENT,
        "CONTENT_MISMATCH",
    ),
    (
        "same-size-other-content",
        lambda c, d: [manifest(c, d), *chunks(content("x", len(d)))],
        Code.INVALID_ARGUMENT,
        "CONTENT_MISMATCH",
    ),
    (
        "fewer-bytes-truncated-stream",
        lambda c, d: [manifest(c, d), *chunks(d[:-10])],
        Code.INVALID_ARGUMENT,
        "CONTENT_MISMATCH",
    ),
    ("no-chunks", _manifest_only, Code.INVALID_ARGUMENT, "CONTENT_MISMATCH"),
    (
        "more-bytes",
        lambda c, d: [manifest(c, d), *chunks(d + b"!")],
        Code.INVALID_ARGUMENT,
        "CONTENT_MISMATCH",
    ),
    (
        "more-bytes-in-a-later-chunk",
        lambda c, d: [manifest(c, d), *chunks(d, 1000), *chunks(b"extra")],
        Code.INVALID_ARGUMENT,
        "CONTENT_MISMATCH",
    ),
    (
        "declared-size-smaller-than-hash-says",
        lambda c, d: [manifest(c, d, size=len(d) - 1), *chunks(d[:-1])],
        Code.INVALID_ARGUMENT,
        "CONTENT_MISMATCH",
    ),
    (
        "chunk-over-1MiB",
        lambda c, d: [manifest(c, BIG), material_pb2.UploadRequest(chunk=BIG)],
        Code.INVALID_ARGUMENT,
        "INVALID_FIELD",
    ),
    (
        "second-manifest-instead-of-a-chunk",
        lambda c, d: [manifest(c, d), manifest(c, d), *chunks(d)],
        Code.INVALID_ARGUMENT,
        "INVALID_FIELD",
    ),
    (
        "manifest-after-a-chunk",
        lambda c, d: [manifest(c, d), *chunks(d[:100]), manifest(c, d), *chunks(d[100:])],
        Code.INVALID_ARGUMENT,
        "INVALID_FIELD",
    ),
    (
        "empty-message-after-the-manifest",
        lambda c, d: [manifest(c, d), material_pb2.UploadRequest(), *chunks(d)],
        Code.INVALID_ARGUMENT,
        "INVALID_FIELD",
    ),
    (
        "oversize-declared-60MiB",
        lambda c, d: [manifest(c, d, size=60 * 1024 * 1024), *chunks(d)],
        Code.RESOURCE_EXHAUSTED,
        "TOO_LARGE",
    ),
]


def test_mismatching_uploads_leave_nothing(kit: HubKit) -> None:
    platform = kit.client("platform")
    upload(platform, kit.root / "files", content("kept"))
    before = store_state(kit)
    for name, build, code, reason in BAD_STREAMS:
        data = content(f"mismatch-{name}", CHUNK + 100)
        refused(lambda b=build, d=data: send(platform, b(platform, d)), code, reason)
        assert_nothing_left(kit, before)


@pytest.mark.parametrize(
    ("build", "code", "reason"),
    [case[1:] for case in BAD_STREAMS],
    ids=[case[0] for case in BAD_STREAMS],
)
def test_bad_upload_stream_leaves_nothing(
    library: Library, build: BadStream, code: Code, reason: str
) -> None:
    kit, platform = library.kit, library.platform
    before = store_state(kit)
    data = content(f"bad-{uuid.uuid4()}")
    error = refused(lambda: send(platform, build(platform, data)), code, reason)
    assert_nothing_left(kit, before)
    entry = assert_denied_and_audited(library.auditor, error, UPLOAD, platform.member_id)
    assert entry.method == UPLOAD


@pytest.mark.parametrize(
    "messages",
    [[], [material_pb2.UploadRequest(chunk=b"data first")], [material_pb2.UploadRequest()]],
    ids=["empty-stream", "chunk-first", "empty-first-message"],
)
def test_upload_without_a_manifest_first(
    library: Library, messages: list[material_pb2.UploadRequest]
) -> None:
    before = store_state(library.kit)
    refused(lambda: send(library.platform, messages), Code.INVALID_ARGUMENT, "MALFORMED_ENVELOPE")
    assert_nothing_left(library.kit, before)


def test_oversize_is_refused_before_any_content_is_sent(library: Library) -> None:
    """The client has not sent a byte of content when the refusal arrives."""
    release = threading.Event()
    sent: list[int] = []

    def stream() -> Iterator[material_pb2.UploadRequest]:
        yield manifest(
            library.platform,
            b"",
            size=60 * 1024 * 1024,
            sha256=hashlib.sha256(b"never sent").digest(),
        )
        release.wait(20)  # the content would come only now
        sent.append(1)
        yield material_pb2.UploadRequest(chunk=b"x" * CHUNK)

    started = time.monotonic()
    try:
        error = refused(
            lambda: send(library.platform, stream()), Code.RESOURCE_EXHAUSTED, "TOO_LARGE"
        )
    finally:
        release.set()
    assert time.monotonic() - started < 10
    assert not sent
    assert error.metadata["max_bytes"] == str(library.kit.config.max_material_bytes)
    assert library.kit.config.max_material_bytes == 50 * 1024 * 1024  # the default


@pytest.mark.parametrize("member", ["issuer", "department", "auditor"])
def test_upload_needs_the_platform_role(library: Library, member: str) -> None:
    client = library.kit.client(member)
    before = store_state(library.kit)
    error = refused(
        lambda: upload(client, library.folder, content(f"role-{member}")),
        Code.PERMISSION_DENIED,
        "ROLE_REQUIRED",
    )
    assert_nothing_left(library.kit, before)
    assert_denied_and_audited(library.auditor, error, UPLOAD, client.member_id)


BAD_FIELDS: list[tuple[str, dict[str, Any], str]] = [
    ("type-empty", {"material_type": ""}, "material_type"),
    ("type-space", {"material_type": "FLOOR PLAN"}, "material_type"),
    ("type-leading-dash", {"material_type": "-PLAN"}, "material_type"),
    ("type-too-long", {"material_type": "P" * 65}, "material_type"),
    ("sha256-empty", {"sha256": b""}, "sha256"),
    ("sha256-31-bytes", {"sha256": b"\x01" * 31}, "sha256"),
    ("sha256-hex-text", {"sha256": b"ab" * 32}, "sha256"),
    ("valid-until-not-a-day", {"valid_until": "2025-02-30"}, "valid_until"),
    ("valid-until-month-13", {"valid_until": "2025-13-01"}, "valid_until"),
    ("valid-until-compact", {"valid_until": "20250101"}, "valid_until"),
    ("valid-until-unpadded", {"valid_until": "2025-1-1"}, "valid_until"),
    ("valid-until-words", {"valid_until": "next year"}, "valid_until"),
    ("applicant-bad-checksum", {"applicant_code": COMPANY[:-1] + "0"}, "applicant_code"),
    ("applicant-too-short", {"applicant_code": COMPANY[:-1]}, "applicant_code"),
    ("applicant-empty", {"applicant_code": ""}, "applicant_code"),
    (
        "applicant-id-as-uscc",
        {"applicant_code": PERSON, "applicant_code_type": USCC},
        "applicant_code",
    ),
    (
        "applicant-id-bad-checksum",
        {
            "applicant_code": PERSON[:-1] + ("0" if PERSON[-1] != "0" else "1"),
            "applicant_code_type": CITIZEN_ID,
        },
        "applicant_code",
    ),
    ("applicant-no-code-type", {"applicant_code_type": 0}, "applicant_code"),
    ("media-type-empty", {"media_type": ""}, "media_type"),
    ("media-type-too-long", {"media_type": "x" * 101}, "media_type"),
    ("name-too-long", {"name": "名" * 201}, "name"),
    ("source-case-too-long", {"source_case": "C" * 65}, "source_case"),
    ("size-zero", {"size": 0}, "size"),
]


@pytest.mark.parametrize(
    ("overrides", "field"), [c[1:] for c in BAD_FIELDS], ids=[c[0] for c in BAD_FIELDS]
)
def test_bad_manifest_fields(library: Library, overrides: dict[str, Any], field: str) -> None:
    platform = library.platform
    data = content(f"fields-{uuid.uuid4()}")
    before = store_state(library.kit)
    error = refused(
        lambda: send(platform, [manifest(platform, data, **overrides), *chunks(data)]),
        Code.INVALID_ARGUMENT,
        "INVALID_FIELD",
    )
    assert error.metadata["field"] == field
    assert_nothing_left(library.kit, before)
    assert_denied_and_audited(library.auditor, error, UPLOAD, platform.member_id)


def test_valid_until_is_optional(library: Library) -> None:
    receipt = library.upload(content("no-expiry"), valid_until="", applicant_code=fresh_applicant())
    assert receipt.material.valid_until == ""


@pytest.mark.parametrize("chunk_size", [1, 127, 128, 16383, 16385, CHUNK])
def test_any_sdk_chunk_size_uploads_and_downloads_intact(
    library: Library, chunk_size: int, tmp_path: Path
) -> None:
    """The SDK sends chunks pre-encoded (tag, varint length, bytes) and reads downloaded
    chunks out of the raw response: lengths of one, two and three varint bytes."""
    applicant = fresh_applicant()
    data = content(f"chunked-{chunk_size}", 600 if chunk_size < 128 else 2 * chunk_size + 99)
    receipt = library.upload(data, applicant_code=applicant, chunk_size=chunk_size)
    assert (receipt.material.size, receipt.material.sha256) == (
        len(data),
        hashlib.sha256(data).digest(),
    )
    checklist = library.prepare(applicant)
    destination = tmp_path / "plan.pdf"
    library.platform.download_material(
        checklist.case_id, receipt.material.material_id, destination, purpose=PURPOSE
    )
    assert destination.read_bytes() == data


# == An interrupted upload ======================================================================


HALF = 32 * 1024  # more than a file buffer: the bytes reach the disk


def _pausing_stream(
    first: material_pb2.UploadRequest, data: bytes, release: threading.Event, *, fail: bool
) -> Iterator[material_pb2.UploadRequest]:
    """The manifest and 32 KiB, then a pause until ``release``; then the rest (or a crash)."""
    yield first
    yield material_pb2.UploadRequest(chunk=data[:HALF])
    release.wait(20)
    if fail:
        raise RuntimeError("the connector crashed while reading the file")
    yield material_pb2.UploadRequest(chunk=data[HALF:])


def _temporary_is_written(kit: HubKit) -> bool:
    return any(p.stat().st_size > 0 for p in (kit.config.paths.blobs / "tmp").iterdir())


def _interrupt(library: Library, how: str) -> str:
    """Start an upload for a fresh applicant, stop it half way ``how``; the applicant."""
    kit, platform = library.kit, library.platform
    applicant = fresh_applicant()
    data = content(f"interrupted-{how}-{applicant}", 2 * HALF)
    before = store_state(kit)
    release = threading.Event()
    stream = _pausing_stream(
        manifest(platform, data, applicant_code=applicant),
        data,
        release,
        fail=(how == "generator-raises"),
    )
    future = platform.transport.materials.Upload.future(
        stream, timeout=1.5 if how == "deadline" else 30
    )
    try:
        # Half the content is on the hub: not a material yet, nothing to find.
        assert wait_for(lambda: _temporary_is_written(kit)), "no temporary file appeared"
        assert store_state(kit).rows == before.rows
        case = library.prepare(applicant)
        assert not case.lines[PLAN_LINE].satisfied
        assert list(platform.find_materials(case.case_id, [PLAN], purpose=PURPOSE).materials) == []
        if how == "cancel":
            assert future.cancel()
            with pytest.raises(grpc.FutureCancelledError):
                future.result(timeout=10)
        else:
            if how == "generator-raises":
                release.set()  # the connector crashes now
            with pytest.raises(grpc.RpcError) as caught:
                future.result(timeout=10)
            expected = Code.UNKNOWN if how == "generator-raises" else Code.DEADLINE_EXCEEDED
            assert caught.value.code() == expected
    finally:
        release.set()
    # The hub notices and throws the temporary away.
    assert wait_for(lambda: store_state(kit).temporaries == ()), store_state(kit)
    assert_nothing_left(kit, before)
    case = library.prepare(applicant)
    assert not case.lines[PLAN_LINE].satisfied
    return applicant


INTERRUPTIONS = ["cancel", "generator-raises", "deadline"]


@pytest.mark.parametrize("how", INTERRUPTIONS)
def test_interrupted_upload_leaves_nothing(library: Library, how: str) -> None:
    _interrupt(library, how)


@pytest.mark.parametrize("how", INTERRUPTIONS)
def test_interrupted_upload_is_audited(library: Library, how: str) -> None:
    """One audit entry per exchange attempt (DESIGN.md §5): an upload the client abandoned
    is logged as DENIED (the hub means to log it as ABORTED, or as the content mismatch the
    half-closed stream shows)."""
    applicant = _interrupt(library, how)

    def logged() -> list[audit_pb2.AuditEntry]:
        records = library.auditor.query_audit(method=UPLOAD, decision=DENIED, subject=applicant)
        return [audit_pb2.AuditEntry.FromString(r.entry) for r in records]

    assert wait_for(lambda: bool(logged()), timeout=3), "the interrupted upload was not audited"
    assert [e.reason for e in logged()] in (["ABORTED"], ["CONTENT_MISMATCH"])


# == Reuse in PrepareCase =======================================================================


def test_prepare_case_offers_earlier_valid_materials(kit: HubKit, tmp_path: Path) -> None:
    platform = kit.client("platform")
    older = upload(platform, tmp_path, content("plan-v1"), source_case="SC-2023-0007")
    # Newer, but expired: never offered; the older still valid one is.
    upload(platform, tmp_path, content("plan-v2"), valid_until=days_from_now(-1))
    upload(platform, tmp_path, content("lease"), material_type=LEASE, valid_until="2001-01-01")
    rules = upload(
        platform,
        tmp_path,
        content("rules"),
        material_type=RULES,
        valid_until=today(),
        source_case="SC-2024-0100",
    )
    upload(platform, tmp_path, content("id-copy"), material_type=ID_COPY)
    # Another applicant's material satisfies nothing for this one.
    upload(platform, tmp_path, content("theirs"), applicant_code=OTHER_COMPANY, material_type=LEASE)

    checklist = platform.prepare_case(
        ITEM_CODE, COMPANY, purpose=PURPOSE, legal_representative_code=PERSON
    )
    lines = checklist.lines
    plan = lines[PLAN_LINE]
    assert plan.satisfied
    assert plan.earlier_material.material_id == older.material.material_id
    assert plan.earlier_material.sha256 == older.material.sha256
    uploaded_on = older.material.uploaded_at.ToDatetime(tzinfo=UTC).date().isoformat()
    assert "SC-2023-0007" in plan.note and uploaded_on in plan.note
    rules_line = lines[RULES_LINE]
    assert rules_line.satisfied  # valid_until is the last day it may be reused: today
    assert rules_line.earlier_material.material_id == rules.material.material_id
    assert "SC-2024-0100" in rules_line.note
    # Only an expired lease of this applicant: the applicant must bring one.
    lease = lines[LEASE_LINE]
    assert not lease.satisfied
    assert not lease.HasField("earlier_material")
    # Materials are the applicant's own: the legal representative's line is not met by them.
    assert not lines[ID_LINE].HasField("earlier_material")
    # The platform then finds and downloads exactly what the checklist offered.
    found = platform.find_materials(checklist.case_id, [PLAN, LEASE], purpose=PURPOSE).materials
    assert [m.material_id for m in found] == [older.material.material_id]
    destination = tmp_path / "downloaded.pdf"
    ref = platform.download_material(
        checklist.case_id, older.material.material_id, destination, purpose=PURPOSE
    ).material
    assert ref == older.material
    assert destination.read_bytes() == content("plan-v1")


VALIDITY: list[tuple[str, Callable[[], str], bool]] = [
    ("no-expiry", lambda: "", True),
    ("far-future", lambda: "2099-12-31", True),
    ("tomorrow", lambda: days_from_now(1), True),
    ("today", today, True),
    ("yesterday", lambda: days_from_now(-1), False),
    ("long-ago", lambda: "2000-01-01", False),
]


@pytest.mark.parametrize(
    ("valid_until", "offered"), [v[1:] for v in VALIDITY], ids=[v[0] for v in VALIDITY]
)
def test_reuse_follows_valid_until(
    library: Library, valid_until: Callable[[], str], offered: bool
) -> None:
    applicant = fresh_applicant()
    receipt = library.upload(
        content(f"validity-{applicant}"), applicant_code=applicant, valid_until=valid_until()
    )
    checklist = library.prepare(applicant)
    line = checklist.lines[PLAN_LINE]
    assert line.satisfied is offered
    assert line.HasField("earlier_material") is offered
    if offered:
        assert line.earlier_material.material_id == receipt.material.material_id
    found = library.platform.find_materials(checklist.case_id, [PLAN], purpose=PURPOSE).materials
    assert [m.material_id for m in found] == ([receipt.material.material_id] if offered else [])


def test_newest_valid_material_is_offered_first(library: Library) -> None:
    applicant = fresh_applicant()
    first = library.upload(content(f"n1-{applicant}"), applicant_code=applicant)
    second = library.upload(content(f"n2-{applicant}"), applicant_code=applicant)
    checklist = library.prepare(applicant)
    assert checklist.lines[PLAN_LINE].earlier_material.material_id == second.material.material_id
    found = library.platform.find_materials(checklist.case_id, [PLAN], purpose=PURPOSE).materials
    assert [m.material_id for m in found] == [
        second.material.material_id,
        first.material.material_id,
    ]


def test_another_applicants_material_is_never_offered(library: Library) -> None:
    applicant, other = fresh_applicant(), fresh_applicant()
    library.upload(content(f"other-{other}"), applicant_code=other)
    checklist = library.prepare(applicant)
    assert not checklist.lines[PLAN_LINE].satisfied
    assert (
        list(library.platform.find_materials(checklist.case_id, [PLAN], purpose=PURPOSE).materials)
        == []
    )


def test_material_uploaded_with_a_lowercase_code_is_reused(library: Library) -> None:
    """The hub normalises holder codes (PrepareCase accepts lower case); an upload must store
    the normalised code too, or the material can never be found again."""
    applicant = fresh_applicant()
    receipt = library.upload(content(f"lower-{applicant}"), applicant_code=applicant.lower())
    checklist = library.prepare(applicant)
    assert checklist.lines[PLAN_LINE].earlier_material.material_id == receipt.material.material_id


def test_a_material_type_the_catalogue_accepts_can_be_uploaded(library: Library) -> None:
    """Catalogue files accept material type codes like FOOD-SAFETY-RULES (tests/test_intake.py
    uses it); an item requiring such a type must be satisfiable by an upload."""
    code = "FOOD-SAFETY-RULES"
    assert catalog_file.MATERIAL_CODE_RE.match(code)
    applicant = fresh_applicant()
    receipt = library.upload(
        content(f"hyphen-{applicant}"), applicant_code=applicant, material_type=code
    )
    assert receipt.material.material_type == code


# == Find and Download: purpose binding ========================================================


def test_find_and_download_within_the_prepared_case(library: Library, tmp_path: Path) -> None:
    checklist = library.prepare()
    found = library.platform.find_materials(checklist.case_id, [PLAN], purpose=PURPOSE).materials
    ids = [m.material_id for m in found]
    assert library.mine.material.material_id in ids
    assert library.theirs.material.material_id not in ids  # another applicant's
    assert library.expired.material.material_id not in ids  # expired
    destination = tmp_path / "plan.pdf"
    ref = library.platform.download_material(
        checklist.case_id, library.mine.material.material_id, destination, purpose=PURPOSE
    ).material
    assert ref == library.mine.material
    assert destination.read_bytes() == content("mine")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.pdf"]


def test_an_expired_material_is_not_downloaded(library: Library, tmp_path: Path) -> None:
    checklist = library.prepare()
    error = refused(
        lambda: library.platform.download_material(
            checklist.case_id, library.expired.material.material_id, tmp_path / "x", purpose=PURPOSE
        ),
        Code.FAILED_PRECONDITION,
        "PURPOSE_NOT_BOUND",
    )
    assert_denied_and_audited(library.auditor, error, DOWNLOAD, library.platform.member_id)
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_material_is_not_found(library: Library, tmp_path: Path) -> None:
    checklist = library.prepare()
    refused(
        lambda: library.platform.download_material(
            checklist.case_id, "MT" + "0" * 32, tmp_path / "x", purpose=PURPOSE
        ),
        Code.NOT_FOUND,
        "NOT_FOUND",
    )
    assert list(tmp_path.iterdir()) == []


@dataclass(frozen=True)
class Unbound:
    rpc: str  # "find" | "download"
    case: str = "own"  # own | none | unknown | other-platform | expired | other-applicant
    purpose: str = PURPOSE
    types: tuple[str, ...] = (PLAN,)
    material: str = "mine"  # mine | theirs | unrequired


UNBOUND: list[tuple[str, Unbound]] = [
    ("find-no-case", Unbound("find", case="none")),
    ("find-unknown-case", Unbound("find", case="unknown")),
    ("find-other-platforms-case", Unbound("find", case="other-platform")),
    ("find-expired-case", Unbound("find", case="expired")),
    ("find-wrong-purpose", Unbound("find", purpose="其他事项办理")),
    ("find-type-not-required", Unbound("find", types=(HYGIENE,))),
    ("find-required-and-unrequired", Unbound("find", types=(PLAN, HYGIENE))),
    ("find-no-type", Unbound("find", types=())),
    ("download-no-case", Unbound("download", case="none")),
    ("download-unknown-case", Unbound("download", case="unknown")),
    ("download-other-platforms-case", Unbound("download", case="other-platform")),
    ("download-expired-case", Unbound("download", case="expired")),
    ("download-wrong-purpose", Unbound("download", purpose="其他事项办理")),
    ("download-other-applicants-material", Unbound("download", material="theirs")),
    (
        "download-with-the-other-applicants-case",
        Unbound("download", case="other-applicant", material="mine"),
    ),
    ("download-type-not-required", Unbound("download", material="unrequired")),
]


@pytest.mark.parametrize("bad", [u[1] for u in UNBOUND], ids=[u[0] for u in UNBOUND])
def test_find_and_download_outside_the_case_are_denied_and_audited(
    library: Library, bad: Unbound, tmp_path: Path
) -> None:
    kit = library.kit
    checklist = library.prepare(OTHER_COMPANY if bad.case == "other-applicant" else COMPANY)
    case_id, client = checklist.case_id, library.platform
    if bad.case == "none":
        case_id = ""
    elif bad.case == "unknown":
        case_id = "PC" + "0" * 22
    elif bad.case == "other-platform":
        client = library.platform2
    elif bad.case == "expired":
        with kit.session() as session:
            session.execute(
                update(PreparedCaseRow)
                .where(PreparedCaseRow.case_id == case_id)
                .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
            )
    if bad.rpc == "find":
        method = FIND
        error = refused(
            lambda: client.find_materials(case_id, list(bad.types), purpose=bad.purpose),
            Code.PERMISSION_DENIED,
            "PURPOSE_NOT_BOUND",
        )
    else:
        method = DOWNLOAD
        material = {
            "mine": library.mine,
            "theirs": library.theirs,
            "unrequired": library.unrequired,
        }[bad.material]
        error = refused(
            lambda: client.download_material(
                case_id, material.material.material_id, tmp_path / "out.pdf", purpose=bad.purpose
            ),
            Code.PERMISSION_DENIED,
            "PURPOSE_NOT_BOUND",
        )
        assert list(tmp_path.iterdir()) == []  # neither the file nor a partial one
    entry = assert_denied_and_audited(library.auditor, error, method, client.member_id)
    assert (entry.case_id, entry.purpose) == (case_id, bad.purpose)


# == Download verification in the SDK ===========================================================


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-1])


def _extend(path: Path) -> None:
    path.write_bytes(path.read_bytes() + b"\0")


@pytest.mark.parametrize(
    "corrupt", [_flip_a_byte, _truncate, _extend], ids=["flip", "truncate", "extend"]
)
def test_a_corrupted_blob_fails_the_sdk_check(
    library: Library, corrupt: Callable[[Path], None], tmp_path: Path
) -> None:
    applicant = fresh_applicant()
    data = content(f"corrupt-{applicant}", CHUNK + 999)
    receipt = library.upload(data, applicant_code=applicant)
    digest = sha(data)
    corrupt(library.kit.config.paths.blobs / digest[:2] / digest[2:4] / digest)  # ab/cd/<sha256>
    checklist = library.prepare(applicant)
    destination = tmp_path / "plan.pdf"
    refused(
        lambda: library.platform.download_material(
            checklist.case_id, receipt.material.material_id, destination, purpose=PURPOSE
        ),
        Code.DATA_LOSS,
        "BAD_RESPONSE",
    )
    assert list(tmp_path.iterdir()) == []  # no destination, no .part


# == The blob store's writer =====================================================================


def test_a_large_blob_is_written_whole_across_writeback_windows(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    data = content("windows", 9 * CHUNK + 5)  # past the 8 MiB writeback window
    writer = store.begin()
    for start in range(0, len(data), CHUNK):
        writer.write(data[start : start + CHUNK])
    assert (writer.size, writer.sha256()) == (len(data), sha(data))
    assert store.place(writer) == sha(data)
    with store.open(sha(data)) as blob:
        assert blob.read() == data
    assert list((tmp_path / "tmp").iterdir()) == []


def test_a_discarded_writer_refuses_further_writes(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    writer = store.begin()
    writer.write(b"half an upload")
    writer.discard()
    assert list((tmp_path / "tmp").iterdir()) == []
    with pytest.raises(ValueError):
        writer.write(b"late chunk from a worker thread")
    with pytest.raises(ValueError):
        store.place(writer)
    writer.discard()  # twice is fine
    assert list((tmp_path / "tmp").iterdir()) == []


def test_discard_while_a_worker_thread_writes(tmp_path: Path) -> None:
    """What the hub does when a client goes away mid-upload: the discard waits for the write
    in progress, the writes after it fail, and nothing is left in tmp/."""
    store = LocalBlobStore(tmp_path)
    writer = store.begin()
    started = threading.Event()
    outcome: list[BaseException] = []

    def keep_writing() -> None:
        try:
            while True:
                writer.write(b"\x01" * CHUNK)
                started.set()
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=keep_writing)
    worker.start()
    assert started.wait(10)
    writer.discard()
    worker.join(10)
    assert [type(e) for e in outcome] == [ValueError]
    assert list((tmp_path / "tmp").iterdir()) == []


# == Garbage collection ==========================================================================


def _place(kit: HubKit, data: bytes) -> str:
    """Put a blob straight into the store (an orphan: no material references it)."""
    store = blob_store(kit)
    writer = store.begin()
    writer.write(data)
    return store.place(writer)


def _forget(kit: HubKit, material_id: str) -> None:
    with kit.session() as session:
        session.execute(delete(MaterialRow).where(MaterialRow.material_id == material_id))


def test_gc_deletes_only_unreferenced_blobs(hub_kit: HubKit, tmp_path: Path) -> None:
    kit = hub_kit
    load_item(kit)
    platform = kit.client("platform")
    kept = upload(platform, tmp_path, content("kept"))
    shared_a = upload(platform, tmp_path, content("shared"))
    shared_b = upload(platform, tmp_path, content("shared"), applicant_code=OTHER_COMPANY)
    dropped = upload(platform, tmp_path, content("dropped"))
    orphan = _place(kit, content("orphan"))
    _forget(kit, shared_a.material.material_id)  # the other row still uses the blob
    _forget(kit, dropped.material.material_id)

    report = materials.collect_garbage(sessions_of(kit), blob_store(kit))
    assert (report.examined, report.deleted, report.kept_referenced) == (4, 2, 2)
    assert (report.kept_in_flight, report.temporaries_removed) == (0, 0)
    state = store_state(kit)
    assert state.blobs == {sha(content("kept")), sha(content("shared"))}
    assert orphan not in state.blobs
    assert (state.intents, state.temporaries, state.trash) == (0, (), ())
    # What is still referenced downloads and verifies.
    checklist = platform.prepare_case(ITEM_CODE, OTHER_COMPANY, purpose=PURPOSE)
    out = tmp_path / "shared.pdf"
    platform.download_material(
        checklist.case_id, shared_b.material.material_id, out, purpose=PURPOSE
    )
    assert out.read_bytes() == content("shared")
    assert kept.material.material_id
    # A second run finds nothing more to do.
    again = materials.collect_garbage(sessions_of(kit), blob_store(kit))
    assert (again.examined, again.deleted, again.kept_referenced) == (2, 0, 2)


def test_gc_on_an_empty_store(hub_kit: HubKit) -> None:
    report = materials.collect_garbage(sessions_of(hub_kit), blob_store(hub_kit))
    assert report == materials.GcReport(0, 0, 0, 0, 0)


def test_gc_keeps_announced_blobs_and_forgets_old_intents(hub_kit: HubKit) -> None:
    kit = hub_kit
    sessions = sessions_of(kit)
    announced = _place(kit, content("announced"))
    abandoned = _place(kit, content("abandoned"))
    fresh_intent = materials.add_intent(sessions, announced)
    old_intent = materials.add_intent(sessions, abandoned)
    with kit.session() as session:
        session.execute(
            update(BlobIntentRow)
            .where(BlobIntentRow.intent_id == old_intent)
            .values(created_at=datetime.now(UTC) - materials.INTENT_LIFETIME - timedelta(minutes=1))
        )
    report = materials.collect_garbage(sessions, blob_store(kit))
    assert (report.examined, report.deleted, report.kept_in_flight) == (2, 1, 1)
    state = store_state(kit)
    assert state.blobs == {announced}
    assert state.intents == 1  # the old intent was dropped, the fresh one stays
    with sessions.begin() as session:
        materials.drop_intent(session, fresh_intent)
    assert materials.collect_garbage(sessions, blob_store(kit)).deleted == 1
    assert store_state(kit).blobs == frozenset()


def test_gc_removes_only_stale_temporaries(hub_kit: HubKit) -> None:
    tmp = hub_kit.config.paths.blobs / "tmp"
    stale, fresh = tmp / "upload-dead.part", tmp / "upload-live.part"
    stale.write_bytes(b"a crashed upload")
    fresh.write_bytes(b"an upload in progress")
    old = time.time() - materials.INTENT_LIFETIME.total_seconds() - 60
    os.utime(stale, (old, old))
    report = materials.collect_garbage(sessions_of(hub_kit), blob_store(hub_kit))
    assert report.temporaries_removed == 1
    assert sorted(p.name for p in tmp.iterdir()) == ["upload-live.part"]


def test_gc_sees_an_upload_that_commits_between_its_checks(kit: HubKit) -> None:
    """Deterministic interleaving: the blob of an unreferenced-but-announced upload is
    hidden by the collector; the upload commits (material row in, intent out) after the
    collector looked for references and before it looked for intents.  The collector must
    still keep the blob: a materials row now points at it."""
    data = content("interleaved")
    digest = _place(kit, data)
    sessions = sessions_of(kit)
    intent = materials.add_intent(sessions, digest)
    trash = kit.config.paths.blobs / "trash" / digest
    fired: list[bool] = []

    def upload_commits() -> None:
        with kit.session() as session:
            session.add(
                MaterialRow(
                    material_id=materials.new_material_id(),
                    sha256=digest,
                    size=len(data),
                    media_type="application/pdf",
                    material_type=PLAN,
                    name="plan.pdf",
                    applicant_code=COMPANY,
                    source_case="SC-1",
                    uploader=kit.member_id("platform"),
                    uploaded_at=datetime.now(UTC),
                    valid_until="",
                    manifest=b"",
                )
            )
            materials.drop_intent(session, intent)

    class Interleaved(Session):
        def scalar(self, *args: Any, **kwargs: Any) -> Any:
            result = super().scalar(*args, **kwargs)
            if trash.exists() and not fired:  # the first look after hiding the blob
                fired.append(True)
                upload_commits()
            return result

    hooked = sessionmaker(kit.engine, class_=Interleaved, expire_on_commit=False)
    materials.collect_garbage(hooked, blob_store(kit))
    assert fired, "the collector never hid the blob"
    with kit.session() as session:
        referencing = session.scalar(
            select(func.count()).select_from(MaterialRow).where(MaterialRow.sha256 == digest)
        )
    assert referencing == 1
    assert blob_store(kit).exists(digest), "gc deleted a blob a committed material references"


UPLOADERS, ROUNDS = 5, 8


def test_gc_racing_uploads(kit: HubKit, tmp_path: Path) -> None:
    """gc runs in a loop while several threads upload the same and different content and
    rows of shared content are being deleted; every material left downloads and verifies."""
    shared = [content("race-a"), content("race-b", CHUNK + 5)]
    # Content A starts as an unreferenced blob: the collector is busy deleting it.
    first = upload(kit.client("platform"), tmp_path / "seed", shared[0])
    _forget(kit, first.material.material_id)
    sessions = sessions_of(kit)
    stop = threading.Event()
    gc_errors: list[str] = []
    errors: list[str] = []
    runs = 0

    def collect() -> None:
        nonlocal runs
        while not stop.is_set():
            try:
                materials.collect_garbage(sessions, blob_store(kit))
                runs += 1
            except Exception:  # keep collecting: the invariants below still have to hold
                gc_errors.append(traceback.format_exc())

    def forget() -> None:
        rng = random.Random(7)
        try:
            while not stop.is_set():
                with kit.session() as session:
                    ids = session.scalars(
                        select(MaterialRow.material_id).where(MaterialRow.sha256 == sha(shared[0]))
                    ).all()
                    if ids:
                        victim = rng.choice(ids)
                        session.execute(
                            delete(MaterialRow).where(MaterialRow.material_id == victim)
                        )
                time.sleep(0.02)
        except BaseException:
            errors.append(traceback.format_exc())

    def uploader(index: int) -> None:
        client = kit.client("platform")
        folder = tmp_path / f"uploader-{index}"
        try:
            for round_ in range(ROUNDS):
                kind = (index + round_) % 3
                data = shared[kind] if kind < 2 else content(f"race-{index}-{round_}")
                upload(client, folder, data)
        except BaseException:
            errors.append(traceback.format_exc())

    background = [threading.Thread(target=collect), threading.Thread(target=forget)]
    workers = [threading.Thread(target=uploader, args=(i,)) for i in range(UPLOADERS)]
    for thread in background + workers:
        thread.start()
    for thread in workers:
        thread.join(60)
    stop.set()
    for thread in background:
        thread.join(60)
    assert not errors, "\n".join(errors)

    # Every material's blob is there, and downloads verify.
    with kit.session() as session:
        rows = [(r.material_id, r.sha256) for r in session.scalars(select(MaterialRow))]
    store = blob_store(kit)
    missing = [(material_id, digest) for material_id, digest in rows if not store.exists(digest)]
    assert not missing, f"materials whose blob gc deleted: {missing}"
    platform = kit.client("platform")
    checklist = platform.prepare_case(ITEM_CODE, COMPANY, purpose=PURPOSE)
    out = tmp_path / "out"
    out.mkdir()
    for material_id, digest in rows:
        destination = out / material_id
        ref = platform.download_material(
            checklist.case_id, material_id, destination, purpose=PURPOSE
        ).material
        assert sha(destination.read_bytes()) == digest == ref.sha256.hex()
    # gc itself never failed while uploads ran, and ran often enough to matter.
    assert not gc_errors, f"{len(gc_errors)} gc run(s) failed; first:\n{gc_errors[0]}"
    assert runs >= 3, f"gc ran only {runs} times"
    # Quiet now: one more run leaves exactly the referenced blobs, and nothing temporary.
    materials.collect_garbage(sessions, store)
    state = store_state(kit)
    assert state.blobs == {digest for _, digest in rows}
    assert (state.intents, state.temporaries, state.trash) == (0, (), ())
