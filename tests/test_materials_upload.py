"""Material upload over a running hub (MaterialService/Upload).

Upload: a platform member's signed manifest first (type, applicant, declared size and
SHA-256, media type, source case, valid-until), then chunks of at most 1 MiB.  The material
becomes visible only when size and hash match; any refused, mismatching or interrupted upload
leaves nothing behind: no materials row, no blob_intents row, no blob file, an empty tmp/.
A manifest over the size limit is RESOURCE_EXHAUSTED TOO_LARGE before any content is read.
Identical content is stored once (one blob file, one row per upload).
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from helpers import refused
from hubkit import HubKit
from materials_world import (
    ALLOWED,
    CITIZEN_ID,
    COMPANY,
    DENIED,
    FUTURE,
    LEASE,
    OTHER_COMPANY,
    PERSON,
    PLAN,
    PLAN_LINE,
    PURPOSE,
    UPLOAD,
    USCC,
    Code,
    Library,
    StoreState,
    assert_denied_and_audited,
    assert_nothing_left,
    blob_store,
    chunks,
    content,
    fresh_applicant,
    kit_fixture,  # noqa: F401  (the kit fixture)
    library_fixture,  # noqa: F401  (the library fixture)
    load_item,
    manifest,
    send,
    sha,
    store_state,
    upload,
    wait_for,
)

from xhub.connectors import HubClient
from xhub.hub.core.db import MaterialRow
from xhub.hub.materials.blobstore import CHUNK
from xhub.v1 import audit_pb2, material_pb2

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

    assert wait_for(lambda: bool(logged()), timeout=20), "the interrupted upload was not audited"
    assert [e.reason for e in logged()] in (["ABORTED"], ["CONTENT_MISMATCH"])
