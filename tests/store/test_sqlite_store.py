"""Tests of the SQLite session store, on real database files."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import sys
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

import store
from store import (
    MIGRATIONS,
    SCHEMA_VERSION,
    AppendEvent,
    AppendEvents,
    DeleteSession,
    PutSession,
    SchemaVersionError,
    SessionRecord,
    SessionStore,
    SqliteStore,
    StartTurn,
    StoreError,
    open_store,
)

pytestmark = pytest.mark.anyio

REPO_ROOT = Path(store.__file__).resolve().parent.parent


def session(session_id: str, *, cwd: str = "/work", updated_at: float = 1.0) -> SessionRecord:
    """A session record with every column set."""
    return SessionRecord(
        id=session_id,
        cwd=cwd,
        agent_profile="opencode",
        mcp_servers=b'[{"name":"fs","command":"mcp-fs","args":[],"env":[]}]',
        additional_directories=b'["/extra"]',
        upstream_session_id=f"up-{session_id}",
        modes=b'{"currentModeId":"code","availableModes":[]}',
        config_options=b"[]",
        title=f"Title {session_id}",
        created_at=0.5,
        updated_at=updated_at,
        state="active",
    )


def event(session_id: str, seq: int, *, turn: int = 1, text: str = "hi") -> AppendEvent:
    """An agent_message_chunk event."""
    update = {"sessionUpdate": "agent_message_chunk", "content": {"type": "text", "text": text}}
    payload = json.dumps({"sessionId": session_id, "update": update}).encode()
    return AppendEvent(session_id, seq, turn, "agent_message_chunk", payload)


def sql_scalar(path: Path, sql: str) -> object:
    """Run one query on a fresh plain sqlite3 connection."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute(sql).fetchone()[0]


async def test_schema_created(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "store.db"
    async with open_store(path) as db:
        assert isinstance(db, SqliteStore)
        assert isinstance(db, SessionStore)
        assert await db.count_sessions() == 0
    assert sql_scalar(path, "PRAGMA user_version") == SCHEMA_VERSION == len(MIGRATIONS)
    assert sql_scalar(path, "PRAGMA journal_mode") == "wal"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert {"sessions", "turns", "events", "sessions_by_updated_at", "sessions_by_cwd"} <= tables


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    message = (
        f"database schema version {SCHEMA_VERSION + 1} is newer than this acp-proxy "
        f"supports \\({SCHEMA_VERSION}\\); upgrade acp-proxy"
    )
    with pytest.raises(SchemaVersionError, match=message):
        async with open_store(path):
            pass
    assert issubclass(SchemaVersionError, StoreError)
    assert sql_scalar(path, "PRAGMA user_version") == SCHEMA_VERSION + 1


async def test_migrates_from_first_released_schema(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.executescript(MIGRATIONS[0])
        conn.execute("PRAGMA user_version = 1")
        # Only columns of schema version 1: this statement must stay valid forever.
        conn.execute(
            "INSERT INTO sessions (id, cwd, agent_profile, mcp_servers, created_at, updated_at,"
            " state) VALUES ('old', '/w', 'default', '[]', 1.0, 2.0, 'closed')"
        )
        conn.execute(
            "INSERT INTO events (session_id, seq, turn, kind, payload)"
            " VALUES ('old', 1, 0, 'plan', X'7B7D')"
        )
        conn.commit()
    with contextlib.closing(sqlite3.connect(path)) as conn:  # what version 1 also held
        conn.execute(
            "INSERT INTO events VALUES ('old', 2, 1, 'agent_message_chunk', ?), "
            "('old', 3, 1, 'plan', ?)",
            (b'{"a":1}', b'{"p":2}'),
        )
        conn.commit()
    async with open_store(path) as db:
        record = await db.get_session("old")
        assert record is not None
        assert (record.cwd, record.created_at, record.updated_at, record.state) == (
            "/w",
            1.0,
            2.0,
            "closed",
        )
        assert await db.event_payloads("old") == [b"{}", b'{"a":1}', b'{"p":2}']
        assert await db.last_event_seq("old") == 3
        assert await db.last_events_of_kinds("old", ["plan"]) == {"plan": b'{"p":2}'}
        with pytest.raises(StoreError, match="already stored"):
            await db.commit([AppendEvent("old", 2, 1, "plan", b"{}")])
        await db.commit([AppendEvent("old", 4, 2, "plan", b"[]")])
        assert await db.event_payloads("old") == [b"{}", b'{"a":1}', b'{"p":2}', b"[]"]
    assert sql_scalar(path, "PRAGMA user_version") == SCHEMA_VERSION


async def test_events_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    odd = (
        '{"sessionId":"s1","update":{"sessionUpdate":"future_kind","x":"Grüße ✓ 漢字 \\u0000"},'
        '"_meta":{"vendor.example/trace":{"id":"abc","n":[1,2.50,3e10]}}}'
    ).encode()
    async with open_store(path) as db:
        assert await db.event_payloads("s1") == []
        assert await db.last_event_seq("s1") == 0
        await db.commit([PutSession(session("s1")), PutSession(session("s2"))])
        await db.commit([AppendEvent("s1", 1, 0, "", odd), event("s1", 2), event("s2", 1)])
        await db.commit([event("s1", seq, text=f"t{seq}") for seq in range(3, 11)])

        payloads = await db.event_payloads("s1")
        assert payloads[0] == odd
        assert all(isinstance(p, bytes) for p in payloads)
        assert payloads[1:] == [event("s1", 2).payload] + [
            event("s1", seq, text=f"t{seq}").payload for seq in range(3, 11)
        ]
        assert await db.event_payloads("s1", upto_seq=4) == payloads[:4]
        assert await db.event_payloads("s1", upto_seq=0) == []
        assert await db.event_payloads("s2") == [event("s2", 1).payload]
        assert await db.last_event_seq("s1") == 10
        assert await db.last_event_seq("s2") == 1
    with contextlib.closing(sqlite3.connect(path)) as conn:
        rows = conn.execute(
            "SELECT seq, turn, kind, typeof(payload) FROM events WHERE session_id = 's1'"
            " ORDER BY seq LIMIT 2"
        ).fetchall()
    assert rows == [(1, 0, "", "blob"), (2, 1, "agent_message_chunk", "blob")]


async def test_event_runs_read_back_as_events(tmp_path: Path) -> None:
    """Runs (AppendEvents), single events and both mixed read back event by event: through
    the API, through the ``events`` view byte for byte, and page by page across runs."""
    path = tmp_path / "store.db"
    payloads = [b'{"n":%d,"pad":"%s"}' % (i, b"x" * (i % 7)) for i in range(1, 41)]
    kinds = ["plan" if i % 5 == 0 else "agent_message_chunk" for i in range(1, 41)]
    async with open_store(path) as db:
        await db.commit([PutSession(session("s1")), PutSession(session("s2"))])
        await db.commit(
            [
                AppendEvents("s1", 1, 1, kinds[:10], payloads[:10]),
                AppendEvent("s1", 11, 1, kinds[10], payloads[10]),  # joins nothing: its own op
                AppendEvents("s2", 1, 1, ["plan"], [b"{}"]),
                AppendEvent("s1", 12, 2, kinds[11], payloads[11]),
                AppendEvent("s1", 13, 2, kinds[12], payloads[12]),  # one run with seq 12
            ]
        )
        await db.commit([AppendEvents("s1", 14, 2, kinds[13:40], payloads[13:40])])
        assert await db.event_payloads("s1") == payloads
        assert await db.event_payloads("s1", upto_seq=12) == payloads[:12]
        assert await db.last_event_seq("s1") == 40
        for limit in (1, 3, 7, 40):
            for start, upto in ((0, 40), (5, 33), (12, 13), (39, 40), (40, 40)):
                seen: list[tuple[int, bytes]] = []
                after = start
                while page := await db.event_page(
                    "s1", after_seq=after, upto_seq=upto, limit=limit
                ):
                    assert len(page) <= limit
                    seen += page
                    after = page[-1][0]
                assert seen == [(seq, payloads[seq - 1]) for seq in range(start + 1, upto + 1)]
        latest = await db.last_events_of_kinds("s1", ["plan", "agent_message_chunk", "nope"])
        assert latest == {"plan": payloads[39], "agent_message_chunk": payloads[38]}
        with pytest.raises(StoreError, match="already stored"):
            await db.commit([AppendEvents("s1", 30, 3, ["k", "k"], [b"1", b"2"])])
        with pytest.raises(StoreError, match=r"1 kind.*2 payload"):
            await db.commit([AppendEvents("s1", 41, 3, ["k"], [b"1", b"2"])])
        assert await db.last_event_seq("s1") == 40
    with contextlib.closing(sqlite3.connect(path)) as conn:
        rows = conn.execute(
            "SELECT seq, turn, kind, payload FROM events WHERE session_id = 's1' ORDER BY seq"
        ).fetchall()
    turns = [1] * 11 + [2] * 29
    assert rows == list(zip(range(1, 41), turns, kinds, payloads, strict=True))


async def test_delete_session_removes_everything(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    async with open_store(path) as db:
        await db.commit([PutSession(session("s1")), PutSession(session("s2"))])
        await db.commit(
            [StartTurn("s1", 1, 1.0, b"[]"), event("s1", 1), event("s1", 2), event("s2", 1)]
        )
        await db.commit([StartTurn("s2", 1, 1.0, b"[]")])
        await db.commit([DeleteSession("s1")])
        assert await db.get_session("s1") is None
        assert await db.event_payloads("s1") == []
        assert await db.turns("s1") == []
        assert await db.count_sessions() == 1
        assert await db.event_payloads("s2") == [event("s2", 1).payload]
        assert len(await db.turns("s2")) == 1
    assert sql_scalar(path, "SELECT count(*) FROM events WHERE session_id = 's1'") == 0
    assert sql_scalar(path, "SELECT count(*) FROM turns WHERE session_id = 's1'") == 0


async def test_idle_writer_commits_on_the_calling_thread(tmp_path: Path) -> None:
    """A small batch submitted to an idle writer is committed before submit returns."""
    path = tmp_path / "store.db"
    async with open_store(path) as db:
        await db.commit([PutSession(session("s1"))])
        await anyio.lowlevel.checkpoint()  # a new turn of the event loop
        before = db.statistics()
        pending = db.submit([event("s1", 1), event("s1", 2)])
        assert pending.finished and pending.error is None
        await db.wait_committed(pending)
        # Visible to another connection at once: it is committed, not just queued.
        assert sql_scalar(path, "SELECT count(*) FROM events") == 2
        stats = db.statistics()
        assert stats.inline_transactions - before.inline_transactions == 1
        # Deleting a session (any number of events) is never done on the loop thread.
        await db.commit([DeleteSession("s1")])
        assert db.statistics().inline_transactions == stats.inline_transactions
        assert await db.get_session("s1") is None


async def test_batches_of_one_loop_turn_after_an_inline_commit_are_grouped(
    tmp_path: Path,
) -> None:
    """Under load (many batches in one turn of the event loop) one transaction takes them."""
    async with open_store(tmp_path / "store.db") as db:
        await db.commit([PutSession(session(f"s{i}")) for i in range(50)])
        await anyio.lowlevel.checkpoint()
        before = db.statistics()
        pending = [db.submit([event(f"s{i}", 1)]) for i in range(50)]
        assert pending[0].finished and not any(p.finished for p in pending[1:])
        for p in pending:
            await db.wait_committed(p)
        stats = db.statistics()
        assert stats.transactions - before.transactions == 2
        assert stats.batches_committed - before.batches_committed == 50
        assert [await db.last_event_seq(f"s{i}") for i in range(50)] == [1] * 50


async def test_a_group_too_big_for_the_loop_goes_to_the_worker_thread(tmp_path: Path) -> None:
    """Batches small enough one by one, but more than INLINE_MAX_OPS events together."""
    async with open_store(tmp_path / "store.db") as db:
        await db.commit([PutSession(session("s1"))])
        await anyio.lowlevel.checkpoint()
        size = store.INLINE_MAX_OPS // 2 + 1
        first = db.submit([event("s1", 1)])  # inline: the rest of this loop turn queues
        pending = [
            db.submit([AppendEvents("s1", 2 + i * size, 1, ["k"] * size, [b"{}"] * size)])
            for i in range(3)
        ]
        assert first.finished and not any(p.finished for p in pending)
        inline_before = db.statistics().inline_transactions
        for p in pending:
            await db.wait_committed(p)
        assert db.statistics().inline_transactions == inline_before
        assert await db.last_event_seq("s1") == 1 + 3 * size


async def test_wal_is_checkpointed_in_the_background(tmp_path: Path) -> None:
    """Commits on the loop never checkpoint; the checkpointer keeps the WAL bounded."""
    path = tmp_path / "store.db"
    chunk = b"x" * 4000
    async with open_store(path) as db:
        await db.commit([PutSession(session("s1"))])
        batches = 10 * store.CHECKPOINT_BYTES // (64 * len(chunk))
        for batch in range(batches):
            ops = [AppendEvent("s1", batch * 64 + i, 1, "k", chunk) for i in range(1, 65)]
            await db.commit(ops)
        assert db.statistics().checkpoints >= 1
        assert Path(f"{path}-wal").stat().st_size < 2 * store.WAL_LIMIT_BYTES
        assert await db.last_event_seq("s1") == batches * 64


async def test_group_commit(tmp_path: Path) -> None:
    """While another process holds the write lock, commits queue and land together after."""
    calls = 100
    path = tmp_path / "store.db"
    async with open_store(path) as db:
        await db.commit([PutSession(session(f"s{i}")) for i in range(calls)])
        before = db.statistics()
        returned: list[int] = []

        async def writer(i: int) -> None:
            await db.commit([event(f"s{i}", seq) for seq in range(1, 6)])
            returned.append(i)

        with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as other:
            other.execute("BEGIN IMMEDIATE")  # what `acp-proxy sessions delete` may do
            async with anyio.create_task_group() as tg:
                for i in range(calls):
                    tg.start_soon(writer, i)
                # Every writer has handed its batch to the store (the loop runs) ...
                await anyio.wait_all_tasks_blocked()
                assert db.statistics().batches_submitted - before.batches_submitted == calls
                # ... and none of them is committed while the lock is held.
                assert returned == []
                assert db.statistics().batches_committed == before.batches_committed
                other.execute("COMMIT")

        assert sorted(returned) == list(range(calls))
        stats = db.statistics()
        assert stats.batches_committed - before.batches_committed == calls
        assert stats.ops_committed - before.ops_committed == calls * 5
        assert 1 <= stats.transactions - before.transactions < calls
        assert stats.inline_transactions == before.inline_transactions
        assert stats.batches_failed == 0
        for i in range(calls):
            assert await db.last_event_seq(f"s{i}") == 5


async def test_committed_data_is_visible_to_another_process(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    async with open_store(path) as db:
        await db.commit([PutSession(session("s1"))])
        await db.commit([event("s1", seq) for seq in range(1, 101)])
        # Store still open: a plain connection in this process ...
        assert sql_scalar(path, "SELECT count(*) FROM events") == 100
        # ... and another process see the committed rows.
        code = (
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]);"
            "print(c.execute('SELECT count(*) FROM events').fetchone()[0]); c.close()"
        )
        result = await anyio.run_process([sys.executable, "-c", code, str(path)])
        assert result.stdout.strip() == b"100"
        await db.commit([event("s1", 101)])
        result = await anyio.run_process([sys.executable, "-c", code, str(path)])
        assert result.stdout.strip() == b"101"


_KILLED_WRITER = """
import sys, anyio
from store import AppendEvent, PutSession, SessionRecord, open_store

async def main() -> None:
    async with open_store(sys.argv[1]) as db:
        await db.commit([PutSession(SessionRecord(id="s1", cwd="/w"))])
        for batch in range(10):
            await db.commit(
                [AppendEvent("s1", batch * 50 + i, 1, "k", b"{}") for i in range(1, 51)]
            )
        print("committed", flush=True)
        await anyio.sleep(3600)

anyio.run(main)
"""


async def test_commit_survives_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-c", _KILLED_WRITER, str(path)]
    async with await anyio.open_process(command, env=env) as process:
        assert process.stdout is not None
        with anyio.fail_after(30):
            line = await BufferedByteReceiveStream(process.stdout).receive_until(b"\n", 100)
        assert line == b"committed"
        process.kill()
        await process.wait()
    assert sql_scalar(path, "SELECT count(*) FROM events") == 500
    assert sql_scalar(path, "SELECT count(*) FROM sessions") == 1
