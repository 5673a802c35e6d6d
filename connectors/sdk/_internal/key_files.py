"""The member directory's signing-key files during a rotation (签名密钥文件).

A rotation goes through three states on disk, each one a consistent bundle:

1. ``stage``: the new key is written to ``signing.key.pending``; ``member.json`` still names
   the old key (a crash here leaves the old bundle working and the pending key to resume).
2. the hub confirms the new key (or a resumed rotation finds it registered);
3. ``commit``: the old key file (if it was a separate ``signing.key``) is copied to
   ``signing.key.<key id>.old``, the pending key atomically replaces ``signing.key`` and
   ``member.json`` is replaced atomically to name it. ``tls.key`` is never touched (it
   stays the TLS key).

``discard`` removes a pending key the hub refused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from xhub.protocol.bundle import MANIFEST, SIGNING_KEY, TLS_KEY
from xhub.protocol.signing import PrivateKey, load_private_key, write_private_key, write_secret

PENDING = SIGNING_KEY + ".pending"


def pending_key(directory: Path) -> PrivateKey | None:
    """The key a rotation staged and has not committed yet, if any."""
    path = directory / PENDING
    return load_private_key(path) if path.exists() else None


def stage(directory: Path, key: PrivateKey) -> None:
    """Write the new key beside the bundle; the bundle still signs with the old one."""
    write_private_key(directory / PENDING, key)


def discard(directory: Path) -> None:
    """Forget a staged key the hub refused."""
    (directory / PENDING).unlink(missing_ok=True)


def commit(directory: Path, old_key_id: str, new_key_id: str) -> Path | None:
    """Make the staged key the bundle's signing key; returns where the old key file was
    kept (None when the old signer was the TLS key, which stays in place)."""
    manifest_path = directory / MANIFEST
    manifest = json.loads(manifest_path.read_text("utf-8"))
    kept: Path | None = None
    if manifest.get("signing_key", TLS_KEY) != TLS_KEY:
        old = directory / manifest["signing_key"]
        if old.exists():
            kept = directory / f"{SIGNING_KEY}.{old_key_id}.old"
            write_secret(kept, old.read_bytes())  # a copy: the bundle stays whole throughout
    os.replace(directory / PENDING, directory / SIGNING_KEY)
    manifest["signing_key"] = SIGNING_KEY
    manifest["signing_key_id"] = new_key_id  # the key the hub now has registered as current
    temporary = directory / (MANIFEST + ".tmp")
    temporary.write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", "utf-8")
    os.replace(temporary, manifest_path)
    return kept
