"""Benchmark harness: every row is measured against a bare baseline in the same run.

Machines here are noisy, so absolute numbers do not carry between runs; ratios
measured back to back do. Rows are ``{name, value, unit, baseline, ratio}``.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

RESULTS = Path(__file__).with_name("results.json")


@dataclass(frozen=True)
class Row:
    name: str
    value: float
    unit: str
    baseline: float | None = None
    ratio: float | None = None


def ratio_row(name: str, value: float, unit: str, baseline: float) -> Row:
    return Row(name, round(value, 3), unit, round(baseline, 3), round(value / baseline, 3))


@dataclass(frozen=True)
class Throughput:
    calls_per_second: float
    p50_ms: float
    p99_ms: float


def measure(call: Callable[[], object], *, calls: int, threads: int = 1) -> Throughput:
    """Run ``calls`` calls split over ``threads`` threads; wall-clock rate and latencies."""
    latencies: list[float] = []
    lock = threading.Lock()
    per_thread = max(1, calls // threads)

    def worker() -> None:
        mine: list[float] = []
        for _ in range(per_thread):
            start = time.perf_counter()
            call()
            mine.append(time.perf_counter() - start)
        with lock:
            latencies.extend(mine)

    workers = [threading.Thread(target=worker) for _ in range(threads)]
    started = time.perf_counter()
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    elapsed = time.perf_counter() - started
    latencies.sort()
    return Throughput(
        calls_per_second=len(latencies) / elapsed,
        p50_ms=statistics.median(latencies) * 1000,
        p99_ms=latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
    )


def print_table(rows: list[Row]) -> None:
    print(f"{'name':<48} {'value':>12} {'unit':<10} {'baseline':>12} {'ratio':>7}")
    for row in rows:
        baseline = "" if row.baseline is None else f"{row.baseline:.3f}"
        ratio = "" if row.ratio is None else f"{row.ratio:.3f}"
        print(f"{row.name:<48} {row.value:>12.3f} {row.unit:<10} {baseline:>12} {ratio:>7}")


def write_results(rows: list[Row], path: Path = RESULTS) -> None:
    path.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n", "utf-8")
