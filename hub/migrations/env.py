"""Alembic environment: migrations run on the engine the hub hands over."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Engine

import xhub.certificates_store.schema  # noqa: F401  (its table joins the one metadata)
from xhub.hub.core.db import Base

engine = context.config.attributes.get("engine")
if not isinstance(engine, Engine):
    raise RuntimeError("run migrations through hub.db.migrate(engine)")

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
