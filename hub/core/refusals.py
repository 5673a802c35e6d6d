"""Refused traffic stays bounded (拒绝流量限额): a sender that keeps being refused is counted,
not recorded call by call.

Every refused call is audited and logged on its own until its sender (a member, or "" for a
peer naming none) has had ``per_minute`` refusals in the current minute; further refusals in
that minute are only counted, by reason. When the minute is over, one summary entry (audit
log and hub log) says how many were counted. So a revoked member or a peer sending garbage
costs at most ``per_minute`` small entries and one summary a minute, however fast it sends.
The count is per hub process (each process keeps its own windows).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

# The audit log's method for a summary of refusals that were counted, not logged one by one.
SUMMARY_METHOD = "/xhub.hub/RefusalSummary"
WINDOW_SECONDS = 60.0
# More senders than this with an open window (never in practice: senders are members) and
# the ended windows are summarised at once rather than kept.
_MAX_WINDOWS = 10_000


@dataclass(frozen=True)
class Summary:
    """The refusals of one sender in one minute that were counted, not logged one by one."""

    sender: str
    since: datetime
    until: datetime
    counts: Mapping[str, int]  # reason → refusals

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def reason(self) -> str:
        """The summary's audit reason: ``COUNTED 1200: BAD_SIGNATURE=20 MEMBER_REVOKED=1180``."""
        parts = [f"{name}={count}" for name, count in sorted(self.counts.items())[:16]]
        return f"COUNTED {self.total}: {' '.join(parts)}"


@dataclass
class _Window:
    started: float  # monotonic
    started_at: datetime
    individual: int = 0
    counted: Counter[str] = field(default_factory=Counter)

    def summary(self, sender: str, until: datetime) -> Summary | None:
        if not self.counted:
            return None
        return Summary(sender, self.started_at, until, dict(self.counted))


class RefusalBudget:
    """Per sender and minute: ``per_minute`` refusals on their own, then counted (0: no cap).

    Thread-safe: worker threads take from it."""

    def __init__(
        self,
        per_minute: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._wall_clock = wall_clock
        self._windows: dict[str, _Window] = {}
        self._lock = threading.Lock()

    def take(self, sender: str, reason: str) -> tuple[bool, list[Summary]]:
        """Whether this refusal is audited and logged on its own; and the summaries of this
        sender's minute that just ended (to be logged by the caller)."""
        if self.per_minute <= 0:
            return True, []
        now = self._clock()
        ended: list[Summary] = []
        with self._lock:
            window = self._windows.get(sender)
            if window is not None and now - window.started >= WINDOW_SECONDS:
                summary = window.summary(sender, self._wall_clock())
                if summary is not None:
                    ended.append(summary)
                window = None
            if window is None:
                if len(self._windows) >= _MAX_WINDOWS:
                    ended += self._sweep_locked(now)
                window = self._windows[sender] = _Window(now, self._wall_clock())
            if window.individual < self.per_minute:
                window.individual += 1
                return True, ended
            window.counted[reason] += 1
            return False, ended

    def sweep(self) -> list[Summary]:
        """The summaries of every minute that has ended (their windows are forgotten)."""
        with self._lock:
            return self._sweep_locked(self._clock())

    def flush(self) -> list[Summary]:
        """Every pending summary, ended or not (at shutdown)."""
        with self._lock:
            return self._sweep_locked(float("inf"))

    def _sweep_locked(self, now: float) -> list[Summary]:
        ended: list[Summary] = []
        until = self._wall_clock()
        for sender, window in list(self._windows.items()):
            if now - window.started >= WINDOW_SECONDS:
                del self._windows[sender]
                summary = window.summary(sender, until)
                if summary is not None:
                    ended.append(summary)
        return ended
