"""``xhub keys``: rotation of the hub's own keys (平台密钥轮换).

    xhub keys rotate-hub-signing --data-dir D   # a new hub signing key, handed over by the old
    xhub keys rotate-log --data-dir D           # a new log key; the hand-over checkpoint

The hub signs with the key it loaded at start: restart it (``xhub serve``) after a rotation.
Members learn the new keys from the signed hand-overs (``GetHubKeys``, the GetCheckpoint
answer); no bundle is re-issued.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from xhub.hub.audit.log_keys import rotate_log_key
from xhub.hub.core.data_dir import private_files
from xhub.hub.core.db import make_engine, session_factory
from xhub.hub.registry.hub_keys import rotate_hub_signing
from xhub.hub.setup import load_ca, open_config

Handler = Callable[[argparse.Namespace], int]


def add_key_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    data_dir_arg: Callable[[argparse.ArgumentParser], None],
) -> dict[tuple[str, str | None], Handler]:
    """The ``keys`` command group; returns its handlers for ``main``'s table."""
    keys = commands.add_parser("keys", help="rotate the hub's own keys (密钥轮换)")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    hub_signing = key_commands.add_parser(
        "rotate-hub-signing",
        help="a new hub signing key, handed over by the old one (restart the hub after)",
    )
    data_dir_arg(hub_signing)
    log = key_commands.add_parser(
        "rotate-log",
        help="a new audit log key: the latest checkpoint is re-signed by both keys (restart after)",
    )
    data_dir_arg(log)
    return {
        ("keys", "rotate-hub-signing"): cmd_rotate_hub_signing,
        ("keys", "rotate-log"): cmd_rotate_log,
    }


def cmd_rotate_hub_signing(args: argparse.Namespace) -> int:
    data_dir: Path = args.data_dir
    config = open_config(data_dir)
    engine = make_engine(config.effective_database_url)
    try:
        with private_files():
            with session_factory(engine).begin() as session:
                rotation = rotate_hub_signing(
                    config, load_ca(config), session, now=datetime.now(UTC)
                )
            kept_key, _ = rotation.switch()
    finally:
        engine.dispose()
    print(f"hub signing key {rotation.old_key_id[:16]}… → {rotation.new_key_id[:16]}…")
    print(f"  hand-overs : {config.paths.signing_handovers} ({len(rotation.handovers)})")
    print(f"  old key    : kept as {kept_key} — destroy it once the hub restarted")
    print("  next       : restart the hub (xhub serve) so it signs with the new key")
    return 0


def cmd_rotate_log(args: argparse.Namespace) -> int:
    config = open_config(args.data_dir)
    engine = make_engine(config.effective_database_url)
    try:
        with private_files():
            with session_factory(engine).begin() as session:
                rotation = rotate_log_key(config, session)
            kept = rotation.switch()
    finally:
        engine.dispose()
    print(f"log key {rotation.old_vkey}")
    print(f"     → {rotation.new_vkey}")
    print(f"  hand-over : checkpoint of size {rotation.tree_size}, signed by both keys")
    print(f"  old key   : kept as {kept} — destroy it once the hub restarted")
    print("  next      : restart the hub (xhub serve); auditors may pin the new key")
    return 0
