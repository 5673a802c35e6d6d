"""``xhub-connector``: the department and issuer connectors (前置机) as one command.

    xhub-connector run department.toml [--once]          # cases in, approval status out
    xhub-connector sync-certificates sync.toml [--once]  # certificates from the department's table
    xhub-connector status CONFIG [--json] [--limit N]    # pending, sent, refused, passed-over rows
    xhub-connector keygen --member-id ID --out DIR [--signing-alg ecdsa-p256|ed25519]
    xhub-connector request --keys DIR                     # a fresh request from existing keys
    xhub-connector bundle install PUBLIC_DIR --keys DIR   # the hub's public bundle next to keys
    xhub-connector rotate-key BUNDLE_DIR [--ed25519]      # a new message-signing key (密钥轮换)
    xhub-connector learn-roots BUNDLE_DIR [--handovers F] # the hub's renewed CA roots (根证书更新)

``keygen`` makes the member's keys on the member's machine (``tls.key``: mutual TLS only;
``signing.key``: message signatures only; both 0600) and the enrolment request
``enrolment.req`` the hub operator certifies with ``xhub member add --csr``
(``connectors/sdk/enrolment.py``). ``--signing-key FILE`` keeps an existing signing key
(renewal with a new TLS key).

``status`` reads either connector's TOML (a ``[department]`` or a ``[source]`` table) and its
state file only; ``sync-status`` is its older name for the issuer sync. The report and its
exit codes are described in ``connectors/common/status.py``.

Exit codes: 0 ok; 1 some rows, pushes or cases were refused or failed a check (``--once``,
``status``); 2 configuration or database; 3 the hub is unreachable; 4 the hub refused the
connector; 5 (``status``) pushes stuck in the outbox longer than ``stuck_after_seconds``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from xhub.connectors.common.config import ConnectorConfigError, read_toml
from xhub.connectors.common.status import DEFAULT_LIMIT
from xhub.connectors.department.cli import run_command
from xhub.connectors.department.cli import status_command as department_status
from xhub.connectors.issuer.cli import status_command as sync_status
from xhub.connectors.issuer.cli import sync_command
from xhub.connectors.sdk.client import HubClient
from xhub.connectors.sdk.enrolment import (
    MemberKeys,
    generate_keys,
    install_bundle,
    renewal_request,
)
from xhub.connectors.sdk.services.ca_roots import learn_roots_from_file
from xhub.protocol import package_version
from xhub.protocol.bundle import CA_CERT, BundleError
from xhub.protocol.ca_handover import CaHandoverError
from xhub.protocol.enrolment import EnrolmentError
from xhub.protocol.errors import TransportError, XhubError
from xhub.protocol.pki import ca_label, when
from xhub.protocol.signing import (
    ECDSA_P256,
    ED25519,
    KeySigner,
    key_id_for,
    load_private_key,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xhub-connector", description="xhub department connector (前置机)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug output")
    parser.add_argument(
        "--version", action="version", version=f"xhub-connector {package_version()}"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    sync = commands.add_parser(
        "sync-certificates", help="publish certificates from the department's table (证照同步)"
    )
    sync.add_argument("config", type=Path, help="connector TOML (see connectors/issuer/config.py)")
    sync.add_argument(
        "--once", action="store_true", help="catch up once and exit (default: keep polling)"
    )
    for name, text in (
        ("status", "pending, sent, refused and passed-over rows, with reasons (either connector)"),
        ("sync-status", "the issuer sync's report (the same as status)"),
    ):
        status = commands.add_parser(name, help=text)
        status.add_argument("config", type=Path, help="the connector's TOML")
        status.add_argument("--json", action="store_true", help="one JSON object, every row")
        status.add_argument(
            "--limit", type=int, default=DEFAULT_LIMIT, help="rows shown per state (0: all)"
        )
    run = commands.add_parser(
        "run", help="receive cases and send approval status back (办件接收与状态回传)"
    )
    run.add_argument(
        "config", type=Path, help="connector TOML (see connectors/department/config.py)"
    )
    run.add_argument(
        "--once", action="store_true", help="one pass and exit (default: keep running)"
    )
    _add_enrolment_commands(commands)
    rotate = commands.add_parser(
        "rotate-key", help="replace the member's message-signing key (签名密钥轮换)"
    )
    rotate.add_argument("bundle", type=Path, help="the member bundle directory")
    rotate.add_argument("--hub-address", default=None, help="override the bundle's hub address")
    rotate.add_argument(
        "--ed25519", action="store_true", help="an Ed25519 key (default: ECDSA P-256)"
    )
    learn = commands.add_parser(
        "learn-roots", help="learn the hub's renewed CA roots into the bundle's ca.pem"
    )
    learn.add_argument("bundle", type=Path, help="the member bundle directory")
    learn.add_argument("--hub-address", default=None, help="override the bundle's hub address")
    learn.add_argument(
        "--handovers",
        type=Path,
        help="offline: the hub operator's ca/handovers.json (when the hub cannot be reached)",
    )
    return parser


def _add_enrolment_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keygen = commands.add_parser(
        "keygen", help="make the member's keys and enrolment request here (接入申请)"
    )
    keygen.add_argument("--member-id", required=True, help="e.g. CN.440103.<USCC>.approval")
    keygen.add_argument("--out", type=Path, required=True, help="the member's keys directory")
    keygen.add_argument(
        "--signing-alg",
        choices=["ecdsa-p256", "ed25519"],
        default="ecdsa-p256",
        help="message-signing key algorithm (the TLS key is always ECDSA P-256)",
    )
    keygen.add_argument(
        "--signing-key",
        type=Path,
        help="keep this existing signing key (renewal with a new TLS key)",
    )
    request = commands.add_parser(
        "request", help="a fresh enrolment request from the keys in DIR (renewal, same keys)"
    )
    request.add_argument("--keys", type=Path, required=True, help="the member's keys directory")
    request.add_argument("--member-id", help="default: the installed bundle's member id")
    bundle = commands.add_parser("bundle", help="member bundle (接入包) tools")
    bundle_commands = bundle.add_subparsers(dest="bundle_command", required=True)
    install = bundle_commands.add_parser(
        "install", help="check the hub's public bundle against the keys and copy it next to them"
    )
    install.add_argument("public_dir", type=Path, help="what `xhub member add --csr` wrote")
    install.add_argument("--keys", type=Path, required=True, help="the member's keys directory")


def _enrolment_command(args: argparse.Namespace) -> int:
    if args.command == "keygen":
        existing = None
        if args.signing_key:
            try:
                existing = load_private_key(args.signing_key)
            except (OSError, ValueError) as exc:
                raise BundleError(f"{args.signing_key}: not a usable signing key: {exc}") from exc
        keys = generate_keys(
            args.member_id,
            args.out,
            signing_algorithm=ED25519 if args.signing_alg == "ed25519" else ECDSA_P256,
            signing_key=existing,
        )
        _print_request(keys)
        return 0
    if args.command == "request":
        _print_request(renewal_request(args.keys, args.member_id))
        return 0
    bundle = install_bundle(args.public_dir, args.keys)
    print(f"installed the bundle of {bundle.member_id} in {args.keys}")
    print(f"  certificate valid until {when(bundle.tls_cert.not_valid_after_utc)}")
    print(f'  connector config: bundle = "{args.keys}"')
    return 0


def _print_request(keys: MemberKeys) -> None:
    print(f"keys of {keys.member_id} in {keys.directory} (tls.key, signing.key: 0600)")
    print(f"  TLS key (mutual TLS only)     : ECDSA P-256, {key_id_for(keys.tls_key.public_key())}")
    print(f"  signing key (messages only)   : {KeySigner(keys.signing_key).key_id}")
    print(f"  enrolment request for the hub : {keys.request_path}")


def _rotate_key(bundle: Path, hub_address: str | None, ed25519: bool) -> int:
    """Rotate, switch the bundle's files over, and say what changed."""
    with HubClient.from_bundle(bundle, hub_address=hub_address) as client:
        old_key_id = client.bundle.signer.key_id
        answer = client.rotate_signing_key(algorithm=ED25519 if ed25519 else ECDSA_P256)
        new_key_id = client.bundle.signer.key_id
    print(f"{answer.member.member_id}: signing key {old_key_id[:16]}… → {new_key_id[:16]}…")
    for key in answer.member.signing_keys:
        until = key.valid_until.ToJsonString() if key.HasField("valid_until") else "current"
        print(f"  {key.key_id[:16]}…  from {key.valid_from.ToJsonString()}  until {until}")
    return 0


def _learn_roots(bundle: Path, hub_address: str | None, handovers: Path | None) -> int:
    """Learn the hub's renewed CA roots (online, or from the operator's file) and say which."""
    if handovers is not None:
        try:
            learnt = learn_roots_from_file(bundle, handovers)
        except (CaHandoverError, OSError) as exc:
            raise BundleError(f"{handovers}: {exc}") from exc
    else:
        with HubClient.from_bundle(bundle, hub_address=hub_address) as client:
            learnt = client.learn_ca_roots()
    for root in learnt:
        print(f"learnt CA root {ca_label(root)}, valid until {when(root.not_valid_after_utc)}")
    print(f"{bundle / CA_CERT}: {'updated' if learnt else 'already holds every root'}")
    return 0


# What a database error is called in the message, by command.
_DATABASE = {
    "rotate-key": "bundle",
    "learn-roots": "bundle",
    "run": "database",
    "sync-certificates": "source database",
    "sync-status": "state file",
    "status": "state file",
    "keygen": "keys",
    "request": "keys",
    "bundle": "bundle",
}


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "rotate-key":
        return _rotate_key(args.bundle, args.hub_address, args.ed25519)
    if args.command == "learn-roots":
        return _learn_roots(args.bundle, args.hub_address, args.handovers)
    if args.command in ("keygen", "request", "bundle"):
        return _enrolment_command(args)
    if args.command == "run":
        return run_command(args.config, once=args.once)
    if args.command in ("status", "sync-status"):
        report = sync_status if _configures_issuer(args.config) else department_status
        return report(args.config, as_json=args.json, limit=args.limit)
    return sync_command(args.config, once=args.once)


def _configures_issuer(path: Path) -> bool:
    """True for an issuer sync's TOML (a ``[source]`` table), False for a department's."""
    document = read_toml(path)
    return "source" in document and "department" not in document


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return _dispatch(args)
    except (ConnectorConfigError, BundleError, EnrolmentError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SQLAlchemyError as exc:
        where = _DATABASE[args.command]
        print(f"error: {where}: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    except TransportError as exc:
        print(f"error: cannot reach the hub: {exc}", file=sys.stderr)
        return 3
    except XhubError as exc:
        print(f"error: the hub refused the connector: {exc}", file=sys.stderr)
        return 4


if __name__ == "__main__":
    sys.exit(main())
