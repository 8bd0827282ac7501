"""Record types, write operations and the backend-neutral store interface.

Every JSON-carrying field holds the raw JSON bytes exactly as they crossed the wire
(for example ``bytes(msgspec.Raw)``): the store never decodes them, so unknown fields,
unknown update kinds and ``_meta`` survive a round trip byte for byte.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate
from typing import Any, Protocol, runtime_checkable

import msgspec
from msgspec import UNSET, UnsetType

__all__ = [
    "SESSION_STATES",
    "TURN_OUTCOMES",
    "UNSET",
    "UPDATABLE_SESSION_COLUMNS",
    "AppendEvent",
    "AppendEvents",
    "DeleteSession",
    "FinishTurn",
    "PutSession",
    "SchemaVersionError",
    "SessionRecord",
    "SessionStore",
    "StartTurn",
    "StoreError",
    "TurnRecord",
    "UnsetType",
    "UpdateSession",
    "WriteOp",
    "append_event",
    "run_row",
]

_json_encode = msgspec.json.encode

SESSION_STATES: tuple[str, ...] = ("active", "closed")
"""Allowed values of `SessionRecord.state`."""

TURN_OUTCOMES: tuple[str, ...] = ("running", "completed", "cancelled", "error", "unknown")
"""Allowed values of `TurnRecord.outcome` (``unknown``: the agent died mid-turn)."""


class StoreError(Exception):
    """A store operation failed; the message says which one and why."""


class SchemaVersionError(StoreError):
    """The database was written by a newer acp-proxy than this one."""


class SessionRecord(msgspec.Struct, frozen=True):
    """One conversation as the proxy knows it.

    Attributes:
        id: The proxy's session id (the one clients see).
        cwd: Working directory the session was created with.
        agent_profile: Name of the agent profile serving this session.
        mcp_servers: Raw JSON array of the MCP servers passed at session creation.
        additional_directories: Raw JSON array of extra directories, if any.
        upstream_session_id: The agent's own session id, once known.
        modes: Raw JSON of the ACP ``modes`` state.
        config_options: Raw JSON array of the ACP config options.
        title: Human-readable title, if any.
        created_at: Creation time, seconds since the epoch.
        updated_at: Last change, seconds since the epoch (orders `list_sessions`).
        state: ``"active"`` or ``"closed"``.
        creator_uid: Unix uid of the client that created it (``SO_PEERCRED``); None for
            sessions created before schema version 3 or without a peer uid.
    """

    id: str
    cwd: str
    agent_profile: str = "default"
    mcp_servers: bytes = b"[]"
    additional_directories: bytes | None = None
    upstream_session_id: str | None = None
    modes: bytes | None = None
    config_options: bytes | None = None
    title: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    state: str = "active"
    creator_uid: int | None = None


class TurnRecord(msgspec.Struct, frozen=True):
    """One prompt turn of a session.

    Attributes:
        session_id: Session the turn belongs to.
        seq: Turn number within the session, starting at 1.
        started_at: Start time, seconds since the epoch.
        ended_at: End time, or None while running.
        prompt: Raw JSON of the prompt content-block array.
        stop_reason: The agent's ``stopReason``, if it answered.
        outcome: One of `TURN_OUTCOMES`.
        timings: Raw JSON object of timing measurements.
        usage: Raw JSON of the token usage the agent reported.
        restore_path: Where a restore point for this turn lives, if any.
    """

    session_id: str
    seq: int
    started_at: float
    ended_at: float | None
    prompt: bytes
    stop_reason: str | None
    outcome: str
    timings: bytes | None
    usage: bytes | None
    restore_path: str | None


class PutSession(msgspec.Struct, frozen=True):
    """Insert a session, or replace every column of an existing one.

    Replacing keeps the session's turns and events.
    """

    record: SessionRecord


class UpdateSession(msgspec.Struct, frozen=True):
    """Change some columns of an existing session; `UNSET` fields stay as they are.

    ``None`` clears a nullable column. Updating a session that does not exist does nothing.
    """

    session_id: str
    updated_at: float
    upstream_session_id: str | UnsetType | None = UNSET
    modes: bytes | UnsetType | None = UNSET
    config_options: bytes | UnsetType | None = UNSET
    title: str | UnsetType | None = UNSET
    state: str | UnsetType = UNSET
    additional_directories: bytes | UnsetType | None = UNSET
    mcp_servers: bytes | UnsetType = UNSET


#: Columns `UpdateSession` may change besides ``updated_at`` (field name == column name).
UPDATABLE_SESSION_COLUMNS: tuple[str, ...] = UpdateSession.__struct_fields__[2:]


class AppendEvent(msgspec.Struct, frozen=True):
    """Record one ``session/update`` notification.

    Attributes:
        session_id: Session the event belongs to (must exist).
        seq: Event number within the session, strictly increasing, starting at 1.
        turn: Turn number the event belongs to, 0 for events outside a turn.
        kind: The ``sessionUpdate`` discriminator, ``""`` when unknown.
        payload: Raw JSON of the ``session/update`` params exactly as forwarded.
    """

    session_id: str
    seq: int
    turn: int
    kind: str
    payload: bytes


class AppendEvents(msgspec.Struct):
    """Record consecutive events of one session and turn: seqs ``first_seq``, ``first_seq + 1``,
    ... (what one batch of agent output appends; stored as one run).

    Attributes:
        session_id: Session the events belong to (must exist).
        first_seq: Event number of the first one; none of the numbers may be stored already.
        turn: Turn number of the events, 0 outside a turn.
        kinds: Each event's ``sessionUpdate`` discriminator (``""`` when unknown).
        payloads: Each event's raw JSON of the ``session/update`` params exactly as forwarded;
            as many as ``kinds``, at least one.
    """

    session_id: str
    first_seq: int
    turn: int
    kinds: list[str]
    payloads: list[bytes]


def run_row(run: AppendEvents) -> tuple[str, int, int, int, bytes, bytes]:
    """The ``event_runs`` row of ``run``: session id, last seq, first seq, turn, the JSON
    index ``[[kind, start, size], ...]`` into the payload, and the concatenated payloads.

    Raises:
        StoreError: the run has no event, or not one kind per payload.
    """
    count = len(run.payloads)
    if count == 0 or count != len(run.kinds):
        raise StoreError(
            f"AppendEvents of session {run.session_id!r} seq {run.first_seq}: "
            f"{len(run.kinds)} kind(s) for {count} payload(s); give one of each per event"
        )
    sizes = [len(payload) for payload in run.payloads]
    # [kind, start, size] per event (accumulate also yields the total: strict=False).
    index = list(zip(run.kinds, accumulate(sizes, initial=0), sizes, strict=False))
    last_seq = run.first_seq + count - 1
    payload = b"".join(run.payloads)
    return run.session_id, last_seq, run.first_seq, run.turn, _json_encode(index), payload


def append_event(
    ops: list[Any], session_id: str, seq: int, turn: int, kind: str, payload: bytes
) -> None:
    """Add one event to ``ops``: to the `AppendEvents` run ending ``ops`` when the event
    continues it (same session and turn, the next seq), else as a new run."""
    run = ops[-1] if ops else None
    if (
        type(run) is AppendEvents
        and run.session_id == session_id
        and run.turn == turn
        and run.first_seq + len(run.payloads) == seq
    ):
        run.kinds.append(kind)
        run.payloads.append(payload)
    else:
        ops.append(AppendEvents(session_id, seq, turn, [kind], [payload]))


class StartTurn(msgspec.Struct, frozen=True):
    """Insert a new turn with outcome ``"running"``; fails if the turn exists."""

    session_id: str
    seq: int
    started_at: float
    prompt: bytes


class FinishTurn(msgspec.Struct, frozen=True):
    """Record how a turn ended. Finishing a turn that does not exist does nothing."""

    session_id: str
    seq: int
    ended_at: float
    stop_reason: str | None
    outcome: str
    timings: bytes | None
    usage: bytes | None
    restore_path: str | None = None


class DeleteSession(msgspec.Struct, frozen=True):
    """Remove a session with all its turns and events."""

    session_id: str


WriteOp = (
    PutSession | UpdateSession | AppendEvent | AppendEvents | StartTurn | FinishTurn | DeleteSession
)
"""Any operation accepted by `SessionStore.commit`."""


class PendingCommit(Protocol):
    """Ops queued by `SessionStore.submit`: committed or failed once ``finished``."""

    @property
    def finished(self) -> bool:
        """The outcome is known (committed, or failed)."""
        ...

    @property
    def error(self) -> StoreError | None:
        """Why the ops were not committed (None: committed, or not finished yet)."""
        ...

    async def wait(self) -> None:
        """Return once ``finished``."""
        ...


@runtime_checkable
class SessionStore(Protocol):
    """What the proxy needs from a session store (SQLite or PostgreSQL)."""

    @property
    def prompt_waits_for_commit(self) -> bool:
        """The proxy waits for a turn's first commit before it forwards the prompt (a store
        whose ``submit`` never commits at once: PostgreSQL); SQLite commits inline."""
        ...

    async def commit(self, ops: Sequence[WriteOp]) -> None:
        """Apply ``ops`` atomically, in order; return once they are durably committed.

        Raises:
            StoreError: The ops were not committed.
        """
        ...

    def submit(self, ops: Sequence[WriteOp]) -> PendingCommit:
        """Queue ``ops`` in commit order without waiting; returns a handle for
        `wait_committed`.

        Raises:
            StoreError: Nothing was queued.
        """
        ...

    async def wait_committed(self, pending: PendingCommit) -> None:
        """Wait until ops queued by `submit` are committed.

        Raises:
            StoreError: They were not committed.
        """
        ...

    async def get_session(self, session_id: str) -> SessionRecord | None:
        """Return the session, or None if it does not exist."""
        ...

    async def list_sessions(
        self,
        *,
        cwd: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
        creator_uid: int | None = None,
    ) -> tuple[list[SessionRecord], str | None]:
        """Return one page of sessions (newest ``updated_at`` first) and the next cursor;
        ``creator_uid``: only the sessions that uid created."""
        ...

    async def event_payloads(self, session_id: str, *, upto_seq: int | None = None) -> list[bytes]:
        """Return the raw event payloads of a session in ``seq`` order."""
        ...

    async def event_page(
        self, session_id: str, *, after_seq: int, upto_seq: int, limit: int
    ) -> list[tuple[int, bytes]]:
        """Up to ``limit`` ``(seq, payload)`` pairs with ``after_seq < seq <= upto_seq``."""
        ...

    async def last_events_of_kinds(self, session_id: str, kinds: Sequence[str]) -> dict[str, bytes]:
        """The payload of the latest event of each of ``kinds`` that the session has."""
        ...

    async def last_event_seq(self, session_id: str) -> int:
        """Return the highest event ``seq`` of a session, 0 if it has none."""
        ...

    async def turns(self, session_id: str) -> list[TurnRecord]:
        """Return the turns of a session in ``seq`` order."""
        ...

    async def last_turn_seq(self, session_id: str) -> int:
        """Return the highest turn ``seq`` of a session, 0 if it has none."""
        ...

    async def sessions_updated_before(self, cutoff: float, *, limit: int = 1000) -> list[str]:
        """Ids of sessions last updated before ``cutoff`` (epoch seconds), oldest first."""
        ...

    async def count_sessions(self) -> int:
        """Return the number of stored sessions."""
        ...
