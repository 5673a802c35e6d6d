"""Processes the benchmarks measure: a hub and a bare echo server on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from xhub.demo.enrolment import enrol, members_dir
from xhub.demo.region import DEMO_MEMBERS, HUB_ID
from xhub.hub.setup import init_data_dir


@contextmanager
def process(
    args: list[str], log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            # Benchmarks stop at once and bind no operations port (several may run).
            env={**os.environ, "XHUB_METRICS_LISTEN": "", "XHUB_DRAIN_SECONDS": "0", **(env or {})},
        )
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def setup(root: Path, port: int) -> dict[str, Path]:
    config = init_data_dir(root, hub_id=HUB_ID, listen=f"127.0.0.1:{port}")
    return {
        member.key: enrol(config, member, members_dir(root) / member.key)[1]
        for member in DEMO_MEMBERS
    }


def wait_echo(call: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            call(b"x", timeout=2)  # type: ignore[operator]
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
