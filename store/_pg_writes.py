"""The write ops of the PostgreSQL store: one transaction's statements (``_postgres.py``).

Consecutive events are inserted as runs with one ``INSERT ... SELECT FROM unnest(...)`` (one
round trip for a whole group's events), the newest event of each kind with one upsert.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
from msgspec import UNSET

from ._records import (
    UPDATABLE_SESSION_COLUMNS,
    AppendEvent,
    AppendEvents,
    DeleteSession,
    FinishTurn,
    PutSession,
    SessionRecord,
    StartTurn,
    StoreError,
    UpdateSession,
    WriteOp,
    append_event,
    run_row,
)
from ._sqlite import _describe

__all__ = ["apply_ops"]

_SESSION_COLUMNS = ", ".join(SessionRecord.__struct_fields__)
_PUT_SESSION = (
    f"INSERT INTO sessions ({_SESSION_COLUMNS}) VALUES "
    f"({', '.join(f'${i}' for i in range(1, len(SessionRecord.__struct_fields__) + 1))}) "
    "ON CONFLICT (id) DO UPDATE SET "
    + ", ".join(f"{name} = excluded.{name}" for name in SessionRecord.__struct_fields__[1:])
)
_INSERT_RUNS = (
    "INSERT INTO event_runs (session_id, last_seq, first_seq, turn, entries, payloads) "
    "SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[], $4::int8[], $5::text[], "
    "$6::bytea[])"
)
_UPSERT_LATEST = (
    "INSERT INTO latest_events (session_id, kind, seq, payload) "
    "SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::bytea[]) "
    "ON CONFLICT (session_id, kind) DO UPDATE SET seq = excluded.seq, payload = excluded.payload "
    "WHERE excluded.seq > latest_events.seq"
)
_START_TURN = (
    "INSERT INTO turns (session_id, seq, started_at, prompt, outcome) "
    "VALUES ($1, $2, $3, $4, 'running')"
)
_FINISH_TURN = (
    "UPDATE turns SET ended_at = $1, stop_reason = $2, outcome = $3, timings = $4, usage = $5, "
    "restore_path = $6 WHERE session_id = $7 AND seq = $8"
)
_DELETE_SESSION = (
    "DELETE FROM event_runs WHERE session_id = $1",
    "DELETE FROM latest_events WHERE session_id = $1",
    "DELETE FROM turns WHERE session_id = $1",
    "DELETE FROM sessions WHERE id = $1",
    "DELETE FROM session_leases WHERE session_id = $1",
)


async def apply_ops(conn: Any, ops: Sequence[WriteOp]) -> None:
    """Execute ``ops`` in order; consecutive events are inserted as runs, in one statement."""
    import asyncpg

    runs: list[AppendEvents] = []
    for op in ops:
        if isinstance(op, AppendEvent):
            append_event(runs, op.session_id, op.seq, op.turn, op.kind, op.payload)
            continue
        if isinstance(op, AppendEvents):
            runs.append(
                AppendEvents(op.session_id, op.first_seq, op.turn, [*op.kinds], [*op.payloads])
            )
            continue
        if runs:
            await _append_runs(conn, runs)
            runs = []
        try:
            await _apply_one(conn, op)
        except (asyncpg.PostgresError, asyncpg.DataError, TypeError) as exc:
            raise StoreError(f"{_describe(op)} failed: {exc}") from exc
    if runs:
        await _append_runs(conn, runs)


async def _append_runs(conn: Any, runs: list[AppendEvents]) -> None:
    import asyncpg

    columns: tuple[list[Any], ...] = ([], [], [], [], [], [])
    latest: dict[tuple[str, str], tuple[int, bytes]] = {}
    for run in runs:
        session_id, last_seq, first_seq, turn, index_json, payload = run_row(run)
        row = (session_id, last_seq, first_seq, turn, index_json.decode(), payload)
        for column, value in zip(columns, row, strict=True):
            column.append(value)
        for index, kind in enumerate(run.kinds):
            seq = run.first_seq + index
            key = (run.session_id, kind)
            if key not in latest or latest[key][0] < seq:
                latest[key] = (seq, run.payloads[index])
    try:
        await conn.execute(_INSERT_RUNS, *columns)
        await conn.execute(
            _UPSERT_LATEST,
            [key[0] for key in latest],
            [key[1] for key in latest],
            [value[0] for value in latest.values()],
            [value[1] for value in latest.values()],
        )
    except asyncpg.PostgresError as exc:
        first, last = runs[0], runs[-1]
        events = sum(len(run.payloads) for run in runs)
        raise StoreError(
            f"AppendEvent of {events} event(s) (session {first.session_id!r} "
            f"seq {first.first_seq}, ..., session {last.session_id!r} "
            f"seq {last.first_seq + len(last.payloads) - 1}) failed: {exc}"
        ) from exc


async def _apply_one(conn: Any, op: WriteOp) -> None:
    match op:
        case PutSession(record=record):
            await conn.execute(_PUT_SESSION, *msgspec.structs.astuple(record))
        case UpdateSession():
            assignments = ["updated_at = $1"]
            params: list[Any] = [op.updated_at]
            for column in UPDATABLE_SESSION_COLUMNS:
                value = getattr(op, column)
                if value is not UNSET:
                    params.append(value)
                    assignments.append(f"{column} = ${len(params)}")
            params.append(op.session_id)
            sql = f"UPDATE sessions SET {', '.join(assignments)} WHERE id = ${len(params)}"
            await conn.execute(sql, *params)
        case StartTurn():
            await conn.execute(_START_TURN, op.session_id, op.seq, op.started_at, op.prompt)
        case FinishTurn():
            await conn.execute(
                _FINISH_TURN,
                op.ended_at,
                op.stop_reason,
                op.outcome,
                op.timings,
                op.usage,
                op.restore_path,
                op.session_id,
                op.seq,
            )
        case DeleteSession():
            for sql in _DELETE_SESSION:
                await conn.execute(sql, op.session_id)
        case _:
            raise TypeError(f"not a store write op: {op!r}")
