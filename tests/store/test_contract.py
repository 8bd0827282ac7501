"""The store contract: every test runs on SQLite and on PostgreSQL (a real server).

PostgreSQL tests start a throwaway server (``acp_proxy/testing/postgres.py``) and skip, with
the reason, where its binaries are missing.
"""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

import store
from store import (
    UNSET,
    AppendEvent,
    AppendEvents,
    DeleteSession,
    FinishTurn,
    PutSession,
    SessionRecord,
    StartTurn,
    StoreError,
    TurnRecord,
    UpdateSession,
    open_store,
)

from .test_sqlite_store import event, session

pytestmark = pytest.mark.anyio


async def test_reopen_keeps_data(target: str) -> None:
    path = target
    async with open_store(path) as db:
        await db.commit([PutSession(session("s1")), event("s1", 1)])
    async with open_store(path) as db:
        assert await db.get_session("s1") == session("s1")
        assert await db.event_payloads("s1") == [event("s1", 1).payload]


async def test_put_get_update_session(target: str) -> None:
    async with open_store(target) as db:
        assert await db.get_session("s1") is None
        await db.commit([PutSession(session("s1"))])
        assert await db.get_session("s1") == session("s1")

        minimal = SessionRecord(id="s2", cwd="/w")
        await db.commit([PutSession(minimal)])
        assert await db.get_session("s2") == minimal

        await db.commit(
            [UpdateSession("s1", updated_at=9.0, title=None, modes=b'{"currentModeId":"ask"}')]
        )
        updated = await db.get_session("s1")
        assert updated == SessionRecord(
            **{
                **{f: getattr(session("s1"), f) for f in SessionRecord.__struct_fields__},
                "updated_at": 9.0,
                "title": None,
                "modes": b'{"currentModeId":"ask"}',
            }
        )

        await db.commit(
            [
                UpdateSession(
                    "s1",
                    updated_at=10.0,
                    upstream_session_id="up-2",
                    config_options=None,
                    state="closed",
                    additional_directories=None,
                    mcp_servers=b"[]",
                )
            ]
        )
        updated = await db.get_session("s1")
        assert updated is not None
        assert updated.modes == b'{"currentModeId":"ask"}'  # UNSET: untouched
        assert (updated.upstream_session_id, updated.config_options, updated.state) == (
            "up-2",
            None,
            "closed",
        )
        assert (updated.additional_directories, updated.mcp_servers, updated.updated_at) == (
            None,
            b"[]",
            10.0,
        )
        assert UpdateSession("x", 1.0).title is UNSET

        # Updating a missing session does nothing.
        await db.commit([UpdateSession("missing", updated_at=1.0, title="t")])
        assert await db.get_session("missing") is None


async def test_put_session_replaces_row_but_keeps_history(target: str) -> None:
    async with open_store(target) as db:
        await db.commit([PutSession(session("s1")), StartTurn("s1", 1, 1.0, b"[]"), event("s1", 1)])
        replacement = SessionRecord(id="s1", cwd="/elsewhere", updated_at=5.0)
        await db.commit([PutSession(replacement)])
        assert await db.get_session("s1") == replacement
        assert await db.last_event_seq("s1") == 1
        assert await db.last_turn_seq("s1") == 1


async def test_event_for_unknown_session_fails(target: str) -> None:
    async with open_store(target) as db:
        with pytest.raises(StoreError, match=r"(?i)AppendEvent.*FOREIGN KEY"):
            await db.commit([event("ghost", 1)])


async def test_turns_round_trip(target: str) -> None:
    async with open_store(target) as db:
        await db.commit([PutSession(session("s1"))])
        assert await db.turns("s1") == []
        assert await db.last_turn_seq("s1") == 0
        prompt = b'[{"type":"text","text":"fix the bug \xc3\xa9"}]'
        await db.commit([StartTurn("s1", 1, 100.0, prompt)])
        assert await db.turns("s1") == [
            TurnRecord("s1", 1, 100.0, None, prompt, None, "running", None, None, None)
        ]
        await db.commit(
            [
                FinishTurn(
                    "s1",
                    1,
                    ended_at=105.5,
                    stop_reason="end_turn",
                    outcome="completed",
                    timings=b'{"firstTokenMs":120}',
                    usage=b'{"inputTokens":10}',
                    restore_path="/restore/1",
                ),
                StartTurn("s1", 2, 200.0, b"[]"),
                FinishTurn("s1", 2, 201.0, None, "unknown", None, None),
            ]
        )
        assert await db.turns("s1") == [
            TurnRecord(
                "s1",
                1,
                100.0,
                105.5,
                prompt,
                "end_turn",
                "completed",
                b'{"firstTokenMs":120}',
                b'{"inputTokens":10}',
                "/restore/1",
            ),
            TurnRecord("s1", 2, 200.0, 201.0, b"[]", None, "unknown", None, None, None),
        ]
        assert await db.last_turn_seq("s1") == 2


async def test_list_sessions_pagination_and_cwd(target: str) -> None:
    records = [
        session("a", cwd="/p", updated_at=5.0),
        session("b", cwd="/q", updated_at=5.0),
        session("c", cwd="/p", updated_at=5.0),
        session("d", cwd="/p", updated_at=7.25),
        session("e", cwd="/q", updated_at=1.0),
        session("f", cwd="/p", updated_at=3.0),
        session("g", cwd="/p", updated_at=0.1),
    ]
    expected = sorted(records, key=lambda r: (-r.updated_at, r.id))
    async with open_store(target) as db:
        await db.commit([PutSession(r) for r in records])
        assert await db.count_sessions() == 7

        page, cursor = await db.list_sessions()
        assert (page, cursor) == (expected, None)

        seen: list[SessionRecord] = []
        cursor = None
        pages = 0
        while True:
            page, cursor = await db.list_sessions(cursor=cursor, limit=3)
            seen += page
            pages += 1
            if cursor is None:
                break
            assert isinstance(cursor, str)
        assert seen == expected
        assert pages == 3

        in_p = [r for r in expected if r.cwd == "/p"]
        assert [r.id for r in in_p] == ["d", "a", "c", "f", "g"]
        first, cursor = await db.list_sessions(cwd="/p", limit=3)
        assert first == in_p[:3]
        assert cursor is not None
        rest, cursor = await db.list_sessions(cwd="/p", cursor=cursor, limit=3)
        assert (rest, cursor) == (in_p[3:], None)

        exact, cursor = await db.list_sessions(cwd="/q", limit=2)
        assert ([r.id for r in exact], cursor) == (["b", "e"], None)
        assert await db.list_sessions(cwd="/nowhere") == ([], None)

        with pytest.raises(ValueError, match="cursor"):
            await db.list_sessions(cursor="!!not a cursor!!")
        with pytest.raises(ValueError, match="limit"):
            await db.list_sessions(limit=0)


async def test_commit_order_is_preserved(target: str) -> None:
    async with open_store(target) as db:
        await db.commit([PutSession(session("s1"))])
        async with anyio.create_task_group() as tg:
            for i in range(50):
                tg.start_soon(db.commit, [UpdateSession("s1", updated_at=float(i), title=str(i))])
        record = await db.get_session("s1")
        assert record is not None
        assert record.title == str(int(record.updated_at))
        # Sequential calls: the last one wins.
        for i in range(3):
            await db.commit([UpdateSession("s1", updated_at=100.0 + i, title=f"x{i}")])
        record = await db.get_session("s1")
        assert record is not None
        assert record.title == "x2"


async def test_failed_commit_raises_and_store_keeps_working(target: str) -> None:
    async with open_store(target) as db:
        await db.commit([PutSession(session("s1")), StartTurn("s1", 1, 1.0, b"[]")])
        with pytest.raises(StoreError, match=r"(?i)StartTurn of session 's1' seq 1 failed.*UNIQUE"):
            await db.commit([event("s1", 1), StartTurn("s1", 1, 2.0, b"[]")])
        # The batch is atomic: its event was rolled back with it.
        assert await db.event_payloads("s1") == []
        assert db.statistics().batches_failed == 1

        # A failing batch does not take down batches committed in the same group.
        results: dict[str, BaseException | None] = {}

        async def attempt(name: str, ops: list[store.WriteOp]) -> None:
            try:
                await db.commit(ops)
            except StoreError as exc:
                results[name] = exc
            else:
                results[name] = None

        async with anyio.create_task_group() as tg:
            tg.start_soon(attempt, "good1", [event("s1", 1)])
            tg.start_soon(attempt, "bad", [event("s1", 2), event("s1", 1)])
            tg.start_soon(attempt, "good2", [event("s1", 2)])
        assert results["good1"] is None
        assert results["good2"] is None
        assert isinstance(results["bad"], StoreError)
        assert "AppendEvent" in str(results["bad"])

        with pytest.raises(StoreError, match="not a store write op"):
            await db.commit([object()])  # type: ignore[list-item]

        await db.commit([event("s1", 3)])
        assert await db.last_event_seq("s1") == 3
        assert await db.turns("s1") == [
            TurnRecord("s1", 1, 1.0, None, b"[]", None, "running", None, None, None)
        ]


async def test_commit_after_close_fails(target: str) -> None:
    async with open_store(target) as db:
        await db.commit([])  # nothing to do
    with pytest.raises(StoreError, match="closed"):
        await db.commit([PutSession(session("s1"))])


async def test_close_while_cancelled(target: str) -> None:
    path = target
    with anyio.CancelScope() as scope:
        async with open_store(path) as db:
            await db.commit([PutSession(session("s1"))])
            scope.cancel()
            await anyio.sleep(10)
    assert scope.cancelled_caught
    async with open_store(path) as db:
        assert await db.count_sessions() == 1


async def test_bulk_append_from_concurrent_callers(target: str) -> None:
    """100 000 events from 200 concurrent callers all land, in order, byte for byte.

    (Speed is measured in bench/, never asserted here.)
    """
    async with open_store(target) as db:
        await db.commit([PutSession(session("s1"))])
        payload = b'{"sessionId":"s1","update":{"sessionUpdate":"agent_message_chunk",' + (
            b'"content":{"type":"text","text":"' + b"x" * 200 + b'"}}}'
        )

        async def send_batch(batch: int) -> None:
            await db.commit(
                [AppendEvent("s1", batch * 500 + i, 1, "k", payload) for i in range(1, 501)]
            )

        async with anyio.create_task_group() as tg:
            for batch in range(200):
                tg.start_soon(send_batch, batch)
        assert await db.last_event_seq("s1") == 100_000
        payloads = await db.event_payloads("s1", upto_seq=10_000)
        assert len(payloads) == 10_000
        assert payloads[0] == payload


async def test_body_exception_propagates_unwrapped(target: str) -> None:
    path = target

    async def fail_inside() -> None:
        async with open_store(path) as db:
            await db.commit([PutSession(session("s1"))])
            raise LookupError("from the body")

    with pytest.raises(LookupError, match="from the body") as info:
        await fail_inside()
    assert type(info.value) is LookupError
    async with open_store(path) as db:
        assert await db.count_sessions() == 1


async def test_event_pages_cover_the_range_exactly(target: str) -> None:
    """Pages of (seq, payload) walk after_seq < seq <= upto_seq in order, no gap, no repeat."""
    async with open_store(target) as db:
        await db.commit([PutSession(session("s1"))])
        await db.commit([AppendEvent("s1", i, 1, "k", b'{"n":%d}' % i) for i in range(1, 26)])
        seen: list[int] = []
        after = 3
        while True:
            page = await db.event_page("s1", after_seq=after, upto_seq=21, limit=4)
            if not page:
                break
            assert len(page) <= 4
            seen += [seq for seq, _ in page]
            assert all(payload == b'{"n":%d}' % seq for seq, payload in page)
            after = page[-1][0]
        assert seen == list(range(4, 22))


async def test_last_events_of_kinds_gives_the_latest_payload_per_kind(target: str) -> None:
    """Only the newest event of each asked kind comes back; other kinds are ignored."""
    async with open_store(target) as db:
        await db.commit([PutSession(session("s1"))])
        await db.commit(
            [
                AppendEvent("s1", 1, 0, "available_commands_update", b'{"v":1}'),
                AppendEvent("s1", 2, 1, "agent_message_chunk", b'{"v":2}'),
                AppendEvent("s1", 3, 1, "available_commands_update", b'{"v":3}'),
                AppendEvent("s1", 4, 1, "current_mode_update", b'{"v":4}'),
            ]
        )
        latest = await db.last_events_of_kinds(
            "s1", ["available_commands_update", "current_mode_update", "plan"]
        )
        assert latest == {
            "available_commands_update": b'{"v":3}',
            "current_mode_update": b'{"v":4}',
        }


async def test_event_pages_step_over_gaps_in_the_seqs(target: str) -> None:
    """A failed batch leaves a gap in a session's seqs; pages still reach every event."""
    async with open_store(target) as db:
        await db.commit([PutSession(session("s1"))])
        await db.commit([AppendEvents("s1", 1, 1, ["k"] * 3, [b"1", b"2", b"3"])])
        await db.commit([AppendEvents("s1", 50, 1, ["k"] * 2, [b"50", b"51"])])
        await db.commit([AppendEvent("s1", 60, 1, "k", b"60")])
        seen: list[int] = []
        after = 0
        while page := await db.event_page("s1", after_seq=after, upto_seq=100, limit=4):
            seen += [seq for seq, _ in page]
            after = page[-1][0]
        assert seen == [1, 2, 3, 50, 51, 60]


async def test_payloads_come_back_byte_for_byte(target: str) -> None:
    """Raw JSON (odd unicode, escapes, _meta, number spellings) is stored as given."""
    odd = (
        '{"sessionId":"s1","update":{"sessionUpdate":"future_kind","x":"Grüße ✓ 漢字 \\u0000"},'
        '"_meta":{"vendor.example/trace":{"id":"abc","n":[1,2.50,3e10]}}}'
    ).encode()
    binary = bytes(range(256))  # the store never looks inside: any bytes survive
    async with open_store(target) as db:
        await db.commit([PutSession(session("s1"))])
        await db.commit([AppendEvent("s1", 1, 0, "", odd), AppendEvent("s1", 2, 1, "k", binary)])
        await db.commit([AppendEvents("s1", 3, 1, ["a", "b"], [b"", b"{}"])])
        assert await db.event_payloads("s1") == [odd, binary, b"", b"{}"]
        assert await db.event_page("s1", after_seq=1, upto_seq=3, limit=5) == [
            (2, binary),
            (3, b""),
        ]


async def test_delete_session_removes_everything(target: str) -> None:
    async with open_store(target) as db:
        await db.commit([PutSession(session("s1")), PutSession(session("s2"))])
        await db.commit(
            [StartTurn("s1", 1, 1.0, b"[]"), event("s1", 1), event("s1", 2), event("s2", 1)]
        )
        await db.commit([DeleteSession("s1")])
        assert await db.get_session("s1") is None
        assert await db.event_payloads("s1") == []
        assert await db.last_events_of_kinds("s1", ["agent_message_chunk"]) == {}
        assert await db.turns("s1") == []
        assert await db.count_sessions() == 1
        assert await db.event_payloads("s2") == [event("s2", 1).payload]


async def test_schema_version_is_the_same_on_both_backends(target: str) -> None:
    assert len(store.PG_MIGRATIONS) == len(store.MIGRATIONS) == store.SCHEMA_VERSION
    async with open_store(target) as db:
        assert await db.count_sessions() == 0
    async with open_store(target) as db:  # reopening migrates nothing
        assert await db.count_sessions() == 0


async def test_postgres_commit_flush_follows_the_url(pg_url: str) -> None:
    """By default a commit is acknowledged before the server flushes it (SQLite's class);
    ``?synchronous_commit=on`` in the URL asks for a flush per commit."""
    async with open_store(pg_url) as db:
        assert isinstance(db, store.PostgresStore)
        assert await db._pool.fetchval("SHOW synchronous_commit") == "off"
    async with open_store(pg_url + "&synchronous_commit=on") as db:
        assert isinstance(db, store.PostgresStore)
        assert await db._pool.fetchval("SHOW synchronous_commit") == "on"
