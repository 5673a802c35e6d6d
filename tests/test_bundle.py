"""Member bundles (接入包): the member's keys plus the public bundle `member add --csr` writes,
installed side by side, loaded and cross-checked by the SDK."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hubkit import enrol

from xhub.connectors.sdk.enrolment import CSR_PEM, REQUEST, install_bundle
from xhub.hub.core.ca import CertificateAuthority
from xhub.hub.core.config import HubConfig
from xhub.hub.registry.store import validate_member
from xhub.hub.setup import init_data_dir, load_ca
from xhub.protocol import codes
from xhub.protocol.bundle import (
    CA_CERT,
    HUB_SIGNING_CERT,
    MANIFEST,
    SIGNING_KEY,
    TLS_CERT,
    TLS_KEY,
    BundleError,
    MemberBundle,
)
from xhub.protocol.pki import certificate_pem, load_certificate, when
from xhub.protocol.signing import (
    ECDSA_P256,
    ED25519,
    key_id_for,
    load_private_key,
    load_signer,
    public_key_der,
    write_private_key,
)

HUB_ID = "CN.440000.XHUB"
CITY_USCC = codes.make_uscc("1", "1", "440100", "MB2C9041")
LIWAN_USCC = codes.make_uscc("1", "2", "440103", "0A7K3QX1")


@dataclass(frozen=True)
class Source:
    config: HubConfig
    bundles: dict[str, Path]  # "ecdsa" / "ed25519" -> the member's installed directory


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Source:
    root = tmp_path_factory.mktemp("bundles") / "hub"
    config = init_data_dir(root, hub_id=HUB_ID, listen="127.0.0.1:7555")
    bundles = {}
    for key, (uscc, division, algorithm) in {
        "ecdsa": (CITY_USCC, "440100", ECDSA_P256),
        "ed25519": (LIWAN_USCC, "440103", ED25519),
    }.items():
        spec = validate_member(
            name=f"测试单位 {key}", uscc=uscc, division=division, roles=["department"]
        )
        bundles[key] = enrol(config, spec, root.parent / key, signing_algorithm=algorithm)
    return Source(config=config, bundles=bundles)


@pytest.fixture
def copy_bundle(source: Source, tmp_path: Path) -> Callable[[str], Path]:
    """A private copy of a written bundle, free to damage."""

    def make(kind: str) -> Path:
        target = tmp_path / kind
        shutil.copytree(source.bundles[kind], target)
        return target

    return make


def spki(key: object) -> bytes:
    return public_key_der(key.public_key())  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- round trip


MEMBER_FILES = {MANIFEST, TLS_KEY, TLS_CERT, CA_CERT, SIGNING_KEY, REQUEST, CSR_PEM}


@pytest.mark.parametrize(
    ("kind", "member_id", "algorithm"),
    [
        ("ecdsa", f"CN.440100.{CITY_USCC}", ECDSA_P256),
        ("ed25519", f"CN.440103.{LIWAN_USCC}", ED25519),
    ],
)
def test_load_round_trips_an_installed_bundle(
    source: Source, tmp_path: Path, kind: str, member_id: str, algorithm: int
):
    directory = source.bundles[kind]
    assert {p.name for p in directory.iterdir()} == MEMBER_FILES | {HUB_SIGNING_CERT}
    for key_file in (TLS_KEY, SIGNING_KEY):
        assert (directory / key_file).stat().st_mode & 0o777 == 0o600
    bundle = MemberBundle.load(directory)
    config = source.config
    assert bundle.member_id == member_id
    assert bundle.name == f"测试单位 {kind}"
    assert bundle.hub_id == HUB_ID
    assert bundle.hub_address == "127.0.0.1:7555"
    assert bundle.server_name == config.server_name
    assert bundle.ca_cert == load_certificate(config.paths.ca_cert.read_bytes())
    assert bundle.hub_signing_cert == load_certificate(config.paths.signing_cert.read_bytes())
    assert bundle.tls_cert.public_key().public_bytes(
        Encoding.DER, PublicFormat.SubjectPublicKeyInfo
    ) == spki(bundle.tls_key)
    # The hub's responses verify with the key from the bundle.
    hub_signer = load_signer(config.paths.signing_key)
    assert bundle.hub_verifier.key_id == hub_signer.key_id
    bundle.hub_verifier.verify(hub_signer.sign(b"data"), b"data")
    # The message-signing key is never the TLS key; the manifest names the registered one.
    assert bundle.signer.key_id != key_id_for(bundle.tls_key.public_key())
    assert bundle.signer.algorithm == algorithm
    manifest = json.loads((directory / MANIFEST).read_text("utf-8"))
    assert manifest["signing_key_id"] == bundle.signer.key_id
    # Writing the loaded bundle again and loading it gives the same bundle.
    rewritten = tmp_path / "rewritten"
    bundle.write(rewritten)
    again = MemberBundle.load(rewritten)
    assert again.member_id == bundle.member_id
    assert again.tls_cert == bundle.tls_cert
    assert again.hub_signing_cert == bundle.hub_signing_cert
    assert spki(again.tls_key) == spki(bundle.tls_key)
    assert spki(again.signing_key) == spki(bundle.signing_key)
    assert json.loads((rewritten / MANIFEST).read_text("utf-8")) == json.loads(
        (directory / MANIFEST).read_text("utf-8")
    )
    # tls_credentials hands grpc matching PEMs
    root, key_pem, chain = bundle.tls_credentials()
    assert load_certificate(root) == bundle.ca_cert
    assert load_certificate(chain) == bundle.tls_cert
    assert b"PRIVATE KEY" in key_pem


def test_hub_address_override(source: Source):
    bundle = MemberBundle.load(source.bundles["ecdsa"], hub_address="hub.example.gov.cn:443")
    assert bundle.hub_address == "hub.example.gov.cn:443"


# --------------------------------------------------------------------------- damaged bundles


def _cert_from_other_ca(bundle_dir: Path) -> None:
    manifest = json.loads((bundle_dir / MANIFEST).read_text("utf-8"))
    other = CertificateAuthority.create("另一个 CA")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = other.issue(key.public_key(), "冒名", member_id=manifest["member_id"])
    (bundle_dir / TLS_CERT).write_bytes(certificate_pem(cert))
    write_private_key(bundle_dir / TLS_KEY, key)


def _ca_replaced(bundle_dir: Path) -> None:
    other = CertificateAuthority.create("另一个 CA")
    (bundle_dir / CA_CERT).write_bytes(certificate_pem(other.certificate))


def _hub_signing_cert_from_other_ca(bundle_dir: Path) -> None:
    other = CertificateAuthority.create("另一个 CA")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = other.issue(key.public_key(), "假平台", member_id=HUB_ID)
    (bundle_dir / HUB_SIGNING_CERT).write_bytes(certificate_pem(cert))


def _hub_signing_cert_is_a_member_cert(bundle_dir: Path) -> None:
    # Chains to the right CA, but names the member, not the hub.
    shutil.copy(bundle_dir / TLS_CERT, bundle_dir / HUB_SIGNING_CERT)


def _manifest_names_other_member(bundle_dir: Path) -> None:
    manifest = json.loads((bundle_dir / MANIFEST).read_text("utf-8"))
    manifest["member_id"] = f"CN.440106.{codes.make_uscc('1', '2', '440106', '3H8J2K4L')}"
    (bundle_dir / MANIFEST).write_text(json.dumps(manifest), "utf-8")


def _manifest_names_other_hub(bundle_dir: Path) -> None:
    manifest = json.loads((bundle_dir / MANIFEST).read_text("utf-8"))
    manifest["hub_id"] = "CN.110000.XHUB"
    (bundle_dir / MANIFEST).write_text(json.dumps(manifest), "utf-8")


def _manifest_not_json(bundle_dir: Path) -> None:
    (bundle_dir / MANIFEST).write_text("{member_id: ", "utf-8")


def _manifest_lacks_hub_id(bundle_dir: Path) -> None:
    manifest = json.loads((bundle_dir / MANIFEST).read_text("utf-8"))
    del manifest["hub_id"]
    (bundle_dir / MANIFEST).write_text(json.dumps(manifest), "utf-8")


def _tls_cert_garbage(bundle_dir: Path) -> None:
    (bundle_dir / TLS_CERT).write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64\n")


def _tls_key_garbage(bundle_dir: Path) -> None:
    (bundle_dir / TLS_KEY).write_bytes(b"not a key")


def _tls_key_of_another_pair(bundle_dir: Path) -> None:
    # The certificate is fine, but the private key next to it is not its key.
    write_private_key(bundle_dir / TLS_KEY, ec.generate_private_key(ec.SECP256R1()))


def _tls_key_on_unsupported_curve(bundle_dir: Path) -> None:
    write_private_key(bundle_dir / TLS_KEY, ec.generate_private_key(ec.SECP384R1()))  # type: ignore[arg-type]


DAMAGE = [
    _cert_from_other_ca,
    _ca_replaced,
    _hub_signing_cert_from_other_ca,
    _hub_signing_cert_is_a_member_cert,
    _manifest_names_other_member,
    _manifest_names_other_hub,
    _manifest_not_json,
    _manifest_lacks_hub_id,
    _tls_cert_garbage,
    _tls_key_garbage,
    _tls_key_of_another_pair,
    _tls_key_on_unsupported_curve,
]


@pytest.mark.parametrize("damage", DAMAGE, ids=lambda f: f.__name__.strip("_"))
def test_damaged_bundle_is_refused(
    copy_bundle: Callable[[str], Path], damage: Callable[[Path], None]
):
    bundle_dir = copy_bundle("ecdsa")
    MemberBundle.load(bundle_dir)  # intact before the damage
    damage(bundle_dir)
    with pytest.raises(BundleError):
        MemberBundle.load(bundle_dir)


@pytest.mark.parametrize(
    ("kind", "missing"),
    [
        ("ecdsa", MANIFEST),
        ("ecdsa", TLS_KEY),
        ("ecdsa", TLS_CERT),
        ("ecdsa", CA_CERT),
        ("ecdsa", HUB_SIGNING_CERT),
        ("ecdsa", SIGNING_KEY),
        ("ed25519", SIGNING_KEY),
        ("ed25519", TLS_KEY),
    ],
)
def test_missing_file_is_refused(copy_bundle: Callable[[str], Path], kind: str, missing: str):
    bundle_dir = copy_bundle(kind)
    (bundle_dir / missing).unlink()
    with pytest.raises(BundleError) as info:
        MemberBundle.load(bundle_dir)
    assert str(bundle_dir) in str(info.value)


def test_missing_directory_is_refused(tmp_path: Path):
    with pytest.raises(BundleError):
        MemberBundle.load(tmp_path / "no-such-bundle")


# --------------------------------------------------------------------------- two halves


def test_the_hubs_public_bundle_holds_no_private_key(source: Source):
    public = source.config.paths.bundles / f"CN.440100.{CITY_USCC}"
    assert {p.name for p in public.iterdir()} == {MANIFEST, TLS_CERT, CA_CERT, HUB_SIGNING_CERT}
    assert not [p for p in public.iterdir() if b"PRIVATE KEY" in p.read_bytes()]
    with pytest.raises(BundleError) as info:
        MemberBundle.load(public)
    assert "holds no private key" in str(info.value)
    assert "xhub-connector bundle install" in str(info.value)
    # ... and loads in place with the member's keys beside it
    in_place = MemberBundle.load(public, keys_dir=source.bundles["ecdsa"])
    assert in_place.signer.key_id == MemberBundle.load(source.bundles["ecdsa"]).signer.key_id


def test_keys_of_another_member_do_not_install(source: Source, tmp_path: Path):
    public = source.config.paths.bundles / f"CN.440100.{CITY_USCC}"
    keys = tmp_path / "keys"
    shutil.copytree(source.bundles["ed25519"], keys)
    with pytest.raises(BundleError) as info:
        install_bundle(public, keys)
    assert "tls.key does not belong to" in str(info.value)
    # nothing copied: the keys directory still holds the other member's bundle
    assert MemberBundle.load(keys).member_id == f"CN.440103.{LIWAN_USCC}"


def test_a_signing_key_other_than_the_registered_one_is_refused(
    copy_bundle: Callable[[str], Path],
):
    bundle_dir = copy_bundle("ecdsa")
    write_private_key(bundle_dir / SIGNING_KEY, ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(BundleError) as info:
        MemberBundle.load(bundle_dir)
    assert "is not the signing key the hub registered" in str(info.value)


def test_an_older_bundle_signing_with_its_tls_key_still_loads(source: Source, tmp_path: Path):
    """Bundles written before enrolment by CSR used the TLS key as the signing key."""
    bundle = MemberBundle.load(source.bundles["ecdsa"])
    legacy = dataclasses.replace(bundle, signing_key=bundle.tls_key)
    legacy.write(tmp_path / "legacy")
    assert not (tmp_path / "legacy" / SIGNING_KEY).exists()
    again = MemberBundle.load(tmp_path / "legacy")
    assert again.signer.key_id == key_id_for(bundle.tls_key.public_key())


# --------------------------------------------------------------------------- validity


def _reissue(
    source: Source, bundle_dir: Path, *, now: datetime, hub: bool = False
) -> tuple[str, str]:
    """Replace the member's (or the hub signing) certificate by one issued at ``now`` for a
    day; returns the date its message must name."""
    ca = load_ca(source.config)
    if hub:
        key = load_private_key(source.config.paths.signing_key)
        cert = ca.issue(key.public_key(), "hub", member_id=HUB_ID, days=1, now=now)  # type: ignore[arg-type]
        (bundle_dir / HUB_SIGNING_CERT).write_bytes(certificate_pem(cert))
    else:
        bundle = MemberBundle.load(bundle_dir)
        cert = ca.issue(
            bundle.tls_key.public_key(),
            "m",
            member_id=bundle.member_id,
            days=1,
            now=now,  # type: ignore[arg-type]
        )
        (bundle_dir / TLS_CERT).write_bytes(certificate_pem(cert))
    return when(cert.not_valid_after_utc), when(cert.not_valid_before_utc)


def test_an_expired_member_certificate_says_so_and_when(
    source: Source, copy_bundle: Callable[[str], Path]
):
    bundle_dir = copy_bundle("ecdsa")
    until, _ = _reissue(source, bundle_dir, now=datetime.now(UTC) - timedelta(days=10))
    with pytest.raises(BundleError) as info:
        MemberBundle.load(bundle_dir)
    message = str(info.value)
    assert f"member certificate of CN.440100.{CITY_USCC} expired on {until}" in message
    assert "renew with `xhub member renew`" in message
    assert "chain" not in message


def test_a_not_yet_valid_member_certificate_says_from_when(
    source: Source, copy_bundle: Callable[[str], Path]
):
    bundle_dir = copy_bundle("ecdsa")
    _, since = _reissue(source, bundle_dir, now=datetime.now(UTC) + timedelta(days=3))
    with pytest.raises(BundleError) as info:
        MemberBundle.load(bundle_dir)
    assert f"is not valid yet: valid from {since}" in str(info.value)


def test_an_expired_hub_signing_certificate_says_so_and_when(
    source: Source, copy_bundle: Callable[[str], Path]
):
    bundle_dir = copy_bundle("ecdsa")
    until, _ = _reissue(source, bundle_dir, now=datetime.now(UTC) - timedelta(days=10), hub=True)
    with pytest.raises(BundleError) as info:
        MemberBundle.load(bundle_dir)
    assert f"hub signing certificate of {HUB_ID} expired on {until}" in str(info.value)
