"""PostgreSQL implementation of `SessionStore` (asyncpg, a connection pool, one writer task).

Chosen driver: asyncpg. It speaks the binary protocol, so a ``BYTEA`` parameter is sent and
read back as the very ``bytes`` object's content (the replay stays byte for byte), it has its
own pool and caches prepared statements per connection.

Writes: `PostgresStore.submit` queues a batch and wakes the writer task, which commits every
batch queued so far in one transaction (a group commit): while one transaction is on its way
to the server, the next group gathers, so a streamed answer costs a round trip per group,
not per token. Events of a group are inserted as runs (``event_runs``, as in SQLite) with one
``INSERT ... SELECT FROM unnest(...)``. If a group fails, its batches are retried one
transaction each, so a failing batch fails alone. A batch is finished (its deliveries run)
only once its transaction committed.

With leases on (``owner`` given to `open_postgres_store`), the transaction first reads the
lease row of every session it writes, ``FOR SHARE`` (a takeover waits for it, and it sees a
takeover that committed first); a batch whose epoch is stale fails with `StaleLeaseError`.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

import anyio
import msgspec

from ._leases import Lease, LeaseBook, StaleLeaseError, op_session_id, require_book
from ._pg_leases import acquire_lease_pg, get_lease_pg, release_lease_pg, renew_leases_pg
from ._pg_schema import migrate_pg
from ._pg_writes import apply_ops
from ._records import (
    PendingCommit,
    SessionRecord,
    StoreError,
    TurnRecord,
    WriteOp,
)
from ._sqlite import (
    QUEUE_SIZE,
    StoreStatistics,
    _Batch,
    _decode_cursor,
    _encode_cursor,
    _unpack_runs,
)

__all__ = [
    "DEFAULT_SETTINGS",
    "IDLE_IN_TRANSACTION_MS",
    "LOCK_TIMEOUT_MS",
    "POOL_MAX_SIZE",
    "PostgresStore",
    "is_postgres_url",
    "open_postgres_store",
]

POOL_MAX_SIZE: Final = 8
"""Connections per replica: one for the writer, the rest for replays, lists and leases."""

IDLE_IN_TRANSACTION_MS: Final = 60_000
"""Without leases: a transaction left idle this long (a stopped proxy) is ended by the server."""
LOCK_TIMEOUT_MS: Final = 5_000
"""A statement waits at most this long for a row lock another connection holds."""

DEFAULT_SETTINGS: Final = {"synchronous_commit": "off"}
"""The proxy's durability class on SQLite (WAL, ``synchronous = NORMAL``): a commit is
acknowledged once it is in the database's log, not yet flushed to disk. Everything a client
received survives the proxy being killed (commit-before-deliver holds: delivery waits for the
COMMIT); what the server had not flushed is lost if the database server or its machine
crashes. A lost lease change fails closed: the fenced writes of its holder are refused. Put
``?synchronous_commit=on`` in the URL for a flush per commit (group commits share it; it costs
a continued turn a few ms: BENCHMARKS.md section 12)."""

_SESSION_COLUMNS = ", ".join(SessionRecord.__struct_fields__)
_TURN_COLUMNS = ", ".join(TurnRecord.__struct_fields__)
_RUNS_PAGE = (
    "SELECT first_seq, entries, payloads FROM event_runs "
    "WHERE session_id = $1 AND last_seq > $2 AND first_seq <= $3 ORDER BY last_seq LIMIT $4"
)
_FENCE = (
    "SELECT session_id, owner, epoch FROM session_leases "
    "WHERE session_id = ANY($1::text[]) FOR SHARE"
)
_json_encode = msgspec.json.encode


def is_postgres_url(target: str) -> bool:
    """Whether ``--db`` names a PostgreSQL database rather than a SQLite file."""
    return target.startswith(("postgresql://", "postgres://"))


class PostgresStore:
    """A `SessionStore` on a PostgreSQL database. Create it with `open_postgres_store`."""

    #: Nothing is committed within `submit` (an asyncio driver, a network round trip): the
    #: proxy waits for a turn's first commit before it forwards the prompt, so an agent never
    #: runs a prompt that the store does not hold (the kill -9 trials check it).
    prompt_waits_for_commit: Final = True

    def __init__(self, url: str, pool: Any, leases: LeaseBook | None) -> None:
        self.url = url
        self.path = _redact(url)  # what error messages and logs name
        self.leases = leases
        self._pool = pool
        self._queue: deque[_Batch] = deque()
        self._wakeup = anyio.Event()
        self._space = anyio.Event()
        self._closing = False
        self._writer_done = anyio.Event()
        self._writer_scope = anyio.CancelScope(shield=True)
        self._transactions = 0
        self._batches_submitted = 0
        self._batches_committed = 0
        self._batches_failed = 0
        self._ops_committed = 0
        #: called with each group commit's duration in seconds (the metrics)
        self.commit_observer: Callable[[float], None] | None = None

    # -- writes ---------------------------------------------------------------------------

    async def commit(self, ops: Sequence[WriteOp]) -> None:
        """Apply ``ops`` atomically and in order; return once they are committed.

        Raises:
            StoreError: ``ops`` were not committed (`StaleLeaseError` when the lease of a
                session they write is not held any more).
        """
        await anyio.lowlevel.checkpoint()
        if not ops:
            return
        while len(self._queue) >= QUEUE_SIZE and not self._closing:
            self._space = anyio.Event()
            await self._space.wait()
        await self.wait_committed(self.submit(ops))

    def submit(self, ops: Sequence[WriteOp]) -> PendingCommit:
        """Queue ``ops`` for the writer's next transaction; never waits.

        Raises:
            StoreError: the store is closed, or its queue is full.
        """
        if self._closing:
            raise StoreError(f"store {self.path} is closed; nothing committed")
        if len(self._queue) >= QUEUE_SIZE:
            raise StoreError(f"store {self.path} has {QUEUE_SIZE} commits queued; nothing queued")
        batch = _Batch(tuple(ops))
        self._batches_submitted += 1
        self._queue.append(batch)
        self._wakeup.set()
        return batch

    async def wait_committed(self, pending: PendingCommit) -> None:
        """Wait until a submitted batch is committed.

        Raises:
            StoreError: it was not committed.
        """
        await pending.wait()
        if pending.error is not None:
            raise pending.error

    def statistics(self) -> StoreStatistics:
        """Return the writer's counters (no inline commits or checkpoints here)."""
        return StoreStatistics(
            batches_submitted=self._batches_submitted,
            transactions=self._transactions,
            batches_committed=self._batches_committed,
            batches_failed=self._batches_failed,
            ops_committed=self._ops_committed,
            inline_transactions=0,
            checkpoints=0,
        )

    async def _run_writer(self) -> None:
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
                    try:
                        started = time.perf_counter()
                        await self._commit_group(group)
                        if self.commit_observer is not None:
                            self.commit_observer(time.perf_counter() - started)
                    except BaseException:
                        for batch in group:
                            if not batch.finished:
                                batch.fail(f"store {self.path} closed while committing")
                                batch.finish()
                        raise
        finally:
            while self._queue:
                batch = self._queue.popleft()
                batch.fail(f"store {self.path} closed before the commit finished")
                batch.finish()
            self._space.set()
            self._writer_done.set()

    async def _commit_group(self, group: list[_Batch]) -> None:
        """One transaction for ``group``; if it fails, one transaction per batch."""
        import asyncpg

        live = [batch for batch in group if self._fences_known(batch)]
        if live:
            try:
                await self._transaction(live)
            except (asyncpg.PostgresError, asyncpg.InterfaceError, StoreError, OSError) as exc:
                if len(live) == 1:
                    live[0].fail(_failure(live[0], exc), exc)
                else:
                    for batch in live:
                        try:
                            await self._transaction([batch])
                        except (
                            asyncpg.PostgresError,
                            asyncpg.InterfaceError,
                            StoreError,
                            OSError,
                        ) as one:
                            batch.fail(_failure(batch, one), one)
                        else:
                            self._transactions += 1
            else:
                self._transactions += 1
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

    def _fences_known(self, batch: _Batch) -> bool:
        """Fail a batch writing a session whose lease is not held (before any I/O)."""
        if self.leases is None:
            return True
        try:
            self.leases.fences(batch.ops)
        except StaleLeaseError as exc:
            batch.fail(str(exc), exc)
            return False
        return True

    async def _transaction(self, group: list[_Batch]) -> None:
        """Commit ``group`` as one transaction (raises on failure; nothing applied then)."""
        async with self._pool.acquire() as conn, conn.transaction():
            batches = group
            if self.leases is not None:
                batches = await self._check_fences(conn, group)
            ops = [op for batch in batches for op in batch.ops]
            if ops:
                await apply_ops(conn, ops)

    async def _check_fences(self, conn: Any, group: list[_Batch]) -> list[_Batch]:
        """Read the lease rows of the sessions ``group`` writes; fail stale batches."""
        assert self.leases is not None
        book = self.leases
        sids = sorted({op_session_id(op) for batch in group for op in batch.ops})
        rows = await conn.fetch(_FENCE, sids)
        found = {row[0]: (row[1], row[2]) for row in rows}
        kept = []
        for batch in group:
            try:
                for sid, epoch in book.fences(batch.ops).items():
                    book.check(sid, epoch, found.get(sid))
            except StaleLeaseError as exc:
                batch.fail(str(exc), exc)
            else:
                kept.append(batch)
        return kept

    async def _shutdown(self, grace: float) -> None:
        with anyio.move_on_after(grace, shield=True):
            self._closing = True
            self._wakeup.set()
            await self._writer_done.wait()
        self._writer_scope.cancel()

    # -- leases ---------------------------------------------------------------------------

    async def acquire_lease(self, session_id: str) -> Lease:
        """Take (or keep) the lease of ``session_id`` for this replica.

        Returns:
            The lease held now; its epoch is what this replica's writes carry.

        Raises:
            LeaseHeldElsewhere: another owner's lease has not expired.
            StoreError: the store has no lease book (opened without ``owner``).
        """
        return await acquire_lease_pg(self._pool, require_book(self.leases), session_id)

    async def renew_leases(self) -> set[str]:
        """Extend every lease held that is still wanted (`LeaseBook.keep`; the others are
        released); forget (and report) those lost meanwhile. Returns their ids."""
        return await renew_leases_pg(self._pool, require_book(self.leases))

    async def release_lease(self, session_id: str) -> None:
        """Let another replica take the session at once (its epoch is kept)."""
        await release_lease_pg(self._pool, require_book(self.leases), session_id)

    async def get_lease(self, session_id: str) -> Lease | None:
        """The session's lease row, expired or not; None if it never had one."""
        return await get_lease_pg(self._pool, session_id)

    # -- reads ----------------------------------------------------------------------------

    async def get_session(self, session_id: str) -> SessionRecord | None:
        """Return the session, or None if it does not exist."""
        row = await self._pool.fetchrow(
            f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE id = $1", session_id
        )
        return SessionRecord(*row) if row is not None else None

    async def list_sessions(
        self,
        *,
        cwd: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
        creator_uid: int | None = None,
    ) -> tuple[list[SessionRecord], str | None]:
        """Return one page of sessions ordered by ``updated_at`` descending, then ``id``.

        Raises:
            ValueError: ``limit`` is below 1 or ``cursor`` is malformed.
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        where: list[str] = []
        params: list[Any] = []
        if cwd is not None:
            params.append(cwd)
            where.append(f"cwd = ${len(params)}")
        if creator_uid is not None:
            params.append(creator_uid)
            where.append(f"creator_uid = ${len(params)}")
        if cursor is not None:
            updated_at, last_id = _decode_cursor(cursor)
            params += [updated_at, last_id]
            n = len(params)
            where.append(f"(updated_at < ${n - 1} OR (updated_at = ${n - 1} AND id > ${n}))")
        sql = f"SELECT {_SESSION_COLUMNS} FROM sessions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        params.append(limit + 1)
        sql += f" ORDER BY updated_at DESC, id LIMIT ${len(params)}"
        rows = await self._pool.fetch(sql, *params)
        records = [SessionRecord(*row) for row in rows[:limit]]
        next_cursor = _encode_cursor(records[-1]) if len(rows) > limit else None
        return records, next_cursor

    async def event_payloads(self, session_id: str, *, upto_seq: int | None = None) -> list[bytes]:
        """Return the raw ``session/update`` payloads of a session in ``seq`` order."""
        upto = _MAX_SEQ if upto_seq is None else upto_seq
        rows = await self._runs(session_id, 0, upto, None)
        return [payload for _seq, payload in _unpack_runs(rows, 0, upto, None)]

    async def event_page(
        self, session_id: str, *, after_seq: int, upto_seq: int, limit: int
    ) -> list[tuple[int, bytes]]:
        """Up to ``limit`` ``(seq, payload)`` pairs with ``after_seq < seq <= upto_seq``."""
        window = min(upto_seq, after_seq + limit)
        rows = await self._runs(session_id, after_seq, window, limit)
        if not rows and window < upto_seq:
            rows = await self._runs(session_id, after_seq, upto_seq, 1)
        return _unpack_runs(rows, after_seq, upto_seq, limit)

    async def _runs(self, session_id: str, after: int, upto: int, limit: int | None) -> list[Any]:
        rows = await self._pool.fetch(_RUNS_PAGE, session_id, after, upto, limit)
        return [(row[0], row[1].encode(), row[2]) for row in rows]

    async def last_events_of_kinds(self, session_id: str, kinds: Sequence[str]) -> dict[str, bytes]:
        """The payload of the latest event of each of ``kinds`` that the session has."""
        rows = await self._pool.fetch(
            "SELECT kind, payload FROM latest_events WHERE session_id = $1 AND kind = ANY($2)",
            session_id,
            list(kinds),
        )
        return {row[0]: row[1] for row in rows}

    async def last_event_seq(self, session_id: str) -> int:
        """Return the highest event ``seq`` of a session, 0 if it has none."""
        sql = "SELECT max(last_seq) FROM event_runs WHERE session_id = $1"
        return int(await self._pool.fetchval(sql, session_id) or 0)

    async def turns(self, session_id: str) -> list[TurnRecord]:
        """Return the turns of a session in ``seq`` order."""
        sql = f"SELECT {_TURN_COLUMNS} FROM turns WHERE session_id = $1 ORDER BY seq"
        return [TurnRecord(*row) for row in await self._pool.fetch(sql, session_id)]

    async def last_turn_seq(self, session_id: str) -> int:
        """Return the highest turn ``seq`` of a session, 0 if it has none."""
        sql = "SELECT max(seq) FROM turns WHERE session_id = $1"
        return int(await self._pool.fetchval(sql, session_id) or 0)

    async def sessions_updated_before(self, cutoff: float, *, limit: int = 1000) -> list[str]:
        """Ids of sessions last updated before ``cutoff`` (epoch seconds), oldest first."""
        sql = "SELECT id FROM sessions WHERE updated_at < $1 ORDER BY updated_at, id LIMIT $2"
        return [row[0] for row in await self._pool.fetch(sql, cutoff, limit)]

    async def count_sessions(self) -> int:
        """Return the number of stored sessions."""
        return int(await self._pool.fetchval("SELECT count(*) FROM sessions"))


_MAX_SEQ: Final = (1 << 63) - 1


def _redact(url: str) -> str:
    """The URL without its password, for messages."""
    head, sep, tail = url.partition("://")
    if "@" in tail:
        creds, _, rest = tail.rpartition("@")
        user = creds.split(":", 1)[0]
        return f"{head}{sep}{user}@{rest}"
    return url


def _failure(batch: _Batch, exc: BaseException) -> str:
    if isinstance(exc, StaleLeaseError):
        return str(exc)
    return f"commit of {len(batch.ops)} op(s) failed, nothing applied: {exc}"


async def _run_renewer(store: PostgresStore) -> None:
    """Renew the held leases every third of their ttl (until the store closes)."""
    book = require_book(store.leases)
    while True:
        await anyio.sleep(book.ttl_s / 3)
        with contextlib.suppress(Exception):  # the next round retries; expiry is the bound
            await store.renew_leases()


@asynccontextmanager
async def open_postgres_store(
    url: str,
    *,
    close_timeout: float = 30.0,
    owner: str | None = None,
    lease_ttl_s: float = 10.0,
    address: str | None = None,
) -> AsyncIterator[PostgresStore]:
    """Connect to (and migrate) the PostgreSQL database at ``url``; run the writer.

    Args:
        url: ``postgresql://USER[:PASSWORD]@HOST[:PORT]/DB[?host=/socket/dir&...]``.
        close_timeout: Upper bound in seconds for draining the queue on exit.
        owner: This replica's id: leases on (every write fenced by its lease's epoch).
        lease_ttl_s: How long a lease lasts unless renewed.
        address: Advertised with each lease, for routers (``--advertise``).

    Raises:
        SchemaVersionError: The database was written by a newer acp-proxy.
        StoreError: The database could not be reached or migrated.
    """
    import asyncpg

    # A replica stopped (SIGSTOP, a VM pause) in the middle of a transaction holds its row
    # locks, the lease row's among them: a takeover would wait for it. The server ends such a
    # transaction after this long idle, well within a lease, and a lease change waits at most
    # `LOCK_TIMEOUT_MS` for a lock before it fails (and is retried by the caller).
    idle_ms = max(500, int(lease_ttl_s * 500)) if owner else IDLE_IN_TRANSACTION_MS
    settings = {
        "idle_in_transaction_session_timeout": str(idle_ms),
        "lock_timeout": str(LOCK_TIMEOUT_MS),
        **DEFAULT_SETTINGS,
    }
    for name in parse_qs(urlsplit(url).query):  # what the URL says wins
        settings.pop(name, None)
    try:
        pool = await asyncpg.create_pool(
            url, min_size=1, max_size=POOL_MAX_SIZE, server_settings=settings
        )
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, ValueError) as exc:
        raise StoreError(f"cannot open the store {_redact(url)}: {exc}") from exc
    try:
        async with pool.acquire() as conn:
            await migrate_pg(conn)
        leases = LeaseBook(owner, lease_ttl_s, address) if owner else None
        store = PostgresStore(url, pool, leases)
        error: BaseException | None = None
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(store._run_writer)
                if leases is not None:
                    tg.start_soon(_run_renewer, store)
                try:
                    yield store
                finally:
                    await store._shutdown(close_timeout)
                    tg.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            if len(group.exceptions) != 1:
                raise
            error = group.exceptions[0]
        if error is not None:
            raise error
    finally:
        with anyio.move_on_after(close_timeout, shield=True):
            await pool.close()
