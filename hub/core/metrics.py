"""What the hub counts for its operators (Prometheus, ``prometheus-client``).

One ``HubMetrics`` per hub process (its own registry: several hubs in one test process do
not mix). The hot path only increments a counter and observes a histogram; the labels are
bounded sets (method paths of the contract, ``ErrorReason`` names, "in"/"out"). Numbers the
hub already keeps (open streams, the sequencer's progress) are read at scrape time by a
collector (``hub.core.ops_http``), not counted twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics

# No ``*_created`` series beside every counter (a process-wide setting of the library).
disable_created_metrics()  # type: ignore[no-untyped-call]

# Unary calls take milliseconds; a slow database or a large payload seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class HubMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.calls = Counter(
            "xhub_calls",
            "Calls decided by the hub, by method, decision (allowed/denied) and reason",
            ["method", "decision", "reason"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "xhub_call_duration_seconds",
            "Time from a unary call's arrival to its signed answer or refusal, by method",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.material_bytes = Counter(
            "xhub_material_bytes",
            "Material content bytes received (in, uploads) and sent (out, downloads)",
            ["direction"],
            registry=self.registry,
        )
        self.database_errors = Counter(
            "xhub_database_errors",
            "Failed database health probes and calls that failed on a database error",
            registry=self.registry,
        )

    def decided(self, method: str, reason: str) -> None:
        """One call decided: allowed when ``reason`` is "" (else its refusal reason)."""
        decision = "denied" if reason else "allowed"
        self.calls.labels(method, decision, reason).inc()


@dataclass
class SequencerProgress:
    """What the audit sequencer of this process last saw (cheap numbers for scrapes).

    ``appended_id`` is the newest entry id this process wrote, ``sequenced_id`` the newest
    id known to be in a checkpoint: their difference estimates the entries still pending."""

    tree_size: int = 0
    checkpoint_at: datetime | None = None
    appended_id: int = 0
    sequenced_id: int = 0

    @property
    def lag(self) -> int:
        return max(self.appended_id - self.sequenced_id, 0)
