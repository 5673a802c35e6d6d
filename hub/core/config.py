"""Hub configuration: a TOML file in the data directory, overridden by XHUB_* variables.

Every setting has a sensible default so ``xhub init`` + ``xhub serve`` just work
on SQLite; setting ``XHUB_DATABASE_URL=postgresql+psycopg://…`` moves the same
hub to PostgreSQL.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xhub.storage import normalize_database_url

CONFIG_FILE = "xhub.toml"
ENV_PREFIX = "XHUB_"


class ConfigError(ValueError):
    """The configuration file or an override is invalid."""


@dataclass(frozen=True)
class DataDir:
    """Where the hub keeps its CA, keys, database and the public bundles it issued."""

    root: Path

    @property
    def config_file(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca" / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca" / "ca.key"

    @property
    def ca_roots(self) -> Path:
        """The CA roots the hub trusts for member TLS (``xhub ca renew`` adds one; absent:
        ``ca.pem`` alone). ``ca.pem`` / ``ca.key`` are always the CA that issues."""
        return self.root / "ca" / "roots.pem"

    @property
    def ca_history(self) -> Path:
        """Every CA the hub ever had, oldest first (absent before the first renewal)."""
        return self.root / "ca" / "history.pem"

    @property
    def ca_handovers(self) -> Path:
        """The CA hand-overs, oldest first, each signed by the CA it renews."""
        return self.root / "ca" / "handovers.json"

    @property
    def tls_cert(self) -> Path:
        return self.root / "hub" / "tls.pem"

    @property
    def tls_key(self) -> Path:
        return self.root / "hub" / "tls.key"

    @property
    def signing_cert(self) -> Path:
        return self.root / "hub" / "signing.pem"

    @property
    def signing_key(self) -> Path:
        return self.root / "hub" / "signing.key"

    @property
    def signing_handovers(self) -> Path:
        """The hub signing key's hand-overs, oldest first (``xhub keys rotate-hub-signing``)."""
        return self.root / "hub" / "signing-handovers.json"

    @property
    def log_key(self) -> Path:
        return self.root / "hub" / "log.key"

    @property
    def log_handovers(self) -> Path:
        """The log key's hand-over checkpoints, oldest first (``xhub keys rotate-log``)."""
        return self.root / "hub" / "log-handovers.json"

    @property
    def subject_key(self) -> Path:
        return self.root / "hub" / "subject.key"

    @property
    def blobs(self) -> Path:
        return self.root / "blobs"

    @property
    def bundles(self) -> Path:
        return self.root / "bundles"

    def sqlite_url(self) -> str:
        return f"sqlite:///{(self.root / 'xhub.db').resolve()}"


@dataclass(frozen=True)
class HubConfig:
    data_dir: Path
    hub_id: str = "CN.440000.XHUB"
    hub_name: str = "xhub 政务数据共享交换平台"
    listen: str = "127.0.0.1:7443"
    advertise: str = ""
    server_name: str = "xhub-hub"
    database_url: str = ""
    clock_skew_seconds: int = 300
    # After a member rotates its signing key, the old key still signs for this long (so
    # requests already in flight are admitted); 0: it is retired at the rotation.
    key_rotation_overlap_seconds: int = 0
    max_concurrent_rpcs: int = 512
    workers: int = 8
    shutdown_grace_seconds: float = 10.0
    # On SIGTERM: /readyz and gRPC health say NOT_SERVING this long (the port still accepts)
    # before subscriptions end with UNAVAILABLE HUB_BUSY and the server stops.
    drain_seconds: float = 5.0
    # Prometheus metrics and the /healthz, /readyz probes (plain HTTP, no client
    # certificate; keep it on a local or operations network); "" turns it off.
    metrics_listen: str = "127.0.0.1:9464"
    keepalive_time_ms: int = 30_000
    keepalive_timeout_ms: int = 10_000
    replay_prune_interval_seconds: int = 60
    log_origin: str = ""
    audit_enabled: bool = True
    audit_merge_delay_seconds: float = 5.0
    sequencer_interval_seconds: float = 0.2
    sequencer_batch: int = 10_000
    max_material_bytes: int = 50 * 1024 * 1024
    calendar_file: str = ""  # working-day calendar (TOML); default: the bundled 2026 schedule
    supervision_interval_seconds: float = 60.0
    health_probe_interval_seconds: float = 2.0  # database writable? SERVING : NOT_SERVING
    max_streams_per_member: int = 64  # open subscriptions and downloads per member
    max_uploads_per_member: int = 16
    stream_lifetime_seconds: float = 3600.0  # a stream then ends cleanly; the SDK resumes
    upload_idle_seconds: float = 60.0  # an upload with nothing arriving this long is refused
    member_recheck_seconds: float = 2.0  # an open stream re-checks its member this often
    handshake_timeout_seconds: float = 10.0  # a connection must finish its TLS handshake
    # Refused calls audited and logged one by one per member (or per peer naming none) a
    # minute; beyond, they are counted into one summary entry per member a minute. 0: no cap.
    refusals_logged_per_minute: int = 120
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def paths(self) -> DataDir:
        return DataDir(self.data_dir)

    @property
    def effective_database_url(self) -> str:
        return normalize_database_url(self.database_url) or self.paths.sqlite_url()

    @property
    def advertised_address(self) -> str:
        return self.advertise or self.listen

    @property
    def effective_log_origin(self) -> str:
        """C2SP checkpoint origin line; also the log key's name."""
        return self.log_origin or f"xhub/{self.hub_id}/audit"


_FIELDS = {f.name: f for f in dataclasses.fields(HubConfig) if f.name not in ("data_dir", "extra")}


def _coerce(name: str, value: Any) -> Any:
    kind: type = type(_FIELDS[name].default)
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            if str(value).strip().lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).strip().lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if kind is int:
            return int(value)
        if kind is float:
            return float(value)
        return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"setting {name!r}: {value!r} is not a valid {kind.__name__}") from exc


def load_config(data_dir: Path, env: Mapping[str, str] | None = None) -> HubConfig:
    """Read ``xhub.toml`` from ``data_dir`` (if present) and apply XHUB_* overrides."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    config_file = DataDir(data_dir).config_file
    if config_file.exists():
        try:
            document = tomllib.loads(config_file.read_text("utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{config_file}: {exc}") from exc
        section = document.get("hub", {})
        if not isinstance(section, dict):
            raise ConfigError(f"{config_file}: [hub] must be a table")
        for key, value in section.items():
            if key not in _FIELDS:
                raise ConfigError(f"{config_file}: unknown setting {key!r} in [hub]")
            values[key] = _coerce(key, value)
    for key in _FIELDS:
        env_value = env.get(ENV_PREFIX + key.upper())
        if env_value is not None:
            values[key] = _coerce(key, env_value)
    return HubConfig(data_dir=data_dir, **values)


# XHUB_* variables read outside HubConfig (the CLI's data directory; the test harness).
OTHER_ENV_VARIABLES = ("XHUB_DATA_DIR", "XHUB_PG_BIN")


def unknown_env_warnings(env: Mapping[str, str] | None = None) -> list[str]:
    """A warning for each XHUB_* variable no setting reads, naming the closest known one."""
    env = os.environ if env is None else env
    known = [name.upper() for name in _FIELDS] + [
        name.removeprefix(ENV_PREFIX) for name in OTHER_ENV_VARIABLES
    ]
    warnings = []
    for name in sorted(env):
        rest = name.removeprefix(ENV_PREFIX)
        if name.startswith(ENV_PREFIX) and rest not in known:
            close = difflib.get_close_matches(rest, known, n=1, cutoff=0.7)
            hint = f"; did you mean {ENV_PREFIX}{close[0]}?" if close else ""
            warnings.append(f"environment variable {name} is not an xhub setting (ignored){hint}")
    return warnings


def split_listen(address: str, *, what: str = "listen") -> tuple[str, int]:
    """``host:port`` (``[::1]:7443`` for IPv6) into host and port; ConfigError otherwise.
    Port 0 (the system picks one, as tests and embedders do) is a valid listen address."""
    host, sep, port_text = address.strip().rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) < 65536:
        raise ConfigError(f"{what} {address!r} is not host:port (e.g. 127.0.0.1:7443)")
    return host, int(port_text)


def is_unspecified_host(host: str) -> bool:
    """0.0.0.0 / :: (every interface): an address to listen on, never one to dial."""
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return host in ("", "*")


def require_dialable(config: HubConfig) -> None:
    """Refuse when members would be handed an address they cannot dial (``0.0.0.0:port``)."""
    host, _port = split_listen(config.advertised_address, what="advertise")
    if is_unspecified_host(host):
        raise ConfigError(
            f"the hub listens on {config.listen} (every interface) but has no advertise "
            'address; member bundles would carry it. Set advertise = "host:port" in '
            "xhub.toml (or XHUB_ADVERTISE, or `xhub init --advertise`)"
        )


def render_config(config: HubConfig) -> str:
    """The TOML written by ``xhub init``; every setting spelled out."""
    lines = [
        "# xhub hub configuration; XHUB_<SETTING> environment variables override.",
        "# Members enrol with keys they make themselves (`xhub-connector keygen`), then",
        "# `xhub member add --csr enrolment.req ...`; bundles/ holds public bundles only.",
        "[hub]",
    ]
    for name in _FIELDS:
        value = getattr(config, name)
        if isinstance(value, bool):
            lines.append(f"{name} = {'true' if value else 'false'}")
        elif isinstance(value, str):
            escaped = value.replace("\\", "\\\\").replace('"', '\\"')
            lines.append(f'{name} = "{escaped}"')
        else:
            lines.append(f"{name} = {value}")
    return "\n".join(lines) + "\n"
