"""`xhub member add | renew | list | revoke`: enrolment from the member's request, renewal,
the registry listing with certificate expiry, revocation.

The member makes its keys and request on its own machine (``xhub-connector keygen``); the hub
certifies the request and writes a public bundle that holds no private key.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from xhub.cli.checks import certificate_days
from xhub.hub.core.ca_roots import ca_history, ca_number
from xhub.hub.core.db import make_engine, session_factory
from xhub.hub.registry.enrolment import certificates_of
from xhub.hub.registry.store import list_members, revoke_member, role_name, validate_member
from xhub.hub.setup import (
    AddedMember,
    add_member_with_bundle,
    open_config,
    read_request,
    renew_member_bundle,
)
from xhub.protocol.pki import load_certificate, when
from xhub.v1 import registry_pb2

LEVEL_NAMES = {1: "province 省", 2: "municipal 市", 3: "district 区"}
EXPIRING_SOON = timedelta(days=30)

Handler = Callable[[argparse.Namespace], int]


def add_member_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    data_dir_arg: Callable[[argparse.ArgumentParser], None],
) -> None:
    member = commands.add_parser("member", help="manage members (接入单位)")
    member_commands = member.add_subparsers(dest="member_command", required=True)
    add = member_commands.add_parser(
        "add",
        help="enrol a member from its request (xhub-connector keygen) and write its public bundle",
    )
    data_dir_arg(add)
    add.add_argument(
        "--csr",
        type=Path,
        required=True,
        help="the member's enrolment request (enrolment.req from `xhub-connector keygen`)",
    )
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
    add.add_argument(
        "--allow-unlisted-division",
        action="store_true",
        help="accept a division code missing from the shipped GB/T 2260 data (a newly "
        "created district; recorded as a warning)",
    )
    add.add_argument(
        "--re-enrol",
        action="store_true",
        help="enrol a revoked member again under new keys (its old certificates and keys "
        "stay refused)",
    )
    add.add_argument(
        "--days", type=certificate_days, default=730, help="certificate validity in days"
    )
    add.add_argument(
        "--out", type=Path, help="public bundle directory (default: DATA_DIR/bundles/ID)"
    )

    renew = member_commands.add_parser(
        "renew", help="a new certificate for an active member (the old one works until expiry)"
    )
    data_dir_arg(renew)
    renew.add_argument("member_id")
    renew.add_argument(
        "--csr", type=Path, required=True, help="the member's request, signed by its signing key"
    )
    renew.add_argument(
        "--days", type=certificate_days, default=730, help="certificate validity in days"
    )
    renew.add_argument(
        "--out", type=Path, help="public bundle directory (default: DATA_DIR/bundles/ID)"
    )

    lst = member_commands.add_parser("list", help="list members and their certificate expiry")
    data_dir_arg(lst)
    lst.add_argument("--all", action="store_true", help="include revoked members")

    revoke = member_commands.add_parser(
        "revoke", help="revoke a member and all its certificates (effective next call)"
    )
    data_dir_arg(revoke)
    revoke.add_argument("member_id")
    revoke.add_argument("--reason", required=True, help="why (recorded)")


def cmd_member_add(args: argparse.Namespace) -> int:
    config = open_config(args.data_dir)
    spec = validate_member(
        name=args.name,
        uscc=args.uscc,
        division=args.division,
        roles=[args.roles],
        subsystem=args.subsystem,
        allow_legacy_uscc=args.allow_legacy_uscc,
        allow_unlisted_division=args.allow_unlisted_division,
    )
    added = add_member_with_bundle(
        config,
        spec,
        read_request(args.csr),
        bundle_dir=args.out,
        days=args.days,
        re_enrol=args.re_enrol,
    )
    for warning in added.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    verb = f"re-enrolled (enrolment {added.enrolment})" if args.re_enrol else "added"
    print(f"{verb} {added.member_id} ({LEVEL_NAMES[int(spec.level)]})")
    _print_bundle(added)
    return 0


def cmd_member_renew(args: argparse.Namespace) -> int:
    config = open_config(args.data_dir)
    added = renew_member_bundle(
        config, args.member_id, read_request(args.csr), bundle_dir=args.out, days=args.days
    )
    print(f"renewed {added.member_id}; its earlier certificates work until their own expiry")
    _print_bundle(added)
    return 0


def _print_bundle(added: AddedMember) -> None:
    print(f"  certificate valid until {when(added.not_after)}")
    print(f"  signing key id: {added.signing_key_id}")
    print(f"  public bundle (no private key): {added.bundle_dir}")
    print(f"  member installs it: xhub-connector bundle install {added.bundle_dir} --keys KEYS_DIR")


def cmd_member_list(args: argparse.Namespace) -> int:
    config = open_config(args.data_dir)
    engine = make_engine(config.effective_database_url)
    now = datetime.now(UTC)
    soon: list[str] = []
    history = ca_history(config.paths)  # CA #1, #2, …: which CA a certificate chains to
    try:
        with session_factory(engine)() as session:
            rows = list_members(session, include_revoked=args.all, limit=100_000)
            print(
                f"{'member id':<52} {'level':<13} {'status':<8} {'certificate until':<24} "
                f"{'CA':<4} {'roles':<28} name"
            )
            for row in rows:
                roles = ",".join(role_name(r.role) for r in sorted(row.roles, key=lambda r: r.role))
                status = registry_pb2.MemberStatus.Name(row.status).removeprefix("MEMBER_STATUS_")  # type: ignore[arg-type]
                valid = [c for c in certificates_of(session, row.member_id) if c.revoked_at is None]
                until = max((c.not_after for c in valid), default=row.not_after)
                newest = max(valid, key=lambda c: c.not_after).certificate_der if valid else None
                ca = f"#{ca_number(load_certificate(newest), history)}" if newest else "-"
                mark = ""
                if row.status == registry_pb2.MEMBER_STATUS_ACTIVE:
                    if until <= now:
                        mark = " EXPIRED"
                        soon.append(f"{row.member_id} expired on {when(until)}")
                    elif until - now <= EXPIRING_SOON:
                        mark = " (soon)"
                        soon.append(f"{row.member_id} expires on {when(until)}")
                print(
                    f"{row.member_id:<52} {LEVEL_NAMES.get(row.level, '?'):<13} "
                    f"{status.lower():<8} {until:%Y-%m-%d}{mark:<14} {ca:<4} {roles:<28} {row.name}"
                )
            print(f"{len(rows)} member(s)")
    finally:
        engine.dispose()
    for line in soon:
        print(f"warning: certificate of {line}; renew with `xhub member renew`", file=sys.stderr)
    return 0


def cmd_member_revoke(args: argparse.Namespace) -> int:
    config = open_config(args.data_dir)
    engine = make_engine(config.effective_database_url)
    try:
        with session_factory(engine).begin() as session:
            row = revoke_member(session, args.member_id, args.reason)
            print(
                f"revoked {row.member_id}: {row.revoke_reason} (refused from its next call; "
                "all its certificates revoked)"
            )
    finally:
        engine.dispose()
    return 0


MEMBER_HANDLERS: dict[tuple[str, str | None], Handler] = {
    ("member", "add"): cmd_member_add,
    ("member", "renew"): cmd_member_renew,
    ("member", "list"): cmd_member_list,
    ("member", "revoke"): cmd_member_revoke,
}
