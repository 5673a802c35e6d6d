"""`make bench`: the signed, verified registry lookup against a bare mTLS echo.

Both servers run as separate processes on 127.0.0.1 with the same TLS
credentials; the client runs here. The echo request and response carry as
many bytes as the signed lookup's request and response.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from functools import partial
from pathlib import Path

import grpc

from bench.audit_bench import bench_append, bench_proofs
from bench.case_bench import bench_status_stream
from bench.cert_bench import bench_pull
from bench.echo_server import ECHO_METHOD
from bench.harness import Row, measure, print_table, ratio_row, write_results
from bench.hubproc import process, setup, wait_echo
from bench.import_bench import bench_import
from bench.material_bench import bench_materials
from xhub.connectors import HubClient
from xhub.connectors.sdk.client import secure_channel
from xhub.demo.process import free_port
from xhub.protocol.bundle import MemberBundle
from xhub.v1 import registry_pb2


def bench_signed_lookup(root: Path, calls: int) -> list[Row]:
    hub_port, echo_port = free_port(), free_port()
    bundles = setup(root, hub_port)
    rows: list[Row] = []
    with (
        process(["-m", "xhub.cli.main", "serve", "--data-dir", str(root)], root / "hub.log"),
        HubClient.from_bundle(bundles["lw_center"]) as client,
    ):
        client.wait_until_serving()
        target = HubClient.from_bundle(bundles["gz_market"]).member_id
        lookup = registry_pb2.MemberLookup(member_id=target)
        request_size = len(
            registry_pb2.GetMemberRequest(
                envelope=client.transport.seal(lookup)
            ).SerializeToString()
        )
        response_size = len(
            registry_pb2.GetMemberResponse(
                envelope=client.transport.registry.GetMember(
                    registry_pb2.GetMemberRequest(envelope=client.transport.seal(lookup)), timeout=5
                ).envelope
            ).SerializeToString()
        )
        with process(
            [
                "-m",
                "bench.echo_server",
                "--data-dir",
                str(root),
                "--port",
                str(echo_port),
                "--response-size",
                str(response_size),
            ],
            root / "echo.log",
        ):
            channel = secure_channel(client.bundle, address=f"127.0.0.1:{echo_port}")
            echo: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(ECHO_METHOD)
            wait_echo(echo)
            payload = b"\x01" * request_size

            def bare() -> object:
                return echo(payload, timeout=10)

            def signed() -> object:
                return client.get_member(target)

            for label, threads in (("sequential", 1), ("4 threads", 4)):
                measure(bare, calls=200, threads=threads)  # warm-up
                measure(signed, calls=200, threads=threads)
                base = measure(bare, calls=calls, threads=threads)
                hub = measure(signed, calls=calls, threads=threads)
                suffix = "" if threads == 1 else "_4threads"
                rows += [
                    Row(f"bare_echo_unary{suffix}", round(base.calls_per_second, 1), "calls/s"),
                    ratio_row(
                        f"signed_registry_lookup{suffix}",
                        hub.calls_per_second,
                        "calls/s",
                        base.calls_per_second,
                    ),
                    ratio_row(f"signed_registry_lookup_p50{suffix}", hub.p50_ms, "ms", base.p50_ms),
                    ratio_row(f"signed_registry_lookup_p99{suffix}", hub.p99_ms, "ms", base.p99_ms),
                ]
                print(
                    f"  {label}: bare {base.calls_per_second:.0f}/s, "
                    f"signed {hub.calls_per_second:.0f}/s",
                    flush=True,
                )
            channel.close()
        rows.append(Row("signed_request_bytes", request_size, "bytes"))
    return rows


def bench_audit_cost(root: Path, calls: int) -> list[Row]:
    """The same signed lookup with the audit path on and off (two rounds each, alternating)."""
    bundles = setup(root, free_port())
    target = MemberBundle.load(bundles["gz_market"]).member_id
    rates: dict[str, list[float]] = {"1": [], "0": []}
    for _ in range(2):
        for enabled in ("0", "1"):
            with (
                process(
                    ["-m", "xhub.cli.main", "serve", "--data-dir", str(root)],
                    root / "hub.log",
                    env={"XHUB_AUDIT_ENABLED": enabled},
                ),
                HubClient.from_bundle(bundles["lw_center"]) as client,
            ):
                client.wait_until_serving()
                lookup = partial(client.get_member, target)
                measure(lookup, calls=200)
                result = measure(lookup, calls=calls)
                rates[enabled].append(result.calls_per_second)
    with_audit, without = max(rates["1"]), max(rates["0"])
    print(f"  audit on {with_audit:.0f}/s, off {without:.0f}/s", flush=True)
    return [ratio_row("signed_lookup_with_audit_vs_audit_off", with_audit, "calls/s", without)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--append-entries", type=int, default=50_000)
    parser.add_argument("--import-rows", type=int, default=10_000, help="rows of the CSV import")
    parser.add_argument("--store-sizes", default="10000,1000000", help="certificate store sizes")
    parser.add_argument(
        "--proof-sizes", default="1000,100000,1000000", help="tree sizes for proof timing"
    )
    args = parser.parse_args()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="xhub-bench-") as tmp:
        print("signed registry lookup vs bare mTLS echo", flush=True)
        rows += bench_signed_lookup(Path(tmp) / "lookup", args.calls)
        print("audit path cost on a signed call", flush=True)
        rows += bench_audit_cost(Path(tmp) / "audit-cost", args.calls)
        stores = [int(s) for s in args.store_sizes.split(",")]
        print(f"certificate pulls as the store grows to {stores}", flush=True)
        rows += bench_pull(Path(tmp) / "pull", args.calls, stores)
        print("material upload/download vs bare chunk streams", flush=True)
        rows += bench_materials(Path(tmp) / "materials")
        print("status events: department push → platform stream", flush=True)
        rows += bench_status_stream(Path(tmp) / "cases")
        print(
            f"certificate import of {args.import_rows} CSV rows (xhub certificates import)",
            flush=True,
        )
        rows += bench_import(Path(tmp) / "import", args.import_rows)
        print("audit append + sequencing (SQLite)", flush=True)
        rows += bench_append(Path(tmp), args.append_entries)
        sizes = [int(s) for s in args.proof_sizes.split(",")]
        print(f"inclusion proofs at {sizes} entries (building the trees takes a while)", flush=True)
        rows += bench_proofs(Path(tmp), sizes)
    print()
    print_table(rows)
    write_results(rows)
    print("\nwritten bench/results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
