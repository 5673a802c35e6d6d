"""`xhub` command line: init, member add/list/revoke, serve, db upgrade."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from xhub.v1 import registry_pb2

from hub import codes
from hub.config import ConfigError
from hub.db import make_engine, migrate, session_factory
from hub.errors import XhubError
from hub.registry import list_members, revoke_member, role_name, validate_member
from hub.setup import SetupError, add_member_with_bundle, init_data_dir, open_config, with_listen
from hub.signing import ECDSA_P256, ED25519

DEFAULT_DATA_DIR = os.environ.get("XHUB_DATA_DIR", "xhub-data")
LEVEL_NAMES = {1: "province 省", 2: "municipal 市", 3: "district 区"}


def _data_dir_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(DEFAULT_DATA_DIR),
        help="hub data directory (default: $XHUB_DATA_DIR or ./xhub-data)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xhub", description="xhub data-sharing exchange hub")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug output")
    commands = parser.add_subparsers(dest="command", required=True)

    init = commands.add_parser("init", help="create a data directory: CA, hub keys, database")
    init.add_argument("data_dir", type=Path)
    init.add_argument("--hub-id", default="CN.440000.XHUB", help="member id of the hub itself")
    init.add_argument("--name", default="xhub 政务数据共享交换平台", help="hub display name")
    init.add_argument("--listen", default="127.0.0.1:7443", help="host:port to serve on")
    init.add_argument(
        "--database-url", default="", help="SQLAlchemy URL (default: SQLite in the data dir)"
    )

    member = commands.add_parser("member", help="manage members (接入单位)")
    member_commands = member.add_subparsers(dest="member_command", required=True)
    add = member_commands.add_parser("add", help="register a member and write its bundle")
    _data_dir_arg(add)
    add.add_argument("--name", required=True, help="legal name (单位名称)")
    add.add_argument("--uscc", required=True, help="unified social credit code (GB 32100)")
    add.add_argument("--division", required=True, help="division code (GB/T 2260), 6 or 12 digits")
    add.add_argument(
        "--roles", required=True, help="comma list of issuer,platform,department,auditor,admin"
    )
    add.add_argument("--subsystem", default="", help="optional subsystem name (a-z0-9-)")
    add.add_argument(
        "--allow-legacy-uscc",
        action="store_true",
        help="accept an early pilot USCC whose check character fails (recorded as legacy)",
    )
    add.add_argument("--signing-alg", choices=["ecdsa-p256", "ed25519"], default="ecdsa-p256")
    add.add_argument("--days", type=int, default=730, help="certificate validity in days")
    add.add_argument("--out", type=Path, help="bundle directory (default: DATA_DIR/bundles/ID)")

    lst = member_commands.add_parser("list", help="list members")
    _data_dir_arg(lst)
    lst.add_argument("--all", action="store_true", help="include revoked members")

    revoke = member_commands.add_parser("revoke", help="revoke a member (effective next call)")
    _data_dir_arg(revoke)
    revoke.add_argument("member_id")
    revoke.add_argument("--reason", required=True, help="why (recorded)")

    serve = commands.add_parser("serve", help="run the hub")
    _data_dir_arg(serve)
    serve.add_argument("--listen", help="override host:port")

    db = commands.add_parser("db", help="database maintenance")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    upgrade = db_commands.add_parser("upgrade", help="apply Alembic migrations")
    _data_dir_arg(upgrade)
    return parser


def cmd_init(args: argparse.Namespace) -> int:
    config = init_data_dir(
        args.data_dir,
        hub_id=args.hub_id,
        hub_name=args.name,
        listen=args.listen,
        database_url=args.database_url,
    )
    print(f"initialised hub {config.hub_id} in {config.data_dir}")
    print(f"  CA certificate : {config.paths.ca_cert}")
    print(f"  database       : {config.effective_database_url}")
    print(f"  next           : xhub member add --data-dir {config.data_dir} ...")
    return 0


def cmd_member_add(args: argparse.Namespace) -> int:
    config = open_config(args.data_dir)
    spec = validate_member(
        name=args.name,
        uscc=args.uscc,
        division=args.division,
        roles=[args.roles],
        subsystem=args.subsystem,
        allow_legacy_uscc=args.allow_legacy_uscc,
    )
    added = add_member_with_bundle(
        config,
        spec,
        bundle_dir=args.out,
        signing_algorithm=ED25519 if args.signing_alg == "ed25519" else ECDSA_P256,
        days=args.days,
    )
    for warning in added.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"added {added.member_id} ({LEVEL_NAMES[int(spec.level)]})")
    print(f"  bundle: {added.bundle_dir}")
    return 0


def cmd_member_list(args: argparse.Namespace) -> int:
    config = open_config(args.data_dir)
    engine = make_engine(config.effective_database_url)
    try:
        with session_factory(engine)() as session:
            rows = list_members(session, include_revoked=args.all, limit=100_000)
            print(f"{'member id':<52} {'level':<13} {'status':<8} {'roles':<28} name")
            for row in rows:
                roles = ",".join(role_name(r.role) for r in sorted(row.roles, key=lambda r: r.role))
                status = registry_pb2.MemberStatus.Name(row.status).removeprefix("MEMBER_STATUS_")  # type: ignore[arg-type]
                print(
                    f"{row.member_id:<52} {LEVEL_NAMES.get(row.level, '?'):<13} "
                    f"{status.lower():<8} {roles:<28} {row.name}"
                )
            print(f"{len(rows)} member(s)")
    finally:
        engine.dispose()
    return 0


def cmd_member_revoke(args: argparse.Namespace) -> int:
    config = open_config(args.data_dir)
    engine = make_engine(config.effective_database_url)
    try:
        with session_factory(engine).begin() as session:
            row = revoke_member(session, args.member_id, args.reason)
            print(f"revoked {row.member_id}: {row.revoke_reason} (refused from its next call)")
    finally:
        engine.dispose()
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from hub.server import serve_forever

    config = open_config(args.data_dir)
    if args.listen:
        config = with_listen(config, args.listen)
    asyncio.run(serve_forever(config))
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    config = open_config(args.data_dir)
    engine = make_engine(config.effective_database_url)
    try:
        migrate(engine)
    finally:
        engine.dispose()
    print("database schema is at the latest revision")
    return 0


HANDLERS = {
    ("init", None): cmd_init,
    ("member", "add"): cmd_member_add,
    ("member", "list"): cmd_member_list,
    ("member", "revoke"): cmd_member_revoke,
    ("serve", None): cmd_serve,
    ("db", "upgrade"): cmd_db_upgrade,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        logging.getLogger("alembic").setLevel(logging.WARNING)
    sub = getattr(args, f"{args.command}_command", None)
    handler = HANDLERS[(args.command, sub)]
    try:
        return handler(args)
    except (XhubError, SetupError, ConfigError, codes.CodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
