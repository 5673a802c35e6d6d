"""Certificate lifecycle over a running hub (SQLite and PostgreSQL) and through the two
commands: renewal overlaps the old certificate until it expires, revocation ends every
certificate, re-enrolment brings the member back under new keys only, and the old keys stay
refused."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from helpers import refused
from hubkit import HubKit
from sqlalchemy import update

from xhub.cli.main import main as xhub_main
from xhub.connectors import HubClient
from xhub.connectors.cli import main as connector_main
from xhub.connectors.sdk.enrolment import generate_keys, install_bundle
from xhub.demo.enrolment import member_keys_held_by_hub
from xhub.hub.core.db import MemberCertificateRow
from xhub.hub.setup import add_member_with_bundle, renew_member_bundle
from xhub.protocol import codes
from xhub.protocol.bundle import MemberBundle, PublicBundle
from xhub.protocol.pki import when
from xhub.v1 import registry_pb2

Code = grpc.StatusCode


def _renew_with_new_tls_key(kit: HubKit, key: str, tmp: Path) -> Path:
    """The member side makes a new TLS key (keeping its signing key), the hub renews."""
    old = kit.bundle(key)
    new_dir = tmp / f"{key}-renewed"
    keys = generate_keys(old.member_id, new_dir, signing_key=old.signing_key)
    added = renew_member_bundle(kit.config, old.member_id, keys.request, bundle_dir=tmp / "pub")
    install_bundle(added.bundle_dir, new_dir)
    return new_dir


def test_a_renewed_certificate_overlaps_the_old_one_until_that_expires(
    kit: HubKit, tmp_path: Path
) -> None:
    issuer = kit.member_id("issuer")
    old = kit.client("platform")
    assert old.get_member(issuer).member_id == issuer
    new_dir = _renew_with_new_tls_key(kit, "platform", tmp_path)
    new = HubClient.from_bundle(new_dir, hub_address=kit.address)
    try:
        assert new.bundle.tls_cert.serial_number != old.bundle.tls_cert.serial_number
        assert new.bundle.signer.key_id == old.bundle.signer.key_id
        # both certificates are admitted: the overlap window
        assert old.get_member(issuer).member_id == issuer
        assert new.get_member(issuer).member_id == issuer
        # the old certificate reaches its own not_after (in the registry)
        ended = datetime.now(UTC) - timedelta(minutes=1)
        with kit.session() as session:
            session.execute(
                update(MemberCertificateRow)
                .where(
                    MemberCertificateRow.serial == format(old.bundle.tls_cert.serial_number, "x")
                )
                .values(not_after=ended)
            )
        error = refused(lambda: old.get_member(issuer), Code.UNAUTHENTICATED, "MEMBER_EXPIRED")
        assert f"expired on {when(ended)}" in str(error)
        assert "xhub member renew" in str(error)
        assert new.get_member(issuer).member_id == issuer
    finally:
        new.close()


def test_re_enrolment_brings_a_revoked_member_back_under_new_keys_only(
    kit: HubKit, tmp_path: Path
) -> None:
    issuer = kit.member_id("issuer")
    member = kit.members["platform"]
    old = kit.client("platform")
    assert old.get_member(issuer)
    kit.revoke("platform", "系统下线")
    refused(lambda: old.get_member(issuer), Code.UNAUTHENTICATED, "MEMBER_REVOKED")

    new_dir = tmp_path / "platform-again"
    keys = generate_keys(member.member_id, new_dir)
    added = add_member_with_bundle(
        kit.config, member.spec, keys.request, bundle_dir=tmp_path / "pub", re_enrol=True
    )
    assert added.enrolment == 2
    install_bundle(added.bundle_dir, new_dir)
    new = HubClient.from_bundle(new_dir, hub_address=kit.address)
    # the old certificate and the old key (a new certificate with the old signing key)
    hybrid = HubClient(
        dataclasses.replace(new.bundle, signing_key=old.bundle.signing_key),
        channel=None,
    )
    try:
        assert new.get_member(issuer).member_id == issuer
        assert new.get_member(member.member_id).status == registry_pb2.MEMBER_STATUS_ACTIVE
        refused(lambda: old.get_member(issuer), Code.UNAUTHENTICATED, "MEMBER_REVOKED")
        error = refused(lambda: hybrid.get_member(issuer), Code.UNAUTHENTICATED, "UNKNOWN_KEY")
        assert "earlier enrolment" in str(error)
        # the registry publishes the earlier key closed (what it signed before still
        # verifies with it) and the new key as the only current one
        published = {k.key_id: k for k in new.get_member(member.member_id).signing_keys}
        current = [k for k, key in published.items() if not key.HasField("valid_until")]
        assert current == [new.bundle.signer.key_id]
        assert published[old.bundle.signer.key_id].HasField("valid_until")
    finally:
        new.close()
        hybrid.close()


# --------------------------------------------------------------------------- the commands


Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Run:
    """`xhub ...` (or `xhub-connector ...` when the first word is "connector"), in-process."""

    def invoke(*args: Any) -> tuple[int, str, str]:
        capsys.readouterr()
        words = [str(a) for a in args]
        code = connector_main(words[1:]) if words[0] == "connector" else xhub_main(words)
        out, err = capsys.readouterr()
        return code, out, err

    return invoke


USCC = codes.make_uscc("1", "1", "440103", "MB2C9041")
MEMBER_ID = f"CN.440103.{USCC}.approval"
_dirs = itertools.count()


def _add(data_dir: Path, csr: Path, *extra: str) -> list[str]:
    return [
        "member", "add", "--data-dir", data_dir, "--csr", csr, "--name", "荔湾区行政审批局",
        "--uscc", USCC, "--division", "440103", "--subsystem", "approval",
        "--roles", "department", *extra,
    ]  # fmt: skip


def _keygen(run: Run, out: Path, *extra: str) -> Path:
    code, stdout, err = run("connector", "keygen", "--member-id", MEMBER_ID, "--out", out, *extra)
    assert code == 0, err
    assert "TLS key (mutual TLS only)" in stdout and "signing key (messages only)" in stdout
    return out / "enrolment.req"


def test_enrol_renew_revoke_re_enrol_with_the_commands(tmp_path: Path, run: Run) -> None:
    data_dir = tmp_path / "hub"
    assert run("init", data_dir)[0] == 0
    member = tmp_path / "member"
    code, out, err = run(*_add(data_dir, _keygen(run, member), "--days", "10"))
    assert code == 0, err
    public = data_dir / "bundles" / MEMBER_ID
    assert f"added {MEMBER_ID}" in out and f"public bundle (no private key): {public}" in out
    code, out, err = run("connector", "bundle", "install", public, "--keys", member)
    assert code == 0, err
    first = MemberBundle.load(member)

    # list shows the expiry and warns: ten days is soon
    code, out, err = run("member", "list", "--data-dir", data_dir)
    assert code == 0
    line = next(line for line in out.splitlines() if MEMBER_ID in line)
    assert f"{first.tls_cert.not_valid_after_utc:%Y-%m-%d} (soon)" in line
    assert f"warning: certificate of {MEMBER_ID} expires on " in err
    assert "renew with `xhub member renew`" in err

    # renewal: a new TLS key, the same signing key, in a new directory
    renewed = tmp_path / "member-2"
    csr = _keygen(run, renewed, "--signing-key", member / "signing.key")
    code, out, err = run("member", "renew", "--data-dir", data_dir, MEMBER_ID, "--csr", csr)
    assert code == 0, err
    assert f"renewed {MEMBER_ID}; its earlier certificates work until their own expiry" in out
    assert run("connector", "bundle", "install", public, "--keys", renewed)[0] == 0
    second = MemberBundle.load(renewed)
    assert second.signer.key_id == first.signer.key_id
    assert second.tls_cert.serial_number != first.tls_cert.serial_number
    code, out, err = run("member", "list", "--data-dir", data_dir)
    assert f"{second.tls_cert.not_valid_after_utc:%Y-%m-%d}" in out and err == ""

    # renewal with a fresh request from the same keys also works
    assert run("connector", "request", "--keys", renewed)[0] == 0
    code, _out, err = run(
        "member", "renew", "--data-dir", data_dir, MEMBER_ID, "--csr", renewed / "enrolment.req"
    )
    assert code == 0, err

    # revoke; adding again is refused and says how to re-enrol; nothing written
    assert run("member", "revoke", "--data-dir", data_dir, MEMBER_ID, "--reason", "撤并")[0] == 0
    again = _keygen(run, tmp_path / "member-3")
    before = sorted(p.name for p in (data_dir / "bundles").rglob("*"))
    code, out, err = run(*_add(data_dir, again))
    assert code == 2 and out == ""
    assert f"member {MEMBER_ID} exists and is revoked since " in err
    assert "(撤并); to enrol it again under new keys, repeat with --re-enrol" in err
    assert sorted(p.name for p in (data_dir / "bundles").rglob("*")) == before
    code, out, err = run(*_add(data_dir, again, "--re-enrol"))
    assert code == 0, err
    assert f"re-enrolled (enrolment 2) {MEMBER_ID}" in out
    assert run("connector", "bundle", "install", public, "--keys", tmp_path / "member-3")[0] == 0
    assert MemberBundle.load(tmp_path / "member-3").signer.key_id != first.signer.key_id
    assert PublicBundle.load(public).signing_key_id != first.signer.key_id

    # through all of it the hub never held a member private key
    from xhub.hub.setup import open_config

    dirs = [member, renewed, tmp_path / "member-3"]
    assert member_keys_held_by_hub(open_config(data_dir), dirs) == []


def test_keygen_never_overwrites_keys_and_a_bad_request_file_is_refused(
    tmp_path: Path, run: Run
) -> None:
    member = tmp_path / "member"
    _keygen(run, member)
    before = (member / "tls.key").read_bytes()
    code, _out, err = run("connector", "keygen", "--member-id", MEMBER_ID, "--out", member)
    assert code == 2 and "keys are never overwritten" in err
    assert (member / "tls.key").read_bytes() == before

    data_dir = tmp_path / "hub"
    assert run("init", data_dir)[0] == 0
    junk = tmp_path / "junk.req"
    junk.write_bytes(
        b"-----BEGIN XHUB ENROLMENT REQUEST-----\nAAAA\n-----END XHUB ENROLMENT REQUEST-----\n"
    )
    code, out, err = run(*_add(data_dir, junk))
    assert code == 2 and out == "" and err.startswith("error:")
    assert not (data_dir / "bundles").exists()
    code, _out, err = run(*_add(data_dir, tmp_path / "missing.req"))
    assert code == 2 and "cannot read the enrolment request" in err


def test_the_hub_dir_check_finds_a_planted_member_key(tmp_path: Path, run: Run) -> None:
    """The demo's assertion is not vacuous: a member key copied into the hub dir is found."""
    data_dir = tmp_path / "hub"
    assert run("init", data_dir)[0] == 0
    member = tmp_path / "member"
    _keygen(run, member)
    from xhub.hub.setup import open_config

    config = open_config(data_dir)
    assert member_keys_held_by_hub(config, [member]) == []
    planted = data_dir / "bundles" / "leak.key"
    planted.parent.mkdir()
    planted.write_bytes((member / "signing.key").read_bytes())
    assert member_keys_held_by_hub(config, [member]) == [planted]


def test_a_renewal_never_writes_into_a_keys_directory(tmp_path: Path, run: Run) -> None:
    data_dir = tmp_path / "hub"
    assert run("init", data_dir)[0] == 0
    member = tmp_path / "member"
    assert run(*_add(data_dir, _keygen(run, member)))[0] == 0
    public = data_dir / "bundles" / MEMBER_ID
    assert run("connector", "bundle", "install", public, "--keys", member)[0] == 0
    keys_before = {name: (member / name).read_bytes() for name in ("tls.key", "signing.key")}
    assert run("connector", "request", "--keys", member)[0] == 0
    code, _out, err = run(
        "member", "renew", "--data-dir", data_dir, MEMBER_ID, "--csr", member / "enrolment.req",
        "--out", member,
    )  # fmt: skip
    assert code == 2 and "never into a member's keys directory" in err
    assert {name: (member / name).read_bytes() for name in keys_before} == keys_before
