"""Versioned SQLite schema.

``MIGRATIONS[i]`` is a SQL script that upgrades a database from version ``i`` to ``i + 1``;
the version lives in ``PRAGMA user_version`` (0 for an empty database). Released migrations
are never edited: a schema change is a new script appended to the list.
"""

from __future__ import annotations

import sqlite3

from ._records import SchemaVersionError, StoreError

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "migrate"]

_V1_INITIAL = """
CREATE TABLE sessions (
    id                     TEXT PRIMARY KEY NOT NULL,
    cwd                    TEXT NOT NULL,
    agent_profile          TEXT NOT NULL,
    mcp_servers            BLOB NOT NULL,
    additional_directories BLOB,
    upstream_session_id    TEXT,
    modes                  BLOB,
    config_options         BLOB,
    title                  TEXT,
    created_at             REAL NOT NULL,
    updated_at             REAL NOT NULL,
    state                  TEXT NOT NULL CHECK (state IN ('active', 'closed'))
);
CREATE INDEX sessions_by_updated_at ON sessions (updated_at DESC, id);
CREATE INDEX sessions_by_cwd ON sessions (cwd, updated_at DESC, id);

CREATE TABLE turns (
    session_id   TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    seq          INTEGER NOT NULL,
    started_at   REAL NOT NULL,
    ended_at     REAL,
    prompt       BLOB NOT NULL,
    stop_reason  TEXT,
    outcome      TEXT NOT NULL
                 CHECK (outcome IN ('running', 'completed', 'cancelled', 'error', 'unknown')),
    timings      BLOB,
    usage        BLOB,
    restore_path TEXT,
    PRIMARY KEY (session_id, seq)
);

CREATE TABLE events (
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    seq        INTEGER NOT NULL,
    turn       INTEGER NOT NULL,
    kind       TEXT NOT NULL,
    payload    BLOB NOT NULL,
    PRIMARY KEY (session_id, seq)
) WITHOUT ROWID;
"""

MIGRATIONS: list[str] = [_V1_INITIAL]
"""``MIGRATIONS[i]`` upgrades schema version ``i`` to ``i + 1``."""

SCHEMA_VERSION: int = len(MIGRATIONS)
"""The schema version this code writes."""


def _user_version(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def migrate(db: sqlite3.Connection) -> None:
    """Bring the database up to `SCHEMA_VERSION`, one transaction per migration.

    Blocking: the store runs it on a worker thread. ``db`` must be in autocommit mode
    (``isolation_level=None``) with no open transaction.

    Args:
        db: The write connection.

    Raises:
        SchemaVersionError: The database is newer than this code.
        StoreError: A migration failed; the database stays at the last good version.
    """
    version = _user_version(db)
    if version > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"database schema version {version} is newer than this acp-proxy supports "
            f"({SCHEMA_VERSION}); upgrade acp-proxy"
        )
    for index in range(version, SCHEMA_VERSION):
        script = (
            f"BEGIN IMMEDIATE;\n{MIGRATIONS[index]}\nPRAGMA user_version = {index + 1};\nCOMMIT;"
        )
        try:
            db.executescript(script)
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            if _user_version(db) > index:
                continue  # another process applied this migration concurrently
            raise StoreError(
                f"schema migration from version {index} to {index + 1} failed: {exc}"
            ) from exc
