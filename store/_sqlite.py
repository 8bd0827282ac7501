"""SQLite implementation of `SessionStore` (aiosqlite reads, WAL, one writer).

Writes: a batch of ops (`SqliteStore.submit` / `SqliteStore.commit`) is committed atomically,
in call order. When the writer is idle the batch is committed at once, on the calling (event
loop) thread, by a plain ``sqlite3`` connection: in WAL mode with ``synchronous=NORMAL`` a small
transaction is a few local ``write()`` calls and no fsync (~30 µs), where a hop to a worker
thread and back costs ~0.5 ms of a streamed token's latency (measured, BENCHMARKS.md §5).
Batches submitted later in the same turn of the event loop (under load: many conversations'
batches) queue, and the writer task commits them together, one transaction, at the start of
the next turn. A batch that could block (more than `INLINE_MAX_OPS` events, a `DeleteSession`,
or a database another process holds locked) is committed by the writer task on a worker
thread, and what is submitted meanwhile queues behind it. A group is one ``BEGIN IMMEDIATE``
transaction, each batch in its own savepoint (a failing batch is rolled back alone). A
committed transaction survives the process being killed (not necessarily a power loss).

Events are stored in runs (schema version 2, ``_schema.py``): the consecutive events of one
session and turn that a batch appends (`AppendEvents`, or consecutive `AppendEvent` ops) are one
``event_runs`` row, so the cost of a row is paid per agent read, not per streamed token;
``latest_events`` keeps each kind's newest event, and the ``events`` view shows one row per
event to plain SQL.

Checkpoints fsync, so they never run on the event loop: automatic checkpointing is off on the
write connection and a checkpointer task runs ``wal_checkpoint(PASSIVE)`` on its own connection
(on aiosqlite's thread) after every `CHECKPOINT_BYTES` of writes. A passive checkpoint cannot
catch up with a writer that never pauses, so once `WAL_LIMIT_BYTES` are written without a
complete checkpoint, the next group is committed on the worker thread followed by a checkpoint
on the write connection itself (what SQLite's automatic checkpoint would do, off the loop).
Reads use another aiosqlite connection and see everything committed so far.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import os
import sqlite3
import time
import urllib.parse
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, Final, NamedTuple

import aiosqlite
import anyio
import anyio.lowlevel
import msgspec
from msgspec import UNSET
from msgspec.structs import astuple

from ._leases import Lease, LeaseBook, StaleLeaseError, require_book
from ._records import (
    UPDATABLE_SESSION_COLUMNS,
    AppendEvent,
    AppendEvents,
    DeleteSession,
    FinishTurn,
    PendingCommit,
    PutSession,
    SessionRecord,
    StartTurn,
    StoreError,
    TurnRecord,
    UpdateSession,
    WriteOp,
    append_event,
    run_row,
)
from ._schema import SCHEMA_VERSION, migrate
from ._sqlite_leases import (
    acquire_lease_sqlite,
    check_fences_sync,
    get_lease_sqlite,
    release_lease_sqlite,
    renew_leases_sqlite,
)

__all__ = [
    "CHECKPOINT_BYTES",
    "INLINE_MAX_OPS",
    "QUEUE_SIZE",
    "WAL_LIMIT_BYTES",
    "SqliteStore",
    "StoreStatistics",
    "open_sqlite_store",
    "open_store",
]

QUEUE_SIZE: Final = 10_000
"""How many batches may wait for the writer before `SqliteStore.commit` callers block."""
INLINE_MAX_OPS: Final = 1024
"""Batches of more ops (events) than this are committed on a worker thread, not on the loop."""
CHECKPOINT_BYTES: Final = 4 << 20
"""Roughly this much written (payload bytes) between two background WAL checkpoints."""
WAL_LIMIT_BYTES: Final = 4 * CHECKPOINT_BYTES
"""Written without a complete checkpoint past this, writes pause for one (WAL size bound)."""
READ_MMAP_BYTES: Final = 256 << 20
"""How much of the database file reads may memory-map."""
BUSY_TIMEOUT_MS: Final = 5000
"""How long a commit on the worker thread waits for a lock another process holds."""

_PRAGMAS = (
    f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}",
    "PRAGMA synchronous = NORMAL",
    "PRAGMA foreign_keys = ON",
)
_OP_BYTES: Final = 256  #: what a non-event op is counted as towards the next checkpoint

_SESSION_COLUMNS = ", ".join(SessionRecord.__struct_fields__)
_TURN_COLUMNS = ", ".join(TurnRecord.__struct_fields__)

_PUT_SESSION = (
    f"INSERT INTO sessions ({_SESSION_COLUMNS}) "
    f"VALUES ({', '.join('?' * len(SessionRecord.__struct_fields__))}) "
    "ON CONFLICT (id) DO UPDATE SET "
    + ", ".join(f"{name} = excluded.{name}" for name in SessionRecord.__struct_fields__[1:])
)  # An upsert, not INSERT OR REPLACE: REPLACE deletes the row and cascades to its events.


_INSERT_RUN = (
    "INSERT INTO event_runs (session_id, last_seq, first_seq, turn, entries, payloads) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
_UPSERT_LATEST = (
    "INSERT INTO latest_events (session_id, kind, seq, payload) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (session_id, kind) DO UPDATE SET seq = excluded.seq, payload = excluded.payload "
    "WHERE excluded.seq > latest_events.seq"
)
_RUNS_PAGE = (
    "SELECT first_seq, entries, payloads FROM event_runs "
    "WHERE session_id = ? AND last_seq > ? AND first_seq <= ? ORDER BY last_seq LIMIT ?"
)
_entries_decoder = msgspec.json.Decoder(list[tuple[str, int, int]])
_START_TURN = (
    "INSERT INTO turns (session_id, seq, started_at, prompt, outcome) "
    "VALUES (?, ?, ?, ?, 'running')"
)
_FINISH_TURN = (
    "UPDATE turns SET ended_at = ?, stop_reason = ?, outcome = ?, timings = ?, usage = ?, "
    "restore_path = ? WHERE session_id = ? AND seq = ?"
)
_DELETE_SESSION = (
    "DELETE FROM event_runs WHERE session_id = ?",
    "DELETE FROM latest_events WHERE session_id = ?",
    "DELETE FROM turns WHERE session_id = ?",
    "DELETE FROM sessions WHERE id = ?",
    "DELETE FROM session_leases WHERE session_id = ?",
)


class StoreStatistics(NamedTuple):
    """Counters of a `SqliteStore` since it was opened.

    Attributes:
        batches_submitted: Batches accepted by `SqliteStore.submit` (committed, failed, or
            still waiting).
        transactions: Transactions committed.
        batches_committed: Batches (`SqliteStore.submit` / `SqliteStore.commit` calls) whose
            ops were committed.
        batches_failed: Batches that failed with `StoreError`.
        ops_committed: Write ops committed.
        inline_transactions: Of ``transactions``, those run on the event loop thread.
        checkpoints: Background WAL checkpoints run.
    """

    batches_submitted: int
    transactions: int
    batches_committed: int
    batches_failed: int
    ops_committed: int
    inline_transactions: int
    checkpoints: int


class _Batch:
    """The ops of one `SqliteStore.submit` call and its outcome."""

    __slots__ = ("_event", "error", "finished", "ops")

    def __init__(self, ops: tuple[WriteOp, ...]) -> None:
        self.ops = ops
        self.finished = False
        self.error: StoreError | None = None
        self._event: anyio.Event | None = None  # created only if somebody waits

    def fail(self, message: str, cause: BaseException | None = None) -> None:
        """Record the first failure of this batch."""
        if self.error is None:
            if isinstance(cause, StaleLeaseError):
                self.error = cause  # the caller tells a lost lease from a failed write
                return
            self.error = StoreError(message)
            self.error.__cause__ = cause

    def finish(self) -> None:
        """The outcome is known (committed, or ``error``): wake the waiter."""
        self.finished = True
        if self._event is not None:
            self._event.set()

    async def wait(self) -> None:
        """Return once :meth:`finish` was called."""
        if not self.finished:
            if self._event is None:
                self._event = anyio.Event()
            await self._event.wait()


class SqliteStore:
    """A `SessionStore` on one SQLite file. Create it with `open_store`."""

    #: `submit` commits at once when the writer is idle (almost always before a prompt goes
    #: out): the proxy forwards a prompt without waiting for its turn's commit.
    prompt_waits_for_commit: Final = False

    def __init__(
        self,
        path: Path,
        write: sqlite3.Connection,
        read: aiosqlite.Connection,
        checkpoint: aiosqlite.Connection,
        leases: LeaseBook | None = None,
    ) -> None:
        """Wrap open connections; `open_store` runs the writer and closes them.

        Args:
            path: The database file.
            write: Plain connection used only by the writer (autocommit mode, opened with
                ``check_same_thread=False``: the loop thread and one worker thread take turns).
            read: Connection used only for reads (``query_only``).
            checkpoint: Connection used for background WAL checkpoints and leases.
            leases: With an owner id: leases on, every write fenced (``_leases.py``).
        """
        self.path = path
        self.leases = leases
        self._write = write
        self._read = read
        self._checkpoint = checkpoint
        self._queue: deque[_Batch] = deque()
        self._wakeup = anyio.Event()  # set: the queue has batches, or the store is closing
        self._space = anyio.Event()  # set: the writer took the queue
        self._closing = False
        self._writing = False  # a group is being committed on the worker thread
        self._committed_this_tick = False  # an inline commit ran in this event loop turn
        try:  # the store runs on asyncio (aiosqlite); elsewhere every idle commit is inline
            self._call_soon: Callable[[Callable[[], None]], object] | None = (
                asyncio.get_running_loop().call_soon
            )
        except RuntimeError:
            self._call_soon = None
        self._writer_scope = anyio.CancelScope(shield=True)
        self._writer_done = anyio.Event()
        self._checkpoint_wanted = anyio.Event()
        self._unchecked_bytes = 0  # written since the last checkpoint was asked for
        self._wal_bytes = 0  # written since the last complete checkpoint
        self._transactions = 0
        self._inline_transactions = 0
        self._batches_submitted = 0
        self._batches_committed = 0
        self._batches_failed = 0
        self._ops_committed = 0
        self._checkpoints = 0
        #: Called with the seconds each transaction took (inline, or on the worker thread
        #: including the hop): the proxy's ``acp_proxy_store_commit_seconds``.
        self.commit_observer: Callable[[float], None] | None = None

    # -- writes ---------------------------------------------------------------------------

    async def commit(self, ops: Sequence[WriteOp]) -> None:
        """Apply ``ops`` atomically and in order; return once they are committed.

        Batches are committed in the order they were submitted. If the caller is cancelled
        after this call queued them, the ops are still committed.

        Args:
            ops: The write operations; an empty sequence returns at once.

        Raises:
            StoreError: ``ops`` were not committed: an op failed, the transaction failed or
                the store is closed (only if the store's close timeout interrupted a
                running COMMIT can the ops have been committed anyway).
        """
        await anyio.lowlevel.checkpoint()  # a commit on the loop thread must not starve it
        if not ops:
            return
        while len(self._queue) >= QUEUE_SIZE and not self._closing:
            self._space = anyio.Event()
            await self._space.wait()
        await self.wait_committed(self.submit(ops))

    def submit(self, ops: Sequence[WriteOp]) -> _Batch:
        """Commit ``ops`` now if the writer is idle, else queue them; never waits.

        The caller keeps its place in the commit order either way (the proxy forwards a
        prompt while its turn row is being written, and delivers an agent's output once
        :meth:`wait_committed` returns).

        Raises:
            StoreError: the store is closed, or so far behind that its queue is full.
        """
        batch = _Batch(tuple(ops))
        if self._closing:
            raise StoreError(f"store {self.path} is closed; nothing committed")
        if len(self._queue) >= QUEUE_SIZE:
            raise StoreError(f"store {self.path} has {QUEUE_SIZE} commits queued; nothing queued")
        self._batches_submitted += 1
        idle = (
            not self._queue
            and not self._writing
            and not self._committed_this_tick
            and self._wal_bytes < WAL_LIMIT_BYTES
        )
        if idle and _may_run_inline(batch.ops) and self._commit_now([batch]):
            return batch
        self._queue.append(batch)
        self._wakeup.set()
        return batch

    async def wait_committed(self, pending: PendingCommit) -> None:
        """Wait until a :meth:`submit` ted batch is committed.

        Raises:
            StoreError: it was not committed.
        """
        await pending.wait()
        if pending.error is not None:
            raise pending.error

    def statistics(self) -> StoreStatistics:
        """Return the writer's counters."""
        return StoreStatistics(
            batches_submitted=self._batches_submitted,
            transactions=self._transactions,
            batches_committed=self._batches_committed,
            batches_failed=self._batches_failed,
            ops_committed=self._ops_committed,
            inline_transactions=self._inline_transactions,
            checkpoints=self._checkpoints,
        )

    def _commit_now(self, group: list[_Batch]) -> bool:
        """Commit ``group`` on this thread unless the database is locked (then False)."""
        started = time.perf_counter()
        outcome = _commit_group_sync(self._write, group, wait=False, book=self.leases)
        if outcome is None:
            return False
        self._observe(time.perf_counter() - started)
        self._inline_transactions += outcome.committed
        self._finish(group, outcome)
        self._mark_tick()
        return True

    def _mark_tick(self) -> None:
        """Under load, many batches are submitted in one turn of the event loop (100 prompts
        arriving together): after one inline commit, the rest of this turn's batches queue
        and the writer commits them as one transaction at the start of the next turn."""
        if self._committed_this_tick or self._call_soon is None:
            return
        self._committed_this_tick = True
        self._call_soon(self._end_tick)

    def _end_tick(self) -> None:
        self._committed_this_tick = False

    def _finish(self, group: list[_Batch], outcome: _Outcome) -> None:
        self._transactions += outcome.committed
        self._unchecked_bytes += outcome.bytes_written
        self._wal_bytes += outcome.bytes_written
        if outcome.checkpointed:
            self._wal_bytes = 0
            self._checkpoints += 1
        if self._unchecked_bytes >= CHECKPOINT_BYTES:
            self._unchecked_bytes = 0
            self._checkpoint_wanted.set()
        if self.leases is not None:
            self.leases.failed([batch.error for batch in group])
        for batch in group:
            if batch.error is None:
                if self.leases is not None:
                    self.leases.committed(batch.ops)
                self._batches_committed += 1
                self._ops_committed += len(batch.ops)
            else:
                self._batches_failed += 1
            batch.finish()

    async def _run_writer(self) -> None:
        """Commit queued batches in groups until the store closes and the queue is empty."""
        try:
            with self._writer_scope:
                while self._queue or not self._closing:
                    if not self._queue:
                        self._wakeup = anyio.Event()
                        await self._wakeup.wait()
                        continue
                    group = list(self._queue)
                    self._queue.clear()
                    self._space.set()
                    await self._commit_group(group)
        finally:
            # Only reached early when the shutdown timeout cancelled us: fail the rest.
            while self._queue:
                batch = self._queue.popleft()
                batch.fail(f"store {self.path} closed before the commit finished")
                batch.finish()
            self._space.set()
            self._writer_done.set()

    async def _commit_group(self, group: list[_Batch]) -> None:
        """Commit ``group`` in one transaction: on this thread if it cannot block, else on a
        worker thread (the loop goes on; later batches queue behind this group)."""
        checkpoint = self._wal_bytes >= WAL_LIMIT_BYTES
        inline = not checkpoint and _may_run_inline([op for batch in group for op in batch.ops])
        if inline and self._commit_now(group):
            return
        self._writing = True
        started = time.perf_counter()
        try:
            outcome = await anyio.to_thread.run_sync(
                _commit_group_sync, self._write, group, True, checkpoint, self.leases
            )
        except BaseException:
            for batch in group:
                batch.fail(f"store {self.path} closed while committing; outcome unknown")
                batch.finish()
            raise
        finally:
            self._writing = False
        assert outcome is not None  # wait=True never gives up on a lock
        self._observe(time.perf_counter() - started)
        self._finish(group, outcome)

    def _observe(self, seconds: float) -> None:
        if self.commit_observer is not None:
            self.commit_observer(seconds)

    async def _run_checkpointer(self) -> None:
        """Run a PASSIVE checkpoint (never blocks writers) whenever the writer asks for one."""
        while True:
            await self._checkpoint_wanted.wait()
            self._checkpoint_wanted = anyio.Event()
            transactions = self._transactions
            try:
                rows = await self._checkpoint.execute_fetchall("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error:
                continue  # e.g. the database is busy: the next checkpoint catches up
            self._checkpoints += 1
            if _checkpoint_complete(list(rows)) and transactions == self._transactions:
                # Nothing was committed meanwhile: the whole WAL is in the database file, the
                # next write starts it over.
                self._wal_bytes = 0

    async def _shutdown(self, grace: float) -> None:
        """Commit everything queued, then stop the writer (cancelled after ``grace`` s)."""
        with anyio.move_on_after(grace, shield=True):
            self._closing = True
            self._wakeup.set()
            await self._writer_done.wait()
        self._writer_scope.cancel()

    # -- leases (``_leases.py``; run on the checkpoint connection, beside the writer) ----------

    async def acquire_lease(self, session_id: str) -> Lease:
        """Take (or keep) the lease of ``session_id`` for this store's owner.

        Raises:
            LeaseHeldElsewhere: another owner's lease has not expired.
            StoreError: the store was opened without an owner.
        """
        return await acquire_lease_sqlite(self._checkpoint, require_book(self.leases), session_id)

    async def renew_leases(self) -> set[str]:
        """Extend every lease held; forget (and report) those lost. Returns the lost ids."""
        return await renew_leases_sqlite(self._checkpoint, require_book(self.leases))

    async def release_lease(self, session_id: str) -> None:
        """Let another owner take the session at once (its epoch is kept)."""
        await release_lease_sqlite(self._checkpoint, require_book(self.leases), session_id)

    async def get_lease(self, session_id: str) -> Lease | None:
        """The session's lease row, expired or not; None if it never had one."""
        return await get_lease_sqlite(self._read, session_id)

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
        self,
        *,
        cwd: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
        creator_uid: int | None = None,
    ) -> tuple[list[SessionRecord], str | None]:
        """Return one page of sessions ordered by ``updated_at`` descending, then ``id``.

        Args:
            cwd: Only sessions with exactly this working directory.
            creator_uid: Only sessions this uid created.
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
        if creator_uid is not None:
            where.append("creator_uid = ?")
            params.append(creator_uid)
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
        upto = _MAX_SEQ if upto_seq is None else upto_seq
        rows = await self._fetchall(_RUNS_PAGE, (session_id, 0, upto, -1))
        return [payload for _seq, payload in _unpack_runs(rows, 0, upto, None)]

    async def event_page(
        self, session_id: str, *, after_seq: int, upto_seq: int, limit: int
    ) -> list[tuple[int, bytes]]:
        """Up to ``limit`` ``(seq, payload)`` pairs with ``after_seq < seq <= upto_seq``.

        Replays read in pages: a page at a time lives in memory, and the event loop serves
        other sessions between pages.
        """
        # A session's seqs are contiguous, so the runs overlapping (after, after + limit] hold
        # the page: one query reads what the page needs, not ``limit`` whole runs.
        window = min(upto_seq, after_seq + limit)
        rows = await self._fetchall(_RUNS_PAGE, (session_id, after_seq, window, limit))
        if not rows and window < upto_seq:
            # A gap in the seqs (a batch that failed to commit): go on from the next run.
            rows = await self._fetchall(_RUNS_PAGE, (session_id, after_seq, upto_seq, 1))
        return _unpack_runs(rows, after_seq, upto_seq, limit)

    async def last_events_of_kinds(self, session_id: str, kinds: Sequence[str]) -> dict[str, bytes]:
        """The payload of the latest event of each of ``kinds`` that the session has."""
        marks = ", ".join("?" * len(kinds))
        sql = f"SELECT kind, payload FROM latest_events WHERE session_id = ? AND kind IN ({marks})"
        rows = await self._fetchall(sql, (session_id, *kinds))
        return {row[0]: row[1] for row in rows}

    async def last_event_seq(self, session_id: str) -> int:
        """Return the highest event ``seq`` of a session, 0 if it has none."""
        sql = "SELECT max(last_seq) FROM event_runs WHERE session_id = ?"
        rows = await self._fetchall(sql, (session_id,))
        return int(rows[0][0] or 0)

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


_MAX_SEQ = (1 << 63) - 1


def _unpack_runs(
    rows: list[Any], after_seq: int, upto_seq: int, limit: int | None
) -> list[tuple[int, bytes]]:
    """The ``(seq, payload)`` pairs of runs with ``after_seq < seq <= upto_seq``, in order."""
    out: list[tuple[int, bytes]] = []
    for first_seq, entries, payloads in rows:
        seq = first_seq
        for _kind, start, size in _entries_decoder.decode(entries):
            if after_seq < seq <= upto_seq:
                out.append((seq, payloads[start : start + size]))
                if len(out) == limit:
                    return out
            seq += 1
    return out


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


async def _connect(
    path: Path, stack: AsyncExitStack, close_timeout: float, *, uri: str | None = None
) -> aiosqlite.Connection:
    """Open a connection in autocommit mode, set the common pragmas, close it with ``stack``
    (``uri``: a read-only store's URI instead of ``path``)."""
    if uri is None:
        db = await aiosqlite.connect(path, isolation_level=None)
    else:
        db = await aiosqlite.connect(uri, isolation_level=None, uri=True)
    stack.push_async_callback(_close, db, close_timeout)
    for pragma in _PRAGMAS if uri is None else ():
        await db.execute(pragma)
    return db


def _open_read_only(path: Path) -> tuple[sqlite3.Connection, str]:
    """Open an existing database without writing anything (blocking: run on a thread).

    ``mode=ro`` reads a WAL database when its ``-shm`` exists or can be created; in a
    directory this user cannot write, with no ``-shm`` (no proxy has it open), only
    ``immutable=1`` can: nothing writes it then, so nothing is missed.
    """
    if not path.is_file():
        raise StoreError(f"cannot open the store {path}: no such file")
    quoted = urllib.parse.quote(str(path.resolve()))
    last: sqlite3.Error | None = None
    for uri in (f"file:{quoted}?mode=ro", f"file:{quoted}?mode=ro&immutable=1"):
        try:
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            last = exc
            continue
        try:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        except sqlite3.Error as exc:
            conn.close()
            last = exc
            continue
        if version != SCHEMA_VERSION:
            conn.close()
            raise StoreError(
                f"cannot read the store {path} read-only: its schema is version {version}, "
                f"this acp-proxy reads {SCHEMA_VERSION}; open it once with write access"
            )
        return conn, uri
    assert last is not None
    raise last


async def _close(db: aiosqlite.Connection, grace: float) -> None:
    with anyio.move_on_after(grace, shield=True):
        await db.close()


def _open_writer(path: Path) -> sqlite3.Connection:
    """Open, switch to WAL and migrate the write connection (blocking: run on a thread)."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        for pragma in _PRAGMAS:
            conn.execute(pragma)
        journal_mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(journal_mode).lower() != "wal":
            raise StoreError(f"cannot use WAL journal mode on {path} (got {journal_mode!r})")
        migrate(conn)
        # From here on: commits on the event loop must not wait for other processes' locks
        # (they go to the worker thread, which waits) nor run a checkpoint (it fsyncs).
        conn.execute("PRAGMA busy_timeout = 0")
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        conn.execute(f"PRAGMA journal_size_limit = {WAL_LIMIT_BYTES}")  # WAL file size on reset
    except BaseException:
        conn.close()
        raise
    return conn


async def _close_writer(conn: sqlite3.Connection, grace: float) -> None:
    # The last connection to close checkpoints the WAL (fsync): off the event loop.
    with anyio.move_on_after(grace, shield=True):
        await anyio.to_thread.run_sync(conn.close)


@asynccontextmanager
async def open_sqlite_store(
    path: str | os.PathLike[str],
    *,
    close_timeout: float = 30.0,
    read_only: bool = False,
    owner: str | None = None,
    lease_ttl_s: float = 10.0,
    address: str | None = None,
) -> AsyncIterator[SqliteStore]:
    """Open (creating and migrating if needed) the store at ``path`` and run its writer.

    On exit everything still queued is committed, then the writer stops and the
    connections close, even when the surrounding scope is cancelled.

    Args:
        path: The SQLite database file; its parent directory is created if missing.
        close_timeout: Upper bound in seconds for draining the queue and for closing each
            connection on exit; batches not committed by then fail with `StoreError`.
        read_only: Open an existing database for reading only (a file or directory this
            user cannot write): nothing is created or migrated, and every write fails with
            `StoreError`.
        owner: This process's id: leases on (``_leases.py``), every write fenced.
        lease_ttl_s: How long a lease lasts unless renewed (every third of it).
        address: Advertised with each lease.

    Yields:
        The open store.

    Raises:
        SchemaVersionError: The database was written by a newer acp-proxy.
        StoreError: The database could not be opened or migrated.
    """
    db_path = Path(path)
    if not read_only:
        db_path.parent.mkdir(parents=True, exist_ok=True)
    async with AsyncExitStack() as stack:
        uri: str | None = None
        try:
            if read_only:
                write, uri = await anyio.to_thread.run_sync(_open_read_only, db_path)
            else:
                write = await anyio.to_thread.run_sync(_open_writer, db_path)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the store {db_path}: {exc}") from exc
        stack.push_async_callback(_close_writer, write, close_timeout)
        read = await _connect(db_path, stack, close_timeout, uri=uri)
        await read.execute("PRAGMA query_only = ON")
        # Replays read through a memory map, not a pread() per page: 100 000 events load in
        # ~0.1 s instead of ~0.17 s. The mapped pages are the kernel's file cache (RssFile).
        await read.execute(f"PRAGMA mmap_size = {READ_MMAP_BYTES}")
        checkpoint = await _connect(db_path, stack, close_timeout, uri=uri)
        leases = LeaseBook(owner, lease_ttl_s, address) if owner else None
        store = SqliteStore(db_path, write, read, checkpoint, leases)
        error: BaseException | None = None
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(store._run_writer)
                tg.start_soon(store._run_checkpointer)
                if leases is not None:
                    tg.start_soon(_run_renewer, store, leases.ttl_s)
                try:
                    yield store
                finally:
                    await store._shutdown(close_timeout)
                    tg.cancel_scope.cancel()  # the checkpointer
        except BaseExceptionGroup as group:
            if len(group.exceptions) != 1:
                raise
            error = group.exceptions[0]
        if error is not None:
            # The writer does not raise, so this is the caller's own exception: give it back
            # unwrapped instead of inside the task group's ExceptionGroup.
            raise error


async def _run_renewer(store: SqliteStore, ttl_s: float) -> None:
    """Renew the held leases every third of their ttl (until the store closes)."""
    while True:
        await anyio.sleep(ttl_s / 3)
        with contextlib.suppress(Exception):  # the next round retries; expiry is the bound
            await store.renew_leases()


open_store = open_sqlite_store
"""The SQLite store (``store.open_store`` also opens PostgreSQL URLs)."""


def _may_run_inline(ops: Sequence[WriteOp]) -> bool:
    """Whether committing ``ops`` is quick enough for the event loop thread."""
    if len(ops) > INLINE_MAX_OPS:
        return False
    weight = 0
    for op in ops:
        if isinstance(op, AppendEvents):
            weight += len(op.payloads)
        elif isinstance(op, DeleteSession):
            return False
        else:
            weight += 1
    return weight <= INLINE_MAX_OPS


class _Outcome(NamedTuple):
    committed: bool  #: the transaction committed (some batches may still have failed)
    bytes_written: int  #: about how much was written, for checkpoint pacing
    checkpointed: bool = False  #: a complete checkpoint followed the commit


def _checkpoint_complete(rows: list[Any]) -> bool:
    """``PRAGMA wal_checkpoint`` answered (busy, frames in the WAL, frames checkpointed)."""
    return bool(rows) and rows[0][0] == 0 and rows[0][1] == rows[0][2]


def _commit_group_sync(
    conn: sqlite3.Connection,
    group: list[_Batch],
    wait: bool,
    checkpoint: bool = False,
    book: LeaseBook | None = None,
) -> _Outcome | None:
    """One transaction for ``group``; a failing batch is rolled back alone (savepoint).

    With ``wait`` false (the event loop thread) a database locked by another process returns
    None at once, nothing done; with ``wait`` true (a worker thread) the lock is waited for
    up to `BUSY_TIMEOUT_MS`. ``checkpoint`` (worker thread only) checkpoints the WAL after.
    """
    written = 0
    try:
        if wait:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if not wait and exc.sqlite_errorcode == sqlite3.SQLITE_BUSY:
                return None
            raise
        if len(group) == 1:  # no savepoint needed: the batch is the transaction
            written = _apply_sync(conn, group[0].ops, book)
        else:
            for batch in group:
                conn.execute("SAVEPOINT batch")
                try:
                    written += _apply_sync(conn, batch.ops, book)
                except Exception as exc:
                    if not conn.in_transaction:
                        raise  # SQLite aborted the whole transaction: the group fails.
                    conn.execute("ROLLBACK TO batch")
                    conn.execute("RELEASE batch")
                    batch.fail(
                        f"commit of {len(batch.ops)} op(s) failed, nothing applied: {exc}", exc
                    )
                else:
                    conn.execute("RELEASE batch")
        conn.execute("COMMIT")
    except Exception as exc:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):  # The transaction is gone either way.
                conn.execute("ROLLBACK")
        for batch in group:
            if len(group) == 1 and isinstance(exc, StoreError):
                batch.fail(f"commit of {len(batch.ops)} op(s) failed, nothing applied: {exc}", exc)
            else:
                batch.fail(f"transaction of {len(group)} commit call(s) failed: {exc}", exc)
        return _Outcome(False, 0)
    finally:
        if wait:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("PRAGMA busy_timeout = 0")
    checkpointed = False
    if checkpoint:
        with contextlib.suppress(sqlite3.Error):  # the next attempt catches up
            rows = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            checkpointed = _checkpoint_complete(rows)
    return _Outcome(True, written, checkpointed)


def _apply_sync(
    conn: sqlite3.Connection, ops: Sequence[WriteOp], book: LeaseBook | None = None
) -> int:
    """Execute ``ops`` in order; events are stored as runs, inserted with one executemany.
    With a lease ``book``, first check that this store still holds the epoch of every session
    ``ops`` write (the transaction holds the write lock: no takeover can slip in).

    Returns about how many bytes it wrote.

    Raises:
        StaleLeaseError: a fence failed; nothing of ``ops`` was applied.
    """
    if book is not None:
        check_fences_sync(conn, book, ops)
    runs: list[AppendEvents] = []
    written = 0
    for op in ops:
        if isinstance(op, AppendEvent):  # runs holds copies only: extending them is safe
            append_event(runs, op.session_id, op.seq, op.turn, op.kind, op.payload)
            continue
        if isinstance(op, AppendEvents):  # copied: the caller's lists stay as they are
            runs.append(
                AppendEvents(op.session_id, op.first_seq, op.turn, [*op.kinds], [*op.payloads])
            )
            continue
        if runs:
            written += _append_runs_sync(conn, runs)
            runs = []
        try:
            _apply_one_sync(conn, op)
        except (sqlite3.Error, TypeError) as exc:
            raise StoreError(f"{_describe(op)} failed: {exc}") from exc
        written += _OP_BYTES
    if runs:
        written += _append_runs_sync(conn, runs)
    return written


def _append_runs_sync(conn: sqlite3.Connection, runs: list[AppendEvents]) -> int:
    rows = []
    latest = []
    for run in runs:
        rows.append(run_row(run))
        # The last index of each kind in the run (later ones overwrite earlier ones).
        for kind, index in dict(zip(run.kinds, range(len(run.payloads)), strict=True)).items():
            latest.append((run.session_id, kind, run.first_seq + index, run.payloads[index]))
    try:
        conn.executemany(_INSERT_RUN, rows)
        conn.executemany(_UPSERT_LATEST, latest)
    except sqlite3.Error as exc:
        first, last = runs[0], runs[-1]
        events = sum(len(run.payloads) for run in runs)
        raise StoreError(
            f"AppendEvent of {events} event(s) (session {first.session_id!r} "
            f"seq {first.first_seq}, ..., session {last.session_id!r} "
            f"seq {last.first_seq + len(last.payloads) - 1}) failed: {exc}"
        ) from exc
    return sum(len(row[5]) + len(row[4]) for row in rows)


def _apply_one_sync(db: sqlite3.Connection, op: WriteOp) -> None:
    match op:
        case PutSession(record=record):
            db.execute(_PUT_SESSION, astuple(record))
        case UpdateSession():
            assignments = ["updated_at = ?"]
            params: list[Any] = [op.updated_at]
            for column in UPDATABLE_SESSION_COLUMNS:
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
