"""The operations port (``metrics_listen``): Prometheus metrics and liveness/readiness probes.

Plain HTTP with no client certificate, for the local scraper and the orchestrator:

- ``GET /metrics``: the hub's metrics (``hub.core.metrics``) and, collected at scrape time
  from numbers the hub already keeps, open streams, audit tree size, sequencer lag and the
  age of the last checkpoint;
- ``GET /healthz``: 200 while the process serves HTTP at all;
- ``GET /readyz``: 200 when the hub should get traffic, else 503 with ``{"reason": ...}``.

It runs on a thread of its own, so a busy event loop cannot make the probes time out; what it
reads (flags, counters) is written by the loop and read whole.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from xhub.hub.core.metrics import HubMetrics, SequencerProgress
from xhub.hub.core.rpc import OpenStreams

log = logging.getLogger("xhub.ops")


class HubState(Collector):
    """Gauges read at scrape time; no database query."""

    def __init__(self, progress: SequencerProgress, open_streams: OpenStreams) -> None:
        self.progress = progress
        self.open_streams = open_streams

    def collect(self) -> Iterator[GaugeMetricFamily]:
        streams = GaugeMetricFamily(
            "xhub_open_streams", "Open long-lived calls by kind", labels=["kind"]
        )
        for kind, count in self.open_streams.by_kind().items():
            streams.add_metric([kind], count)
        yield streams
        progress = self.progress
        yield GaugeMetricFamily(
            "xhub_audit_tree_size",
            "Entries in the audit log's last signed checkpoint",
            value=progress.tree_size,
        )
        yield GaugeMetricFamily(
            "xhub_audit_sequencer_lag",
            "Audit entries not yet in a signed checkpoint (as this process sees it)",
            value=progress.lag,
        )
        if progress.checkpoint_at is not None:
            age = (datetime.now(UTC) - progress.checkpoint_at).total_seconds()
            yield GaugeMetricFamily(
                "xhub_audit_checkpoint_age_seconds",
                "Seconds since the last checkpoint was signed",
                value=max(age, 0.0),
            )


def _handler(metrics: HubMetrics, unready: Callable[[], str]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(metrics.registry))
            elif path == "/healthz":
                self._send(200, "application/json", b'{"status": "live"}')
            elif path == "/readyz":
                reason = unready()
                body = json.dumps(
                    {"status": "not ready", "reason": reason} if reason else {"status": "ready"}
                )
                self._send(503 if reason else 200, "application/json", body.encode())
            else:
                self._send(404, "application/json", b'{"reason": "no such endpoint"}')

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # scrapes every few seconds would drown the hub's log

    return Handler


class OpsServer:
    """The HTTP server of the operations port, on a daemon thread."""

    def __init__(self, address: str, metrics: HubMetrics, unready: Callable[[], str]) -> None:
        host, _, port = address.rpartition(":")
        self.httpd = ThreadingHTTPServer((host.strip("[]"), int(port)), _handler(metrics, unready))
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name="xhub-ops-http", daemon=True
        )

    def start(self) -> OpsServer:
        self._thread.start()
        log.info("metrics and probes on http://%s:%d", self.httpd.server_address[0], self.port)
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)
