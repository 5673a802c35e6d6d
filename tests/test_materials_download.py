"""Material reuse, find and download over a running hub.

Reuse: PrepareCase offers an applicant's earlier, still valid material for a requirement it
satisfies, naming its source case and date; never an expired one, never another applicant's.
FindMaterials and Download are purpose-bound like certificate pulls (the platform's own
prepared case, its purpose, its applicant, a type its item requires); anything else is
PERMISSION_DENIED PURPOSE_NOT_BOUND and audited.  The SDK checks a download's size and hash
and leaves no file when they differ.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from helpers import refused
from hubkit import HubKit
from materials_world import (
    COMPANY,
    DOWNLOAD,
    FIND,
    HYGIENE,
    ID_COPY,
    ID_LINE,
    ITEM_CODE,
    LEASE,
    LEASE_LINE,
    OTHER_COMPANY,
    PERSON,
    PLAN,
    PLAN_LINE,
    PURPOSE,
    RULES,
    RULES_LINE,
    Code,
    Library,
    assert_denied_and_audited,
    content,
    days_from_now,
    fresh_applicant,
    kit_fixture,  # noqa: F401  (the kit fixture)
    library_fixture,  # noqa: F401  (the library fixture)
    sha,
    today,
    upload,
)
from sqlalchemy import update

from xhub.hub.catalog import file as catalog_file
from xhub.hub.core.db import PreparedCaseRow
from xhub.hub.materials.blobstore import CHUNK

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
