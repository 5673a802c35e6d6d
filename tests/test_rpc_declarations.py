"""Services declare each unary RPC once; the contract's descriptor is checked against them."""

from __future__ import annotations

from typing import Any, cast

import pytest

from xhub.hub.core.rpc import Service, Unary
from xhub.hub.core.runtime import HubRuntime
from xhub.v1 import registry_pb2

REGISTRY = registry_pb2.DESCRIPTOR.services_by_name["RegistryService"]
ALL = tuple(m.name for m in REGISTRY.methods)
NO_RUNTIME = cast(HubRuntime, None)  # building the handler touches no runtime


def _answer(call: Any) -> registry_pb2.MemberLookupResult:
    return registry_pb2.MemberLookupResult()


class _Declares(Service):
    descriptor = REGISTRY

    def __init__(self, names: tuple[str, ...]) -> None:
        super().__init__(NO_RUNTIME)
        self.names = names

    def unary(self) -> list[Unary[Any]]:
        return [Unary(name, registry_pb2.MemberLookup, _answer) for name in self.names]


def test_every_unary_method_declared_builds_a_handler() -> None:
    handler = _Declares(ALL).rpc_handler()
    assert handler is not None


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (("GetMember",), "ListMembers is not declared"),
        ((*ALL, "DeleteMember"), "no unary method(s) DeleteMember"),
    ],
)
def test_a_missing_or_unknown_declaration_is_refused(names: tuple[str, ...], message: str) -> None:
    with pytest.raises(TypeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _Declares(names).rpc_handler()
