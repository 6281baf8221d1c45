"""Alembic environment: runs against the engine vitdex hands over, or VITDEX_DATABASE_URL."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Engine

from vitdex.db.models import Base

config = context.config
target_metadata = Base.metadata


def _engine() -> Engine:
    engine: Engine | None = config.attributes.get("engine")
    if engine is None:
        # Run by the ``alembic`` command itself, an edge of its own: settings come from
        # the environment here only.
        from vitdex.config import load_settings
        from vitdex.db.engine import make_engine

        engine = make_engine(load_settings().storage.resolved_database_url)
    return engine


def run_migrations_offline() -> None:
    """Emit SQL to stdout instead of running it."""
    context.configure(
        url=_engine().url,
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run migrations over a connection of the engine."""
    with _engine().connect() as connection:
        # batch mode lets ALTER-style changes work on SQLite too.
        context.configure(
            connection=connection, target_metadata=target_metadata, render_as_batch=True
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
