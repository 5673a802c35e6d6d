"""CA renewal (根证书更新) over real hubs on mTLS, restarted between the phases: ``xhub ca
renew`` (both roots trusted, new certificates from the new CA), members learn the new root
from the hand-over the old CA signed, ``switch-server`` (the hub's own certificates under the
new CA), ``retire-old`` (the old CA refused). Forged hand-overs are refused naming why.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from hubkit import HubKit, MemberDef
from intake_world import COMPANY, ITEM_CODE, LICENCE_TYPE, PERSON, PURPOSE, certificate
from intake_world import make_world as make_intake_world

from xhub.cli import main as cli
from xhub.connectors import HubClient
from xhub.connectors.cli import main as connector_main
from xhub.connectors.sdk.auditor import export_evidence
from xhub.connectors.sdk.client import RetryPolicy
from xhub.connectors.sdk.enrolment import generate_keys, install_bundle
from xhub.hub.core.ca import CertificateAuthority
from xhub.hub.core.ca_roots import read_ca_handovers, trusted_roots
from xhub.hub.setup import renew_member_bundle
from xhub.protocol.bundle import CA_CERT
from xhub.protocol.ca_handover import (
    CaHandoverError,
    follow_ca_handovers,
    handovers_json,
)
from xhub.protocol.errors import BadResponseError, TransportError
from xhub.protocol.log.evidence import EvidenceBundle, verify_bundle
from xhub.protocol.log.note import NoteVerifier
from xhub.protocol.pki import load_certificates
from xhub.v1 import registry_pb2

DER = Encoding.DER
LATE = MemberDef("late", "广东省自然资源厅", "440000", ("issuer",), "MB2C9074", "estate")


def _ca(kit: HubKit, *command: str) -> int:
    return cli.main(["ca", *command, "--data-dir", str(kit.config.data_dir)])


def _roots_in(directory: Path) -> int:
    return len(load_certificates((directory / CA_CERT).read_bytes()))


def _renew_member(kit: HubKit, key: str, tmp: Path) -> HubClient:
    """The member makes a new TLS key (same signing key); the hub renews from the new CA."""
    old = kit.bundle(key)
    new_dir = tmp / f"{key}-renewed"
    keys = generate_keys(old.member_id, new_dir, signing_key=old.signing_key)
    added = renew_member_bundle(kit.config, old.member_id, keys.request, bundle_dir=tmp / key)
    install_bundle(added.bundle_dir, new_dir)
    kit.members[key] = dataclasses.replace(kit.members[key], bundle_dir=new_dir)
    return kit.client(key)


def _one_try(kit: HubKit, key: str) -> HubClient:
    return kit.client(key, retry=RetryPolicy(attempts=1), timeout=3.0)


def _pull_licence(platform: HubClient) -> set[str]:
    """The platform prepares a case and pulls the licence: the issuer's signature is checked
    against the issuer's certificate, which must chain to one of the platform's roots."""
    checklist = platform.prepare_case(
        ITEM_CODE, COMPANY, purpose=PURPOSE, legal_representative_code=PERSON
    )
    pulled = platform.pull_certificates(checklist.case_id, COMPANY, [LICENCE_TYPE], purpose=PURPOSE)
    return {pulled.issuer_member_id for pulled in pulled.certificates}


def test_members_move_to_a_renewed_ca_without_downtime(kit: HubKit, tmp_path: Path) -> None:
    world = make_intake_world(kit, publish=False)
    old_root = kit.bundle("platform").ca_cert

    # Phase 1: a new CA; the hub trusts both roots and issues from the new one.
    assert _ca(kit, "renew") == 0
    kit.restart()
    assert len(trusted_roots(kit.config.paths)) == 2
    new_root = trusted_roots(kit.config.paths)[1]
    late_member = kit.add_member(LATE)
    assert _roots_in(late_member.bundle_dir) == 2  # a new bundle holds both roots
    late = kit.client("late")
    assert late.bundle.tls_cert.issuer == new_root.subject
    platform = kit.client("platform")  # its bundle holds the old root only
    assert _roots_in(kit.members["platform"].bundle_dir) == 1
    # Both exchange through the renewed hub: the new issuer publishes, the old platform pulls
    # and meets a certificate of a root it does not hold: it learns the root first.
    late.publish_certificate(certificate(kit, "late", serial="2026000001"))
    assert _pull_licence(platform) == {kit.member_id("late")}
    assert [c.subject for c in platform.bundle.ca_certs] == [old_root.subject, new_root.subject]
    assert _roots_in(kit.members["platform"].bundle_dir) == 2  # persisted in ca.pem
    world.issuer.publish_certificate(certificate(kit, "issuer", serial="2026000002"))

    # Phase 2: the hub's own certificates move to the new CA.
    auditor_dir = kit.members["auditor"].bundle_dir
    assert _ca(kit, "switch-server") == 0
    kit.restart()
    assert kit.member_id("late") in _pull_licence(platform)  # over a fresh channel
    assert late.get_member(kit.member_id("platform")).member_id == kit.member_id("platform")
    # The auditor never learnt the root: the handshake fails and the error says what to do.
    with pytest.raises(TransportError) as failed:
        _one_try(kit, "auditor").get_member(kit.member_id("platform"))
    assert "learn-roots BUNDLE --handovers" in failed.value.message
    handovers = kit.config.paths.ca_handovers
    assert connector_main(["learn-roots", str(auditor_dir), "--handovers", str(handovers)]) == 0
    assert _roots_in(auditor_dir) == 2
    assert kit.client("auditor").get_member(kit.member_id("late")).member_id == (
        kit.member_id("late")
    )

    # A member renewed onto the new CA works; the others are still on the old one.
    issuer = _renew_member(kit, "issuer", tmp_path)
    assert issuer.bundle.tls_cert.issuer == new_root.subject
    issuer.publish_certificate(certificate(kit, "issuer", serial="2026000003"))
    _renew_member(kit, "platform", tmp_path)

    # Phase 3: retiring the old CA is refused while active members hold only its certificates.
    assert _ca(kit, "retire-old") == 2
    assert len(trusted_roots(kit.config.paths)) == 2  # nothing written
    assert _ca(kit, "retire-old", "--force") == 0
    kit.restart()
    assert trusted_roots(kit.config.paths) == (new_root,)
    with pytest.raises(TransportError):  # the department's certificate is the old CA's
        _one_try(kit, "department").get_member(kit.member_id("issuer"))
    assert issuer.get_member(kit.member_id("late")).member_id == kit.member_id("late")
    assert _pull_licence(kit.client("platform")) == {
        kit.member_id("late"),
        kit.member_id("issuer"),
    }


def test_retire_old_lists_the_members_still_on_the_old_ca(
    hub_kit: HubKit, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _ca(hub_kit, "retire-old") == 2
    assert "nothing to retire" in capsys.readouterr().err
    assert _ca(hub_kit, "switch-server") == 2
    assert "renew the CA first" in capsys.readouterr().err
    assert _ca(hub_kit, "renew") == 0
    assert _ca(hub_kit, "retire-old") == 2
    assert "switch-server" in capsys.readouterr().err
    assert _ca(hub_kit, "switch-server") == 0
    capsys.readouterr()
    assert _ca(hub_kit, "retire-old") == 2
    refusal = capsys.readouterr().err
    for key in ("issuer", "platform", "department", "auditor"):
        assert hub_kit.member_id(key) in refusal
    assert hub_kit.config.hub_id not in refusal
    # member list and ca status say which CA each member's certificate chains to
    hub_kit.add_member(LATE)
    assert cli.main(["member", "list", "--data-dir", str(hub_kit.config.data_dir)]) == 0
    listing = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:-1]}
    assert " #1 " in listing[hub_kit.member_id("platform")]
    assert " #2 " in listing[hub_kit.member_id("late")]
    assert _ca(hub_kit, "status") == 0
    status = capsys.readouterr().out
    assert "CA #1" in status and "[trusted]" in status and "[trusted, issuing]" in status
    assert "hub TLS server certificate: CA #2" in status
    assert "4 active member(s) not yet on the issuing CA" in status


def test_a_forged_ca_hand_over_is_refused(hub_kit: HubKit) -> None:
    assert _ca(hub_kit, "renew") == 0
    assert read_ca_handovers(hub_kit.config.paths)  # the genuine one, replaced below
    forged = _forge(hub_kit.bundle("platform").ca_cert)
    hub_kit.config.paths.ca_handovers.write_bytes(handovers_json([forged]))
    hub_kit.restart()
    platform = hub_kit.client("platform")
    with pytest.raises(BadResponseError) as refused:
        platform.learn_ca_roots()
    assert "do not follow from the CA roots in our bundle" in refused.value.message
    assert "does not verify with the key of" in refused.value.message
    assert platform.bundle.ca_certs == (hub_kit.bundle("platform").ca_cert,)
    assert _roots_in(hub_kit.members["platform"].bundle_dir) == 1  # nothing written
    # The same file handed over offline is refused too, and nothing is written.
    bundle_dir = str(hub_kit.members["platform"].bundle_dir)
    forged_file = str(hub_kit.config.paths.ca_handovers)
    assert connector_main(["learn-roots", bundle_dir, "--handovers", forged_file]) == 2
    assert _roots_in(hub_kit.members["platform"].bundle_dir) == 1


def test_a_hub_key_rotated_after_the_renewal_is_followed_by_old_bundles(
    hub_kit: HubKit,
) -> None:
    """Between ``renew`` and ``switch-server`` the hub signing key rotates: its new
    certificate is the new CA's, and a member holding only the old root still follows the
    hand-over (the CA hand-over beside it reaches the new root from the old)."""
    platform = hub_kit.client("platform")
    assert _ca(hub_kit, "renew") == 0
    assert cli.main(["keys", "rotate-hub-signing", "--data-dir", str(hub_kit.config.data_dir)]) == 0
    hub_kit.restart()
    assert platform.get_member(hub_kit.member_id("issuer")).member_id == hub_kit.member_id("issuer")
    assert len(platform.transport.hub_keys) == 2
    assert _roots_in(hub_kit.members["platform"].bundle_dir) == 1  # no root learnt here


def _forge(old: x509.Certificate) -> registry_pb2.CaHandover:
    """A hand-over to the forger's own CA, from a CA under the old CA's very name but with a
    key that is not the old CA's."""
    name = old.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    forger = CertificateAuthority.create(str(name))
    assert forger.certificate.subject == old.subject
    return forger.hand_over_to(CertificateAuthority.create("xhub forged CA"))


# -- offline: what a hand-over must be -------------------------------------------------------


def _pair() -> tuple[CertificateAuthority, CertificateAuthority]:
    return CertificateAuthority.create("old CA"), CertificateAuthority.create("new CA")


def _swap_root(handover: registry_pb2.CaHandover, other: CertificateAuthority) -> None:
    handover.new_ca_certificate_der = other.certificate.public_bytes(DER)


@pytest.mark.parametrize(
    ("tamper", "named"),
    [
        ("signed by another key", "does not verify with the key of"),
        ("carries another root", "with another key than the new root"),
        ("from an unknown CA", "none of the CA roots in our bundle"),
        ("garbage", "not a certificate"),
    ],
)
def test_a_hand_over_that_disagrees_names_what(tamper: str, named: str) -> None:
    old, new = _pair()
    handover = old.hand_over_to(new)
    roots: tuple[x509.Certificate, ...] = (old.certificate,)
    if tamper == "signed by another key":
        roots = (CertificateAuthority.create("old CA").certificate,)
    elif tamper == "carries another root":
        _swap_root(handover, CertificateAuthority.create("new CA"))
    elif tamper == "from an unknown CA":
        roots = (CertificateAuthority.create("some other CA").certificate,)
    else:
        handover.statement_der = b"not der"
    with pytest.raises(CaHandoverError) as refused:
        follow_ca_handovers(roots, [handover])
    assert named in str(refused.value)


def test_hand_overs_chain_and_known_roots_are_skipped() -> None:
    first, second = _pair()
    third = CertificateAuthority.create("third CA")
    handovers = [first.hand_over_to(second), second.hand_over_to(third)]
    reached = follow_ca_handovers((first.certificate,), handovers)
    assert reached == (first.certificate, second.certificate, third.certificate)
    # a bundle issued after the first renewal (or after the old CA was retired) holds the
    # second root only: the older hand-over is skipped, the newer one followed
    assert follow_ca_handovers((second.certificate,), handovers)[-1] == third.certificate
    # new CAs can certify one CA below them (a future cross-sign is possible)
    constraints = second.certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.value.path_length == 1


def test_audit_evidence_carries_the_renewed_roots(hub_kit: HubKit) -> None:
    """An auditor's evidence bundle names members of both CAs; it carries both roots (the
    auditor learns the new one on meeting it) and verifies offline."""
    assert _ca(hub_kit, "renew") == 0
    hub_kit.restart()
    hub_kit.add_member(LATE)
    late = hub_kit.client("late")
    late.prove_logged(late.lookup_member(hub_kit.member_id("issuer")).header.receipt)
    auditor = hub_kit.client("auditor")
    bundle, _pending = export_evidence(auditor)
    assert hub_kit.member_id("late") in bundle.members
    assert len(bundle.more_ca_certificates_der) == 1
    report = verify_bundle(
        EvidenceBundle.from_json(bundle.to_json()), NoteVerifier.from_vkey(auditor.bundle.log_key)
    )
    assert report.entries >= 1
