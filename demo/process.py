"""The demo's plumbing: a real `xhub serve` process, the CLI, and how lines are printed."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
from prometheus_client.parser import text_string_to_metric_families

from xhub.connectors import XhubError
from xhub.protocol.errors import from_rpc_error

LEVELS = {1: "省", 2: "市", 3: "区"}


def say(line: str = "") -> None:
    print(line, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class HubProcess:
    """`xhub serve` as a real process that the demo can stop and start again."""

    def __init__(self, data_dir: Path, port: int) -> None:
        self.data_dir = data_dir
        self.port = port
        self.metrics_port = free_port()  # the operations port: metrics and probes
        self.process: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None

    def start(self) -> None:
        with open(self.data_dir / "hub.log", "ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "xhub.cli.main",
                    "serve",
                    "--data-dir",
                    str(self.data_dir),
                    "--listen",
                    f"127.0.0.1:{self.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={
                    **os.environ,
                    "XHUB_METRICS_LISTEN": f"127.0.0.1:{self.metrics_port}",
                    "XHUB_DRAIN_SECONDS": "0.5",
                },
            )

    def stop(self) -> int:
        """SIGTERM: not ready and NOT_SERVING for ``drain_seconds``, then drain, exit."""
        process = self.process
        if process is None:
            return 0
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.process = None
        self.returncode = process.returncode
        return process.returncode

    @property
    def pid(self) -> int:
        return self.process.pid if self.process else 0

    def metrics_summary(self) -> str:
        """A line from the hub's metrics, scraped from its operations port (plain HTTP)."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        samples = [s for f in text_string_to_metric_families(text) for s in f.samples]

        def total(name: str, **labels: str) -> int:
            return int(
                sum(
                    s.value
                    for s in samples
                    if s.name == name and labels.items() <= s.labels.items()
                )
            )

        calls, material = "xhub_calls_total", "xhub_material_bytes_total"
        return (
            f"{total(calls, decision='allowed')} calls allowed, "
            f"{total(calls, decision='denied')} refused; audit tree "
            f"{total('xhub_audit_tree_size')} entries, sequencer lag "
            f"{total('xhub_audit_sequencer_lag')}; material bytes in "
            f"{total(material, direction='in')}, out {total(material, direction='out')}"
        )


@contextmanager
def running_hub(data_dir: Path, port: int) -> Iterator[HubProcess]:
    hub = HubProcess(data_dir, port)
    hub.start()
    try:
        yield hub
    finally:
        hub.stop()


def refusal(exc: BaseException) -> str:
    typed = from_rpc_error(exc) if isinstance(exc, grpc.RpcError) else exc
    if isinstance(typed, XhubError):
        return f"{typed.code.name} {typed.reason_name}"
    return f"{type(exc).__name__}: {exc}"


def xhub(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "xhub.cli.main", *args], capture_output=True, text=True, check=False
    )


def show(result: subprocess.CompletedProcess[str], indent: str = "    ") -> None:
    for line in (result.stdout + result.stderr).rstrip().splitlines():
        say(indent + line)
