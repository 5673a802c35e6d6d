"""`xhub init`, `xhub member add --csr` and `renew`: the data directory and enrolments.

The hub writes a member's *public* bundle only; the member's keys never leave its machine.

Everything is validated before anything is written; a failed step leaves no
partial data directory or bundle behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from xhub.hub.core.audit_log import load_log_signer
from xhub.hub.core.ca import MEMBER_DAYS, CertificateAuthority
from xhub.hub.core.ca_roots import trusted_roots
from xhub.hub.core.config import (
    HubConfig,
    load_config,
    render_config,
    require_dialable,
    split_listen,
)
from xhub.hub.core.data_dir import secure_tree
from xhub.hub.core.db import MemberRow, make_engine, migrate, session_factory
from xhub.hub.registry.enrolment import Enrolled, enrol_member, renew_member
from xhub.hub.registry.store import MemberSpec, RegistryError, bind_hub_identity
from xhub.protocol.bundle import PRIVATE_FILES, PublicBundle
from xhub.protocol.enrolment import EnrolmentError, unarmor
from xhub.protocol.pki import certificate_pem, load_certificate
from xhub.protocol.signing import load_private_key, write_private_key, write_secret
from xhub.v1 import envelope_pb2


class SetupError(RuntimeError):
    """The data directory cannot be created or used."""


def init_data_dir(
    root: Path,
    *,
    hub_id: str = "CN.440000.XHUB",
    hub_name: str = "xhub 政务数据共享交换平台",
    listen: str = "127.0.0.1:7443",
    advertise: str = "",
    database_url: str = "",
    server_names: tuple[str, ...] = ("xhub-hub", "localhost"),
) -> HubConfig:
    """Create CA, hub keys, config and the migrated database in a new directory."""
    if (root / "xhub.toml").exists():
        raise SetupError(f"{root} already holds a hub (xhub.toml exists)")
    split_listen(listen)
    require_dialable(
        HubConfig(data_dir=root, listen=listen, advertise=advertise)
    )  # ConfigError before anything is written
    created = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    try:
        config = HubConfig(
            data_dir=root,
            hub_id=hub_id,
            hub_name=hub_name,
            listen=listen,
            advertise=advertise,
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
                _refuse_used_database(session, config)
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


def _refuse_used_database(session: Session, config: HubConfig) -> None:
    """One database, one hub: a database already holding a hub's identity is refused."""
    other = session.scalars(select(MemberRow.member_id).where(MemberRow.level == 0)).first()
    if other is not None:
        shown = _shown_url(config.effective_database_url)
        raise SetupError(
            f"database {shown} is already used by hub {other}; give this hub its own "
            "database (--database-url)"
        )


def _shown_url(url: str) -> str:
    """A database URL fit for a message: its password hidden."""
    return make_url(url).render_as_string(hide_password=True)


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
    not_after: datetime
    signing_key_id: str
    enrolment: int = 1


def read_request(path: Path) -> envelope_pb2.Envelope:
    """The enrolment request file a member made with ``xhub-connector keygen``."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SetupError(f"cannot read the enrolment request {path}: {exc.strerror}") from exc
    try:
        return unarmor(data)
    except EnrolmentError as exc:
        raise RegistryError(f"{path}: {exc}", metadata={"field": "csr"}) from exc


def add_member_with_bundle(
    config: HubConfig,
    spec: MemberSpec,
    request: envelope_pb2.Envelope,
    *,
    bundle_dir: Path | None = None,
    days: int = MEMBER_DAYS,
    re_enrol: bool = False,
) -> AddedMember:
    """Enrol a member from its request and write its public bundle (no private key).

    The bundle is staged inside the transaction and moved into place once the rows
    committed; a refusal writes nothing.
    """
    target = bundle_dir or config.paths.bundles / spec.member_id
    ca = load_ca(config)
    with _staged(config, target, replace_existing=re_enrol) as (session, stage):
        enrolled = enrol_member(session, ca, spec, request, re_enrol=re_enrol, days=days)
        stage(enrolled)
    return _added(enrolled, target, spec.warnings)


def renew_member_bundle(
    config: HubConfig,
    member_id: str,
    request: envelope_pb2.Envelope,
    *,
    bundle_dir: Path | None = None,
    days: int = MEMBER_DAYS,
) -> AddedMember:
    """Issue a renewed certificate and write the member's new public bundle."""
    target = bundle_dir or config.paths.bundles / member_id
    ca = load_ca(config)
    with _staged(config, target, replace_existing=True) as (session, stage):
        enrolled = renew_member(session, ca, member_id, request, days=days)
        stage(enrolled)
    return _added(enrolled, target, ())


def _added(enrolled: Enrolled, target: Path, warnings: tuple[str, ...]) -> AddedMember:
    return AddedMember(
        enrolled.member_id,
        target,
        warnings,
        enrolled.certificate.not_valid_after_utc,
        enrolled.signing_key_id,
        enrolled.enrolment,
    )


def _refuse_non_empty(target: Path) -> None:
    if target.exists() and any(target.iterdir()):
        raise SetupError(f"bundle directory {target} is not empty")


@contextlib.contextmanager
def _staged(
    config: HubConfig, target: Path, *, replace_existing: bool
) -> Iterator[tuple[Session, Callable[[Enrolled], None]]]:
    """One transaction and a staged public bundle: ``stage(enrolled)`` writes the bundle
    beside ``target``; it replaces ``target`` only after the rows committed."""
    require_dialable(config)  # a bundle must carry an address members can dial
    staging = target.with_name(f".{target.name}.new")
    engine = make_engine(config.effective_database_url)

    def stage(enrolled: Enrolled) -> None:
        held = [name for name in PRIVATE_FILES if (target / name).exists()]
        if held:
            raise SetupError(
                f"{target} holds {', '.join(held)}: the hub writes a public bundle, never into "
                "a member's keys directory"
            )
        if not replace_existing:
            _refuse_non_empty(target)
        shutil.rmtree(staging, ignore_errors=True)
        public_bundle(config, enrolled).write(staging)

    try:
        with session_factory(engine).begin() as session:
            yield session, stage
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
        if config.paths.bundles.exists():
            secure_tree(config.paths.bundles)  # the data directory's modes, public files too
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        engine.dispose()


def public_bundle(config: HubConfig, enrolled: Enrolled) -> PublicBundle:
    return PublicBundle(
        member_id=enrolled.member_id,
        name=enrolled.name,
        hub_id=config.hub_id,
        hub_address=config.advertised_address,
        server_name=config.server_name,
        tls_cert=enrolled.certificate,
        ca_certs=trusted_roots(config.paths),
        hub_signing_cert=load_certificate(config.paths.signing_cert.read_bytes()),
        signing_key_id=enrolled.signing_key_id,
        log_key=load_log_signer(config.effective_log_origin, config.paths.log_key).verifier_key(),
    )


def open_config(data_dir: Path) -> HubConfig:
    if not (data_dir / "xhub.toml").exists():
        raise SetupError(f"{data_dir} is not a hub data directory; run `xhub init {data_dir}`")
    return load_config(data_dir)


def with_listen(config: HubConfig, listen: str) -> HubConfig:
    split_listen(listen)
    return replace(config, listen=listen)
