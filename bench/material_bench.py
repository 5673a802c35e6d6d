"""Material rows: upload and download MB/s against a bare gRPC chunk stream, and memory.

The bare baseline streams the same number of 1 MiB chunks over the same mTLS to a
server that only counts them (or only produces them). The hub path adds the signed
manifest, hashing, the temp file with fsync, the database record, the audit entry and
the SDK's own hashing on both sides. Memory: the hub's peak RSS growth while it takes
a 50 MiB upload, which must stay far below 50 MiB (content is streamed to disk).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import grpc

from bench.cert_bench import ITEM
from bench.echo_server import SINK_METHOD, SOURCE_METHOD
from bench.harness import Row, ratio_row
from bench.hubproc import process, setup
from xhub.connectors import HubClient
from xhub.connectors.sdk.client import secure_channel
from xhub.demo.process import free_port
from xhub.hub.catalog import store as catalog
from xhub.hub.core.db import make_engine, session_factory
from xhub.hub.setup import open_config
from xhub.protocol.codes import make_uscc
from xhub.v1 import intake_pb2

MIB = 1024 * 1024


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _timed(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def bench_materials(root: Path, size_mib: int = 50, repeat: int = 3) -> list[Row]:
    hub_port, echo_port = free_port(), free_port()
    bundles = setup(root, hub_port)
    config = open_config(root)
    item = intake_pb2.Item()
    item.CopyFrom(ITEM)
    item.materials.add(code="M3", name="平面图", material_types=["FLOOR_PLAN"])
    engine = make_engine(config.effective_database_url)
    with session_factory(engine).begin() as session:
        catalog.put_items(session, [item])
    engine.dispose()
    company = make_uscc("9", "1", "440103", "MA5MATER")
    size = size_mib * MIB
    rows: list[Row] = []
    with (
        process(["-m", "xhub.cli.main", "serve", "--data-dir", str(root)], root / "hub.log") as hub,
        process(
            ["-m", "bench.echo_server", "--data-dir", str(root), "--port", str(echo_port)],
            root / "echo.log",
        ) as echo,
        HubClient.from_bundle(bundles["lw_center"]) as client,
    ):
        client.wait_until_serving()
        channel = secure_channel(client.bundle, address=f"127.0.0.1:{echo_port}")
        sink: grpc.StreamUnaryMultiCallable[bytes, bytes] = channel.stream_unary(SINK_METHOD)
        source: grpc.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(SOURCE_METHOD)
        grpc.channel_ready_future(channel).result(timeout=20)
        block = os.urandom(MIB)

        def bare_upload() -> object:
            return sink(iter([block] * size_mib), timeout=120)

        def bare_download() -> object:
            return sum(len(c) for c in source(size.to_bytes(8, "big"), timeout=120))

        # Floors: the least any client of this protocol must do besides the transfer. An
        # upload's signed manifest declares the SHA-256, so the file is hashed before the
        # first byte is sent; a download is hashed and written before it is trusted.
        def floor_upload(path: Path) -> object:
            with path.open("rb") as content:
                hashlib.file_digest(content, "sha256")
            return bare_upload()

        def floor_download() -> object:
            digest = hashlib.sha256()
            with (root / "floor.bin").open("wb") as out:
                for chunk in source(size.to_bytes(8, "big"), timeout=120):
                    digest.update(chunk)
                    out.write(chunk)
            return digest.digest()

        files = []
        for i in range(repeat + 1):  # distinct content each time: no deduplication shortcut
            path = root / f"upload-{i}.bin"
            with path.open("wb") as out:
                for _ in range(size_mib):
                    out.write(os.urandom(MIB))
            files.append(path)
        rss_before = peak_rss_mib(hub.pid)
        echo_before = peak_rss_mib(echo.pid)
        uploads = iter(files)
        receipts = []

        def hub_upload() -> object:
            receipt = client.upload_material(
                next(uploads),
                material_type="FLOOR_PLAN",
                applicant_code=company,
                media_type="application/octet-stream",
                source_case="BENCH",
            )
            receipts.append(receipt)
            return receipt

        up_bare = _timed(partial(bare_upload), repeat)
        up_floor = _timed(partial(floor_upload, files[-1]), repeat)
        up_hub = _timed(partial(hub_upload), repeat)
        rss_growth = peak_rss_mib(hub.pid) - rss_before
        echo_growth = peak_rss_mib(echo.pid) - echo_before
        checklist = client.prepare_case(ITEM.code, company, purpose="bench")
        target = root / "download.bin"
        material_id = receipts[0].material.material_id
        down_bare = _timed(partial(bare_download), repeat)
        down_floor = _timed(floor_download, repeat)
        down_hub = _timed(
            partial(
                client.download_material, checklist.case_id, material_id, target, purpose="bench"
            ),
            repeat,
        )
        channel.close()
    rows.append(
        ratio_row(f"material_upload_{size_mib}MiB", size_mib / up_hub, "MB/s", size_mib / up_bare)
    )
    rows.append(
        ratio_row(
            f"material_download_{size_mib}MiB", size_mib / down_hub, "MB/s", size_mib / down_bare
        )
    )
    rows.append(
        ratio_row(
            f"upload_floor_hash_then_send_{size_mib}MiB",
            size_mib / up_floor,
            "MB/s",
            size_mib / up_bare,
        )
    )
    rows.append(
        ratio_row(
            f"download_floor_hash_and_write_{size_mib}MiB",
            size_mib / down_floor,
            "MB/s",
            size_mib / down_bare,
        )
    )
    rows.append(
        ratio_row(
            f"hub_peak_rss_growth_during_{size_mib}MiB_uploads",
            rss_growth,
            "MiB",
            max(echo_growth, 0.1),
        )
    )
    print(
        f"  upload {size_mib / up_hub:.0f} MB/s (bare {size_mib / up_bare:.0f}), download "
        f"{size_mib / down_hub:.0f} MB/s (bare {size_mib / down_bare:.0f}), hub RSS growth "
        f"{rss_growth:.1f} MiB",
        flush=True,
    )
    return rows
