"""Hub signing-key rotation (平台签名密钥交接): ``xhub keys rotate-hub-signing`` hands the
hub's signing over to a new key; members that pinned the old key learn the new one through
the signed hand-overs (``GetHubKeys``), not through a new bundle.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest
from hubkit import HubKit, MemberDef

from xhub.cli import main as cli
from xhub.connectors.sdk._internal.verify import UnknownHubKey, open_answer
from xhub.hub.core.ca import CertificateAuthority
from xhub.hub.registry.hub_keys import read_handovers
from xhub.protocol.envelope import new_header, seal
from xhub.protocol.errors import BadResponseError
from xhub.protocol.key_rotation import HandoverError, HubKey, follow_handovers, handover
from xhub.protocol.pki import load_certificate
from xhub.protocol.signing import KeySigner, generate_private_key
from xhub.v1 import envelope_pb2, registry_pb2

HUB = "CN.440000.XHUB"


def _rotate(kit: HubKit) -> None:
    assert cli.main(["keys", "rotate-hub-signing", "--data-dir", str(kit.config.data_dir)]) == 0


def test_members_follow_the_hand_over_to_the_new_hub_key(kit: HubKit) -> None:
    platform = kit.client("platform")
    pinned = platform.bundle.hub_verifier.key_id
    platform.get_member(kit.member_id("issuer"))
    _rotate(kit)
    _rotate(kit)  # two hand-overs: the chain is followed link by link
    kit.restart()

    answer = platform.lookup_member(kit.member_id("issuer"))  # signed by the newest key

    keys = platform.transport.hub_keys
    assert len(keys) == 3 and keys[pinned].window.until is not None
    current = [k for k in keys.values() if k.window.until is None]
    assert len(current) == 1 and answer.member.member_id == kit.member_id("issuer")
    published = platform.transport.learn_hub_keys()
    assert set(published) == set(keys)
    # A member enrolled after the rotation pins the new key in its bundle.
    kit.add_member(
        MemberDef("late", "广州市荔湾区卫生健康局", "440103", ("department",), "MB2C9096")
    )
    late = kit.client("late")
    assert late.bundle.hub_verifier.key_id == current[0].verifier.key_id
    late.get_member(kit.member_id("platform"))
    assert late.transport.hub_keys == {}  # nothing to learn


def test_a_forged_hand_over_is_refused(hub_kit: HubKit) -> None:
    platform = hub_kit.client("platform")
    _rotate(hub_kit)
    history = hub_kit.config.paths.signing_handovers
    real = registry_pb2.HubKeyHandover.FromString(
        read_handovers(history)[0].payload
    )  # the genuine new certificate, handed over by a key that is not the hub's
    forged = handover(
        KeySigner(generate_private_key()),
        load_certificate(real.new_certificate_der),
        hub_id=hub_kit.hub_id,
        at=datetime.now(UTC),
    )
    history.write_text(json.dumps([base64.b64encode(forged.SerializeToString()).decode()]))
    hub_kit.restart()
    with pytest.raises(BadResponseError) as refused:
        platform.get_member(hub_kit.member_id("issuer"))
    assert "hand-overs do not reach" in refused.value.message


# -- offline: the chain and the windows ---------------------------------------------------------


class _Chain:
    def __init__(self) -> None:
        self.at = [datetime.now(UTC) - timedelta(hours=h) for h in (2, 1)]
        self.ca = CertificateAuthority.create("test CA", now=self.at[0] - timedelta(hours=1))
        self.keys = [generate_private_key() for _ in range(3)]
        self.certs = [
            self.ca.issue(k.public_key(), "hub", member_id=HUB, now=self.at[0] - timedelta(hours=1))  # type: ignore[arg-type]
            for k in self.keys
        ]
        self.handovers = [
            handover(KeySigner(self.keys[i]), self.certs[i + 1], hub_id=HUB, at=self.at[i])
            for i in range(2)
        ]

    def follow(
        self, start: int = 0, handovers: list[envelope_pb2.Envelope] | None = None
    ) -> dict[str, HubKey]:
        return follow_handovers(
            KeySigner(self.keys[start]).verifier(),
            self.handovers if handovers is None else handovers,
            hub_id=HUB,
            ca_cert=self.ca.certificate,
        )

    def answer(self, key: int, issued: datetime) -> envelope_pb2.Envelope:
        result = registry_pb2.HubKeysResult(
            header=new_header(HUB, "CN.member", in_reply_to="req", now=issued)
        )
        return seal(result, KeySigner(self.keys[key]))


def _open(
    chain: _Chain, envelope: envelope_pb2.Envelope, keys: dict[str, HubKey], now: datetime
) -> registry_pb2.HubKeysResult:
    return open_answer(
        envelope,
        registry_pb2.HubKeysResult,
        hub_verifier=KeySigner(chain.keys[0]).verifier(),
        hub_id=HUB,
        member_id="CN.member",
        request_id="req",
        now=now,
        clock_skew=timedelta(minutes=5),
        hub_keys=keys,
    )


def test_the_chain_gives_each_key_its_window() -> None:
    chain = _Chain()
    keys = chain.follow()
    ids = [KeySigner(k).key_id for k in chain.keys]
    assert [keys[i].window.until for i in ids] == [*chain.at, None]
    # From a later pinned key the older hand-overs are skipped.
    assert set(chain.follow(start=1)) == set(ids[1:])


def test_an_old_answer_verifies_and_a_retired_key_signs_nothing_new() -> None:
    chain = _Chain()
    keys = chain.follow()
    old_time = chain.at[0] - timedelta(minutes=30)
    _open(chain, chain.answer(0, old_time), keys, now=old_time)  # before its hand-over
    now = datetime.now(UTC)
    _open(chain, chain.answer(2, now), keys, now=now)
    with pytest.raises(BadResponseError) as refused:
        _open(chain, chain.answer(0, now), keys, now=now)
    assert "the hub" in refused.value.message and "issued at" in refused.value.message
    with pytest.raises(UnknownHubKey):
        _open(chain, chain.answer(2, now), {}, now=now)


@pytest.mark.parametrize(
    "break_it, says",
    [
        ("skip a link", "not by the key it must hand over from"),
        ("another hub", "expected CN.440000.XHUB"),
        ("certificate of another key", "the statement names"),
    ],
)
def test_a_broken_chain_names_the_hand_over(break_it: str, says: str) -> None:
    chain = _Chain()
    handovers = list(chain.handovers)
    if break_it == "skip a link":
        handovers = [
            handovers[0],
            handover(KeySigner(chain.keys[0]), chain.certs[2], hub_id=HUB, at=chain.at[1]),
        ]
    elif break_it == "another hub":
        handovers[0] = handover(
            KeySigner(chain.keys[0]), chain.certs[1], hub_id="CN.440000.OTHER", at=chain.at[0]
        )
    else:
        statement = registry_pb2.HubKeyHandover.FromString(handovers[0].payload)
        statement.new_key.key_id = KeySigner(chain.keys[2]).key_id
        handovers[0] = seal(statement, KeySigner(chain.keys[0]))
    with pytest.raises(HandoverError) as broken:
        chain.follow(handovers=handovers)
    assert says in str(broken.value)
