"""Originator checks of pulls and downloads (issue 11), by editing the hub's database.

A hub operator rewrites the certificate library or the material library; the platform's SDK
refuses the answer with a VerificationError naming what disagreed, read from the
originator's own signed bytes (the issuer's certificate, the uploader's manifest), never the
hub's columns. SQLite and PostgreSQL.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hubkit import HubKit
from intake_world import (
    COMPANY,
    LICENCE_TYPE,
    OTHER_COMPANY,
    OTHER_TYPE,
    PURPOSE,
    World,
    certificate,
    make_world,
)
from materials_world import ITEM_CODE as MATERIALS_ITEM
from materials_world import PERSON as MATERIALS_PERSON
from materials_world import PLAN, PLATFORM2, content, upload
from materials_world import load_item as load_materials_item
from sqlalchemy import select

from xhub.certificates_store.identifier import make_identifier
from xhub.certificates_store.schema import CertificateRow
from xhub.connectors import HubClient
from xhub.connectors.sdk._internal.verify import TrustedMembers, verify_download_manifest
from xhub.hub.core.db import MaterialRow
from xhub.protocol.envelope import seal
from xhub.protocol.errors import BadResponseError, VerificationError
from xhub.v1 import material_pb2

# -- pulled certificates -------------------------------------------------------------------


def _row(kit: HubKit, identifier: str) -> dict[str, object]:
    with kit.session() as session:
        row = session.get(CertificateRow, identifier)
        assert row is not None
        return {c.key: getattr(row, c.key) for c in CertificateRow.__table__.columns}


def _set(kit: HubKit, identifier: str, **columns: object) -> None:
    with kit.session() as session:
        row = session.get(CertificateRow, identifier)
        assert row is not None
        for name, value in columns.items():
            setattr(row, name, value)
        session.commit()


def _others_licence(world: World) -> str:
    """OTHER_COMPANY's licence, published by the same issuer; its identifier."""
    theirs = certificate(
        world.kit,
        "issuer",
        holder_code=OTHER_COMPANY,
        serial="2024000002",
        number="440101000654321",
    )
    world.issuer.publish_certificate(theirs, raw_status_code="01")
    return theirs.identifier


def holder_column_changed(world: World) -> None:
    """Another holder's certificate, filed under the asked holder."""
    _set(world.kit, _others_licence(world), holder_code=COMPANY)


def signed_bytes_swapped(world: World) -> None:
    """The asked holder's own row (holder, type, identifier as they were) carrying another
    holder's issuer-signed bytes."""
    theirs = _row(world.kit, _others_licence(world))
    _set(world.kit, world.licence.identifier, envelope=theirs["envelope"])


def type_column_changed(world: World) -> None:
    """A certificate of a type not asked for, filed under the asked type."""
    other = certificate(
        world.kit, "issuer", type_code=OTHER_TYPE, type_name="其他证照", serial="2024000003"
    )
    world.issuer.publish_certificate(other, raw_status_code="01")
    _set(world.kit, other.identifier, type_code=LICENCE_TYPE)


def identifier_column_changed(world: World) -> None:
    """The asked certificate's signed bytes once more, under an identifier of the hub's own."""
    copy = _row(world.kit, world.licence.identifier)
    fake = make_identifier(LICENCE_TYPE, str(copy["issuer_code"]), "2024009999", 1).text
    copy.update(identifier=fake, base_identifier=fake.rsplit(".", 2)[0])
    with world.kit.session() as session:
        session.add(CertificateRow(**copy))
        session.commit()


def identifier_of_another_type(world: World) -> None:
    """Signed with the issuer's key (a rogue or broken issuer, not the hub): the certificate's
    identifier names another type than its type code."""
    forged = certificate(world.kit, "issuer")
    forged.identifier = make_identifier(OTHER_TYPE, forged.issuer_code, "2024000001", 1).text
    signed = seal(forged, world.kit.bundle("issuer").signer)
    _set(world.kit, world.licence.identifier, envelope=signed.SerializeToString())


def issuer_column_changed(world: World) -> None:
    """The wrapper names another member as the issuer."""
    _set(world.kit, world.licence.identifier, issuer_member_id=world.kit.member_id("department"))


PULL_TAMPERING: dict[str, tuple[Callable[[World], None], str]] = {
    "holder column changed": (
        holder_column_changed,
        rf"holder differs from the one asked for: asked '9144…{COMPANY[-4:]}', "
        rf"issuer signed '9144…{OTHER_COMPANY[-4:]}'",
    ),
    "another holder's signed bytes under the asked holder's row": (
        signed_bytes_swapped,
        rf"holder differs from the one asked for: asked '9144…{COMPANY[-4:]}', "
        rf"issuer signed '9144…{OTHER_COMPANY[-4:]}'",
    ),
    "type column changed": (
        type_column_changed,
        rf"type differs from the ones asked for: asked {LICENCE_TYPE}, "
        rf"issuer signed '{OTHER_TYPE}'",
    ),
    "identifier column changed": (identifier_column_changed, "identifier returned twice"),
    "identifier of another type, issuer-signed": (
        identifier_of_another_type,
        "the issuer's signed certificate breaks a certificate rule: type_code: differs from "
        "the type code inside the identifier",
    ),
    "issuer column changed": (
        issuer_column_changed,
        "pulled certificate is not signed by a key of its issuer: .* is not a registered key of",
    ),
}


@pytest.mark.parametrize("tampering", PULL_TAMPERING, ids=str)
def test_a_pull_the_hub_rewrote_is_refused_naming_what_disagreed(
    intake_kit: HubKit, tampering: str
) -> None:
    world = make_world(intake_kit)
    case_id = world.prepare().case_id
    # Faithful first: the asked holder's licence, verified.
    [pulled] = world.platform.pull_certificates(
        case_id, COMPANY, [LICENCE_TYPE], purpose=PURPOSE
    ).certificates
    assert world.platform.verify_issuer_signature(pulled) == world.licence
    edit, words = PULL_TAMPERING[tampering]
    edit(world)
    with pytest.raises(VerificationError, match=words) as caught:
        world.platform.pull_certificates(case_id, COMPANY, [LICENCE_TYPE], purpose=PURPOSE)
    assert caught.value.reason_name == "BAD_RESPONSE"
    assert COMPANY not in caught.value.message  # codes are shown masked


# -- downloads -------------------------------------------------------------------------------


@dataclass
class Shelf:
    """A platform's material of COMPANY and a prepared case that may download it."""

    kit: HubKit
    platform: HubClient
    folder: Path
    material_id: str
    case_id: str

    def download(self, destination: Path) -> material_pb2.MaterialDescriptor:
        return self.platform.download_material(
            self.case_id, self.material_id, destination, purpose=PURPOSE
        )

    def rewrite(self, **columns: object) -> None:
        with self.kit.session() as session:
            row = session.get(MaterialRow, self.material_id)
            assert row is not None
            for name, value in columns.items():
                setattr(row, name, value)
            session.commit()

    def columns_of(self, material_id: str) -> dict[str, object]:
        with self.kit.session() as session:
            row = session.scalars(
                select(MaterialRow).where(MaterialRow.material_id == material_id)
            ).one()
            return {c.key: getattr(row, c.key) for c in MaterialRow.__table__.columns}


def _store_blob(shelf: Shelf, data: bytes) -> str:
    """Put ``data`` in the hub's blob store as an operator would; its SHA-256 (hex)."""
    digest = hashlib.sha256(data).hexdigest()
    path = shelf.kit.config.paths.blobs / digest[:2] / digest[2:4] / digest
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return digest


def blob_replaced_same_size(shelf: Shelf) -> None:
    data = content("the operator's plan")
    shelf.rewrite(sha256=_store_blob(shelf, data), size=len(data))


def blob_replaced_longer(shelf: Shelf) -> None:
    data = content("the operator's longer plan", 5000)
    shelf.rewrite(sha256=_store_blob(shelf, data), size=len(data))


def manifest_of_another_member(shelf: Shelf) -> None:
    """platform2 uploaded the very same file; its manifest replaces the uploader's."""
    other = shelf.kit.client("platform2")
    theirs = upload(other, shelf.folder, content("mine"), applicant_code=COMPANY)
    shelf.rewrite(manifest=shelf.columns_of(theirs.material.material_id)["manifest"])


def manifest_of_another_material(shelf: Shelf) -> None:
    theirs = upload(shelf.platform, shelf.folder, content("theirs"), applicant_code=OTHER_COMPANY)
    shelf.rewrite(manifest=shelf.columns_of(theirs.material.material_id)["manifest"])


def another_applicants_material_under_the_asked_id(shelf: Shelf) -> None:
    """Everything of another applicant's material — blob, columns, manifest — under the asked
    material id (and applicant column), so the descriptor agrees with the manifest."""
    theirs = upload(shelf.platform, shelf.folder, content("theirs"), applicant_code=OTHER_COMPANY)
    columns = shelf.columns_of(theirs.material.material_id)
    del columns["material_id"], columns["applicant_code"]
    shelf.rewrite(**columns)


DOWNLOAD_TAMPERING: dict[str, tuple[Callable[[Shelf], None], str]] = {
    "blob and its sha256/size columns replaced, same size": (
        blob_replaced_same_size,
        "sha256 differs from the uploader's signed manifest",
    ),
    "blob and its sha256/size columns replaced, longer": (
        blob_replaced_longer,
        "size differs from the uploader's signed manifest: hub 5000, signed 3000",
    ),
    "manifest signed by another member": (
        manifest_of_another_member,
        "the uploader's manifest: signed with .* is not a registered key of",
    ),
    "manifest of another material": (
        manifest_of_another_material,
        "sha256 differs from the uploader's signed manifest",
    ),
    "another applicant's material under the asked id": (
        another_applicants_material_under_the_asked_id,
        rf"the uploader's signed manifest is of applicant '9144…{OTHER_COMPANY[-4:]}', "
        "not of the prepared case",
    ),
}


@pytest.mark.parametrize("tampering", DOWNLOAD_TAMPERING, ids=str)
def test_a_download_the_hub_rewrote_is_refused_naming_the_manifest_mismatch(
    kit: HubKit, tmp_path: Path, tampering: str
) -> None:
    load_materials_item(kit)
    kit.add_member(PLATFORM2)
    platform = kit.client("platform")
    mine = upload(platform, tmp_path / "files", content("mine"), material_type=PLAN)
    checklist = platform.prepare_case(
        MATERIALS_ITEM, COMPANY, purpose=PURPOSE, legal_representative_code=MATERIALS_PERSON
    )
    shelf = Shelf(kit, platform, tmp_path / "files", mine.material.material_id, checklist.case_id)
    faithful = tmp_path / "faithful.pdf"
    shelf.download(faithful)
    assert faithful.read_bytes() == content("mine")
    edit, words = DOWNLOAD_TAMPERING[tampering]
    edit(shelf)
    destination = tmp_path / "out" / "plan.pdf"
    destination.parent.mkdir()
    with pytest.raises(VerificationError, match=words) as caught:
        shelf.download(destination)
    assert caught.value.reason_name == "BAD_RESPONSE"
    assert list(destination.parent.iterdir()) == []  # no file, no .part


def test_a_descriptor_of_another_material_than_asked_is_refused(hub_kit: HubKit) -> None:
    """Offline (the hub answers by the id asked, so only the wire could do this)."""
    descriptor = material_pb2.MaterialDescriptor(
        material=material_pb2.MaterialRef(material_id="MT" + "1" * 32)
    )
    with pytest.raises(BadResponseError, match="another material than asked: asked 'MT0000"):
        verify_download_manifest(
            descriptor,
            TrustedMembers(hub_kit.bundle("platform").ca_cert),
            hub_id=hub_kit.hub_id,
            material_id="MT" + "0" * 32,
        )
