"""One declaration per unary RPC: its payload type, its handler and the role it needs.

Every unary xhub method has the same shape — ``XRequest{envelope}`` in, ``XResponse{envelope}``
out — and the same path through ``HubRuntime.unary`` (admit, handle, audit, sign). A service
lists its unary methods as ``Unary`` rows; its streaming methods stay hand-written methods of
the same name. ``Service.rpc_handler`` builds the gRPC handler for the whole service from the
contract's descriptor, and refuses a service that leaves a method undeclared (so no method
silently answers ``UNIMPLEMENTED``) or declares one the contract does not have.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

import grpc
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from xhub.hub.core.runtime import Call, HubRuntime
from xhub.v1 import registry_pb2

M = TypeVar("M", bound=Message)
Context = grpc.aio.ServicerContext[Any, Any]

_STREAM_HANDLERS: dict[tuple[bool, bool], Callable[..., grpc.RpcMethodHandler[Any, Any]]] = {
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


@dataclass(frozen=True)
class Unary(Generic[M]):
    """A unary RPC: the signed payload it takes, what it does, who may call it."""

    name: str
    payload: type[M]
    handler: Callable[[Call[M]], Message]
    role: registry_pb2.Role.ValueType | None = None


class Service:
    """Base of the hub's services: ``descriptor`` names the contract's service."""

    descriptor: ClassVar[ServiceDescriptor]

    def __init__(self, runtime: HubRuntime) -> None:
        self.runtime = runtime

    def unary(self) -> Sequence[Unary[Any]]:
        """The service's unary methods, one row each."""
        return ()

    def rpc_handler(self) -> grpc.GenericRpcHandler:
        declared = {d.name: d for d in self.unary()}
        handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
        for method in self.descriptor.methods:
            request = GetMessageClass(method.input_type)
            response = GetMessageClass(method.output_type)
            shape = (method.client_streaming, method.server_streaming)
            if shape == (False, False):
                if method.name not in declared:
                    raise TypeError(f"{self.descriptor.full_name}.{method.name} is not declared")
                handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                    self._unary_method(method, declared.pop(method.name)),
                    request_deserializer=request.FromString,
                    response_serializer=response.SerializeToString,
                )
            else:
                handlers[method.name] = _STREAM_HANDLERS[shape](
                    getattr(self, method.name),
                    request_deserializer=request.FromString,
                    response_serializer=response.SerializeToString,
                )
        if declared:
            unknown = ", ".join(sorted(declared))
            raise TypeError(f"{self.descriptor.full_name} has no unary method(s) {unknown}")
        return grpc.method_handlers_generic_handler(self.descriptor.full_name, handlers)

    def _unary_method(
        self, method: MethodDescriptor, declaration: Unary[Any]
    ) -> Callable[[Any, Context], Awaitable[Message]]:
        response_class = GetMessageClass(method.output_type)
        path = f"/{self.descriptor.full_name}/{method.name}"
        runtime = self.runtime

        async def handle(request: Any, context: Context) -> Message:
            envelope = await runtime.unary(
                context,
                request.envelope,
                declaration.payload,
                declaration.handler,
                method=path,
                require_role=declaration.role,
            )
            return response_class(envelope=envelope)

        handle.__name__ = method.name
        return handle
