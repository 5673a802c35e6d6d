"""The hub server (`xhub serve`): grpc.aio behind mutual TLS.

Only clients with certificates issued by the hub CA complete a handshake.
Health and reflection are served, and metrics and probes on the operations port
(``hub.core.ops_http``). SIGTERM first flips /readyz and gRPC health to NOT_SERVING for
``drain_seconds`` so load balancers stop sending, then ends subscriptions (UNAVAILABLE
HUB_BUSY; the SDK resumes from its cursor) and drains in-flight calls within the grace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import signal
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from xhub.hub.audit.service import AuditService
from xhub.hub.cases.calendar import SAMPLE_CN_2026, WorkCalendar
from xhub.hub.cases.service import CaseService
from xhub.hub.certificates.service import CertificateService
from xhub.hub.core.audit_log import TamperedLogError
from xhub.hub.core.ca_roots import trusted_roots
from xhub.hub.core.config import HubConfig
from xhub.hub.core.data_dir import secure_tree
from xhub.hub.core.db import current_revision
from xhub.hub.core.failures import FailureLog
from xhub.hub.core.health import forget_heartbeat, probe_through, process_id
from xhub.hub.core.ops_http import HubState, OpsServer
from xhub.hub.core.rpc import OpenStreams, Service, StreamLimits
from xhub.hub.core.runtime import HubRuntime
from xhub.hub.intake.service import IntakeService
from xhub.hub.materials.service import MaterialService
from xhub.hub.registry.service import RegistryService
from xhub.protocol.pki import certificates_pem

log = logging.getLogger("xhub.server")

SERVICES: tuple[type[Service], ...] = (
    RegistryService,
    AuditService,
    CertificateService,
    IntakeService,
    MaterialService,
    CaseService,
)
# Read off the services themselves: each names its part of the contract once.
SERVICE_NAMES = tuple(service.descriptor.full_name for service in SERVICES)
AUDIT_SERVICE = AuditService.descriptor.full_name


class StartupError(RuntimeError):
    """The hub refuses to serve; the message says what to fix."""


def server_options(config: HubConfig) -> list[tuple[str, int]]:
    return [
        ("grpc.so_reuseport", 0),
        ("grpc.keepalive_time_ms", config.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", config.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_receive_message_length", 8 * 1024 * 1024),
        ("grpc.max_send_message_length", 8 * 1024 * 1024),
        # A connection that does not finish its TLS handshake in time is closed: idle TCP
        # connections cannot pile up and take the descriptors members need.
        ("grpc.server_handshake_timeout_ms", int(config.handshake_timeout_seconds * 1000)),
    ]


def server_credentials(config: HubConfig) -> grpc.ServerCredentials:
    """The hub's TLS key and certificate; member certificates of every trusted CA root are
    accepted (after ``xhub ca renew``: the old CA's and the new one's)."""
    paths = config.paths
    return grpc.ssl_server_credentials(
        [(paths.tls_key.read_bytes(), paths.tls_cert.read_bytes())],
        root_certificates=certificates_pem(trusted_roots(paths)),
        require_client_auth=True,
    )


@dataclass
class RunningHub:
    server: grpc.aio.Server
    runtime: HubRuntime
    health: health.aio.HealthServicer
    port: int
    open_streams: OpenStreams = field(default_factory=OpenStreams)
    ready: bool = True
    # Set when the sequencer found the stored tree disagreeing with the last signed
    # checkpoint: the audit service stays NOT_SERVING until an operator restarts the hub.
    log_halted: bool = False
    # SIGTERM received: not ready any more (see ``stop``).
    draining: bool = False
    ops: OpsServer | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _sequencer: asyncio.Task[None] | None = None

    @property
    def metrics_port(self) -> int | None:
        return None if self.ops is None else self.ops.port

    def unready(self) -> str:
        """Why this hub should get no traffic ("" when it should): /readyz's answer."""
        if self.draining:
            return "draining: the hub is shutting down"
        if not self.ready:
            return "database not writable"
        if self.log_halted:
            return "audit sequencer halted: the stored log disagrees with its checkpoint"
        if self._sequencer is not None and self._sequencer.done():
            return "audit sequencer not running"
        return ""

    async def set_health(
        self, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType
    ) -> None:
        for name in ("", *SERVICE_NAMES):
            halted = self.log_halted and name == AUDIT_SERVICE
            await self.health.set(
                name, health_pb2.HealthCheckResponse.NOT_SERVING if halted else status
            )

    async def halt_log(self, exc: TamperedLogError) -> None:
        """The sequencer refused to sign over a tampered tree: say so once, loudly, and take
        the audit service out of service (see README, "When the sequencer stops signing")."""
        if not self.log_halted:
            self.log_halted = True
            log.critical(
                "audit log: %s. No checkpoint is signed any more; the audit service is "
                "NOT_SERVING. Stop the hub, preserve the database, run `xhub audit check`.",
                exc,
            )
            await self.health.set(AUDIT_SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)

    async def stop(self, grace: float | None = None, *, drain: float = 0.0) -> None:
        """Graceful stop: not ready and NOT_SERVING first, for ``drain`` seconds while the
        port still accepts; then subscriptions end (UNAVAILABLE HUB_BUSY) and in-flight
        calls get ``grace`` seconds to finish."""
        grace = self.runtime.config.shutdown_grace_seconds if grace is None else grace
        self.draining = True
        await self.health.enter_graceful_shutdown()
        if drain > 0:
            await asyncio.sleep(drain)
        self.open_streams.closing.set()
        await self.server.stop(grace)
        if self.ops is not None:
            await asyncio.to_thread(self.ops.stop)
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # Leave nothing pending that an in-flight call logged during the drain (unless the
        # sequencer refuses to sign over a tampered tree: then the entries stay pending).
        try:
            await self.runtime.run_blocking(
                lambda: self.runtime.writing(self.runtime.audit.sequence)
            )
        except TamperedLogError as exc:
            log.error("audit log: the last entries stay pending: %s", exc)
        with contextlib.suppress(Exception):  # a stale heartbeat row is harmless
            engine, process = self.runtime.engine, process_id()
            await self.runtime.run_blocking(
                lambda: self.runtime.writing(lambda: forget_heartbeat(engine, process))
            )
        self.runtime.close()


def check_database(runtime: HubRuntime) -> None:
    """Refuse to serve on a database without schema or with a log that was altered."""
    revision = current_revision(runtime.engine)
    if revision is None:
        raise StartupError(
            f"database {runtime.engine.url.render_as_string(hide_password=True)} has no schema; "
            "run `xhub init` (or `xhub db upgrade`) first"
        )
    try:
        size, root = runtime.audit.check_integrity(
            progress=lambda done, total: log.info("audit check: %d / %d entries", done, total)
        )
    except TamperedLogError as exc:
        raise StartupError(
            f"audit log integrity check failed: {exc}. The stored log does not match its "
            "last signed checkpoint; the hub will not serve. Preserve the database for "
            "investigation and run `xhub audit check` for details."
        ) from exc
    log.info("audit log verified: %d entries, root %s", size, root.hex()[:16])
    runtime.audit.publish_initial_checkpoint()
    runtime.audit.observe_progress()


def secure_data_dir(config: HubConfig) -> None:
    """Repair the data directory's permissions, saying what was too open (personal data)."""
    for line in secure_tree(config.data_dir):
        log.warning("data directory was readable by others; fixed %s", line)


def raise_descriptor_limit() -> None:
    """Every connection and open file costs a descriptor; a soft limit of 1024 lets an idle
    connection flood lock members out. Raise the soft limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            log.info("descriptor limit raised from %d to %d", soft, target)


async def start_hub(config: HubConfig, *, port_override: int | None = None) -> RunningHub:
    """Start serving; returns once the port is bound and health says SERVING."""
    secure_data_dir(config)
    raise_descriptor_limit()
    runtime = HubRuntime(config)
    try:
        check_database(runtime)
    except Exception:
        runtime.close()
        raise
    server = grpc.aio.server(
        options=server_options(config), maximum_concurrent_rpcs=config.max_concurrent_rpcs
    )
    calendar = WorkCalendar.from_file(config.calendar_file or SAMPLE_CN_2026)
    cases = CaseService(runtime, calendar)
    services: list[Service] = [
        RegistryService(runtime),
        AuditService(runtime),
        CertificateService(runtime),
        IntakeService(runtime),
        MaterialService(runtime),
        cases,
    ]
    open_streams = OpenStreams(
        StreamLimits(
            streams_per_member=config.max_streams_per_member,
            uploads_per_member=config.max_uploads_per_member,
            lifetime_seconds=config.stream_lifetime_seconds,
            upload_idle_seconds=config.upload_idle_seconds,
            member_recheck_seconds=config.member_recheck_seconds,
        )
    )
    for service in services:
        service.open_streams = open_streams  # the caps are per member across all services
    server.add_generic_rpc_handlers([service.rpc_handler() for service in services])
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    address = config.listen if port_override is None else f"127.0.0.1:{port_override}"
    try:
        port = server.add_secure_port(address, server_credentials(config))
    except RuntimeError:  # grpc: "Failed to bind to address ..."
        port = 0
    if port == 0:
        runtime.close()
        raise StartupError(
            f"cannot listen on {address}: the port is in use or the address is not this "
            "machine's (another hub running? choose another with --listen host:port)"
        )
    runtime.notifier.bind(asyncio.get_running_loop())
    await server.start()
    running = RunningHub(server, runtime, health_servicer, port, open_streams)
    if config.metrics_listen:
        runtime.metrics.registry.register(HubState(runtime.audit.progress, open_streams))
        try:
            running.ops = OpsServer(config.metrics_listen, runtime.metrics, running.unready).start()
        except (OSError, ValueError) as exc:
            await server.stop(0)
            runtime.close()
            raise StartupError(
                f"cannot serve metrics on {config.metrics_listen!r} ({exc}); change "
                'metrics_listen ("" turns the metrics port off)'
            ) from exc
    await running.set_health(health_pb2.HealthCheckResponse.SERVING)
    running._sequencer = asyncio.create_task(_sequencer_loop(running))
    running._tasks = [
        asyncio.create_task(_prune_loop(runtime)),
        running._sequencer,
        asyncio.create_task(_supervision_loop(runtime, cases)),
        asyncio.create_task(_health_loop(running)),
    ]
    log.info("xhub %s serving on %s (port %d)", config.hub_id, address, port)
    return running


async def _every(
    seconds: Callable[[], float], failures: FailureLog, job: Callable[[], Awaitable[object]]
) -> None:
    """Run ``job`` for ever with a pause between rounds; a failing round is logged by
    ``failures`` (one traceback per distinct failure) and retried next round."""
    while True:
        try:
            await job()
            failures.succeeded()
        except Exception as exc:  # keep serving; the next round retries
            failures.failed(exc)
        await asyncio.sleep(seconds())


def _prune_loop(runtime: HubRuntime) -> Coroutine[Any, Any, None]:
    async def prune() -> None:
        pruned = await runtime.run_blocking(runtime.prune)
        if pruned:
            log.debug("pruned %d expired message ids", pruned)

    return _every(
        lambda: runtime.config.replay_prune_interval_seconds,
        FailureLog(log, "pruning the replay store"),
        prune,
    )


def _sequencer_loop(running: RunningHub) -> Coroutine[Any, Any, None]:
    """Every hub process runs one; the database lock lets one sequence at a time. A round
    that finds the stored tree disagreeing with the last signed checkpoint signs nothing
    (every later round checks again and refuses again) and halts the audit service."""
    runtime = running.runtime
    batch = runtime.config.sequencer_batch

    def sequence() -> int:
        return runtime.writing(lambda: runtime.audit.sequence(batch))

    async def drain() -> None:
        try:
            while await runtime.run_blocking(sequence) >= batch:
                pass  # a full batch: more may be waiting
        except TamperedLogError as exc:
            await running.halt_log(exc)
            raise  # and the failure log has its traceback

    return _every(
        lambda: runtime.config.sequencer_interval_seconds,
        FailureLog(log, "sequencing the audit log"),
        drain,
    )


def _supervision_loop(runtime: HubRuntime, cases: CaseService) -> Coroutine[Any, Any, None]:
    """Time-limit warnings and escalations; safe with several hub processes."""

    async def supervise() -> None:
        published = await runtime.run_blocking(lambda: runtime.writing(cases.supervise))
        if published:
            log.info("published %d time-limit warning(s) / escalation(s)", published)

    return _every(
        lambda: runtime.config.supervision_interval_seconds,
        FailureLog(log, "time-limit supervision"),
        supervise,
    )


def _health_loop(running: RunningHub) -> Coroutine[Any, Any, None]:
    """NOT_SERVING while the database cannot take a write, SERVING again once it can."""
    runtime, process = running.runtime, process_id()
    failures = FailureLog(log, "the database health probe")

    async def probe() -> None:
        try:
            await runtime.run_blocking(
                lambda: probe_through(runtime.write_lock, runtime.engine, process)
            )
        except Exception:
            runtime.metrics.database_errors.inc()
            if running.ready:
                running.ready = False
                log.warning("database not writable: health NOT_SERVING until it recovers")
                await running.set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
            raise
        if not running.ready:
            running.ready = True
            log.info("database writable again: health SERVING")
            await running.set_health(health_pb2.HealthCheckResponse.SERVING)

    return _every(lambda: runtime.config.health_probe_interval_seconds, failures, probe)


async def serve_forever(
    config: HubConfig, *, on_ready: Callable[[RunningHub], Awaitable[None]] | None = None
) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully."""
    running = await start_hub(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if on_ready is not None:
        await on_ready(running)
    await stop.wait()
    log.info(
        "shutting down: not ready for %.1fs, then draining for %.1fs",
        config.drain_seconds,
        config.shutdown_grace_seconds,
    )
    await running.stop(drain=config.drain_seconds)
    log.info("stopped")
