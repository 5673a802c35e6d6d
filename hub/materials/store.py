"""Material library queries and garbage collection (材料库)."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import delete, exists, or_, select
from sqlalchemy.orm import Session, sessionmaker

from xhub.hub.core.db import BlobIntentRow, MaterialRow
from xhub.hub.materials.blobstore import LocalBlobStore
from xhub.protocol.errors import NotFoundError
from xhub.v1 import material_pb2

log = logging.getLogger("xhub.materials")
INTENT_LIFETIME = timedelta(hours=6)


def to_ref(row: MaterialRow) -> material_pb2.MaterialRef:
    ref = material_pb2.MaterialRef(
        material_id=row.material_id,
        material_type=row.material_type,
        name=row.name,
        sha256=bytes.fromhex(row.sha256),
        size=row.size,
        media_type=row.media_type,
        source_case=row.source_case,
        uploader=row.uploader,
        valid_until=row.valid_until,
    )
    ref.uploaded_at.FromDatetime(row.uploaded_at)
    return ref


def reusable(
    session: Session, applicant: str, material_types: Sequence[str], today: date
) -> list[MaterialRow]:
    """The applicant's materials of these types that are still valid, newest first."""
    if not material_types:
        return []
    return list(
        session.scalars(
            select(MaterialRow)
            .where(
                MaterialRow.applicant_code == applicant,
                MaterialRow.material_type.in_(list(material_types)),
                or_(MaterialRow.valid_until == "", MaterialRow.valid_until >= today.isoformat()),
            )
            .order_by(MaterialRow.uploaded_at.desc())
        )
    )


def get(session: Session, material_id: str) -> MaterialRow:
    row = session.get(MaterialRow, material_id)
    if row is None:
        raise NotFoundError("no such material", metadata={"material_id": material_id[:40]})
    return row


def new_material_id() -> str:
    return "MT" + uuid.uuid4().hex.upper()


def add_intent(sessions: sessionmaker[Session], sha256: str) -> str:
    """Announce (and commit) that an upload is about to reference ``sha256``."""
    intent_id = uuid.uuid4().hex
    with sessions.begin() as session:
        session.add(BlobIntentRow(intent_id=intent_id, sha256=sha256, created_at=datetime.now(UTC)))
    return intent_id


def drop_intent(session: Session, intent_id: str) -> None:
    session.execute(delete(BlobIntentRow).where(BlobIntentRow.intent_id == intent_id))


@dataclass(frozen=True)
class GcReport:
    examined: int
    deleted: int
    kept_referenced: int
    kept_in_flight: int
    temporaries_removed: int


def collect_garbage(
    sessions: sessionmaker[Session],
    blobs: LocalBlobStore,
    *,
    progress: Callable[[int], None] | None = None,
) -> GcReport:
    """Delete blobs no material references; safe while uploads run (see hub.blobstore)."""
    now = datetime.now(UTC)
    examined = deleted = referenced = in_flight = 0
    with sessions.begin() as session:
        session.execute(
            delete(BlobIntentRow).where(BlobIntentRow.created_at < now - INTENT_LIFETIME)
        )
    for sha256 in list(blobs.all()):
        examined += 1
        if progress is not None:
            progress(examined)
        with sessions() as session:
            if _referenced(session, sha256):
                referenced += 1
                continue
        # 1. move it aside, 2. look again: an upload that announced itself meanwhile wins.
        if not blobs.hide(sha256):
            continue
        with sessions() as session:
            # One statement, one snapshot: an upload commits its row and drops its intent
            # together, so this sees at least one of them.
            in_use = session.scalar(
                select(
                    or_(
                        exists().where(BlobIntentRow.sha256 == sha256),
                        exists().where(MaterialRow.sha256 == sha256),
                    )
                )
            )
        if in_use:
            blobs.restore(sha256)
            in_flight += 1
            continue
        blobs.purge(sha256)
        deleted += 1
    removed = 0
    for path in blobs.stale_temporaries(time.time() - INTENT_LIFETIME.total_seconds()):
        path.unlink(missing_ok=True)
        removed += 1
    return GcReport(examined, deleted, referenced, in_flight, removed)


def _referenced(session: Session, sha256: str) -> bool:
    return bool(session.scalar(select(exists().where(MaterialRow.sha256 == sha256))))
