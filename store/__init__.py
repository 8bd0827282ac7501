"""Session store: every conversation's sessions, turns and raw event stream.

`open_store` opens SQLite (a file path) or PostgreSQL (a ``postgresql://`` URL); code that
only needs the interface should depend on `SessionStore`. Leases (one owner per session
across replicas) are in ``_leases.py``.
"""

from __future__ import annotations

from ._files import (
    DatabaseLock,
    FileIdentity,
    LockHeld,
    check_writable,
    file_identity,
    make_private_dirs,
    secure_database_files,
)
from ._leases import (
    DEFAULT_LEASE_TTL_S,
    Lease,
    LeaseBook,
    LeaseHeldElsewhere,
    StaleLeaseError,
)
from ._open import AnyStore, open_store
from ._pg_schema import PG_MIGRATIONS
from ._postgres import PostgresStore, is_postgres_url, open_postgres_store
from ._records import (
    SESSION_STATES,
    TURN_OUTCOMES,
    UNSET,
    AppendEvent,
    AppendEvents,
    DeleteSession,
    FinishTurn,
    PendingCommit,
    PutSession,
    SchemaVersionError,
    SessionRecord,
    SessionStore,
    StartTurn,
    StoreError,
    TurnRecord,
    UnsetType,
    UpdateSession,
    WriteOp,
    append_event,
)
from ._schema import MIGRATIONS, SCHEMA_VERSION
from ._sqlite import (
    CHECKPOINT_BYTES,
    INLINE_MAX_OPS,
    QUEUE_SIZE,
    WAL_LIMIT_BYTES,
    SqliteStore,
    StoreStatistics,
    open_sqlite_store,
)

__all__ = [
    "CHECKPOINT_BYTES",
    "DEFAULT_LEASE_TTL_S",
    "INLINE_MAX_OPS",
    "MIGRATIONS",
    "PG_MIGRATIONS",
    "QUEUE_SIZE",
    "SCHEMA_VERSION",
    "SESSION_STATES",
    "TURN_OUTCOMES",
    "UNSET",
    "WAL_LIMIT_BYTES",
    "AnyStore",
    "AppendEvent",
    "AppendEvents",
    "DatabaseLock",
    "DeleteSession",
    "FileIdentity",
    "FinishTurn",
    "Lease",
    "LeaseBook",
    "LeaseHeldElsewhere",
    "LockHeld",
    "PendingCommit",
    "PostgresStore",
    "PutSession",
    "SchemaVersionError",
    "SessionRecord",
    "SessionStore",
    "SqliteStore",
    "StaleLeaseError",
    "StartTurn",
    "StoreError",
    "StoreStatistics",
    "TurnRecord",
    "UnsetType",
    "UpdateSession",
    "WriteOp",
    "append_event",
    "check_writable",
    "file_identity",
    "is_postgres_url",
    "make_private_dirs",
    "open_postgres_store",
    "open_sqlite_store",
    "open_store",
    "secure_database_files",
]
