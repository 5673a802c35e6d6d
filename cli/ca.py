"""``xhub ca``: renewal of the hub CA (根证书更新), in phases with a restart after each.

    xhub ca renew --data-dir D [--days N]   # new CA, handed over by the old; both trusted
    xhub ca switch-server --data-dir D      # the hub's own certificates under the new CA
    xhub ca retire-old --data-dir D [--force]  # trust the new CA only
    xhub ca status --data-dir D             # the CAs, which are trusted, members on each

Members learn the new root from the hand-over the old CA signed (``GetHubKeys``); see the
README, "CA renewal (根证书更新)".
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import UTC, datetime

from xhub.hub.core.ca import CA_DAYS
from xhub.hub.core.ca_roots import ca_history, ca_number, trusted_roots
from xhub.hub.core.data_dir import private_files
from xhub.hub.core.db import make_engine, session_factory
from xhub.hub.registry.ca_renewal import (
    CaRenewalError,
    renew_ca,
    retire_old,
    stranded_members,
    switch_server,
)
from xhub.hub.setup import load_ca, open_config
from xhub.protocol.pki import ca_label, load_certificate, when

Handler = Callable[[argparse.Namespace], int]


def add_ca_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    data_dir_arg: Callable[[argparse.ArgumentParser], None],
) -> dict[tuple[str, str | None], Handler]:
    """The ``ca`` command group; returns its handlers for ``main``'s table."""
    ca = commands.add_parser("ca", help="renew the hub CA (根证书更新)")
    ca_commands = ca.add_subparsers(dest="ca_command", required=True)
    renew = ca_commands.add_parser(
        "renew", help="a new CA handed over by the old one; both trusted (restart after)"
    )
    data_dir_arg(renew)
    renew.add_argument("--days", type=int, default=CA_DAYS, help="validity of the new CA")
    switch = ca_commands.add_parser(
        "switch-server",
        help="reissue the hub's TLS and signing certificates by the new CA (restart after)",
    )
    data_dir_arg(switch)
    retire = ca_commands.add_parser("retire-old", help="stop trusting the old CA (restart after)")
    data_dir_arg(retire)
    retire.add_argument(
        "--force",
        action="store_true",
        help="retire even if active members hold only old-CA certificates (they are cut off)",
    )
    status = ca_commands.add_parser("status", help="the hub's CAs and the members on each")
    data_dir_arg(status)
    return {
        ("ca", "renew"): _refusing(cmd_ca_renew),
        ("ca", "switch-server"): _refusing(cmd_ca_switch_server),
        ("ca", "retire-old"): _refusing(cmd_ca_retire_old),
        ("ca", "status"): cmd_ca_status,
    }


def _refusing(handler: Handler) -> Handler:
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except CaRenewalError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2

    return run


def cmd_ca_renew(args: argparse.Namespace) -> int:
    config = open_config(args.data_dir)
    with private_files():
        renewal = renew_ca(config, load_ca(config), now=datetime.now(UTC), days=args.days)
    print(f"CA renewed: {ca_label(renewal.old)} → {ca_label(renewal.new)}")
    print(f"  new CA valid until : {when(renewal.new.not_valid_after_utc)}")
    print(f"  trusted roots      : {len(renewal.roots)} ({config.paths.ca_roots})")
    print(f"  hand-over          : signed by the old CA ({config.paths.ca_handovers})")
    print(f"  old CA key         : kept as {renewal.kept_key}")
    print("  next: restart the hub; members learn the new root (xhub-connector learn-roots);")
    print("        then `xhub ca switch-server`")
    return 0


def cmd_ca_switch_server(args: argparse.Namespace) -> int:
    config = open_config(args.data_dir)
    engine = make_engine(config.effective_database_url)
    try:
        with session_factory(engine).begin() as session:
            switch = switch_server(config, load_ca(config), session, now=datetime.now(UTC))
        switch.write(config)
    finally:
        engine.dispose()
    print(f"hub certificates reissued by {ca_label(load_ca(config).certificate)}")
    print(f"  TLS server : {config.paths.tls_cert} (old kept as .pem.old)")
    print(f"  signing    : {config.paths.signing_cert} (same key)")
    print("  next: restart the hub; members that did not learn the new root cannot connect")
    print("        until they run `xhub-connector learn-roots`; then `xhub ca retire-old`")
    return 0


def cmd_ca_retire_old(args: argparse.Namespace) -> int:
    config = open_config(args.data_dir)
    engine = make_engine(config.effective_database_url)
    try:
        with session_factory(engine)() as session:
            retirement = retire_old(config, session, now=datetime.now(UTC), force=args.force)
    finally:
        engine.dispose()
    for ca in retirement.retired:
        print(f"retired {ca_label(ca)}")
    print(f"trusted from the next start: {ca_label(retirement.kept)} only")
    for member in retirement.stranded:
        print(f"warning: {member.member_id} ({member.name}) is cut off: only {member.ca}")
    print("  next: restart the hub")
    return 0


def cmd_ca_status(args: argparse.Namespace) -> int:
    config = open_config(args.data_dir)
    paths = config.paths
    history, roots = ca_history(paths), trusted_roots(paths)
    issuing = load_certificate(paths.ca_cert.read_bytes())
    trusted = {ca.serial_number for ca in roots}
    for number, ca in enumerate(history, start=1):
        marks = [
            "trusted" if ca.serial_number in trusted else "retired",
            *(["issuing"] if ca.serial_number == issuing.serial_number else []),
        ]
        print(
            f"CA #{number}: {ca_label(ca)}, until {when(ca.not_valid_after_utc)} "
            f"[{', '.join(marks)}]"
        )
    for what, path in (("TLS server", paths.tls_cert), ("signing", paths.signing_cert)):
        print(
            f"hub {what} certificate: CA #{ca_number(load_certificate(path.read_bytes()), history)}"
        )
    engine = make_engine(config.effective_database_url)
    try:
        with session_factory(engine)() as session:
            stranded = stranded_members(session, issuing, history, datetime.now(UTC))
    finally:
        engine.dispose()
    stranded = [s for s in stranded if s.member_id != config.hub_id]
    print(f"{len(stranded)} active member(s) not yet on the issuing CA")
    for member in stranded:
        print(f"  {member.member_id} ({member.name}): {member.ca}")
    return 0
