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
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

CHUNK = 1024 * 1024


class BlobWriter(Protocol):
    """An upload in progress: hashes and counts as it writes.

    Writes come one at a time, possibly on a worker thread. ``discard`` may be called
    from another thread meanwhile: it waits for a running write, and later writes fail.
    """

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
    """Unbuffered writes to a temporary file, hashed as they go.

    Writeback of each full window starts at once (``POSIX_FADV_DONTNEED`` on dirty pages
    starts it without waiting and keeps them cached), so the closing fsync only has the
    tail left to flush. The lock lets a discard from another thread wait for a running
    write; a write after it is refused (its descriptor is closed, the number maybe reused).
    """

    WRITEBACK_WINDOW = 8 * CHUNK

    def __init__(self, root: Path) -> None:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._fd, name = tempfile.mkstemp(prefix="upload-", suffix=".part", dir=root)
        self.path = Path(name)
        self._hash = hashlib.sha256()
        self._size = 0
        self._flushed = 0  # writeback started up to here
        self._closed = False
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        return self._size

    def write(self, data: bytes) -> None:
        with self._lock:
            self._check_open()
            self._hash.update(data)  # releases the GIL for large buffers
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            self._size += len(data)
            if self._size - self._flushed >= self.WRITEBACK_WINDOW:
                _start_writeback(self._fd, self._flushed, self._size - self._flushed)
                self._flushed = self._size

    def sha256(self) -> str:
        return self._hash.hexdigest()

    def finish(self) -> None:
        with self._lock:
            self._check_open()
            os.fsync(self._fd)
            self._close()

    def discard(self) -> None:
        with self._lock:
            self._close()
            self.path.unlink(missing_ok=True)

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("the upload was finished or discarded")

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self._fd)


class LocalBlobStore:
    """Blobs as files under ``root``: atomic rename, fsync before the record commits."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._tmp = root / "tmp"
        self._trash = root / "trash"
        for directory in (self.root, self._tmp, self._trash):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)

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
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
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


def _start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing a range to disk now, without waiting for it."""
    if hasattr(os, "posix_fadvise"):  # not on macOS
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
