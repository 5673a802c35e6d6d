"""A real hub for tests: data directory, members, and a grpc.aio server on 127.0.0.1.

``HubKit`` creates a data directory with ``hub.setup.init_data_dir``, registers members
(province 440000, municipal 440100, district 440103; roles issuer / platform / department /
auditor; the district department signs with Ed25519) and serves them with
``hub.server.start_hub`` on an event loop of its own in a background thread.  Tests talk to
it over mutual TLS through ``kit.client(key)``, reach its database through
``kit.session()``, and can ``restart()`` it on the same data directory and port.

    kit = HubKit(tmp_path).start()
    with kit.client("platform") as hub:
        hub.get_member(kit.member_id("issuer"))
    kit.close()
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import socket
import threading
from collections.abc import Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import Engine, update
from sqlalchemy.orm import Session

from xhub.connectors import HubClient
from xhub.connectors.sdk.enrolment import generate_keys, install_bundle
from xhub.hub.core.ca import CertificateAuthority
from xhub.hub.core.config import HubConfig
from xhub.hub.core.db import MemberCertificateRow, MemberRow, make_engine, session_factory
from xhub.hub.registry.store import MemberSpec, revoke_member, validate_member
from xhub.hub.server import RunningHub, start_hub
from xhub.hub.setup import add_member_with_bundle, init_data_dir, load_ca
from xhub.protocol import codes
from xhub.protocol.bundle import MemberBundle
from xhub.protocol.pki import certificate_pem
from xhub.protocol.signing import ECDSA_P256, ED25519, private_key_pem
from xhub.v1 import registry_pb2

T = TypeVar("T")

LOOPBACK = "127.0.0.1"
HUB_ID = "CN.440000.XHUB"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def enrol(
    config: HubConfig,
    spec: MemberSpec,
    member_dir: Path,
    *,
    signing_algorithm: registry_pb2.KeyAlgorithm.ValueType = ECDSA_P256,
    days: int = 730,
) -> Path:
    """The CSR path, done in-process by the member side: keys and request in the member's own
    directory, the hub issues and writes a public bundle, the member installs it next to its
    keys. Returns the member's (complete) directory."""
    keys = generate_keys(spec.member_id, member_dir, signing_algorithm=signing_algorithm)
    added = add_member_with_bundle(config, spec, keys.request, days=days)
    install_bundle(added.bundle_dir, member_dir)
    return member_dir


@dataclass(frozen=True)
class MemberDef:
    """How to register one test member; ``key`` is the short name tests use."""

    key: str
    name: str
    division: str
    roles: tuple[str, ...]
    org_base8: str
    subsystem: str = ""
    signing_algorithm: registry_pb2.KeyAlgorithm.ValueType = ECDSA_P256
    days: int = 730

    @property
    def uscc(self) -> str:
        # Registering authority 1 (机构编制), category 1 (机关): a government body.
        return codes.make_uscc("1", "1", self.division, self.org_base8)


DEFAULT_MEMBERS: tuple[MemberDef, ...] = (
    MemberDef("issuer", "广东省市场监督管理局", "440000", ("issuer",), "MB2C9041", "licence"),
    MemberDef(
        "platform", "广州市政务服务数据管理局", "440100", ("platform",), "MB2C9052", "window"
    ),
    MemberDef(
        "department",
        "广州市荔湾区行政审批局",
        "440103",
        ("department", "issuer"),
        "0A7K3QX1",
        "approval",
        signing_algorithm=ED25519,
    ),
    MemberDef("auditor", "广东省政务服务效能监察室", "440000", ("auditor",), "MB2C9063"),
)


@dataclass(frozen=True)
class KitMember:
    key: str
    member_id: str
    spec: MemberSpec
    bundle_dir: Path
    signing_algorithm: registry_pb2.KeyAlgorithm.ValueType

    @property
    def level(self) -> int:
        return int(self.spec.level)

    @property
    def roles(self) -> tuple[int, ...]:
        return tuple(sorted(int(r) for r in self.spec.roles))

    @property
    def division(self) -> str:
        return self.spec.division_code


@dataclass
class _Loop:
    """An asyncio event loop running forever on its own daemon thread."""

    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="hubkit-loop", daemon=True
        )
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        assert self.thread is not None
        self.thread.join(timeout=10)
        if not self.loop.is_running():
            self.loop.close()


class HubKit:
    """A hub data directory plus a running server; see the module docstring."""

    def __init__(
        self,
        root: Path,
        *,
        database_url: str = "",
        members: Sequence[MemberDef] = DEFAULT_MEMBERS,
        grace: float = 1.0,
        metrics: bool = False,
    ) -> None:
        self.root = root
        self.port = free_port()
        self.grace = grace
        self.config: HubConfig = dataclasses.replace(
            init_data_dir(
                root / "hub-data",
                hub_id=HUB_ID,
                listen=f"{LOOPBACK}:{self.port}",
                database_url=database_url,
            ),
            # Tests count audit entries of refusals: every refusal is audited here; the
            # per-sender budget has its own tests (test_refusal_bounds.py sets it).
            refusals_logged_per_minute=0,
            # The operations port only where a test asks for it, on a port of its own.
            metrics_listen=f"{LOOPBACK}:{free_port()}" if metrics else "",
        )
        self.engine: Engine = make_engine(self.config.effective_database_url, pool_size=2)
        self._sessions = session_factory(self.engine)
        self.members: dict[str, KitMember] = {}
        self._clients: list[HubClient] = []
        self._loop: _Loop | None = None
        self.running: RunningHub | None = None
        self.replicas: list[RunningHub] = []
        for definition in members:
            self.add_member(definition)

    # -- lifecycle ------------------------------------------------------------

    @property
    def hub_id(self) -> str:
        return self.config.hub_id

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def start(self) -> HubKit:
        if self.running is not None:
            raise RuntimeError("hub already running")
        if self._loop is None:
            self._loop = _Loop()
        self.running = self._loop.run(start_hub(self.config, port_override=self.port))
        return self

    def stop(self, grace: float | None = None) -> None:
        """Graceful stop through ``RunningHub.stop`` (NOT_SERVING, then drain)."""
        if self.running is not None:
            self.begin_stop(grace).result(timeout=30)

    def begin_stop(
        self, grace: float | None = None, *, drain: float = 0.0
    ) -> concurrent.futures.Future[None]:
        """Start ``RunningHub.stop`` and return at once; the future completes when stopped.
        ``drain``: seconds of not-ready first, as after SIGTERM (``drain_seconds``)."""
        if self.running is None or self._loop is None:
            raise RuntimeError("hub is not running")
        running, self.running = self.running, None
        return asyncio.run_coroutine_threadsafe(
            running.stop(self.grace if grace is None else grace, drain=drain), self._loop.loop
        )

    def start_replica(self) -> str:
        """Serve the same data directory and database from a second server; returns its address.

        Like a second hub process sharing one database: nothing but the database is shared.
        """
        if self._loop is None:
            self._loop = _Loop()
        port = free_port()
        replica = dataclasses.replace(self.config, metrics_listen="")
        self.replicas.append(self._loop.run(start_hub(replica, port_override=port)))
        return f"{LOOPBACK}:{port}"

    def restart(self) -> None:
        """Stop and serve again on the same data directory and port."""
        self.stop()
        self.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run a coroutine on the hub's event loop (e.g. ``kit.running.stop()``)."""
        if self._loop is None:
            raise RuntimeError("hub was never started")
        return self._loop.run(coro, timeout)

    def close(self) -> None:
        for client in self._clients:
            with contextlib.suppress(Exception):
                client.close()
        self._clients.clear()
        try:
            self.stop()
            for replica in self.replicas:
                self.run(replica.stop(self.grace))
            self.replicas.clear()
        finally:
            if self._loop is not None:
                self._loop.close()
                self._loop = None
            self.engine.dispose()

    def __enter__(self) -> HubKit:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- members ----------------------------------------------------------------

    def add_member(self, definition: MemberDef) -> KitMember:
        """Enrol a member (hub running or not) the way the README says: the member generates
        its keys and request in ``root/members/<key>``, the hub issues from the request and
        writes a public bundle, the member installs it; ``bundle_dir`` is the member's dir."""
        if definition.key in self.members:
            raise ValueError(f"member key {definition.key!r} already used")
        spec = validate_member(
            name=definition.name,
            uscc=definition.uscc,
            division=definition.division,
            roles=definition.roles,
            subsystem=definition.subsystem,
        )
        member_dir = enrol(
            self.config,
            spec,
            self.root / "members" / definition.key,
            signing_algorithm=definition.signing_algorithm,
            days=definition.days,
        )
        member = KitMember(
            definition.key, spec.member_id, spec, member_dir, definition.signing_algorithm
        )
        self.members[definition.key] = member
        return member

    def member_id(self, key: str) -> str:
        return self.members[key].member_id

    def bundle(self, key: str) -> MemberBundle:
        return MemberBundle.load(self.members[key].bundle_dir, hub_address=self.address)

    def client(self, key: str, *, address: str | None = None, **kwargs: Any) -> HubClient:
        """An SDK client for member ``key`` over mTLS (to ``address`` if given, else this hub).

        ``kwargs`` go to ``HubClient`` (``timeout``, ``retry``, ...). Closed by ``close()``.
        """
        client = HubClient.from_bundle(
            self.members[key].bundle_dir, hub_address=address or self.address, **kwargs
        )
        self._clients.append(client)
        return client

    def channel(
        self, *, private_key: ec.EllipticCurvePrivateKey | None, cert: x509.Certificate | None
    ) -> grpc.Channel:
        """A channel trusting the hub CA that presents ``cert`` (or no client cert at all)."""
        root = self.config.paths.ca_cert.read_bytes()
        if private_key is None or cert is None:
            credentials = grpc.ssl_channel_credentials(root_certificates=root)
        else:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=root,
                private_key=private_key_pem(private_key),
                certificate_chain=certificate_pem(cert),
            )
        return grpc.secure_channel(
            self.address,
            credentials,
            options=[("grpc.ssl_target_name_override", self.config.server_name)],
        )

    def ca(self) -> CertificateAuthority:
        """The hub's own CA (to issue certificates the handshake accepts)."""
        return load_ca(self.config)

    # -- database ---------------------------------------------------------------

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """A committed-on-success session on the hub's database."""
        with self._sessions.begin() as session:
            yield session

    def revoke(self, key: str, reason: str = "test revocation") -> None:
        with self.session() as session:
            revoke_member(session, self.member_id(key), reason)

    def set_not_after(self, key: str, when: datetime) -> None:
        """Make the registry say every certificate of the member ends at ``when``."""
        member_id = self.member_id(key)
        with self.session() as session:
            session.execute(
                update(MemberRow).where(MemberRow.member_id == member_id).values(not_after=when)
            )
            session.execute(
                update(MemberCertificateRow)
                .where(MemberCertificateRow.member_id == member_id)
                .values(not_after=when)
            )

    def expire(self, key: str) -> None:
        """Make the registry say the member's certificate expired a minute ago."""
        self.set_not_after(key, datetime.now(UTC) - timedelta(minutes=1))
