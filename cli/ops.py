"""``xhub backup``, ``xhub restore`` and ``xhub db copy`` (备份、恢复与迁移).

xhub backup --data-dir D --out hub.tar            # online: the hub may keep serving
xhub backup --data-dir D --out keys.tar --no-database   # a PostgreSQL hub: pg_dump the DB
xhub restore hub.tar --data-dir NEW               # verifies every checksum first
xhub db copy --data-dir D --to postgresql://...   # SQLite → an empty PostgreSQL database
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.engine import make_url

from xhub.hub.ops.backup import BackupError, create_backup, restore_backup
from xhub.hub.ops.db_copy import copy_database
from xhub.hub.setup import open_config

Handler = Callable[[argparse.Namespace], int]


def add_ops_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    data_dir_arg: Callable[[argparse.ArgumentParser], None],
) -> dict[tuple[str, str | None], Handler]:
    """``backup``, ``restore`` and ``db copy`` (added to the existing ``db`` group)."""
    backup = commands.add_parser("backup", help="archive the whole hub, online (备份)")
    data_dir_arg(backup)
    backup.add_argument("--out", type=Path, required=True, help="archive to write (a tar)")
    backup.add_argument(
        "--no-database",
        action="store_true",
        help="leave the database out (a PostgreSQL hub: back it up with pg_dump)",
    )
    restore = commands.add_parser("restore", help="unpack a backup into a new data dir (恢复)")
    restore.add_argument("archive", type=Path)
    restore.add_argument("--data-dir", type=Path, required=True, help="new, empty directory")
    db = commands.choices["db"]
    db_commands = next(
        action for action in db._actions if isinstance(action, argparse._SubParsersAction)
    )
    copy = db_commands.add_parser(
        "copy", help="copy a SQLite hub into an empty PostgreSQL database (迁移)"
    )
    data_dir_arg(copy)
    copy.add_argument("--to", required=True, help="postgresql:// (or postgres://) URL")
    return {
        ("backup", None): cmd_backup,
        ("restore", None): cmd_restore,
        ("db", "copy"): cmd_db_copy,
    }


def _progress(line: str) -> None:
    end = "\r" if sys.stderr.isatty() else "\n"
    print(f"  {line}", file=sys.stderr, end=end, flush=True)


def _progress_done() -> None:
    if sys.stderr.isatty():
        print(file=sys.stderr)


def _fail(exc: BackupError) -> int:
    _progress_done()
    print(f"error: {exc}", file=sys.stderr)
    return 2


def cmd_backup(args: argparse.Namespace) -> int:
    config = open_config(args.data_dir)
    try:
        report = create_backup(config, args.out, database=not args.no_database, progress=_progress)
    except BackupError as exc:
        return _fail(exc)
    _progress_done()
    print(
        f"backup written to {report.path}: {report.files} files ({report.blobs} blobs, "
        f"{report.bytes} bytes), database: {report.database}"
    )
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    try:
        manifest = restore_backup(args.archive, args.data_dir, progress=_progress)
    except BackupError as exc:
        return _fail(exc)
    _progress_done()
    print(
        f"restored hub {manifest['hub_id']} (schema {manifest['schema_revision']}, backed up "
        f"{manifest['created_at']}) into {args.data_dir}: {len(manifest['files'])} files"
    )
    if manifest.get("database") != "sqlite":
        print("  the database was not in the archive: restore it with pg_restore (README)")
    print(f"  next: xhub audit check --data-dir {args.data_dir}; xhub serve --data-dir ...")
    return 0


def cmd_db_copy(args: argparse.Namespace) -> int:
    config = open_config(args.data_dir)
    try:
        report = copy_database(config, args.to, progress=_progress)
    except BackupError as exc:
        return _fail(exc)
    _progress_done()
    rows = sum(report.counts.values())
    shown = make_url(report.url).render_as_string(hide_password=True)
    print(
        f"copied {rows} rows in {len(report.counts)} tables; counts equal; the audit log "
        f"({report.audit_size} entries) passes its integrity check on the target"
    )
    print(
        f'  next: set database_url = "{shown}" (with its password) in '
        f"{config.paths.config_file}, or XHUB_DATABASE_URL, then xhub serve"
    )
    return 0
