"""Bare grpcio echo server: the baseline. Same mTLS credentials as the hub, no signing,
no database, no admission — just bytes in, bytes out, on grpc.aio like the hub."""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from hub.config import load_config
from hub.server import server_credentials, server_options

ECHO_METHOD = "/bench.Echo/Unary"
SINK_METHOD = "/bench.Echo/Sink"  # client stream of chunks → their total size
SOURCE_METHOD = "/bench.Echo/Source"  # 8-byte total size → a stream of 1 MiB chunks
EVENTS_METHOD = "/bench.Echo/Events"  # (count, size) → a stream of ``count`` messages


async def serve(data_dir: str, port: int, response_size: int) -> None:
    config = load_config(Path(data_dir))
    server = grpc.aio.server(options=server_options(config))

    async def unary(request: bytes, context: Any) -> bytes:
        return request[:response_size].ljust(response_size, b"\0")

    async def sink(requests: AsyncIterator[bytes], context: Any) -> bytes:
        total = 0
        async for chunk in requests:
            total += len(chunk)
        return total.to_bytes(8, "big")

    async def source(request: bytes, context: Any) -> AsyncIterator[bytes]:
        remaining = int.from_bytes(request, "big")
        block = b"\x5a" * (1024 * 1024)
        while remaining > 0:
            yield block[: min(remaining, len(block))]
            remaining -= len(block)

    async def events(request: bytes, context: Any) -> AsyncIterator[bytes]:
        count, size = int.from_bytes(request[:8], "big"), int.from_bytes(request[8:16], "big")
        message = b"\x01" * size
        for _ in range(count):
            yield message

    handler = grpc.method_handlers_generic_handler(
        "bench.Echo",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Sink": grpc.stream_unary_rpc_method_handler(sink),
            "Source": grpc.unary_stream_rpc_method_handler(source),
            "Events": grpc.unary_stream_rpc_method_handler(events),
        },
    )
    server.add_generic_rpc_handlers((handler,))
    server.add_secure_port(f"127.0.0.1:{port}", server_credentials(config))
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await server.stop(1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--response-size", type=int, default=1024)
    args = parser.parse_args()
    asyncio.run(serve(args.data_dir, args.port, args.response_size))


if __name__ == "__main__":
    main()
