"""What every group of HubClient operations works with."""

from __future__ import annotations

from xhub.connectors.sdk._internal.lru import LruDict
from xhub.connectors.sdk._internal.transport import Transport
from xhub.connectors.sdk._internal.verify import TrustedMembers
from xhub.protocol.bundle import MemberBundle
from xhub.v1 import intake_pb2


class Calls:
    """The state a HubClient sets up once: its bundle, its transport, the members it trusts."""

    bundle: MemberBundle
    member_id: str
    hub_id: str
    transport: Transport
    _trusted: TrustedMembers
    # Per case, each bounded to the ``case_memory`` most recently used cases:
    _prepared: LruDict[str, intake_pb2.Checklist]  # hub-signed checklists of prepare_case
    _holders: LruDict[str, frozenset[str]]  # whose certificates each prepared case may pull
    _pushed: LruDict[str, int]  # the last push number per case this client sent
