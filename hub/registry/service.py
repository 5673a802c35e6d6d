"""RegistryService (接入单位目录): members look up members and their keys."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from xhub.hub.core.ca_roots import read_ca_handovers
from xhub.hub.core.db import MemberKeyRow
from xhub.hub.core.rpc import Service, Unary
from xhub.hub.core.runtime import Call
from xhub.hub.registry import hub_keys
from xhub.hub.registry import keys as rotation
from xhub.hub.registry import store as registry
from xhub.protocol.errors import MalformedError, shown
from xhub.v1 import registry_pb2

DEFAULT_PAGE = 100
MAX_PAGE = 500


class RegistryService(Service):
    descriptor = registry_pb2.DESCRIPTOR.services_by_name["RegistryService"]

    def unary(self) -> Sequence[Unary[Any]]:
        return [
            Unary("GetMember", registry_pb2.MemberLookup, _get_member),
            Unary("ListMembers", registry_pb2.MemberListQuery, _list_members),
            Unary("RotateSigningKey", registry_pb2.SigningKeyRotation, self._rotate),
            Unary(
                "GetHubKeys",
                registry_pb2.HubKeysQuery,
                lambda call: hub_keys.hub_keys(call.session, self.runtime.config.hub_id),
                beside=self._handovers,
            ),
        ]

    def _handovers(self) -> dict[str, object]:
        """The hand-overs travel beside the signed answer (each signed by its predecessor):
        the hub signing key's, and the CA's (each signed by the CA it renews)."""
        paths = self.runtime.config.paths
        return {
            "handovers": hub_keys.read_handovers(paths.signing_handovers),
            "ca_handovers": read_ca_handovers(paths),
        }

    def _rotate(
        self, call: Call[registry_pb2.SigningKeyRotation]
    ) -> registry_pb2.SigningKeyRotationResult:
        """Read the member's keys once, decide, write; answer with the member as it is now."""
        member_id = call.caller.member_id
        new_key_id = call.message.new_key.key_id
        call.audit.subject = new_key_id[:64]
        keys = rotation.member_keys(call.session, member_id)
        taken = registry.KEY_ID_RE.fullmatch(new_key_id) is not None and (
            call.session.get(MemberKeyRow, new_key_id) is not None
        )
        verifier = rotation.check_rotation(
            call.message,
            member_id=member_id,
            signed_with=call.admitted.opened.key_id,
            keys=keys,
            taken=taken,
        )
        rotation.apply_rotation(
            call.session,
            member_id,
            verifier,
            keys,
            now=datetime.now(UTC),
            overlap=timedelta(seconds=self.runtime.config.key_rotation_overlap_seconds),
        )
        return registry_pb2.SigningKeyRotationResult(
            member=registry.member_proto(call.session, member_id)
        )


def _get_member(call: Call[registry_pb2.MemberLookup]) -> registry_pb2.MemberLookupResult:
    member_id = call.message.member_id
    if not registry.MEMBER_ID_RE.match(member_id):
        raise MalformedError(
            f"{shown(member_id)!r} is not a member id (CN.<division>.<USCC>[.<subsystem>])",
            metadata={"field": "member_id"},
        )
    return registry_pb2.MemberLookupResult(member=registry.member_proto(call.session, member_id))


def _list_members(call: Call[registry_pb2.MemberListQuery]) -> registry_pb2.MemberListResult:
    query = call.message
    if query.page_size < 0:
        raise MalformedError("page_size must not be negative", metadata={"field": "page_size"})
    limit = min(query.page_size or DEFAULT_PAGE, MAX_PAGE)
    if query.page_token and not registry.MEMBER_ID_RE.match(query.page_token):
        raise MalformedError(
            "page_token is not one this hub issued", metadata={"field": "page_token"}
        )
    if query.division_prefix and not re.fullmatch(r"[0-9]{1,6}", query.division_prefix):
        raise MalformedError(
            "division_prefix must be digits", metadata={"field": "division_prefix"}
        )
    rows = registry.list_members(
        call.session,
        level=query.level,
        role=query.role,
        division_prefix=query.division_prefix,
        include_revoked=query.include_revoked,
        after=query.page_token,
        limit=limit + 1,
    )
    more = len(rows) > limit
    rows = rows[:limit]
    return registry_pb2.MemberListResult(
        members=[registry.member_to_proto(r) for r in rows],
        next_page_token=rows[-1].member_id if more else "",
    )
