"""`xhub init` and `xhub member add`: create the data directory and members.

Everything is validated before anything is written; a failed step leaves no
partial data directory or bundle behind.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import Encoding

from xhub.hub.core.audit_log import load_log_signer
from xhub.hub.core.ca import CertificateAuthority
from xhub.hub.core.config import HubConfig, load_config, render_config
from xhub.hub.core.data_dir import secure_tree
from xhub.hub.core.db import make_engine, migrate, session_factory
from xhub.hub.registry.store import MemberSpec, add_member, bind_hub_identity, make_bundle
from xhub.protocol.bundle import MemberBundle
from xhub.protocol.pki import certificate_pem, load_certificate
from xhub.protocol.signing import ECDSA_P256, load_private_key, write_private_key, write_secret
from xhub.v1 import registry_pb2


class SetupError(RuntimeError):
    """The data directory cannot be created or used."""


def init_data_dir(
    root: Path,
    *,
    hub_id: str = "CN.440000.XHUB",
    hub_name: str = "xhub 政务数据共享交换平台",
    listen: str = "127.0.0.1:7443",
    database_url: str = "",
    server_names: tuple[str, ...] = ("xhub-hub", "localhost"),
) -> HubConfig:
    """Create CA, hub keys, config and the migrated database in a new directory."""
    if (root / "xhub.toml").exists():
        raise SetupError(f"{root} already holds a hub (xhub.toml exists)")
    created = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    try:
        config = HubConfig(
            data_dir=root,
            hub_id=hub_id,
            hub_name=hub_name,
            listen=listen,
            server_name=server_names[0],
            database_url=database_url,
        )
        paths = config.paths
        ca = CertificateAuthority.create(f"{hub_name} CA")
        write_private_key(paths.ca_key, ca.private_key)
        paths.ca_cert.write_bytes(certificate_pem(ca.certificate))

        tls_key = ec.generate_private_key(ec.SECP256R1())
        tls_cert = ca.issue(
            tls_key.public_key(),
            hub_name,
            dns_names=server_names,
            ip_addresses=("127.0.0.1", "::1"),
            server=True,
            days=3650,
        )
        write_private_key(paths.tls_key, tls_key)
        paths.tls_cert.write_bytes(certificate_pem(tls_cert))

        signing_key = ec.generate_private_key(ec.SECP256R1())
        signing_cert = ca.issue(signing_key.public_key(), hub_name, member_id=hub_id, days=3650)
        write_private_key(paths.signing_key, signing_key)
        paths.signing_cert.write_bytes(certificate_pem(signing_cert))
        write_private_key(paths.log_key, ed25519.Ed25519PrivateKey.generate())
        write_secret(paths.subject_key, os.urandom(32))

        paths.config_file.write_text(render_config(config), "utf-8")
        engine = make_engine(config.effective_database_url)
        try:
            migrate(engine)
            with session_factory(engine).begin() as session:
                bind_hub_identity(
                    session, hub_id, hub_name, signing_cert.public_bytes(Encoding.DER), signing_key
                )
        finally:
            engine.dispose()
        secure_tree(root)  # the database file and anything else written with the umask
        return config
    except BaseException:
        if created:
            shutil.rmtree(root, ignore_errors=True)
        else:
            for leftover in ("xhub.toml", "ca", "hub", "xhub.db", "xhub.db-wal", "xhub.db-shm"):
                target = root / leftover
                if target.is_dir():
                    shutil.rmtree(target, ignore_errors=True)
                else:
                    target.unlink(missing_ok=True)
        raise


def load_ca(config: HubConfig) -> CertificateAuthority:
    key = load_private_key(config.paths.ca_key)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise SetupError("the hub CA key must be ECDSA P-256")
    return CertificateAuthority(load_certificate(config.paths.ca_cert.read_bytes()), key)


@dataclass(frozen=True)
class AddedMember:
    member_id: str
    bundle_dir: Path
    warnings: tuple[str, ...]


def add_member_with_bundle(
    config: HubConfig,
    spec: MemberSpec,
    *,
    bundle_dir: Path | None = None,
    signing_algorithm: registry_pb2.KeyAlgorithm.ValueType = ECDSA_P256,
    days: int = 730,
) -> AddedMember:
    """Register a member and write its bundle; the row commits only if the bundle is written."""
    target = bundle_dir or config.paths.bundles / spec.member_id
    if target.exists() and any(target.iterdir()):
        raise SetupError(f"bundle directory {target} is not empty")
    ca = load_ca(config)
    engine = make_engine(config.effective_database_url)
    try:
        with session_factory(engine).begin() as session:
            issued = add_member(session, ca, spec, signing_algorithm=signing_algorithm, days=days)
            bundle: MemberBundle = make_bundle(
                issued,
                ca_cert_der=ca.certificate.public_bytes(Encoding.DER),
                hub_signing_cert_der=load_certificate(
                    config.paths.signing_cert.read_bytes()
                ).public_bytes(Encoding.DER),
                hub_id=config.hub_id,
                hub_address=config.advertised_address,
                server_name=config.server_name,
                log_key=load_log_signer(
                    config.effective_log_origin, config.paths.log_key
                ).verifier_key(),
            )
            try:
                bundle.write(target)
                secure_tree(config.paths.bundles)  # a bundle holds the TLS key until handed over
            except BaseException:
                shutil.rmtree(target, ignore_errors=True)
                raise
    finally:
        engine.dispose()
    return AddedMember(spec.member_id, target, spec.warnings)


def open_config(data_dir: Path) -> HubConfig:
    if not (data_dir / "xhub.toml").exists():
        raise SetupError(f"{data_dir} is not a hub data directory; run `xhub init {data_dir}`")
    return load_config(data_dir)


def with_listen(config: HubConfig, listen: str) -> HubConfig:
    return replace(config, listen=listen)
