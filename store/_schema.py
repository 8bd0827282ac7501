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

_V2_EVENT_RUNS = """
-- Events are stored in runs: the consecutive events of one session and turn that one batch
-- appended, in one row. One row per streamed chunk cost ~3 us of SQLite per chunk, the
-- proxy's largest cost when streaming (BENCHMARKS.md section 6); one row per run costs it
-- once per agent read. The `events` view below still shows one row per event.
CREATE TABLE event_runs (
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    last_seq   INTEGER NOT NULL,  -- seq of the run's last event
    first_seq  INTEGER NOT NULL,  -- seq of its first; the run holds every seq in between
    turn       INTEGER NOT NULL,
    entries    TEXT NOT NULL,     -- JSON array, per event [kind, start, size]: its payload is
    payloads   BLOB NOT NULL,     -- substr(payloads, start + 1, size) of these, concatenated
    PRIMARY KEY (session_id, last_seq)
);
-- Runs never overlap: a seq is stored once (what events' primary key used to ensure).
CREATE TRIGGER event_runs_no_overlap BEFORE INSERT ON event_runs
WHEN NEW.first_seq < 1 OR NEW.last_seq < NEW.first_seq OR EXISTS (
    SELECT 1 FROM event_runs
    WHERE session_id = NEW.session_id AND last_seq >= NEW.first_seq
      AND first_seq <= NEW.last_seq
)
BEGIN
    SELECT RAISE(ABORT, 'event seq already stored (UNIQUE event_runs seq range)');
END;
-- The newest event of each kind of a session (a restore reads the state kinds from here).
CREATE TABLE latest_events (
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    kind       TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    payload    BLOB NOT NULL,
    PRIMARY KEY (session_id, kind)
) WITHOUT ROWID;
INSERT INTO event_runs (session_id, last_seq, first_seq, turn, entries, payloads)
    SELECT session_id, seq, seq, turn,
           json_array(json_array(kind, 0, length(CAST(payload AS BLOB)))),
           CAST(payload AS BLOB)
    FROM events ORDER BY session_id, seq;
INSERT INTO latest_events (session_id, kind, seq, payload)
    SELECT session_id, kind, max(seq), CAST(payload AS BLOB)  -- payload of the max(seq) row
    FROM events GROUP BY session_id, kind;
DROP TABLE events;
-- One row per event, for people and tools reading the database with plain SQL.
CREATE VIEW events (session_id, seq, turn, kind, payload) AS
SELECT r.session_id, r.first_seq + e.key, r.turn, json_extract(e.value, '$[0]'),
       substr(r.payloads, json_extract(e.value, '$[1]') + 1, json_extract(e.value, '$[2]'))
FROM event_runs AS r, json_each(r.entries) AS e;
"""

_V3_LEASES = """
-- Who drives each conversation (one owner across replicas, or proxies sharing one file): the
-- owner's id, a fencing epoch that every write of the owner is checked against, and when the
-- lease expires unless renewed (seconds since the epoch). See store/_leases.py.
CREATE TABLE session_leases (
    session_id TEXT PRIMARY KEY NOT NULL,
    owner      TEXT NOT NULL,
    epoch      INTEGER NOT NULL,
    expires_at REAL NOT NULL,
    address    TEXT
) WITHOUT ROWID;
"""

_V4_CREATOR_UID = """
-- The uid of the client that created a session (SO_PEERCRED on the proxy's socket), so a
-- proxy with session_access = "creator" serves a session only to that uid. NULL: created
-- before this version (or with no peer uid); such sessions stay with the proxy's own uid.
ALTER TABLE sessions ADD COLUMN creator_uid INTEGER;
"""

MIGRATIONS: list[str] = [_V1_INITIAL, _V2_EVENT_RUNS, _V3_LEASES, _V4_CREATOR_UID]
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
