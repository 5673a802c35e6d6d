"""``xhub backup`` / ``xhub restore``: one archive holding a whole hub (备份与恢复).

The archive is a tar with ``manifest.json`` first, then

* ``xhub.db`` — a consistent snapshot of a SQLite hub taken with SQLite's online backup API
  (``sqlite3.Connection.backup``) while the hub runs;
* ``blobs/ab/cd/<sha256>`` — every material blob the snapshot's rows reference, copied after
  the snapshot (a blob is written before its row commits, and the collector deletes only
  blobs no row references, so none the snapshot names can be missing);
* the key material and configuration: ``ca/``, ``hub/``, ``bundles/``, ``xhub.toml``.

The manifest names the hub, the schema revision, the time and every file with its SHA-256 and
size. ``restore`` verifies every checksum before it writes anything, into an empty directory
only. A PostgreSQL hub's database is backed up with ``pg_dump`` (README); ``database=False``
archives the rest of it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sqlite3
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import make_url

from xhub.hub.core.config import CONFIG_FILE, HubConfig
from xhub.hub.core.data_dir import private_files, secure_tree
from xhub.hub.core.db import (
    SQLITE_BUSY_TIMEOUT_MS,
    BlobIntentRow,
    MaterialRow,
    current_revision,
    make_engine,
)
from xhub.hub.materials.blobstore import LocalBlobStore

FORMAT = "xhub-backup/1"
MANIFEST = "manifest.json"
DATABASE_FILE = "xhub.db"
KEY_FOLDERS = ("ca", "hub", "bundles")
CHUNK = 1024 * 1024
SQLITE_PAGES_PER_STEP = 1024

Progress = Callable[[str], None]


class BackupError(RuntimeError):
    """A backup or restore cannot go on; the message says why (and, for an archive, which
    file disagreed)."""


@dataclass(frozen=True)
class BackupReport:
    path: Path
    files: int
    blobs: int
    bytes: int
    database: str


def _quiet(_: str) -> None:
    pass


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL; None for any other database."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    return Path(parsed.database)


def _hash_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _snapshot_sqlite(source: Path, target: Path, progress: Progress) -> None:
    """Copy a live SQLite database page by page into ``target`` (readers and the writer go
    on; a write meanwhile restarts the copy, as the backup API does)."""
    src = sqlite3.connect(source, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000)
    dst = sqlite3.connect(target)
    try:

        def step(_status: int, remaining: int, total: int) -> None:
            progress(f"database: {total - remaining} / {total} pages")

        src.backup(dst, pages=SQLITE_PAGES_PER_STEP, progress=step)
    finally:
        dst.close()
        src.close()


def _referenced_blobs(database: Path) -> list[str]:
    engine = make_engine(f"sqlite:///{database}", pool_size=1)
    try:
        with engine.connect() as connection:
            found = set(connection.scalars(select(MaterialRow.sha256).distinct()))
            found.update(connection.scalars(select(BlobIntentRow.sha256).distinct()))
    finally:
        engine.dispose()
    return sorted(found)


def _blob_member(sha256: str) -> str:
    return f"blobs/{sha256[:2]}/{sha256[2:4]}/{sha256}"


def _key_files(root: Path) -> Iterator[tuple[str, Path]]:
    config = root / CONFIG_FILE
    if config.is_file():
        yield CONFIG_FILE, config
    for folder in KEY_FOLDERS:
        base = root / folder
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*")):
            if path.is_file() and not path.is_symlink() and not path.name.endswith(".tmp"):
                yield path.relative_to(root).as_posix(), path


def create_backup(
    config: HubConfig,
    out: Path,
    *,
    database: bool = True,
    progress: Progress = _quiet,
    now: datetime | None = None,
) -> BackupReport:
    """Write the archive of the hub in ``config`` to ``out`` (mode 0600), online.

    Raises:
        BackupError: the hub's database is not SQLite and ``database`` is set; a blob the
            snapshot references is gone; ``out`` exists.
    """
    url = config.effective_database_url
    db_file = sqlite_path(url)
    if database and db_file is None:
        raise BackupError(
            "this hub's database is PostgreSQL: back it up with pg_dump (README, 'Backup, "
            "restore and moving to PostgreSQL'), and the blobs and keys with --no-database"
        )
    if out.exists():
        raise BackupError(f"{out} exists; choose a new file name")
    root = config.paths.root
    engine = make_engine(url, pool_size=1)
    try:
        revision = current_revision(engine)
    finally:
        engine.dispose()
    entries: list[tuple[str, Path]] = []
    out.parent.mkdir(parents=True, exist_ok=True)
    with private_files(), tempfile.TemporaryDirectory(dir=out.parent, prefix=".xhub-backup-") as t:
        staging = Path(t)
        if database and db_file is not None:
            snapshot = staging / DATABASE_FILE
            _snapshot_sqlite(db_file, snapshot, progress)
            entries.append((DATABASE_FILE, snapshot))
            blobs = _referenced_blobs(snapshot)
        else:
            blobs = sorted(LocalBlobStore(config.paths.blobs).all())
        for done, sha256 in enumerate(blobs, 1):
            source = config.paths.blobs / sha256[:2] / sha256[2:4] / sha256
            if not source.is_file():
                if database:
                    raise BackupError(f"blob {sha256} referenced by the snapshot is missing")
                continue
            entries.append((_blob_member(sha256), source))
            if done % 100 == 0 or done == len(blobs):
                progress(f"blobs: {done} / {len(blobs)}")
        entries.extend(_key_files(root))
        files = _manifest_files(entries)
        manifest = {
            "format": FORMAT,
            "hub_id": config.hub_id,
            "schema_revision": revision,
            "database": "sqlite" if database else "none",
            "created_at": (now or datetime.now(UTC)).isoformat(),
            "files": files,
        }
        _write_tar(out, manifest, entries, files)
    return BackupReport(
        path=out,
        files=len(files),
        blobs=sum(1 for name, _ in entries if name.startswith("blobs/")),
        bytes=sum(int(f["size"]) for f in files),
        database=str(manifest["database"]),
    )


def _manifest_files(entries: list[tuple[str, Path]]) -> list[dict[str, Any]]:
    files = []
    for name, path in entries:
        sha256, size = _hash_file(path)
        if name.startswith("blobs/") and sha256 != name.rsplit("/", 1)[1]:
            raise BackupError(f"blob {name} does not hash to its name (got {sha256})")
        files.append({"path": name, "sha256": sha256, "size": size})
    return files


def _write_tar(
    out: Path, manifest: dict[str, Any], entries: list[tuple[str, Path]], files: list[Any]
) -> None:
    temporary = out.with_name(out.name + ".part")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w") as tar:
            body = json.dumps(manifest, ensure_ascii=False, indent=1).encode()
            info = tarfile.TarInfo(MANIFEST)
            info.size, info.mode, info.mtime = len(body), 0o600, int(datetime.now(UTC).timestamp())
            tar.addfile(info, io.BytesIO(body))
            for (name, path), listed in zip(entries, files, strict=True):
                info = tarfile.TarInfo(name)
                info.size, info.mode = int(listed["size"]), 0o600
                info.mtime = int(path.stat().st_mtime)
                with open(path, "rb") as handle:
                    tar.addfile(info, handle)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(temporary, out)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


# -- restore ------------------------------------------------------------------------------


def _safe_name(name: str) -> bool:
    path = PurePosixPath(name)
    return bool(name) and not path.is_absolute() and ".." not in path.parts and "\\" not in name


def read_manifest(archive: Path) -> dict[str, Any]:
    """The archive's manifest, checked for shape.

    Raises:
        BackupError: not an xhub backup, or its manifest is malformed.
    """
    try:
        with tarfile.open(archive, mode="r") as tar:
            member = tar.extractfile(MANIFEST)
            if member is None:
                raise BackupError(f"{archive}: {MANIFEST} is not a file")
            manifest = json.loads(member.read())
    except (tarfile.TarError, KeyError, OSError, ValueError) as exc:
        raise BackupError(f"{archive} is not a readable xhub backup: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError(f"{archive}: unknown backup format (expected {FORMAT})")
    if not isinstance(manifest.get("files"), list):
        raise BackupError(f"{archive}: the manifest lists no files")
    return manifest


def verify_archive(archive: Path, progress: Progress = _quiet) -> dict[str, Any]:
    """Check every file of the archive against its manifest entry; return the manifest.

    Raises:
        BackupError: naming the first file whose checksum or size disagrees, a file the
            manifest lists that is missing, or one it does not list.
    """
    manifest = read_manifest(archive)
    listed = {str(f["path"]): f for f in manifest["files"]}
    seen: set[str] = set()
    with tarfile.open(archive, mode="r") as tar:
        for member in tar:
            if member.name == MANIFEST:
                continue
            if not member.isfile() or not _safe_name(member.name):
                raise BackupError(f"{member.name}: not a plain file inside the backup")
            expected = listed.get(member.name)
            if expected is None:
                raise BackupError(f"{member.name}: in the archive but not in its manifest")
            if member.name in seen:
                raise BackupError(f"{member.name}: stored twice in the archive")
            handle = tar.extractfile(member)
            assert handle is not None
            digest = hashlib.sha256()
            size = 0
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
            if size != expected["size"] or digest.hexdigest() != expected["sha256"]:
                raise BackupError(
                    f"{member.name}: checksum differs from the manifest (manifest "
                    f"{str(expected['sha256'])[:16]}… {expected['size']} bytes, archive "
                    f"{digest.hexdigest()[:16]}… {size} bytes)"
                )
            seen.add(member.name)
            if len(seen) % 100 == 0:
                progress(f"verified {len(seen)} / {len(listed)} files")
    missing = sorted(set(listed) - seen)
    if missing:
        raise BackupError(f"{missing[0]}: listed in the manifest but missing from the archive")
    return manifest


def restore_backup(archive: Path, target: Path, progress: Progress = _quiet) -> dict[str, Any]:
    """Verify ``archive`` whole, then unpack it into the empty (or new) ``target``.

    Returns the manifest. Raises:
        BackupError: ``target`` is not empty, or the archive fails verification (nothing is
            written then).
    """
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise BackupError(f"{target} is not empty: restore into a new directory")
    manifest = verify_archive(archive, progress)
    created = not target.exists()
    try:
        with private_files(), tarfile.open(archive, mode="r") as tar:
            target.mkdir(mode=0o700, parents=True, exist_ok=True)
            for member in tar:
                if member.name == MANIFEST:
                    continue
                destination = target.joinpath(*PurePosixPath(member.name).parts)
                destination.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                handle = tar.extractfile(member)
                assert handle is not None
                fd = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as written:
                    shutil.copyfileobj(handle, written, CHUNK)
        secure_tree(target)
    except BaseException:
        if created:
            shutil.rmtree(target, ignore_errors=True)
        else:
            for child in list(target.iterdir()):
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        raise
    return manifest
