"""Session store: every conversation's sessions, turns and raw event stream.

Open the SQLite implementation with `open_store`; code that only needs the interface
should depend on `SessionStore`.
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
from ._records import (
    SESSION_STATES,
    TURN_OUTCOMES,
    UNSET,
    AppendEvent,
    AppendEvents,
    DeleteSession,
    FinishTurn,
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
    PendingCommit,
    SqliteStore,
    StoreStatistics,
    open_store,
)

__all__ = [
    "CHECKPOINT_BYTES",
    "INLINE_MAX_OPS",
    "MIGRATIONS",
    "QUEUE_SIZE",
    "SCHEMA_VERSION",
    "SESSION_STATES",
    "TURN_OUTCOMES",
    "UNSET",
    "WAL_LIMIT_BYTES",
    "AppendEvent",
    "AppendEvents",
    "DatabaseLock",
    "DeleteSession",
    "FileIdentity",
    "FinishTurn",
    "LockHeld",
    "PendingCommit",
    "PutSession",
    "SchemaVersionError",
    "SessionRecord",
    "SessionStore",
    "SqliteStore",
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
    "make_private_dirs",
    "open_store",
    "secure_database_files",
]
