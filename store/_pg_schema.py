"""Versioned PostgreSQL schema: the same versions as the SQLite one (``_schema.py``).

``PG_MIGRATIONS[i]`` upgrades version ``i`` to ``i + 1`` and means what ``MIGRATIONS[i]`` means
for SQLite, in PostgreSQL's dialect (``BYTEA`` for raw JSON, so the bytes stay exact). The
version lives in the one-row table ``acp_proxy_schema``. Migrations run under a transaction
advisory lock, so replicas starting together migrate once.
"""

from __future__ import annotations

from typing import Any, Final

from ._records import SchemaVersionError, StoreError
from ._schema import MIGRATIONS, SCHEMA_VERSION

__all__ = ["PG_MIGRATIONS", "migrate_pg"]

_V1_INITIAL = """
CREATE TABLE sessions (
    id                     TEXT PRIMARY KEY NOT NULL,
    cwd                    TEXT NOT NULL,
    agent_profile          TEXT NOT NULL,
    mcp_servers            BYTEA NOT NULL,
    additional_directories BYTEA,
    upstream_session_id    TEXT,
    modes                  BYTEA,
    config_options         BYTEA,
    title                  TEXT,
    created_at             DOUBLE PRECISION NOT NULL,
    updated_at             DOUBLE PRECISION NOT NULL,
    state                  TEXT NOT NULL CHECK (state IN ('active', 'closed'))
);
CREATE INDEX sessions_by_updated_at ON sessions (updated_at DESC, id);
CREATE INDEX sessions_by_cwd ON sessions (cwd, updated_at DESC, id);

CREATE TABLE turns (
    session_id   TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    seq          BIGINT NOT NULL,
    started_at   DOUBLE PRECISION NOT NULL,
    ended_at     DOUBLE PRECISION,
    prompt       BYTEA NOT NULL,
    stop_reason  TEXT,
    outcome      TEXT NOT NULL
                 CHECK (outcome IN ('running', 'completed', 'cancelled', 'error', 'unknown')),
    timings      BYTEA,
    usage        BYTEA,
    restore_path TEXT,
    PRIMARY KEY (session_id, seq)
);

CREATE TABLE events (
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    seq        BIGINT NOT NULL,
    turn       BIGINT NOT NULL,
    kind       TEXT NOT NULL,
    payload    BYTEA NOT NULL,
    PRIMARY KEY (session_id, seq)
);
"""

_V2_EVENT_RUNS = """
-- Events in runs, as in SQLite's version 2: one row per agent read, not per token.
CREATE TABLE event_runs (
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    last_seq   BIGINT NOT NULL,
    first_seq  BIGINT NOT NULL,
    turn       BIGINT NOT NULL,
    entries    TEXT NOT NULL,   -- JSON array, per event [kind, start, size]
    payloads   BYTEA NOT NULL,  -- the events' payloads, concatenated
    PRIMARY KEY (session_id, last_seq)
);
CREATE FUNCTION acp_proxy_event_runs_no_overlap() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.first_seq < 1 OR NEW.last_seq < NEW.first_seq OR EXISTS (
        SELECT 1 FROM event_runs
        WHERE session_id = NEW.session_id AND last_seq >= NEW.first_seq
          AND first_seq <= NEW.last_seq
    ) THEN
        RAISE EXCEPTION 'event seq already stored (UNIQUE event_runs seq range)'
            USING ERRCODE = 'unique_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER event_runs_no_overlap BEFORE INSERT ON event_runs
    FOR EACH ROW EXECUTE FUNCTION acp_proxy_event_runs_no_overlap();
CREATE TABLE latest_events (
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    kind       TEXT NOT NULL,
    seq        BIGINT NOT NULL,
    payload    BYTEA NOT NULL,
    PRIMARY KEY (session_id, kind)
);
INSERT INTO event_runs (session_id, last_seq, first_seq, turn, entries, payloads)
    SELECT session_id, seq, seq, turn,
           jsonb_build_array(jsonb_build_array(kind, 0, length(payload)))::text, payload
    FROM events ORDER BY session_id, seq;
INSERT INTO latest_events (session_id, kind, seq, payload)
    SELECT DISTINCT ON (session_id, kind) session_id, kind, seq, payload
    FROM events ORDER BY session_id, kind, seq DESC;
DROP TABLE events;
CREATE VIEW events (session_id, seq, turn, kind, payload) AS
SELECT r.session_id, r.first_seq + e.ordinality - 1, r.turn, e.value ->> 0,
       substring(r.payloads FROM (e.value ->> 1)::int + 1 FOR (e.value ->> 2)::int)
FROM event_runs AS r, jsonb_array_elements(r.entries::jsonb) WITH ORDINALITY AS e;
"""

_V3_LEASES = """
-- Who drives each conversation (one owner across replicas): see store/_leases.py.
CREATE TABLE session_leases (
    session_id TEXT PRIMARY KEY NOT NULL,
    owner      TEXT NOT NULL,
    epoch      BIGINT NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL,
    address    TEXT
);
"""

_V4_CREATOR_UID = """
-- The uid of the client that created a session (session_access = "creator"); see _schema.py.
ALTER TABLE sessions ADD COLUMN creator_uid BIGINT;
"""

PG_MIGRATIONS: Final[list[str]] = [_V1_INITIAL, _V2_EVENT_RUNS, _V3_LEASES, _V4_CREATOR_UID]
"""``PG_MIGRATIONS[i]`` upgrades schema version ``i`` to ``i + 1``."""

assert len(PG_MIGRATIONS) == len(MIGRATIONS) == SCHEMA_VERSION

_LOCK_KEY: Final = 0x616370_70726F78  # "acp" "prox": the advisory lock of migrations


async def migrate_pg(conn: Any) -> None:
    """Bring the database up to `SCHEMA_VERSION`, one transaction per migration.

    Args:
        conn: An asyncpg connection with no open transaction.

    Raises:
        SchemaVersionError: The database is newer than this code.
        StoreError: A migration failed; the database stays at the last good version.
    """
    import asyncpg  # the PostgreSQL driver is only imported where PostgreSQL is used

    while True:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS acp_proxy_schema (version INTEGER NOT NULL)"
            )
            version = await conn.fetchval("SELECT max(version) FROM acp_proxy_schema") or 0
            if version > SCHEMA_VERSION:
                raise SchemaVersionError(
                    f"database schema version {version} is newer than this acp-proxy supports "
                    f"({SCHEMA_VERSION}); upgrade acp-proxy"
                )
            if version == SCHEMA_VERSION:
                return
            try:
                await conn.execute(PG_MIGRATIONS[version])
            except asyncpg.PostgresError as exc:
                raise StoreError(
                    f"schema migration from version {version} to {version + 1} failed: {exc}"
                ) from exc
            await conn.execute("DELETE FROM acp_proxy_schema")
            await conn.execute("INSERT INTO acp_proxy_schema (version) VALUES ($1)", version + 1)
