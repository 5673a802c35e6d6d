"""Enrolment in the demo: every member makes its keys in its own directory (CSR way).

The member side runs ``xhub-connector keygen`` (here: ``generate_keys``) in the member's own
directory; the hub operator runs ``xhub member add --csr`` (``add_member_with_bundle``) and
gets a public bundle; the member installs it next to its keys (``install_bundle``). Afterwards
the demo checks that the hub's data directory holds no member private key.
"""

from __future__ import annotations

from pathlib import Path

from xhub.connectors.sdk.enrolment import generate_keys, install_bundle
from xhub.demo.region import DemoMember
from xhub.hub.core.config import HubConfig
from xhub.hub.registry.store import MemberSpec, validate_member
from xhub.hub.setup import add_member_with_bundle
from xhub.protocol.bundle import PRIVATE_FILES
from xhub.protocol.signing import ECDSA_P256, ED25519


def members_dir(data_dir: Path) -> Path:
    """Where the demo keeps the members' own directories: beside the hub's, never in it."""
    return data_dir.parent / f"{data_dir.name}-members"


def enrol(config: HubConfig, member: DemoMember, member_dir: Path) -> tuple[MemberSpec, Path]:
    """Keygen + request in ``member_dir``, issue at the hub, install: the member's dir."""
    spec = validate_member(
        name=member.name,
        uscc=member.uscc,
        division=member.division,
        roles=[member.roles],
        subsystem=member.subsystem,
    )
    algorithm = ED25519 if member.signing_alg == "ed25519" else ECDSA_P256
    keys = generate_keys(spec.member_id, member_dir, signing_algorithm=algorithm)
    added = add_member_with_bundle(config, spec, keys.request)
    install_bundle(added.bundle_dir, member_dir)
    return spec, member_dir


def member_keys_held_by_hub(config: HubConfig, member_dirs: list[Path]) -> list[Path]:
    """Files under the hub's data directory holding a private key that is not the hub's own,
    or the bytes of any member's key; empty when the hub never saw a member private key."""
    paths = config.paths
    own = {paths.ca_key, paths.tls_key, paths.signing_key, paths.log_key}
    secrets = [
        (member / name).read_bytes()
        for member in member_dirs
        for name in PRIVATE_FILES
        if (member / name).exists()
    ]
    found = []
    for path in sorted(p for p in paths.root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        foreign_key = b"PRIVATE KEY" in data and path not in own
        if foreign_key or any(secret in data for secret in secrets):
            found.append(path)
    return found
