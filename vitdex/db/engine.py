"""Engine, sessions and schema migrations for the catalog (SQLite or PostgreSQL)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import ExceptionContext, make_url
from sqlalchemy.orm import Session, sessionmaker

from vitdex.errors import CatalogStorageError, ConfigError

#: Alembic scripts ship inside the package (``vitdex/migrations``), so a wheel carries them.
MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"

_migrated: set[str] = set()
_migrate_lock = threading.Lock()


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    # WAL lets readers (the API, `vitdex status`) run while an index run writes;
    # busy_timeout makes a second writer wait instead of failing at once.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


#: SQLite primary result codes that mean the catalog's storage failed, not the query.
_SQLITE_STORAGE = {
    8: "is read-only",  # SQLITE_READONLY
    10: "cannot be read or written",  # SQLITE_IOERR (also a full disk at PRAGMA journal_mode)
    13: "is out of space",  # SQLITE_FULL
    14: "cannot be opened",  # SQLITE_CANTOPEN
}
#: PostgreSQL SQLSTATEs of the same kind: disk_full, io_error, read_only_sql_transaction.
_POSTGRES_STORAGE = {
    "53100": "is out of space",
    "58030": "cannot be read or written",
    "25006": "is read-only",
}

_ADVICE = {
    "is read-only": "make the database (file and folder) writable, then run again",
    "is out of space": "free space on its disk, then run again",
}


def _where(context: ExceptionContext) -> str:
    url = context.engine.url if context.engine is not None else None
    if url is None:
        return ""
    if url.get_backend_name() == "sqlite":
        return f" {url.database}"
    return f" {url.render_as_string(hide_password=True)}"


def _storage_failure(context: ExceptionContext) -> None:
    """Re-raise a disk-full, I/O or read-only failure as one :class:`CatalogStorageError`.

    The driver's error would otherwise end as a 60-line traceback on the CLI and a bare
    500 over HTTP; the user needs to know which database failed and that room (or a
    writable disk) is what it lacks. Every other error passes through unchanged.
    """
    if context.is_pre_ping:
        return
    exc = context.original_exception
    what: str | None = None
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        what = _SQLITE_STORAGE.get(code & 0xFF)
    else:
        what = _POSTGRES_STORAGE.get(str(getattr(exc, "sqlstate", "")))
    if what is None:
        return
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    advice = _ADVICE.get(what, "free space on its disk or check the disk, then run again")
    raise CatalogStorageError(f"the catalog{_where(context)} {what} ({reason}): {advice}") from exc


def make_engine(url: str) -> Engine:
    """Create an engine for ``url``; SQLite files get their folder created and sane pragmas."""
    try:
        parsed = make_url(url)
    except Exception as exc:
        raise ConfigError(f"invalid VITDEX_DATABASE_URL {url!r}: {exc}") from None
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:":
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
    elif parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() in ("", "psycopg2"):
        # psycopg 3 is the driver we ship with; plain postgresql:// URLs should just work.
        engine = create_engine(parsed.set(drivername="postgresql+psycopg"), pool_pre_ping=True)
    else:
        engine = create_engine(parsed, pool_pre_ping=True)
    # A full or failing disk is one clear error, on the CLI and over HTTP alike.
    event.listen(engine, "handle_error", _storage_failure)
    return engine


def _alembic_config(engine: Engine) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["engine"] = engine
    return cfg


def current_revision(engine: Engine) -> str | None:
    """The schema revision the database is at, ``None`` for an empty database."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str | None:
    """The newest schema revision this version of vitdex knows."""
    from alembic.script import ScriptDirectory

    cfg = _alembic_config(create_engine("sqlite://"))
    return ScriptDirectory.from_config(cfg).get_current_head()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply migrations up to ``revision``."""
    from alembic import command

    command.upgrade(_alembic_config(engine), revision)


def ensure_schema(engine: Engine) -> None:
    """Bring the schema to head once per process and URL (cheap when already there)."""
    key = engine.url.render_as_string(hide_password=False)
    with _migrate_lock:
        if key in _migrated:
            return
        if current_revision(engine) != head_revision():
            upgrade(engine)
        _migrated.add(key)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded objects usable after commit."""
    return sessionmaker(engine, expire_on_commit=False)
