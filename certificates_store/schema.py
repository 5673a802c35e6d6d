"""The certificate library's table (电子证照库): one row per stored certificate version."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from xhub.storage import Base, UtcDateTime, table_of

__all__ = ["CERTIFICATES", "CertificateRow"]


class CertificateRow(Base):
    """One stored certificate version; ``envelope`` is the issuer-signed bytes as received."""

    __tablename__ = "certificates"

    identifier: Mapped[str] = mapped_column(String(160), primary_key=True)
    base_identifier: Mapped[str] = mapped_column(String(160), index=True)
    type_code: Mapped[str] = mapped_column(String(32))
    type_name: Mapped[str] = mapped_column(String(100))
    number: Mapped[str] = mapped_column(String(100))
    version: Mapped[int] = mapped_column(Integer)
    issuer_code: Mapped[str] = mapped_column(String(64))
    issuer_name: Mapped[str] = mapped_column(String(200))
    issuer_member_id: Mapped[str] = mapped_column(String(128), index=True)
    holder_code: Mapped[str] = mapped_column(String(32))
    holder_code_type: Mapped[int] = mapped_column(Integer)
    valid_from: Mapped[str] = mapped_column(String(10))
    valid_until: Mapped[str] = mapped_column(String(10))
    status: Mapped[int] = mapped_column(Integer)
    raw_status_code: Mapped[str] = mapped_column(String(32))
    status_reason: Mapped[str] = mapped_column(Text)
    is_latest: Mapped[int] = mapped_column(Integer)
    predecessor: Mapped[str] = mapped_column(String(160))
    file_sha256: Mapped[bytes | None] = mapped_column(LargeBinary(32), nullable=True)
    envelope: Mapped[bytes] = mapped_column(LargeBinary)
    published_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())

    __table_args__ = (
        Index("ix_certificates_holder_type", "holder_code", "type_code", "is_latest"),
        Index("ix_certificates_number_type", "number", "type_code"),
    )


CERTIFICATES = table_of(CertificateRow)
