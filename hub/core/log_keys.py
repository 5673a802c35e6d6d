"""The audit log key's history as the hub stores it (日志密钥历史): the first key and the
hand-over notes of every rotation (``hub/log-handovers.json``, written by
``xhub.hub.audit.log_keys``). Core reads it so the integrity check and the sequencer open
every stored checkpoint with the key that signed it."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from xhub.protocol.log.key_history import LogKeys
from xhub.protocol.log.note import NoteVerifier

__all__ = ["log_key_document", "log_key_history", "read_log_handovers"]


def log_key_document(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {"first_key": "", "handovers": []}
    document: dict[str, Any] = json.loads(path.read_text("utf-8"))
    return document


def read_log_handovers(path: Path) -> list[bytes]:
    """The stored hand-over notes, oldest first (none before the first rotation)."""
    return [base64.b64decode(item) for item in log_key_document(path)["handovers"]]


def log_key_history(path: Path, current: NoteVerifier) -> LogKeys:
    """Every key the log has had, from its first (recorded at the first rotation) through
    the stored hand-overs — the verifier for the log's stored checkpoint history (older
    checkpoints are signed by older keys). Before any rotation: ``current`` alone."""
    document = log_key_document(path)
    first = NoteVerifier.from_vkey(document["first_key"]) if document["first_key"] else current
    return LogKeys.following(first, read_log_handovers(path))
