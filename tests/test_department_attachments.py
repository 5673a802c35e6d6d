"""The department connector fetches what a received case references (部门调阅材料): into the
``attachments`` table of its state file and its blob directory, verified end to end, private
(0700/0600), resumable across restarts without refetching, retried while the hub is away and
reported by ``status``; a case the hub refuses to open (closed there) is reported, not lost.
"""

from __future__ import annotations

import hashlib
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cases_world import certificate
from department_world import ITEM, PURPOSE, World, open_world
from hubkit import HubKit
from sqlalchemy import update

from xhub.connectors.common.retry import retryable
from xhub.connectors.department import attachments as fetch
from xhub.connectors.department.status import department_report
from xhub.hub.core.db import CaseDepartmentRow
from xhub.protocol.codes import make_uscc
from xhub.protocol.errors import XhubError
from xhub.protocol.stages import Stage


@pytest.fixture
def world(tmp_path: Path, hub_kit: HubKit) -> Iterator[World]:
    with open_world(tmp_path, hub_kit) as made:
        yield made


def submit_with_attachments(world: World, folder: Path) -> tuple[str, str, str, bytes]:
    """A case referencing one certificate and one material; (case, identifier, id, bytes)."""
    world.applicants += 1
    applicant = make_uscc("9", "2", "440103", f"{world.applicants:08d}")
    cert = certificate(world.kit, "issuer", holder_code=applicant)
    world.kit.client("issuer").publish_certificate(cert)
    content = b"%PDF-1.7 premises " + applicant.encode()
    path = folder / f"premises-{applicant}.pdf"
    path.write_bytes(content)
    material = world.platform.upload_material(
        path, material_type="PREMISES", applicant_code=applicant, media_type="application/pdf"
    ).material
    checklist = world.platform.prepare_case(ITEM, applicant, purpose=PURPOSE)
    receipt = world.platform.submit_case(
        checklist.case_id,
        purpose=PURPOSE,
        applicant_name="荔湾示例餐饮",
        certificate_identifiers=[cert.identifier],
        material_ids=[material.material_id],
    )
    return receipt.case_number, cert.identifier, material.material_id, content


def test_a_received_case_brings_its_attachments_verified_and_private(
    world: World, tmp_path: Path
) -> None:
    case, identifier, material_id, content = submit_with_attachments(world, tmp_path)
    connector = world.connector()
    result = connector.run_once()
    assert (result.received, result.fetched, result.fetch_failed) == (1, 2, 0)
    done = {a.kind: a for a in connector.attachments.all()}
    assert {a.state for a in done.values()} == {fetch.FETCHED}
    material = done[fetch.MATERIAL]
    blob = connector.attachments.file(material)
    assert blob.read_bytes() == content
    assert material.sha256 == hashlib.sha256(content).hexdigest()
    assert material.size == len(content) and material.ref == material_id
    assert done[fetch.CERTIFICATE].ref == identifier
    assert connector.attachments.file(done[fetch.CERTIFICATE]).stat().st_size > 0
    for path in (blob, connector.attachments.file(done[fetch.CERTIFICATE])):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(connector.attachments.directory.stat().st_mode) == 0o700
    assert blob.parent.name == case
    report = department_report(connector.config, connector.state)
    assert report.to_json()["attachments"] == {"fetched": 2, "pending": 0, "failed": 0}


def test_a_restart_resumes_a_half_fetched_case_without_refetching(
    world: World, tmp_path: Path
) -> None:
    submit_with_attachments(world, tmp_path)
    first = world.connector()
    # Receive only (as if it crashed before fetching), leaving a partial download behind.
    first.attachments.fetch_pending = lambda *a, **k: (0, 0)  # type: ignore[method-assign]
    first.run_once()
    assert {a.state for a in first.attachments.all()} == {fetch.PENDING}
    (first.attachments.incoming / "half").write_bytes(b"partial")
    first.close()

    again = world.connector()
    assert not list(again.attachments.incoming.iterdir())  # the partial file is gone
    assert again.run_once().fetched == 2
    fetched_at = {a.ref: a.updated_at for a in again.attachments.all()}
    again.close()
    third = world.connector()
    assert third.run_once().fetched == 0  # nothing fetched twice
    assert {a.ref: a.updated_at for a in third.attachments.all()} == fetched_at
    assert len(third.attachments.all()) == 2  # no duplicates


def test_a_case_closed_at_the_department_is_reported_not_lost(world: World, tmp_path: Path) -> None:
    case, *_ = submit_with_attachments(world, tmp_path)
    with world.kit.session() as session:
        session.execute(
            update(CaseDepartmentRow)
            .where(CaseDepartmentRow.case_number == case)
            .values(stage=int(Stage.NOT_ACCEPTED))
        )
    connector = world.connector()
    result = connector.run_once()
    assert result.received == 1 and result.fetch_failed == 2
    assert case in world.db.inbox()  # the case itself is in the inbox
    failed = connector.attachments.all(fetch.FAILED)
    assert all("CASE_CLOSED" in a.error for a in failed)
    report = department_report(connector.config, connector.state)
    assert report.exit_code(report.counts()) == 1
    assert "ATTACHMENT_FAILED" in report.text()


def test_an_unreachable_hub_leaves_attachments_pending_with_their_attempts(
    world: World, tmp_path: Path
) -> None:
    submit_with_attachments(world, tmp_path)
    connector = world.connector()
    connector.attachments.fetch_pending = lambda *a, **k: (0, 0)  # type: ignore[method-assign]
    connector.run_once()
    del connector.attachments.fetch_pending  # the real one again
    world.kit.stop()
    with pytest.raises(XhubError) as raised:  # the hub stays away, after the retries
        connector.fetch_attachments()
    assert retryable(raised.value)
    pending = connector.attachments.all(fetch.PENDING)
    assert len(pending) == 2 and pending[0].attempts >= 1 and pending[0].error
