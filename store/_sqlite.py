"""SQLite implementation of `SessionStore` (aiosqlite, WAL, one group-committing writer).

Writes: `SqliteStore.commit` queues its ops as one batch and waits. A single writer task
takes every batch queued at that moment, applies them inside one ``BEGIN IMMEDIATE``
transaction (each batch inside its own savepoint, so a failing batch is rolled back alone),
commits once and then wakes every waiter. WAL with ``synchronous=NORMAL`` makes a committed
transaction survive the process being killed (not necessarily a power loss).

Reads use a second connection and see everything committed so far.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, NamedTuple

import aiosqlite
import anyio
from msgspec import UNSET
from msgspec.structs import astuple

from ._records import (
    AppendEvent,
    DeleteSession,
    FinishTurn,
    PutSession,
    SessionRecord,
    StartTurn,
    StoreError,
    TurnRecord,
    UpdateSession,
    WriteOp,
)
from ._schema import migrate

__all__ = ["QUEUE_SIZE", "PendingCommit", "SqliteStore", "StoreStatistics", "open_store"]

QUEUE_SIZE = 10_000
"""How many `SqliteStore.commit` batches may wait for the writer before callers block."""

_PRAGMAS = (
    "PRAGMA busy_timeout = 5000",
    "PRAGMA synchronous = NORMAL",
    "PRAGMA foreign_keys = ON",
)

_SESSION_COLUMNS = ", ".join(SessionRecord.__struct_fields__)
_TURN_COLUMNS = ", ".join(TurnRecord.__struct_fields__)

_PUT_SESSION = (
    f"INSERT INTO sessions ({_SESSION_COLUMNS}) "
    f"VALUES ({', '.join('?' * len(SessionRecord.__struct_fields__))}) "
    "ON CONFLICT (id) DO UPDATE SET "
    + ", ".join(f"{name} = excluded.{name}" for name in SessionRecord.__struct_fields__[1:])
)  # An upsert, not INSERT OR REPLACE: REPLACE deletes the row and cascades to its events.

# Columns `UpdateSession` may change besides updated_at (field name == column name).
_UPDATABLE_SESSION_COLUMNS = (
    "upstream_session_id",
    "modes",
    "config_options",
    "title",
    "state",
    "additional_directories",
    "mcp_servers",
)

_APPEND_EVENT = "INSERT INTO events (session_id, seq, turn, kind, payload) VALUES (?, ?, ?, ?, ?)"
_START_TURN = (
    "INSERT INTO turns (session_id, seq, started_at, prompt, outcome) "
    "VALUES (?, ?, ?, ?, 'running')"
)
_FINISH_TURN = (
    "UPDATE turns SET ended_at = ?, stop_reason = ?, outcome = ?, timings = ?, usage = ?, "
    "restore_path = ? WHERE session_id = ? AND seq = ?"
)
_DELETE_SESSION = (
    "DELETE FROM events WHERE session_id = ?",
    "DELETE FROM turns WHERE session_id = ?",
    "DELETE FROM sessions WHERE id = ?",
)


class StoreStatistics(NamedTuple):
    """Counters of a `SqliteStore` since it was opened.

    Attributes:
        transactions: Transactions committed by the writer.
        batches_committed: `SqliteStore.commit` calls whose ops were committed.
        batches_failed: `SqliteStore.commit` calls that raised `StoreError`.
        ops_committed: Write ops committed.
    """

    transactions: int
    batches_committed: int
    batches_failed: int
    ops_committed: int


class _Batch:
    """The ops of one `SqliteStore.commit` call and how to tell its caller they are done."""

    __slots__ = ("done", "error", "ops")

    def __init__(self, ops: tuple[WriteOp, ...]) -> None:
        self.ops = ops
        self.done = anyio.Event()
        self.error: StoreError | None = None

    def fail(self, message: str, cause: BaseException | None = None) -> None:
        """Record the first failure of this batch."""
        if self.error is None:
            self.error = StoreError(message)
            self.error.__cause__ = cause


PendingCommit = _Batch
"""Ops queued by `SqliteStore.submit`, not yet known to be committed."""


class SqliteStore:
    """A `SessionStore` on one SQLite file. Create it with `open_store`."""

    def __init__(self, path: Path, write: aiosqlite.Connection, read: aiosqlite.Connection) -> None:
        """Wrap two open connections; `open_store` runs the writer and closes them.

        Args:
            path: The database file.
            write: Connection used only by the writer task (autocommit mode).
            read: Connection used only for reads (``query_only``).
        """
        self.path = path
        self._write = write
        self._read = read
        self._send, self._receive = anyio.create_memory_object_stream[_Batch](QUEUE_SIZE)
        self._writer_scope = anyio.CancelScope(shield=True)
        self._writer_done = anyio.Event()
        self._transactions = 0
        self._batches_committed = 0
        self._batches_failed = 0
        self._ops_committed = 0

    # -- writes ---------------------------------------------------------------------------

    async def commit(self, ops: Sequence[WriteOp]) -> None:
        """Apply ``ops`` atomically and in order; return once they are committed.

        Batches from concurrent calls are committed in the order they were queued. If the
        caller is cancelled after queueing, the ops are still committed.

        Args:
            ops: The write operations; an empty sequence returns at once.

        Raises:
            StoreError: ``ops`` were not committed: an op failed, the transaction failed or
                the store is closed (only if the store's close timeout interrupted a
                running COMMIT can the ops have been committed anyway).
        """
        if not ops:
            return
        batch = _Batch(tuple(ops))
        try:
            # Queue before any checkpoint: callers allocate sequence numbers synchronously
            # and rely on the store committing in the order they called.
            try:
                self._send.send_nowait(batch)
            except anyio.WouldBlock:
                await self._send.send(batch)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            raise StoreError(f"store {self.path} is closed; nothing committed") from None
        await self.wait_committed(batch)

    def submit(self, ops: Sequence[WriteOp]) -> PendingCommit:
        """Queue ``ops`` now, without waiting; :meth:`wait_committed` waits for them.

        For a caller that must act before the commit lands but keep its place in the commit
        order (the proxy forwards a prompt while its turn row is being written).

        Raises:
            StoreError: the store is closed, or so far behind that its queue is full.
        """
        batch = _Batch(tuple(ops))
        try:
            self._send.send_nowait(batch)
        except anyio.WouldBlock:
            raise StoreError(
                f"store {self.path} has {QUEUE_SIZE} commits queued; nothing queued"
            ) from None
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            raise StoreError(f"store {self.path} is closed; nothing committed") from None
        return batch

    async def wait_committed(self, pending: PendingCommit) -> None:
        """Wait until a :meth:`submit` ted batch is committed.

        Raises:
            StoreError: it was not committed.
        """
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error

    def statistics(self) -> StoreStatistics:
        """Return the writer's counters."""
        return StoreStatistics(
            transactions=self._transactions,
            batches_committed=self._batches_committed,
            batches_failed=self._batches_failed,
            ops_committed=self._ops_committed,
        )

    async def _run_writer(self) -> None:
        """Commit queued batches in groups until the send side is closed and drained."""
        try:
            with self._writer_scope:
                async for batch in self._receive:
                    await self._commit_group([batch, *self._take_queued()])
        finally:
            # Only reached early when the shutdown timeout cancelled us: fail the rest.
            for batch in self._take_queued():
                batch.fail(f"store {self.path} closed before the commit finished")
                batch.done.set()
            self._receive.close()
            self._writer_done.set()

    def _take_queued(self) -> list[_Batch]:
        """Return every batch queued right now without waiting."""
        batches: list[_Batch] = []
        while True:
            try:
                batches.append(self._receive.receive_nowait())
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                return batches

    async def _commit_group(self, group: list[_Batch]) -> None:
        """Run ``group`` in one transaction and wake its waiters.

        The whole transaction runs as one call on the connection's thread: one hop from the
        event loop per group, instead of one per statement (7 for a prompt, measured as 40 %
        of the proxy's busy time with 100 conversations). aiosqlite has no public API to run
        a function on its thread; ``_execute`` is what its own methods use (the version is
        pinned in pyproject.toml and every store test goes through this path).
        """
        db = self._write
        try:
            committed = await db._execute(_commit_group_sync, db._conn, group)
        except BaseException:
            for batch in group:
                batch.fail(f"store {self.path} closed while committing; outcome unknown")
            raise
        else:
            self._transactions += committed
        finally:
            for batch in group:
                if batch.error is None:
                    self._batches_committed += 1
                    self._ops_committed += len(batch.ops)
                else:
                    self._batches_failed += 1
            for batch in group:
                batch.done.set()

    async def _shutdown(self, grace: float) -> None:
        """Commit everything queued, then stop the writer (cancelled after ``grace`` s)."""
        with anyio.move_on_after(grace, shield=True):
            self._send.close()
            await self._writer_done.wait()
        self._writer_scope.cancel()

    # -- reads ----------------------------------------------------------------------------

    async def _fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return list(await self._read.execute_fetchall(sql, params))

    async def get_session(self, session_id: str) -> SessionRecord | None:
        """Return the session, or None if it does not exist."""
        rows = await self._fetchall(
            f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE id = ?", (session_id,)
        )
        return SessionRecord(*rows[0]) if rows else None

    async def list_sessions(
        self, *, cwd: str | None = None, cursor: str | None = None, limit: int = 50
    ) -> tuple[list[SessionRecord], str | None]:
        """Return one page of sessions ordered by ``updated_at`` descending, then ``id``.

        Args:
            cwd: Only sessions with exactly this working directory.
            cursor: The cursor returned with the previous page, None for the first page.
            limit: Maximum number of sessions in the page (at least 1).

        Returns:
            The page and the cursor of the next page (None when this is the last page).

        Raises:
            ValueError: ``limit`` is below 1 or ``cursor`` is malformed.
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        where: list[str] = []
        params: list[Any] = []
        if cwd is not None:
            where.append("cwd = ?")
            params.append(cwd)
        if cursor is not None:
            updated_at, last_id = _decode_cursor(cursor)
            where.append("(updated_at < ? OR (updated_at = ? AND id > ?))")
            params += [updated_at, updated_at, last_id]
        sql = f"SELECT {_SESSION_COLUMNS} FROM sessions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY updated_at DESC, id LIMIT ?"
        params.append(limit + 1)
        rows = await self._fetchall(sql, params)
        records = [SessionRecord(*row) for row in rows[:limit]]
        next_cursor = _encode_cursor(records[-1]) if len(rows) > limit else None
        return records, next_cursor

    async def event_payloads(self, session_id: str, *, upto_seq: int | None = None) -> list[bytes]:
        """Return the raw ``session/update`` payloads of a session in ``seq`` order.

        Args:
            session_id: The session.
            upto_seq: Only events with ``seq <= upto_seq``; None for all.
        """
        if upto_seq is None:
            sql = "SELECT payload FROM events WHERE session_id = ? ORDER BY seq"
            rows = await self._fetchall(sql, (session_id,))
        else:
            sql = "SELECT payload FROM events WHERE session_id = ? AND seq <= ? ORDER BY seq"
            rows = await self._fetchall(sql, (session_id, upto_seq))
        return [row[0] for row in rows]

    async def event_page(
        self, session_id: str, *, after_seq: int, upto_seq: int, limit: int
    ) -> list[tuple[int, bytes]]:
        """Up to ``limit`` ``(seq, payload)`` pairs with ``after_seq < seq <= upto_seq``.

        Replays read in pages: a page at a time lives in memory, and the event loop serves
        other sessions between pages.
        """
        sql = (
            "SELECT seq, payload FROM events WHERE session_id = ? AND seq > ? AND seq <= ? "
            "ORDER BY seq LIMIT ?"
        )
        rows = await self._fetchall(sql, (session_id, after_seq, upto_seq, limit))
        return [(int(row[0]), row[1]) for row in rows]

    async def last_events_of_kinds(self, session_id: str, kinds: Sequence[str]) -> dict[str, bytes]:
        """The payload of the latest event of each of ``kinds`` that the session has."""
        marks = ", ".join("?" * len(kinds))
        sql = (
            f"SELECT kind, payload, max(seq) FROM events WHERE session_id = ? AND kind IN ({marks})"
            " GROUP BY kind"
        )
        rows = await self._fetchall(sql, (session_id, *kinds))
        return {row[0]: row[1] for row in rows}

    async def last_event_seq(self, session_id: str) -> int:
        """Return the highest event ``seq`` of a session, 0 if it has none."""
        sql = "SELECT seq FROM events WHERE session_id = ? ORDER BY seq DESC LIMIT 1"
        rows = await self._fetchall(sql, (session_id,))
        return int(rows[0][0]) if rows else 0

    async def turns(self, session_id: str) -> list[TurnRecord]:
        """Return the turns of a session in ``seq`` order."""
        sql = f"SELECT {_TURN_COLUMNS} FROM turns WHERE session_id = ? ORDER BY seq"
        return [TurnRecord(*row) for row in await self._fetchall(sql, (session_id,))]

    async def last_turn_seq(self, session_id: str) -> int:
        """Return the highest turn ``seq`` of a session, 0 if it has none."""
        sql = "SELECT seq FROM turns WHERE session_id = ? ORDER BY seq DESC LIMIT 1"
        rows = await self._fetchall(sql, (session_id,))
        return int(rows[0][0]) if rows else 0

    async def sessions_updated_before(self, cutoff: float, *, limit: int = 1000) -> list[str]:
        """Ids of sessions last updated before ``cutoff`` (epoch seconds), oldest first."""
        sql = "SELECT id FROM sessions WHERE updated_at < ? ORDER BY updated_at, id LIMIT ?"
        return [row[0] for row in await self._fetchall(sql, (cutoff, limit))]

    async def count_sessions(self) -> int:
        """Return the number of stored sessions."""
        rows = await self._fetchall("SELECT count(*) FROM sessions")
        return int(rows[0][0])


def _describe(op: WriteOp) -> str:
    """Name an op for an error message."""
    if isinstance(op, PutSession):
        return f"PutSession of session {op.record.id!r}"
    session_id = getattr(op, "session_id", None)
    seq = getattr(op, "seq", None)
    where = f" of session {session_id!r}" + (f" seq {seq}" if seq is not None else "")
    return f"{type(op).__name__}{where}"


def _encode_cursor(last: SessionRecord) -> str:
    return base64.urlsafe_b64encode(f"{last.updated_at!r}|{last.id}".encode()).decode("ascii")


def _decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        updated_at, last_id = base64.urlsafe_b64decode(cursor).decode().split("|", 1)
        return float(updated_at), last_id
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValueError(f"invalid list_sessions cursor: {cursor!r}") from None


async def _connect(path: Path, stack: AsyncExitStack, close_timeout: float) -> aiosqlite.Connection:
    """Open a connection in autocommit mode, set the common pragmas, close it with ``stack``."""
    db = await aiosqlite.connect(path, isolation_level=None)
    stack.push_async_callback(_close, db, close_timeout)
    for pragma in _PRAGMAS:
        await db.execute(pragma)
    return db


async def _close(db: aiosqlite.Connection, grace: float) -> None:
    with anyio.move_on_after(grace, shield=True):
        await db.close()


@asynccontextmanager
async def open_store(
    path: str | os.PathLike[str], *, close_timeout: float = 30.0
) -> AsyncIterator[SqliteStore]:
    """Open (creating and migrating if needed) the store at ``path`` and run its writer.

    On exit everything still queued is committed, then the writer stops and both
    connections close, even when the surrounding scope is cancelled.

    Args:
        path: The SQLite database file; its parent directory is created if missing.
        close_timeout: Upper bound in seconds for draining the queue and for closing each
            connection on exit; batches not committed by then fail with `StoreError`.

    Yields:
        The open store.

    Raises:
        SchemaVersionError: The database was written by a newer acp-proxy.
        StoreError: The database could not be opened or migrated.
    """
    db_path = Path(path)
    db_path.parent.mkdir(parents=True, exist_ok=True)
    async with AsyncExitStack() as stack:
        write = await _connect(db_path, stack, close_timeout)
        rows = list(await write.execute_fetchall("PRAGMA journal_mode = WAL"))
        journal_mode = rows[0][0]
        if str(journal_mode).lower() != "wal":
            raise StoreError(f"cannot use WAL journal mode on {db_path} (got {journal_mode!r})")
        await migrate(write)
        read = await _connect(db_path, stack, close_timeout)
        await read.execute("PRAGMA query_only = ON")
        store = SqliteStore(db_path, write, read)
        error: BaseException | None = None
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(store._run_writer)
                try:
                    yield store
                finally:
                    await store._shutdown(close_timeout)
        except BaseExceptionGroup as group:
            if len(group.exceptions) != 1:
                raise
            error = group.exceptions[0]
        if error is not None:
            # The writer does not raise, so this is the caller's own exception: give it back
            # unwrapped instead of inside the task group's ExceptionGroup.
            raise error


def _commit_group_sync(conn: sqlite3.Connection, group: list[_Batch]) -> bool:
    """One transaction for ``group``; a failing batch is rolled back alone (savepoint).

    Runs on the connection's thread. Returns whether the transaction committed.
    """
    try:
        conn.execute("BEGIN IMMEDIATE")
        for batch in group:
            conn.execute("SAVEPOINT batch")
            try:
                _apply_sync(conn, batch.ops)
            except Exception as exc:
                if not conn.in_transaction:
                    raise  # SQLite aborted the whole transaction: the group fails.
                conn.execute("ROLLBACK TO batch")
                conn.execute("RELEASE batch")
                batch.fail(f"commit of {len(batch.ops)} op(s) failed, nothing applied: {exc}", exc)
            else:
                conn.execute("RELEASE batch")
        conn.execute("COMMIT")
    except Exception as exc:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):  # The transaction is gone either way.
                conn.execute("ROLLBACK")
        for batch in group:
            batch.fail(f"transaction of {len(group)} commit call(s) failed: {exc}", exc)
        return False
    return True


def _apply_sync(conn: sqlite3.Connection, ops: Sequence[WriteOp]) -> None:
    """Execute ``ops`` in order, inserting runs of `AppendEvent` with one executemany."""
    run: list[AppendEvent] = []
    for op in ops:
        if isinstance(op, AppendEvent):
            run.append(op)
            continue
        if run:
            _append_events_sync(conn, run)
            run = []
        try:
            _apply_one_sync(conn, op)
        except (sqlite3.Error, TypeError) as exc:
            raise StoreError(f"{_describe(op)} failed: {exc}") from exc
    if run:
        _append_events_sync(conn, run)


def _append_events_sync(conn: sqlite3.Connection, run: list[AppendEvent]) -> None:
    rows = [(op.session_id, op.seq, op.turn, op.kind, op.payload) for op in run]
    try:
        conn.executemany(_APPEND_EVENT, rows)
    except sqlite3.Error as exc:
        first, last = run[0], run[-1]
        raise StoreError(
            f"AppendEvent of {len(run)} event(s) (session {first.session_id!r} "
            f"seq {first.seq}, ..., session {last.session_id!r} seq {last.seq}) failed: {exc}"
        ) from exc


def _apply_one_sync(db: sqlite3.Connection, op: WriteOp) -> None:
    match op:
        case PutSession(record=record):
            db.execute(_PUT_SESSION, astuple(record))
        case UpdateSession():
            assignments = ["updated_at = ?"]
            params: list[Any] = [op.updated_at]
            for column in _UPDATABLE_SESSION_COLUMNS:
                value = getattr(op, column)
                if value is not UNSET:
                    assignments.append(f"{column} = ?")
                    params.append(value)
            params.append(op.session_id)
            db.execute(f"UPDATE sessions SET {', '.join(assignments)} WHERE id = ?", params)
        case StartTurn():
            db.execute(_START_TURN, (op.session_id, op.seq, op.started_at, op.prompt))
        case FinishTurn():
            params = [op.ended_at, op.stop_reason, op.outcome, op.timings, op.usage]
            params += [op.restore_path, op.session_id, op.seq]
            db.execute(_FINISH_TURN, params)
        case DeleteSession():
            for sql in _DELETE_SESSION:
                db.execute(sql, (op.session_id,))
        case _:
            raise TypeError(f"not a store write op: {op!r}")
