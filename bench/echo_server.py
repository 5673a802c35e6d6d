"""Bare grpcio echo server: the baseline. Same mTLS credentials as the hub, no signing,
no database, no admission — just bytes in, bytes out, on grpc.aio like the hub.

One more method, ``Signed``, is the floor a signed exchange cannot go below: it verifies
the caller's signed pull request and answers with a hub-signed copy of a fixed pull
result — every signature the protocol requires, and nothing else (no admission checks,
no database, no audit). Rows report the hub against it as well as against the bare echo.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from sqlalchemy import select

from xhub.hub.core.config import HubConfig, load_config
from xhub.hub.core.db import MemberKeyRow, make_engine
from xhub.hub.core.runtime import HubIdentity
from xhub.hub.server import server_credentials, server_options
from xhub.protocol.envelope import new_header, open_envelope, seal
from xhub.protocol.signing import KeyVerifier
from xhub.v1 import intake_pb2

ECHO_METHOD = "/bench.Echo/Unary"
SINK_METHOD = "/bench.Echo/Sink"  # client stream of chunks → their total size
SOURCE_METHOD = "/bench.Echo/Source"  # 8-byte total size → a stream of 1 MiB chunks
EVENTS_METHOD = "/bench.Echo/Events"  # (count, size) → a stream of ``count`` messages
SIGNED_METHOD = "/bench.Echo/Signed"  # signed PullCertificatesRequest → hub-signed answer


def _member_keys(config: HubConfig) -> dict[str, KeyVerifier]:
    engine = make_engine(config.effective_database_url)
    with engine.connect() as connection:
        rows = connection.execute(select(MemberKeyRow.key_id, MemberKeyRow.public_key_der))
        keys = {key_id: KeyVerifier.from_der(der) for key_id, der in rows}
    engine.dispose()
    return keys


def _signed_echo(config: HubConfig, template: Path) -> Callable[[bytes, Any], Awaitable[bytes]]:
    keys = _member_keys(config)
    signer = HubIdentity.load(config).signer
    answer = intake_pb2.PulledCertificates.FromString(template.read_bytes())

    def resolve(key_id: str) -> KeyVerifier:
        return keys[key_id]

    async def signed(request: bytes, context: Any) -> bytes:
        envelope = intake_pb2.PullCertificatesRequest.FromString(request).envelope
        opened = open_envelope(envelope, intake_pb2.CertificatePull, resolve)
        response = intake_pb2.PulledCertificates()
        response.CopyFrom(answer)
        response.header.CopyFrom(
            new_header(
                config.hub_id,
                opened.header.sender,
                case_id=opened.header.case_id,
                purpose=opened.header.purpose,
                in_reply_to=opened.header.message_id,
            )
        )
        reply = intake_pb2.PullCertificatesResponse(envelope=seal(response, signer))
        return reply.SerializeToString()

    return signed


async def serve(data_dir: str, port: int, response_size: int, signed_template: str) -> None:
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

    methods: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Sink": grpc.stream_unary_rpc_method_handler(sink),
        "Source": grpc.unary_stream_rpc_method_handler(source),
        "Events": grpc.unary_stream_rpc_method_handler(events),
    }
    if signed_template:
        methods["Signed"] = grpc.unary_unary_rpc_method_handler(
            _signed_echo(config, Path(signed_template))
        )
    handler = grpc.method_handlers_generic_handler("bench.Echo", methods)
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
    parser.add_argument("--signed-template", default="", help="PulledCertificates bytes")
    args = parser.parse_args()
    asyncio.run(serve(args.data_dir, args.port, args.response_size, args.signed_template))


if __name__ == "__main__":
    main()
