"""HubClient's registry operations: members, their keys and certificates."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from cryptography import x509

from xhub.connectors.sdk._internal.verify import check_member_certificate, of_unknown_root
from xhub.connectors.sdk.services.ca_roots import CaRootCalls
from xhub.v1 import registry_pb2


class RegistryCalls(CaRootCalls):
    """HubClient's registry operations: members, their keys and certificates."""

    # -- registry -------------------------------------------------------------

    def lookup_member(self, member_id: str) -> registry_pb2.MemberLookupResult:
        """The hub's signed answer for one member (查询接入单位), with its receipt.

        Raises: NotFoundError, MalformedError, AuthenticationError.
        """
        return self.transport.call(
            self.transport.registry.GetMember,
            registry_pb2.GetMemberRequest,
            registry_pb2.MemberLookup(member_id=member_id),
            registry_pb2.MemberLookupResult,
            idempotent=True,
        )

    def get_member(self, member_id: str) -> registry_pb2.Member:
        """One member, as ``lookup_member`` answers. Raises: as ``lookup_member``."""
        return self.lookup_member(member_id).member

    def member_pages(
        self, query: registry_pb2.MemberListQuery
    ) -> Iterator[registry_pb2.MemberListResult]:
        """Every page of the members ``query`` matches, each a signed answer with its receipt
        (``query.page_token`` is where the first page starts).

        Raises: MalformedError (a bad page size or token), AuthenticationError.
        """
        return self.transport.pages(
            self.transport.registry.ListMembers,
            registry_pb2.ListMembersRequest,
            query,
            registry_pb2.MemberListResult,
        )

    def list_members(
        self,
        *,
        level: registry_pb2.Level.ValueType = registry_pb2.LEVEL_UNSPECIFIED,
        role: registry_pb2.Role.ValueType = registry_pb2.ROLE_UNSPECIFIED,
        division_prefix: str = "",
        include_revoked: bool = False,
        page_size: int = 100,
    ) -> Iterator[registry_pb2.Member]:
        """All matching members (the items of ``member_pages``), page after page.

        Raises: as ``member_pages``.
        """
        query = registry_pb2.MemberListQuery(
            level=level,
            role=role,
            division_prefix=division_prefix,
            include_revoked=include_revoked,
            page_size=page_size,
        )
        for page in self.member_pages(query):
            yield from page.members

    def verified_certificate(self, member: registry_pb2.Member) -> x509.Certificate:
        """Check that a looked-up member's certificate chains to one of our hub CA roots; a
        certificate of a root we do not hold makes the client learn the hub's renewed CA
        roots first (``learn_ca_roots``).

        Raises: BadResponseError (not chained, or naming another member; or a CA hand-over
        that does not verify), TransportError (while learning the roots).
        """
        self._learn_root_of(member)
        return check_member_certificate(member, self.bundle.ca_certs)

    def _trust(self, member_ids: Iterable[str]) -> None:
        """Fetch and trust the members not trusted yet (their certificates chain to our CA
        roots; one of a root not held yet makes the client learn the hub's renewed roots)."""
        for member_id in sorted(set(member_ids)):
            if member_id not in self._trusted:
                member = self.get_member(member_id)
                self._learn_root_of(member)
                self._trusted.add(member)

    def _learn_root_of(self, member: registry_pb2.Member) -> None:
        if of_unknown_root(member, self.bundle.ca_certs):
            self.learn_ca_roots()
