"""Publishing by member, not by USCC (issue 12, item 9): another member of the same
organisation (same USCC, another subsystem) may publish certificates of its own, but not the
next version of one the first member published, nor change its status.
"""

from __future__ import annotations

import pytest
from certificates_world import DENIED, PUBLISH, Code, issued_by, rows
from helpers import refused
from hubkit import DEFAULT_MEMBERS, HubKit, MemberDef

from xhub.certificates_store.model import REVOKED, SUSPENDED, VALID
from xhub.protocol.log import merkle
from xhub.v1 import audit_pb2

CHANGE_STATUS = "/xhub.v1.CertificateService/ChangeCertificateStatus"

# The provincial issuer's second subsystem: same organisation, same USCC.
[FIRST] = [m for m in DEFAULT_MEMBERS if m.key == "issuer"]
SIBLING = MemberDef("sibling", FIRST.name, FIRST.division, ("issuer",), FIRST.org_base8, "archive")


@pytest.fixture
def two(kit: HubKit) -> HubKit:
    kit.add_member(SIBLING)
    assert kit.members["sibling"].spec.uscc == kit.members["issuer"].spec.uscc
    assert kit.member_id("sibling") != kit.member_id("issuer")
    return kit


def _denied_entry(kit: HubKit, leaf_hex: str, method: str) -> audit_pb2.AuditEntry:
    leaf = bytes.fromhex(leaf_hex)
    [record] = [
        r
        for r in kit.client("auditor").query_audit(method=method, decision=DENIED)
        if merkle.leaf_hash(r.entry) == leaf
    ]
    return audit_pb2.AuditEntry.FromString(record.entry)


def test_a_sibling_member_cannot_publish_the_next_version(two: HubKit) -> None:
    issuer, sibling = two.client("issuer"), two.client("sibling")
    v1 = issued_by(two)
    issuer.publish_certificate(v1)
    v2 = issued_by(two, version=2, valid_until="2046-01-09", predecessor=v1.identifier)
    error = refused(lambda: sibling.publish_certificate(v2), Code.PERMISSION_DENIED, "NOT_ISSUER")
    assert error.metadata["publisher"] == two.member_id("issuer")
    assert error.metadata["identifier"] == v1.identifier
    entry = _denied_entry(two, error.metadata["audit_leaf"], PUBLISH)
    assert (entry.sender, entry.reason) == (two.member_id("sibling"), "NOT_ISSUER")
    # The same bytes signed by the sibling are not its to (re)publish either.
    refused(lambda: sibling.publish_certificate(v1), Code.PERMISSION_DENIED, "NOT_ISSUER")
    [stored] = rows(two, v1)
    assert (stored.version, stored.is_latest, stored.issuer_member_id) == (
        1,
        1,
        two.member_id("issuer"),
    )
    # The publisher itself may; and the sibling publishes certificates of its own.
    assert not issuer.publish_certificate(v2).already_published
    own = issued_by(two, serial="2024000777")
    assert not sibling.publish_certificate(own).already_published
    assert rows(two, own)[0].issuer_member_id == two.member_id("sibling")
    refused(
        lambda: issuer.publish_certificate(issued_by(two, serial="2024000777", version=2)),
        Code.PERMISSION_DENIED,
        "NOT_ISSUER",
    )


def test_a_sibling_member_cannot_change_the_status(two: HubKit) -> None:
    issuer, sibling = two.client("issuer"), two.client("sibling")
    cert = issued_by(two)
    issuer.publish_certificate(cert)
    error = refused(
        lambda: sibling.change_certificate_status(cert.identifier, REVOKED, reason="越权"),
        Code.PERMISSION_DENIED,
        "NOT_ISSUER",
    )
    assert error.metadata["publisher"] == two.member_id("issuer")
    entry = _denied_entry(two, error.metadata["audit_leaf"], CHANGE_STATUS)
    assert (entry.sender, entry.reason) == (two.member_id("sibling"), "NOT_ISSUER")
    [row] = rows(two, cert)
    assert (row.status, row.status_reason) == (VALID, "")
    changed = issuer.change_certificate_status(cert.identifier, SUSPENDED, reason="整改")
    assert changed.status == SUSPENDED
