"""Enrolment by member-held keys (接入申请): the request's proofs of possession, the hub's
decisions on add / re-enrol / renew over the registry (SQLite and PostgreSQL), and nothing
written on a refusal."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID
from registry_world import (
    CITY,
    NOW,
    bare_engine_fixture,  # noqa: F401  (the bare_engine fixture)
    ca_fixture,  # noqa: F401  (the ca fixture)
    engine_fixture,  # noqa: F401  (the engine fixture)
    sessions_fixture,  # noqa: F401  (the sessions fixture)
    uscc_for,
)
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from xhub.hub.core.ca import CertificateAuthority
from xhub.hub.core.db import MemberCertificateRow, MemberKeyRow, MemberRoleRow, MemberRow
from xhub.hub.registry.enrolment import certificates_of, enrol_member, renew_member
from xhub.hub.registry.store import (
    ACTIVE,
    REVOKED,
    MemberSpec,
    RegistryError,
    revoke_member,
    validate_member,
)
from xhub.protocol.enrolment import (
    PAYLOAD_TYPE,
    EnrolmentError,
    armor,
    make_request,
    unarmor,
    verify_request,
)
from xhub.protocol.envelope import sign_payload
from xhub.protocol.pki import member_uri, when
from xhub.protocol.signing import KeySigner, PrivateKey, generate_private_key, key_id_for
from xhub.v1 import envelope_pb2, registry_pb2

MEMBER = f"CN.440100.{uscc_for('440100', CITY[2])}"
OTHER = f"CN.440103.{uscc_for('440103', '3H8J2K4L')}"
_SPKI = PublicFormat.SubjectPublicKeyInfo


def p256() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def csr_der(key: Any, member_id: str = MEMBER) -> bytes:
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, member_id)]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(member_uri(member_id))]),
            critical=False,
        )
    )
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(Encoding.DER)


def forged(
    csr: bytes,
    signing_key: PrivateKey,
    *,
    member_id: str = MEMBER,
    sign_with: PrivateKey | None = None,
) -> envelope_pb2.Envelope:
    """A request with chosen parts, signed by ``sign_with`` (default: its own signing key)."""
    named = KeySigner(signing_key)
    request = registry_pb2.EnrolmentRequest(
        member_id=member_id,
        csr_der=csr,
        signing_key=registry_pb2.PublicKey(
            key_id=named.key_id,
            algorithm=named.algorithm,
            public_key_der=named.verifier().public_key.public_bytes(Encoding.DER, _SPKI),
        ),
    )
    return sign_payload(
        request.SerializeToString(), PAYLOAD_TYPE, KeySigner(sign_with or signing_key)
    )


def _no_signature() -> envelope_pb2.Envelope:
    envelope = make_request(MEMBER, p256(), p256())
    del envelope.signatures[:]
    return envelope


def _signed_by_another_key() -> envelope_pb2.Envelope:
    return forged(csr_der(p256()), p256(), sign_with=p256())


def _signature_bytes_flipped() -> envelope_pb2.Envelope:
    envelope = make_request(
        MEMBER, p256(), generate_private_key(registry_pb2.KEY_ALGORITHM_ED25519)
    )
    sig = bytearray(envelope.signatures[0].sig)
    sig[5] ^= 1
    envelope.signatures[0].sig = bytes(sig)
    return envelope


def _payload_altered_after_signing() -> envelope_pb2.Envelope:
    envelope = make_request(MEMBER, p256(), p256())
    request = registry_pb2.EnrolmentRequest.FromString(envelope.payload)
    request.member_id = OTHER
    envelope.payload = request.SerializeToString()
    return envelope


def _csr_signature_broken() -> envelope_pb2.Envelope:
    der = bytearray(csr_der(p256()))
    der[-3] ^= 1  # inside the CSR's own signature; the signing key then signs the damage
    return forged(bytes(der), p256())


def _tls_key_p384() -> envelope_pb2.Envelope:
    return forged(csr_der(ec.generate_private_key(ec.SECP384R1())), p256())


def _tls_key_ed25519() -> envelope_pb2.Envelope:
    return forged(csr_der(ed25519.Ed25519PrivateKey.generate()), p256())


def _csr_names_another_member() -> envelope_pb2.Envelope:
    return forged(csr_der(p256(), OTHER), p256())


def _csr_without_san() -> envelope_pb2.Envelope:
    key = p256()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, MEMBER)]))
        .sign(key, hashes.SHA256())
    )
    return forged(csr.public_bytes(Encoding.DER), p256())


def _one_key_for_both() -> envelope_pb2.Envelope:
    key = p256()
    return forged(csr_der(key), key)


def _wrong_payload_type() -> envelope_pb2.Envelope:
    envelope = make_request(MEMBER, p256(), p256())
    envelope.payload_type = "xhub.v1.MemberLookup"
    return envelope


REFUSED_REQUESTS: list[tuple[Callable[[], envelope_pb2.Envelope], str]] = [
    (_no_signature, "exactly one signature"),
    (_signed_by_another_key, "not signed by the signing key it names (no proof of possession)"),
    (_signature_bytes_flipped, "signing key's proof of possession does not verify"),
    (_payload_altered_after_signing, "signing key's proof of possession does not verify"),
    (_csr_signature_broken, "CSR's signature does not verify (no proof of possession"),
    (_tls_key_p384, "the CSR's TLS key is ECDSA secp384r1; the hub CA issues ECDSA P-256 only"),
    (_tls_key_ed25519, "the hub CA issues ECDSA P-256 only"),
    (_csr_names_another_member, f"the CSR names {OTHER}, the request names {MEMBER}"),
    (_csr_without_san, "the CSR does not name the member: certificate has no subjectAltName"),
    (_one_key_for_both, "two different keys"),
    (_wrong_payload_type, "not an enrolment request"),
]


@pytest.mark.parametrize(
    ("make", "message"), REFUSED_REQUESTS, ids=[m.__name__.strip("_") for m, _ in REFUSED_REQUESTS]
)
def test_a_bad_request_is_refused_naming_the_check(
    make: Callable[[], envelope_pb2.Envelope], message: str
) -> None:
    with pytest.raises(EnrolmentError) as info:
        verify_request(make())
    assert message in str(info.value)


@pytest.mark.parametrize(
    "algorithm", [registry_pb2.KEY_ALGORITHM_ECDSA_P256_SHA256, registry_pb2.KEY_ALGORITHM_ED25519]
)
def test_a_good_request_round_trips_through_its_armour(algorithm: Any) -> None:
    tls, signing = p256(), generate_private_key(algorithm)
    text = armor(make_request(MEMBER, tls, signing))
    assert text.startswith(b"-----BEGIN XHUB ENROLMENT REQUEST-----\n")
    verified = verify_request(unarmor(text))
    assert verified.member_id == MEMBER
    assert verified.tls_key_id == key_id_for(tls.public_key())
    assert verified.signing_key.key_id == key_id_for(signing.public_key())
    assert verified.signing_key.algorithm == algorithm


def test_garbage_is_not_a_request() -> None:
    for data in (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", b"\xff\x00"):
        with pytest.raises(EnrolmentError):
            unarmor(data)


# --------------------------------------------------------------------------- the hub decides


def spec_for(member_id: str = MEMBER, name: str = CITY[0]) -> MemberSpec:
    _, division, uscc = member_id.split(".")
    return validate_member(name=name, uscc=uscc, division=division, roles=["issuer"])


def table_counts(sessions: sessionmaker[Session]) -> dict[str, int]:
    with sessions() as session:
        return {
            row.__tablename__: int(session.scalar(select(func.count()).select_from(row)) or 0)
            for row in (MemberRow, MemberRoleRow, MemberKeyRow, MemberCertificateRow)
        }


class Member:
    """A member's side: its keys (held by the test, never by the hub)."""

    def __init__(self, algorithm: Any = registry_pb2.KEY_ALGORITHM_ECDSA_P256_SHA256) -> None:
        self.tls = p256()
        self.signing = generate_private_key(algorithm)

    def request(self, member_id: str = MEMBER) -> envelope_pb2.Envelope:
        return make_request(member_id, self.tls, self.signing)


def enrol(
    sessions: sessionmaker[Session], ca: CertificateAuthority, member: Member, **kwargs: Any
) -> Any:
    with sessions.begin() as session:
        return enrol_member(session, ca, spec_for(), member.request(), now=NOW, **kwargs)


def refused_writing_nothing(
    sessions: sessionmaker[Session], action: Callable[[Session], object], message: str
) -> RegistryError:
    before = table_counts(sessions)
    with pytest.raises(RegistryError) as info, sessions.begin() as session:
        action(session)
    assert message in str(info.value)
    assert table_counts(sessions) == before
    return info.value


def test_enrolment_registers_the_signing_key_and_the_certificate_only(
    sessions: sessionmaker[Session], ca: CertificateAuthority
) -> None:
    member = Member(registry_pb2.KEY_ALGORITHM_ED25519)
    enrolled = enrol(sessions, ca, member)
    assert enrolled.certificate.public_key().public_bytes(
        Encoding.DER, _SPKI
    ) == member.tls.public_key().public_bytes(Encoding.DER, _SPKI)
    with sessions() as session:
        row = session.get(MemberRow, MEMBER)
        assert row is not None and row.status == ACTIVE and row.enrolment == 1
        assert [k.key_id for k in row.keys] == [key_id_for(member.signing.public_key())]
        [cert] = certificates_of(session, MEMBER)
        assert cert.serial == row.certificate_serial and cert.revoked_at is None
    assert table_counts(sessions) == {
        "members": 1,
        "member_roles": 1,
        "member_keys": 1,
        "member_certificates": 1,
    }


def test_a_request_for_another_member_id_than_the_spec_is_refused(
    sessions: sessionmaker[Session], ca: CertificateAuthority
) -> None:
    error = refused_writing_nothing(
        sessions,
        lambda s: enrol_member(s, ca, spec_for(), Member().request(OTHER)),
        f"the request is for {OTHER}, but --division/--uscc/--subsystem give {MEMBER}",
    )
    assert error.metadata["field"] == "member_id"


def test_a_request_failing_its_proof_is_refused_by_the_hub(
    sessions: sessionmaker[Session], ca: CertificateAuthority
) -> None:
    refused_writing_nothing(
        sessions,
        lambda s: enrol_member(s, ca, spec_for(), _signed_by_another_key()),
        "enrolment request refused: the request is not signed by the signing key it names",
    )


def test_a_member_id_that_exists_is_refused(
    sessions: sessionmaker[Session], ca: CertificateAuthority
) -> None:
    first = enrol(sessions, ca, Member())
    refused_writing_nothing(
        sessions,
        lambda s: enrol_member(s, ca, spec_for(name="冒名单位"), Member().request()),
        f"member {MEMBER} already exists and is active (certificate valid until "
        f"{when(first.certificate.not_valid_after_utc)}); renew its certificate with "
        f"`xhub member renew {MEMBER} --csr FILE`",
    )


def test_a_revoked_member_is_re_enrolled_only_explicitly(
    sessions: sessionmaker[Session], ca: CertificateAuthority
) -> None:
    old = Member()
    enrol(sessions, ca, old)
    revoked_at = NOW + timedelta(days=3)
    with sessions.begin() as session:
        revoke_member(session, MEMBER, "机构撤并", now=revoked_at)
    new = Member()
    refused_writing_nothing(
        sessions,
        lambda s: enrol_member(s, ca, spec_for(), new.request()),
        f"member {MEMBER} exists and is revoked since {when(revoked_at)} (机构撤并); to "
        "enrol it again under new keys, repeat with --re-enrol",
    )
    # the old keys cannot come back
    reused_signing = Member()
    reused_signing.signing = old.signing
    refused_writing_nothing(
        sessions,
        lambda s: enrol_member(s, ca, spec_for(), reused_signing.request(), re_enrol=True),
        "re-enrolment needs a new signing key",
    )
    reused_tls = Member()
    reused_tls.tls = old.tls
    refused_writing_nothing(
        sessions,
        lambda s: enrol_member(s, ca, spec_for(), reused_tls.request(), re_enrol=True),
        "re-enrolment needs a new TLS key",
    )
    again = enrol(sessions, ca, new, re_enrol=True)
    assert again.enrolment == 2
    with sessions() as session:
        row = session.get(MemberRow, MEMBER)
        assert row is not None
        assert (row.status, row.revoked_at, row.revoke_reason) == (ACTIVE, None, "")
        keys = {k.key_id: k.enrolment for k in row.keys}
        assert keys == {
            key_id_for(old.signing.public_key()): 1,  # kept for history, retired
            key_id_for(new.signing.public_key()): 2,
        }
        certs = certificates_of(session, MEMBER)
        assert [(c.enrolment, c.revoked_at is None) for c in certs] == [(1, False), (2, True)]


def test_re_enrolment_of_an_active_or_unknown_member_is_refused(
    sessions: sessionmaker[Session], ca: CertificateAuthority
) -> None:
    refused_writing_nothing(
        sessions,
        lambda s: enrol_member(s, ca, spec_for(), Member().request(), re_enrol=True),
        "is not enrolled yet",
    )
    enrol(sessions, ca, Member())
    refused_writing_nothing(
        sessions,
        lambda s: enrol_member(s, ca, spec_for(), Member().request(), re_enrol=True),
        "already exists and is active",
    )


def test_renewal_adds_a_certificate_and_keeps_the_old_one(
    sessions: sessionmaker[Session], ca: CertificateAuthority
) -> None:
    member = Member()
    first = enrol(sessions, ca, member)
    member.tls = p256()  # the renewal carries a new TLS key
    with sessions.begin() as session:
        renewed = renew_member(
            session, ca, MEMBER, member.request(), days=30, now=NOW + timedelta(days=1)
        )
    assert renewed.certificate.serial_number != first.certificate.serial_number
    with sessions() as session:
        row = session.get(MemberRow, MEMBER)
        assert row is not None
        assert row.certificate_serial == format(renewed.certificate.serial_number, "x")
        assert row.not_after == renewed.certificate.not_valid_after_utc
        certs = certificates_of(session, MEMBER)
        assert len(certs) == 2 and all(c.revoked_at is None for c in certs)


def test_renewal_refusals_write_nothing(
    sessions: sessionmaker[Session], ca: CertificateAuthority
) -> None:
    member = Member()
    enrol(sessions, ca, member)
    refused_writing_nothing(
        sessions,
        lambda s: renew_member(s, ca, MEMBER, Member().request()),
        "is not a current signing key of",
    )
    refused_writing_nothing(
        sessions,
        lambda s: renew_member(s, ca, MEMBER, member.request(OTHER)),
        f"the request is for {OTHER}",
    )
    with sessions.begin() as session:
        revoke_member(session, MEMBER, "撤销", now=NOW)
    refused_writing_nothing(
        sessions,
        lambda s: renew_member(s, ca, MEMBER, member.request()),
        "is revoked since",
    )
    refused_writing_nothing(
        sessions, lambda s: renew_member(s, ca, OTHER, member.request(OTHER)), "no member"
    )


def test_revocation_revokes_every_certificate(
    sessions: sessionmaker[Session], ca: CertificateAuthority
) -> None:
    member = Member()
    enrol(sessions, ca, member)
    with sessions.begin() as session:
        renew_member(session, ca, MEMBER, member.request(), now=NOW)
        revoke_member(session, MEMBER, "撤销", now=NOW)
    with sessions() as session:
        assert [c.revoked_at for c in certificates_of(session, MEMBER)] == [NOW, NOW]
        row = session.get(MemberRow, MEMBER)
        assert row is not None and row.status == REVOKED


# --------------------------------------------------------------------------- migration


def test_migration_0008_copies_existing_certificates_into_the_history(
    bare_engine: Any, ca: CertificateAuthority
) -> None:
    """Members enrolled before 0008 keep working: their current certificate becomes the
    first row of their history, enrolment 1, revoked if the member was."""
    from alembic import command
    from sqlalchemy import column, insert, table

    from xhub.hub.core.db import alembic_config, migrate

    migrate(bare_engine, "0007_origin_checks")
    cert = ca.issue(p256().public_key(), "old", member_id=MEMBER, now=NOW)
    members = table(
        "members",
        *(
            column(name)
            for name in (
                "member_id", "name", "uscc", "division_code", "level", "subsystem", "status",
                "certificate_der", "certificate_serial", "not_after", "legacy_uscc",
                "created_at", "revoked_at", "revoke_reason",
            )
        ),
    )  # fmt: skip
    with bare_engine.begin() as connection:
        connection.execute(
            insert(members).values(
                member_id=MEMBER, name="旧单位", uscc=MEMBER.split(".")[2], division_code="440100",
                level=2, subsystem="", status=int(REVOKED),
                certificate_der=cert.public_bytes(Encoding.DER),
                certificate_serial=format(cert.serial_number, "x"),
                not_after=cert.not_valid_after_utc.replace(tzinfo=None), legacy_uscc=0,
                created_at=NOW.replace(tzinfo=None), revoked_at=NOW.replace(tzinfo=None),
                revoke_reason="撤销",
            )
        )  # fmt: skip
    migrate(bare_engine)
    with Session(bare_engine) as session:
        row = session.get(MemberRow, MEMBER)
        assert row is not None and row.enrolment == 1
        [history] = certificates_of(session, MEMBER)
        assert history.serial == format(cert.serial_number, "x")
        assert history.certificate_der == cert.public_bytes(Encoding.DER)
        assert history.not_before == cert.not_valid_before_utc
        assert history.not_after == cert.not_valid_after_utc
        assert (history.enrolment, history.revoked_at) == (1, NOW)
    command.downgrade(alembic_config(bare_engine), "0007_origin_checks")
    migrate(bare_engine)
