"""Processes the benchmarks measure: a hub and a bare echo server on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from xhub.demo.region import DEMO_MEMBERS, HUB_ID
from xhub.hub.registry.store import validate_member
from xhub.hub.setup import add_member_with_bundle, init_data_dir


@contextmanager
def process(
    args: list[str], log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
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
    bundles: dict[str, Path] = {}
    for member in DEMO_MEMBERS:
        spec = validate_member(
            name=member.name,
            uscc=member.uscc,
            division=member.division,
            roles=[member.roles],
            subsystem=member.subsystem,
        )
        bundles[member.key] = add_member_with_bundle(config, spec).bundle_dir
    return bundles


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
