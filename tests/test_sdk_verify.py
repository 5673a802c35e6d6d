"""The SDK's offline checks as tables: no hub, no channel, no network.

Each row builds what a hub would send (envelopes sealed with ``xhub.protocol.envelope.seal``,
keys from ``xhub.protocol.signing``, member certificates from a throwaway CA), breaks one
thing, and names the check that must refuse it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from xhub.certificates_store.model import new_certificate
from xhub.connectors.sdk._internal.proofs import (
    VerifiedCheckpoint,
    needs_consistency_proof,
    verify_checkpoint,
    verify_consistency_proof,
    verify_inclusion_proof,
)
from xhub.connectors.sdk._internal.verify import (
    ContentCheck,
    TrustedMembers,
    check_member_certificate,
    issuers_to_fetch,
    open_answer,
    verify_dispatched_case,
    verify_pulled,
    verify_pulled_certificate,
)
from xhub.hub.core.ca import CertificateAuthority
from xhub.protocol import codes
from xhub.protocol.envelope import new_header, seal
from xhub.protocol.errors import BadResponseError, VerificationError
from xhub.protocol.log import merkle
from xhub.protocol.log.note import Checkpoint, NoteSigner, sign_checkpoint
from xhub.protocol.signing import (
    ED25519,
    KeySigner,
    KeyVerifier,
    generate_private_key,
    public_key_der,
)
from xhub.v1 import (
    audit_pb2,
    case_pb2,
    certificate_pb2,
    envelope_pb2,
    intake_pb2,
    material_pb2,
    registry_pb2,
)

HUB_ID = "CN.440000.XHUB"
ME = "CN.440103." + codes.make_uscc("1", "1", "440103", "0A7K3QX1")
ISSUER_USCC = codes.make_uscc("1", "1", "440100", "MB2C9041")
ISSUER = "CN.440100." + ISSUER_USCC
PLATFORM = "CN.440104." + codes.make_uscc("1", "1", "440104", "3H8J2K4L")
NOW = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
SKEW = timedelta(minutes=5)
REQUEST_ID = "request-1"


@dataclass(frozen=True)
class Party:
    """A member as the registry answers for it, with the key it signs with."""

    member: registry_pb2.Member
    signer: KeySigner


def party(ca: CertificateAuthority, member_id: str, uscc: str, *, named: str = "") -> Party:
    tls_key = ec.generate_private_key(ec.SECP256R1())
    cert = ca.issue(tls_key.public_key(), "member", member_id=named or member_id)
    signer = KeySigner(generate_private_key(ED25519))
    member = registry_pb2.Member(
        member_id=member_id,
        uscc=uscc,
        certificate_der=cert.public_bytes(Encoding.DER),
        signing_keys=[
            registry_pb2.PublicKey(
                key_id=signer.key_id,
                algorithm=ED25519,
                public_key_der=public_key_der(signer.private_key.public_key()),
            )
        ],
    )
    return Party(member, signer)


@dataclass(frozen=True)
class Trust:
    ca: CertificateAuthority
    hub: KeySigner
    issuer: Party
    platform: Party

    def members(self) -> TrustedMembers:
        trusted = TrustedMembers(self.ca.certificate)
        trusted.add(self.issuer.member)
        trusted.add(self.platform.member)
        return trusted


@pytest.fixture(scope="module")
def trust() -> Trust:
    ca = CertificateAuthority.create("xhub test CA")
    return Trust(
        ca=ca,
        hub=KeySigner(generate_private_key()),
        issuer=party(ca, ISSUER, ISSUER_USCC),
        platform=party(ca, PLATFORM, codes.make_uscc("1", "1", "440104", "3H8J2K4L")),
    )


# -- the hub's answer ---------------------------------------------------------------------


def answer(trust: Trust, **header: object) -> registry_pb2.MemberLookupResult:
    fields: dict[str, object] = {
        "sender": HUB_ID,
        "recipient": ME,
        "in_reply_to": REQUEST_ID,
        "now": NOW,
    } | header
    sender, recipient = fields.pop("sender"), fields.pop("recipient")
    return registry_pb2.MemberLookupResult(
        header=new_header(str(sender), str(recipient), **fields),  # type: ignore[arg-type]
        member=registry_pb2.Member(member_id=ISSUER),
    )


def _open(trust: Trust, envelope: envelope_pb2.Envelope) -> registry_pb2.MemberLookupResult:
    return open_answer(
        envelope,
        registry_pb2.MemberLookupResult,
        hub_verifier=KeyVerifier(trust.hub.private_key.public_key()),
        hub_id=HUB_ID,
        member_id=ME,
        request_id=REQUEST_ID,
        now=NOW,
        clock_skew=SKEW,
    )


def _flip_payload(envelope: envelope_pb2.Envelope) -> envelope_pb2.Envelope:
    envelope.payload = envelope.payload[:-1] + bytes([envelope.payload[-1] ^ 1])
    return envelope


ANSWER_DEFECTS: dict[str, tuple[Callable[[Trust], envelope_pb2.Envelope], str]] = {
    "signed by another key": (
        lambda t: seal(answer(t), KeySigner(generate_private_key())),
        "not the hub's",
    ),
    "payload changed": (lambda t: _flip_payload(seal(answer(t), t.hub)), "does not verify"),
    "another payload type": (
        lambda t: seal(
            registry_pb2.MemberListResult(header=answer(t).header), t.hub
        ),  # signed, but not a lookup result
        "payload type",
    ),
    "no signature": (
        lambda t: envelope_pb2.Envelope(payload=b"x", payload_type="xhub.v1.MemberLookupResult"),
        "no complete signature",
    ),
    "not from the hub": (lambda t: seal(answer(t, sender=PLATFORM), t.hub), "not for us"),
    "for another member": (lambda t: seal(answer(t, recipient=PLATFORM), t.hub), "not for us"),
    "answers another request": (
        lambda t: seal(answer(t, in_reply_to="request-2"), t.hub),
        "another request",
    ),
    "too old": (
        lambda t: seal(answer(t, now=NOW - SKEW - timedelta(seconds=1)), t.hub),
        "outside the window",
    ),
    "from the future": (
        lambda t: seal(answer(t, now=NOW + SKEW + timedelta(seconds=1)), t.hub),
        "outside the window",
    ),
}


def test_a_good_answer_opens(trust: Trust) -> None:
    opened = _open(trust, seal(answer(trust, now=NOW - SKEW), trust.hub))
    assert opened.member.member_id == ISSUER
    assert opened.header.in_reply_to == REQUEST_ID


@pytest.mark.parametrize("defect", ANSWER_DEFECTS, ids=str)
def test_a_defective_answer_is_a_bad_response(trust: Trust, defect: str) -> None:
    build, words = ANSWER_DEFECTS[defect]
    with pytest.raises(BadResponseError, match=words) as caught:
        _open(trust, build(trust))
    assert isinstance(caught.value, VerificationError)
    assert (caught.value.reason_name, caught.value.retryable) == ("BAD_RESPONSE", False)


# -- members and their keys -------------------------------------------------------------------


def test_trusted_members_hold_chained_members_and_their_keys(trust: Trust) -> None:
    members = trust.members()
    assert ISSUER in members and "CN.OTHER" not in members
    verifier = members.verifier(ISSUER, trust.issuer.signer.key_id)
    assert verifier.key_id == trust.issuer.signer.key_id
    assert members.verifier(ISSUER, trust.issuer.signer.key_id) is verifier  # cached
    with pytest.raises(BadResponseError, match="not a registered key"):
        members.verifier(ISSUER, trust.platform.signer.key_id)
    with pytest.raises(BadResponseError, match="not a member checked here"):
        members.verifier("CN.OTHER", trust.issuer.signer.key_id)


MEMBER_DEFECTS: dict[str, tuple[Callable[[Trust], registry_pb2.Member], str]] = {
    "another CA": (
        lambda t: party(CertificateAuthority.create("rogue CA"), ISSUER, ISSUER_USCC).member,
        "is not valid",
    ),
    "names another member": (
        lambda t: party(t.ca, ISSUER, ISSUER_USCC, named=PLATFORM).member,
        f"names {PLATFORM}",
    ),
    "no certificate": (lambda t: registry_pb2.Member(member_id=ISSUER), "is not valid"),
}


@pytest.mark.parametrize("defect", MEMBER_DEFECTS, ids=str)
def test_a_member_whose_certificate_does_not_chain_is_not_trusted(
    trust: Trust, defect: str
) -> None:
    build, words = MEMBER_DEFECTS[defect]
    member = build(trust)
    with pytest.raises(BadResponseError, match=words):
        check_member_certificate(member, trust.ca.certificate)
    members = TrustedMembers(trust.ca.certificate)
    with pytest.raises(BadResponseError):
        members.add(member)
    assert ISSUER not in members


# -- pulled certificates ----------------------------------------------------------------------


def licence(issuer_code: str = ISSUER_USCC) -> certificate_pb2.ElectronicCertificate:
    return new_certificate(
        type_code=codes.make_uscc("1", "1", "100000", "MB0A0001") + "001",
        type_name="营业执照",
        issuer_code=issuer_code,
        issuer_name="广州市市场监督管理局",
        serial="2024000001",
        number="440101000123456",
        holder_name="广州荔湾食品有限公司",
        holder_code=codes.make_uscc("9", "1", "440103", "MA5CQ8XY"),
        holder_code_type=certificate_pb2.HOLDER_CODE_TYPE_USCC,
        issue_date="2024-01-10",
        valid_from="2024-01-10",
    )


def pulled(
    trust: Trust,
    *,
    signer: KeySigner | None = None,
    cert: certificate_pb2.ElectronicCertificate | None = None,
    issuer_member_id: str = ISSUER,
) -> certificate_pb2.PulledCertificate:
    return certificate_pb2.PulledCertificate(
        certificate=seal(cert or licence(), signer or trust.issuer.signer),
        issuer_member_id=issuer_member_id,
    )


def _unsigned(trust: Trust) -> certificate_pb2.PulledCertificate:
    copy = pulled(trust)
    del copy.certificate.signatures[:]
    return copy


def _tampered(trust: Trust) -> certificate_pb2.PulledCertificate:
    copy = pulled(trust)
    copy.certificate.payload = licence().SerializeToString().replace(b"2024", b"2099", 1)
    return copy


PULL_DEFECTS: dict[str, tuple[Callable[[Trust], certificate_pb2.PulledCertificate], str]] = {
    "unsigned": (_unsigned, "carries no signature"),
    "signed by another member": (
        lambda t: pulled(t, signer=t.platform.signer),
        "not signed by a key of its issuer",
    ),
    "issuer not fetched": (
        lambda t: pulled(t, issuer_member_id="CN.OTHER"),
        "not signed by a key of its issuer",
    ),
    "tampered after signing": (_tampered, "fails verification"),
    "names another issuer": (
        lambda t: pulled(t, cert=licence(codes.make_uscc("1", "1", "440104", "3H8J2K4L"))),
        "another issuer than its signer",
    ),
}


def test_a_good_pull_verifies_and_names_the_issuers_to_fetch(trust: Trust) -> None:
    good = intake_pb2.PulledCertificates(certificates=[pulled(trust), pulled(trust)])
    assert issuers_to_fetch(good) == {ISSUER}
    assert verify_pulled(good, trust.members()) == [licence(), licence()]
    assert issuers_to_fetch(intake_pb2.PulledCertificates(certificates=[_unsigned(trust)])) == set()


@pytest.mark.parametrize("defect", PULL_DEFECTS, ids=str)
def test_a_bad_pulled_certificate_is_a_bad_response(trust: Trust, defect: str) -> None:
    build, words = PULL_DEFECTS[defect]
    bad = build(trust)
    with pytest.raises(BadResponseError, match=words):
        verify_pulled_certificate(bad, trust.members())
    answer_with_one_bad = intake_pb2.PulledCertificates(certificates=[pulled(trust), bad])
    with pytest.raises(BadResponseError, match=words):
        verify_pulled(answer_with_one_bad, trust.members())


# -- dispatched cases -------------------------------------------------------------------------

CASE = "XB-2026-000001"
APPLICANT = codes.make_uscc("9", "1", "440103", "MA5CQ8XY")
OTHER_APPLICANT = codes.make_uscc("9", "1", "440103", "MA5CQ8XW")
ITEM = "FOOD-BIZ-LICENCE"


def submission(trust: Trust, **header: str) -> case_pb2.CaseSubmission:
    sender, recipient = header.get("sender", PLATFORM), header.get("recipient", HUB_ID)
    return case_pb2.CaseSubmission(
        header=new_header(sender, recipient, case_id="CASE-1"),
        certificate_identifiers=["CERT-1"],
        material_ids=["MT1"],
        applicant_name="广州荔湾食品有限公司",
        form={"经营面积": "120"},
        applicant_code=header.get("applicant_code", APPLICANT),
        applicant_code_type=certificate_pb2.HOLDER_CODE_TYPE_USCC,
        item_code=ITEM,
        prepared_case_id=header.get("prepared_case_id", "CASE-1"),
    )


def resubmission(case_number: str = CASE) -> case_pb2.CaseResubmission:
    return case_pb2.CaseResubmission(
        header=new_header(PLATFORM, HUB_ID),
        case_number=case_number,
        certificate_identifiers=["CERT-2"],
        material_ids=["MT2"],
    )


def dispatched(
    trust: Trust,
    *,
    sub: case_pb2.CaseSubmission | None = None,
    resub: case_pb2.CaseResubmission | None = None,
    signer: KeySigner | None = None,
) -> case_pb2.DispatchedCase:
    signer = signer or trust.platform.signer
    resub = resub or resubmission()
    return case_pb2.DispatchedCase(
        case_number=CASE,
        platform=PLATFORM,
        applicant_code=APPLICANT,
        item=intake_pb2.Item(code=ITEM),
        applicant_name="广州荔湾食品有限公司",
        form={"经营面积": "120"},
        certificates=[certificate_pb2.CertificateRef(identifier=i) for i in ("CERT-1", "CERT-2")],
        materials=[material_pb2.MaterialRef(material_id=i) for i in ("MT1", "MT2")],
        submission=seal(sub or submission(trust), signer),
        resubmissions=[seal(resub, signer)],
    )


def _edited(**changes: object) -> Callable[[Trust], case_pb2.DispatchedCase]:
    def build(trust: Trust) -> case_pb2.DispatchedCase:
        case = dispatched(trust)
        for name, value in changes.items():
            field = getattr(case, name)
            if isinstance(value, dict):
                field.clear()
                field.update(value)
            elif isinstance(value, list):
                del field[:]
                field.extend(value)
            elif isinstance(value, intake_pb2.Item):
                field.CopyFrom(value)
            else:
                setattr(case, name, value)
        return case

    return build


CASE_DEFECTS: dict[str, tuple[Callable[[Trust], case_pb2.DispatchedCase], str]] = {
    "signed by another member": (
        lambda t: dispatched(t, signer=t.issuer.signer),
        "not a registered key",
    ),
    "submission sent to another hub": (
        lambda t: dispatched(t, sub=submission(t, recipient="CN.440000.OTHER")),
        "sent by",
    ),
    "submission sent by another member": (
        lambda t: dispatched(t, sub=submission(t, sender=ISSUER)),
        "sent by",
    ),
    "resubmission names another case": (
        lambda t: dispatched(t, resub=resubmission("XB-2026-000002")),
        "names another case",
    ),
    "applicant renamed": (_edited(applicant_name="另一家公司"), "applicant_name .*differs"),
    "form changed": (_edited(form={"经营面积": "12000"}), "form .*differs"),
    "applicant code swapped": (_edited(applicant_code=OTHER_APPLICANT), "applicant_code .*differs"),
    "item swapped": (_edited(item=intake_pb2.Item(code="OTHER-ITEM")), "item_code .*differs"),
    "submission signs another prepared case": (
        lambda t: dispatched(t, sub=submission(t, prepared_case_id="CASE-2")),
        "prepared_case_id",
    ),
    "submission signed another applicant": (
        lambda t: dispatched(t, sub=submission(t, applicant_code=OTHER_APPLICANT)),
        "applicant_code .*differs",
    ),
    "a certificate added": (
        _edited(
            certificates=[
                certificate_pb2.CertificateRef(identifier=i) for i in ("CERT-1", "CERT-2", "X")
            ]
        ),
        "references differ",
    ),
    "a material dropped": (
        _edited(materials=[material_pb2.MaterialRef(material_id="MT1")]),
        "references differ",
    ),
}


def test_a_faithful_dispatched_case_verifies(trust: Trust) -> None:
    verified = verify_dispatched_case(dispatched(trust), trust.members(), hub_id=HUB_ID)
    assert list(verified.certificate_identifiers) == ["CERT-1"]


@pytest.mark.parametrize("defect", CASE_DEFECTS, ids=str)
def test_an_altered_dispatched_case_is_a_bad_response(trust: Trust, defect: str) -> None:
    build, words = CASE_DEFECTS[defect]
    with pytest.raises(BadResponseError, match=words):
        verify_dispatched_case(build(trust), trust.members(), hub_id=HUB_ID)


# -- downloads --------------------------------------------------------------------------------

CONTENT = b"plan " * 1000


@pytest.mark.parametrize(
    ("chunks", "words"),
    [
        ([CONTENT[:10], CONTENT[10:]], ""),
        ([CONTENT, b"x"], "longer than the material"),
        ([CONTENT[:-1]], "differs from the signed manifest"),
        ([CONTENT[:-1] + b"X"], "differs from the signed manifest"),
    ],
    ids=["whole", "longer", "shorter", "different"],
)
def test_download_content_is_checked_against_the_descriptor(
    chunks: list[bytes], words: str
) -> None:
    check = ContentCheck(
        material_pb2.MaterialRef(size=len(CONTENT), sha256=hashlib.sha256(CONTENT).digest())
    )
    if not words:
        for chunk in chunks:
            check.add(chunk)
        check.finish()
        return
    with pytest.raises(BadResponseError, match=words):
        for chunk in chunks:
            check.add(chunk)
        check.finish()


# -- log proofs -------------------------------------------------------------------------------

LEAVES = [merkle.leaf_hash(f"entry {i}".encode()) for i in range(7)]
ORIGIN = "xhub.test/log"


def _store(size: int) -> merkle.MemoryNodeStore:
    store = merkle.MemoryNodeStore()
    store.append(LEAVES[:size])
    return store


def signed_checkpoint(signer: NoteSigner, size: int) -> audit_pb2.CheckpointResult:
    root = merkle.root_hash(size, _store(size))
    result = audit_pb2.CheckpointResult(
        checkpoint_note=sign_checkpoint(Checkpoint(ORIGIN, size, root), signer)
    )
    result.header.receipt.leaf_hash = b"\x01" * 32
    return result


@pytest.fixture(scope="module")
def log_signer() -> NoteSigner:
    return NoteSigner.generate(ORIGIN)


def test_a_checkpoint_verifies_with_the_pinned_key_only(log_signer: NoteSigner) -> None:
    pinned = log_signer.verifier_key()
    result = signed_checkpoint(log_signer, 5)
    verified = verify_checkpoint(result, pinned)
    assert (verified.size, verified.receipt) == (5, result.header.receipt)
    stranger = NoteSigner.generate(ORIGIN).verifier_key()
    result.log_key = stranger  # the answer's key never beats the pinned one
    assert verify_checkpoint(result, pinned).size == 5
    with pytest.raises(BadResponseError, match="log key"):
        verify_checkpoint(result, stranger)
    with pytest.raises(BadResponseError, match="log key"):
        verify_checkpoint(result, "")  # an old bundle falls back to the answer's key
    result.log_key = pinned
    assert verify_checkpoint(result, "").size == 5


def _inclusion(index: int, size: int) -> audit_pb2.InclusionProofResult:
    return audit_pb2.InclusionProofResult(
        leaf_index=index, tree_size=size, hashes=merkle.inclusion_proof(index, size, _store(size))
    )


@pytest.mark.parametrize(
    ("leaf", "proof", "words"),
    [
        (3, _inclusion(3, 5), ""),
        (3, _inclusion(3, 4), "another tree size"),
        (3, _inclusion(2, 5), "does not verify"),
        (6, _inclusion(3, 5), "does not verify"),
    ],
    ids=["good", "another-size", "another-index", "another-leaf"],
)
def test_inclusion_proofs(
    log_signer: NoteSigner, leaf: int, proof: audit_pb2.InclusionProofResult, words: str
) -> None:
    checkpoint = verify_checkpoint(signed_checkpoint(log_signer, 5), log_signer.verifier_key())
    if not words:
        assert verify_inclusion_proof(LEAVES[leaf], proof, checkpoint) == leaf
        return
    with pytest.raises(BadResponseError, match=words):
        verify_inclusion_proof(LEAVES[leaf], proof, checkpoint)


def _tree(size: int, root: bytes | None = None) -> VerifiedCheckpoint:
    real = merkle.root_hash(size, _store(size)) if size else merkle.EMPTY_ROOT
    return VerifiedCheckpoint(Checkpoint(ORIGIN, size, root or real), b"")


def _consistency(old: int, new: int) -> list[bytes]:
    return merkle.consistency_proof(old, new, _store(new))


@pytest.mark.parametrize(
    ("old", "new", "hashes", "needs_proof", "words"),
    [
        (_tree(3), _tree(7), _consistency(3, 7), True, ""),
        (_tree(0), _tree(7), [], False, ""),
        (_tree(7), _tree(7), [], False, ""),
        (_tree(3, b"\x07" * 32), _tree(7), _consistency(3, 7), True, "does not verify"),
        (_tree(7, b"\x07" * 32), _tree(7), [], False, "does not verify"),
        (_tree(3), _tree(7), _consistency(4, 7), True, "does not verify"),
    ],
    ids=["grown", "from-empty", "same", "rewritten", "forked-same-size", "wrong-proof"],
)
def test_consistency_proofs(
    old: VerifiedCheckpoint,
    new: VerifiedCheckpoint,
    hashes: list[bytes],
    needs_proof: bool,
    words: str,
) -> None:
    assert needs_consistency_proof(old, new) is needs_proof
    if not words:
        verify_consistency_proof(old, new, hashes)
        return
    with pytest.raises(BadResponseError, match=words):
        verify_consistency_proof(old, new, hashes)
