"""The catalog engine turns storage failures into one CatalogStorageError, nothing else.

A full disk is exercised for real in ``tests/e2e/test_full_disk.py``; here a read-only
database (SQLite's ``query_only``, a PostgreSQL read-only transaction, as on a standby)
stands for the same family on both backends, and ordinary errors must pass unchanged.
"""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from vitdex.db import make_engine
from vitdex.errors import CatalogStorageError


def test_read_only_catalog_is_a_storage_error(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY)"))
        with engine.connect() as conn:
            if engine.dialect.name == "sqlite":
                conn.execute(text("PRAGMA query_only=ON"))
            else:
                conn.execute(text("SET TRANSACTION READ ONLY"))
            with pytest.raises(CatalogStorageError) as caught:
                conn.execute(text("INSERT INTO t (id) VALUES (1)"))
            conn.rollback()
            if engine.dialect.name == "sqlite":
                conn.execute(text("PRAGMA query_only=OFF"))
        message = caught.value.message
        assert message.startswith("the catalog ") and "is read-only" in message, message
        assert "writable" in message, message
        assert caught.value.exit_code == 4 and caught.value.http_status == 503
        if engine.dialect.name == "sqlite":
            assert str(engine.url.database) in message, message
        else:
            assert "***" in message or engine.url.password is None, message

        # A query's own error is not a storage failure: it passes as it was.
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO t (id) VALUES (1)"))
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(text("INSERT INTO t (id) VALUES (1)"))
    finally:
        engine.dispose()
