"""Content-addressed blob store (材料文件存储) behind a small interface.

The default keeps blobs in a local directory as ``ab/cd/<sha256>``: content is
streamed to a temporary file in the same directory tree, fsynced, and renamed
into place, so a blob either exists whole or not at all. The database holds
metadata only. An S3-style store can implement the same ``BlobStore`` protocol.

Garbage collection against concurrent uploads (no lock shared by processes):
an upload first commits an *intent* row for its hash, then makes sure the blob
is in place; the collector first moves a candidate blob aside, then checks for
references and intents, and moves it back if it finds one. Whichever happens
first, the other sees it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

CHUNK = 1024 * 1024


class BlobWriter(Protocol):
    """An upload in progress: hashes and counts as it writes."""

    @property
    def size(self) -> int: ...

    def write(self, data: bytes) -> None: ...

    def sha256(self) -> str: ...

    def discard(self) -> None: ...


class BlobStore(Protocol):
    def begin(self) -> BlobWriter: ...

    def place(self, writer: BlobWriter) -> str:
        """Make the writer's content the blob of its hash (keeping an existing one)."""
        ...

    def exists(self, sha256: str) -> bool: ...

    def open(self, sha256: str) -> BinaryIO: ...

    def hide(self, sha256: str) -> bool:
        """Move a blob out of reach (step 1 of collection); False if it is gone."""
        ...

    def restore(self, sha256: str) -> None: ...

    def purge(self, sha256: str) -> None: ...

    def all(self) -> Iterator[str]: ...


class _FileWriter:
    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix="upload-", suffix=".part", dir=root)
        self._file = os.fdopen(handle, "wb")
        self.path = Path(name)
        self._hash = hashlib.sha256()
        self._size = 0

    @property
    def size(self) -> int:
        return self._size

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self._hash.update(data)
        self._size += len(data)

    def sha256(self) -> str:
        return self._hash.hexdigest()

    def finish(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()

    def discard(self) -> None:
        if not self._file.closed:
            self._file.close()
        self.path.unlink(missing_ok=True)


class LocalBlobStore:
    """Blobs as files under ``root``: atomic rename, fsync before the record commits."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._tmp = root / "tmp"
        self._trash = root / "trash"
        for directory in (self.root, self._tmp, self._trash):
            directory.mkdir(parents=True, exist_ok=True)

    def _path(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError("not a SHA-256 hex digest")
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def begin(self) -> _FileWriter:
        return _FileWriter(self._tmp)

    def place(self, writer: BlobWriter) -> str:
        assert isinstance(writer, _FileWriter)
        writer.finish()
        sha256 = writer.sha256()
        target = self._path(sha256)
        if target.exists():
            writer.discard()  # identical content is stored once
            return sha256
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(writer.path, target)
        _fsync_dir(target.parent)
        return sha256

    def exists(self, sha256: str) -> bool:
        return self._path(sha256).exists()

    def open(self, sha256: str) -> BinaryIO:
        return open(self._path(sha256), "rb")

    def hide(self, sha256: str) -> bool:
        try:
            os.replace(self._path(sha256), self._trash / sha256)
        except FileNotFoundError:
            return False
        return True

    def restore(self, sha256: str) -> None:
        hidden = self._trash / sha256
        target = self._path(sha256)
        if target.exists():  # an upload wrote it again meanwhile
            hidden.unlink(missing_ok=True)
        else:
            os.replace(hidden, target)

    def purge(self, sha256: str) -> None:
        (self._trash / sha256).unlink(missing_ok=True)

    def all(self) -> Iterator[str]:
        for first in sorted(self.root.iterdir()):
            if len(first.name) != 2 or not first.is_dir():
                continue
            for second in sorted(first.iterdir()):
                for blob in sorted(second.iterdir()):
                    yield blob.name

    def stale_temporaries(self, older_than: float) -> Iterator[Path]:
        """Temp files of uploads that died (crash) — safe to delete after a while."""
        for path in self._tmp.iterdir():
            try:
                if path.stat().st_mtime < older_than:
                    yield path
            except FileNotFoundError:
                continue  # an upload just renamed it into place


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
