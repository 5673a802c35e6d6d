"""CA renewal (根证书更新): the hand-over from one hub CA to the next, checked offline.

A renewed hub trusts a *set* of CA roots. The outgoing CA signs a statement naming its
successor — an X.509 certificate of the new CA's key and subject, issued by the outgoing CA
(``statement``); the new CA's self-signed root travels beside it. A member that holds the
outgoing root (in its bundle's ``ca.pem``) checks the statement with
``verify_directly_issued_by`` and adds the new root (``follow_ca_handovers``), hand-over by
hand-over, so it learns every root without a new bundle.

The statement is not used as a chain link (the first hub CAs carry ``path_length=0``, so a
cross-signed chain would fail); it is only a signature by the old CA over the new CA's name
and key.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from google.protobuf.message import DecodeError

from xhub.protocol.pki import ca_label, load_certificate, when
from xhub.protocol.signing import public_key_der
from xhub.v1 import registry_pb2


class CaHandoverError(ValueError):
    """A CA hand-over does not verify; the message names what disagreed."""


def _key(cert: x509.Certificate) -> bytes:
    return public_key_der(cert.public_key())  # type: ignore[arg-type]


def _same(a: x509.Certificate, b: x509.Certificate) -> bool:
    return a.fingerprint(hashes.SHA256()) == b.fingerprint(hashes.SHA256())


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def check_ca_handover(
    handover: registry_pb2.CaHandover, outgoing: x509.Certificate
) -> x509.Certificate:
    """The new CA root ``handover`` names, once the statement verifies as signed by
    ``outgoing`` and names that very root. Raises CaHandoverError naming what disagreed."""
    try:
        statement = load_certificate(handover.statement_der)
        new_root = load_certificate(handover.new_ca_certificate_der)
    except ValueError as exc:
        raise CaHandoverError(f"not a certificate: {exc}") from exc
    if statement.issuer != outgoing.subject:
        raise CaHandoverError(
            f"the statement is issued by {statement.issuer.rfc4514_string()!r}, "
            f"not by the CA it hands over from ({ca_label(outgoing)})"
        )
    try:
        statement.verify_directly_issued_by(outgoing)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise CaHandoverError(
            f"the statement's signature does not verify with the key of {ca_label(outgoing)}"
        ) from exc
    if statement.subject != new_root.subject or _key(statement) != _key(new_root):
        raise CaHandoverError(
            f"the statement names {statement.subject.rfc4514_string()!r} with another key "
            f"than the new root it carries ({new_root.subject.rfc4514_string()!r})"
        )
    try:
        new_root.verify_directly_issued_by(new_root)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise CaHandoverError(f"the new root {ca_label(new_root)} is not self-signed") from exc
    if not (_is_ca(new_root) and _is_ca(statement)):
        raise CaHandoverError(f"{ca_label(new_root)} is not a CA certificate")
    start = statement.not_valid_before_utc
    if not outgoing.not_valid_before_utc <= start < outgoing.not_valid_after_utc:
        raise CaHandoverError(
            f"the statement was issued on {when(start)}, outside the validity of "
            f"{ca_label(outgoing)}"
        )
    return new_root


def follow_ca_handovers(
    roots: Sequence[x509.Certificate], handovers: Sequence[registry_pb2.CaHandover]
) -> tuple[x509.Certificate, ...]:
    """``roots`` plus every root the hand-overs reach from them, in order. A hand-over to a
    root already held is skipped (a bundle issued after a renewal holds it); one from a CA
    not reached (yet) is an error: the hub publishes them oldest first.

    Raises: CaHandoverError naming the hand-over and what disagreed.
    """
    known = list(roots)
    for number, handover in enumerate(handovers, start=1):
        try:
            statement = load_certificate(handover.statement_der)
            named = load_certificate(handover.new_ca_certificate_der)
        except ValueError as exc:
            raise CaHandoverError(f"CA hand-over #{number}: not a certificate: {exc}") from exc
        if any(_same(named, root) for root in known):
            continue
        outgoing = [root for root in known if root.subject == statement.issuer]
        if not outgoing:
            raise CaHandoverError(
                f"CA hand-over #{number} is issued by {statement.issuer.rfc4514_string()!r}, "
                "which is none of the CA roots in our bundle "
                f"({', '.join(ca_label(root) for root in known)})"
            )
        problems: list[str] = []
        for candidate in outgoing:
            try:
                new_root = check_ca_handover(handover, candidate)
            except CaHandoverError as exc:
                problems.append(str(exc))
                continue
            known.append(new_root)
            break
        else:
            raise CaHandoverError(f"CA hand-over #{number}: {'; '.join(problems)}")
    return tuple(known)


def handovers_json(handovers: Sequence[registry_pb2.CaHandover]) -> bytes:
    """The hand-overs as the hub keeps them (``ca/handovers.json``): base64 items in a list."""
    items = [base64.b64encode(h.SerializeToString()).decode("ascii") for h in handovers]
    return (json.dumps(items, indent=1) + "\n").encode("utf-8")


def parse_handovers_json(data: bytes) -> list[registry_pb2.CaHandover]:
    """Read ``ca/handovers.json`` (e.g. handed to a member out of band).

    Raises: CaHandoverError when it is not such a file."""
    try:
        items = json.loads(data.decode("utf-8"))
        return [registry_pb2.CaHandover.FromString(base64.b64decode(item)) for item in items]
    except (ValueError, TypeError, DecodeError) as exc:
        raise CaHandoverError(f"not a CA hand-over file: {exc}") from exc
