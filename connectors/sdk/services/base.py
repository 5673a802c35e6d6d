"""What every group of HubClient operations works with."""

from __future__ import annotations

from xhub.connectors.sdk._internal.transport import Transport
from xhub.connectors.sdk._internal.verify import TrustedMembers
from xhub.protocol.bundle import MemberBundle


class Calls:
    """The state a HubClient sets up once: its bundle, its transport, the members it trusts."""

    bundle: MemberBundle
    member_id: str
    hub_id: str
    transport: Transport
    _trusted: TrustedMembers
