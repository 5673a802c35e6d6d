"""HubClient learns the hub's renewed CA roots (根证书更新) through the signed hand-overs.

The hub publishes every CA hand-over beside its ``GetHubKeys`` answer; each is signed by the
CA it renews, so the client checks them from the CA roots in its bundle
(``protocol.ca_handover.follow_ca_handovers``) and trusts the hub no further. Learnt roots
are used at once (member certificates, the TLS channel) and — for a client made by
``from_bundle`` — written into the bundle directory's ``ca.pem``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509

from xhub.connectors.sdk._internal.transport import secure_channel
from xhub.connectors.sdk.services.base import Calls
from xhub.protocol.bundle import PublicBundle, write_ca_roots
from xhub.protocol.ca_handover import (
    CaHandoverError,
    follow_ca_handovers,
    parse_handovers_json,
)
from xhub.protocol.errors import BadResponseError
from xhub.v1 import registry_pb2


class CaRootCalls(Calls):
    """HubClient's CA roots: learning the hub's renewed CA."""

    bundle_dir: Path | None
    owns_channel: bool

    def learn_ca_roots(self) -> tuple[x509.Certificate, ...]:
        """Fetch the hub's CA hand-overs, check them from the roots in our bundle, and trust
        the new roots they reach (in memory, on a new TLS channel when this client made its
        own, and in the bundle directory's ``ca.pem``). Returns the roots newly learnt
        (empty: nothing new).

        Raises: BadResponseError (a hand-over does not verify from our roots — forged or
        broken — naming why; or the answer itself fails its checks), TransportError.
        """
        response, _keys = self.transport.fetch_hub_keys()
        return self._adopt_handovers(response.ca_handovers)

    def _adopt_handovers(
        self, handovers: Sequence[registry_pb2.CaHandover]
    ) -> tuple[x509.Certificate, ...]:
        held = self.bundle.ca_certs
        try:
            roots = follow_ca_handovers(held, handovers)
        except CaHandoverError as exc:
            raise BadResponseError(
                f"the hub's CA hand-overs do not follow from the CA roots in our bundle: {exc}"
            ) from exc
        learnt = roots[len(held) :]
        if not learnt:
            return ()
        bundle = dataclasses.replace(self.bundle, ca_certs=roots)
        self.bundle = bundle
        self.transport.bundle = bundle
        self._trusted.roots = roots
        if self.bundle_dir is not None:
            write_ca_roots(self.bundle_dir, roots)
        if self.owns_channel:  # streams open on the old channel keep running
            self.transport.use_channel(secure_channel(bundle))
        return learnt


def learn_roots_from_file(bundle_dir: Path, handovers_file: Path) -> tuple[x509.Certificate, ...]:
    """Offline: add to the bundle in ``bundle_dir`` the roots the hub's ``ca/handovers.json``
    (handed over by the operator) reaches from the roots already there — for a member that
    missed the renewal until the hub's server certificate moved to the new CA. Returns the
    roots newly learnt.

    Raises: BundleError (no bundle), CaHandoverError (not a hand-over file, or a hand-over
    that does not verify from the bundle's roots, naming why), OSError.
    """
    public = PublicBundle.load(bundle_dir)
    roots = follow_ca_handovers(public.ca_certs, parse_handovers_json(handovers_file.read_bytes()))
    learnt = roots[len(public.ca_certs) :]
    if learnt:
        write_ca_roots(bundle_dir, roots)
    return learnt
