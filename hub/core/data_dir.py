"""The data directory holds citizen data (ID numbers in the database, materials in the blob
store) and the hub's private keys: only its owner may read it.

``secure_tree`` makes every directory 0700 and every file 0600 and reports what it changed,
so ``xhub init`` writes a private tree and ``xhub serve`` repairs (and warns about) a tree
someone loosened. Symbolic links are left alone (their targets are not ours to change).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from xhub.protocol.signing import write_secret

DIRECTORY_MODE = 0o700
FILE_MODE = 0o600
UMASK = 0o077


def secure_tree(root: Path) -> list[str]:
    """Tighten ``root`` and everything below it; return one line per path that was looser."""
    fixed: list[str] = []
    for path in [root, *sorted(root.rglob("*"))]:
        try:
            info = path.lstat()
        except FileNotFoundError:  # removed meanwhile (a temp file, a WAL checkpoint)
            continue
        if stat.S_ISLNK(info.st_mode):
            continue
        wanted = DIRECTORY_MODE if stat.S_ISDIR(info.st_mode) else FILE_MODE
        mode = stat.S_IMODE(info.st_mode)
        if mode & ~wanted:
            os.chmod(path, wanted)
            fixed.append(f"{path}: {mode:04o} -> {wanted:04o}")
    return fixed


@contextmanager
def private_files() -> Iterator[None]:
    """Create files readable by their owner only while inside (umask 077), then restore."""
    previous = os.umask(UMASK)
    try:
        yield
    finally:
        os.umask(previous)


def replace_file(path: Path, data: bytes, *, secret: bool = False) -> None:
    """Write ``path`` whole or not at all (a temporary beside it, then an atomic rename);
    ``secret``: readable by the owner only."""
    temporary = path.with_name(path.name + ".tmp")
    if secret:
        write_secret(temporary, data)
    else:
        temporary.write_bytes(data)
    os.replace(temporary, path)
