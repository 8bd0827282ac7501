"""The hub: sessions, their agents, and the dispatch of what clients send.

To a client the proxy is an ACP agent. Each request goes to its handler in ``methods.py``
(``initialize`` answered from the agent command's capabilities, ``session/new`` binding a warm
spare to a proxy-minted 128-bit id, later calls forwarded to the same warm process with ids and
``sessionId`` rewritten per hop, ``session/load`` and ``session/resume`` served from the
store). Here: the session table and restoring a session on first use, idle eviction and the
live-agent cap, the order messages are handled in, and shutdown.
"""

from __future__ import annotations

import sqlite3
import time
from collections import deque
from typing import Any, Final

import anyio
import msgspec
from anyio.abc import TaskGroup
from msgspec import Raw

from store import SqliteStore, StoreError

from .access import check_session_access, may_use
from .agent import AgentProcess
from .attach import ENV_METHOD
from .budget import MemoryBudget, wait_for_agent_stdin
from .client import ClientConnection
from .config import Config
from .logs import get_logger
from .methods import BACKGROUND, METHODS, MethodHandler, session_forward, session_id_of
from .pool import AgentPool, SetupTimings
from .protocol import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    MALFORMED_JSON,
    METHOD_NOT_FOUND,
    RESOURCE_NOT_FOUND,
    LocalProtocolError,
    Message,
    Notification,
    ProtocolError,
    Request,
    RequestId,
    get_str,
    object_members,
    rewrite_members,
)
from .restore import restore_session
from .session import STATE_KINDS, Session

__all__ = ["Proxy"]

_encoder: Final = msgspec.json.Encoder()


class _EnvParams(msgspec.Struct):
    env: dict[str, str]


class _CancelParams(msgspec.Struct):
    requestId: RequestId  # ACP wire name


class Proxy:
    """Everything the proxy knows; one per ``serve``."""

    def __init__(self, config: Config, store: SqliteStore, tg: TaskGroup) -> None:
        self.config = config
        self.store = store
        self.tg = tg
        self.sessions: dict[str, Session] = {}
        self.pool = AgentPool(config, tg, store)
        self.budget = MemoryBudget(config.max_buffered_bytes)
        self._clients = 0
        self.log = get_logger(component="proxy")

    # -- agents ------------------------------------------------------------------------------

    async def run_reaper(self) -> None:
        """Stop agents idle for longer than ``idle_timeout_s`` (bounded loop: runs until the
        proxy's task group is cancelled)."""
        ttl = self.config.idle_timeout_s
        if ttl <= 0:
            return
        while True:
            await anyio.sleep(min(max(ttl / 4, 0.05), 30.0))
            now = time.monotonic()
            for session in list(self.sessions.values()):
                if session.evictable and now - session.last_active >= ttl:
                    self.evict(session, "idle")

    def evict(self, session: Session, reason: str) -> None:
        """Stop the agent of an idle session; it is restored on next use."""
        agent = session.retire_agent()
        session.log.info(
            "session.evicted",
            reason=reason,
            idle_s=round(time.monotonic() - session.last_active, 3),
            agent_pid=agent.pid if agent else None,
        )

    def make_room(self) -> None:
        """Before a session gets an agent: stop least recently used idle ones over the cap."""
        live = [s for s in self.sessions.values() if s.live]
        excess = len(live) + 1 - self.config.max_live_agents
        if excess <= 0:
            return
        idle = sorted((s for s in live if s.evictable), key=lambda s: s.last_active)
        for session in idle[:excess]:
            self.evict(session, "max_live_agents")
        if excess > len(idle):
            self.log.warning(
                "agents.over_cap",
                live=len(live),
                cap=self.config.max_live_agents,
                hint="every live agent is busy; raise max_live_agents or add memory",
            )

    async def acquire_agent(
        self,
        cwd: str,
        env: dict[str, str] | None = None,
        auth: Raw | None = None,
        owner: int | None = None,
    ) -> tuple[AgentProcess, SetupTimings]:
        """An initialized agent for a conversation, within ``max_live_agents`` (authenticated
        with ``auth``, the requesting client's own params, if it sent any)."""
        self.make_room()
        return await self.pool.acquire(cwd, env, auth, owner)

    def process_env(self, client: ClientConnection | None) -> dict[str, str]:
        """The per-process variables a client brought (see ``Config.per_process_env``)."""
        if client is None:
            return {}
        wanted = self.config.per_process_env
        return {name: value for name, value in client.env.items() if name in wanted}

    # -- dispatch ----------------------------------------------------------------------------

    def new_client(self, stream: Any) -> ClientConnection:
        """A connection was accepted."""
        self._clients += 1
        return ClientConnection(self, stream, self._clients)

    async def handle(self, client: ClientConnection, msg: Message) -> None:
        """Handle one request or notification from a client.

        Messages are handled in arrival order, inline, so a ``session/cancel`` never overtakes
        the prompt before it. A request for a session whose agent is gone would hold the
        connection's reader through the restore (seconds with opencode) and stall every
        other session on the connection: it goes to that session's *gate* on this
        connection instead, where it and every later message for the session run in order
        in a task of their own, while other sessions' messages go on inline.
        """
        sid = self._gate_key(client, msg)
        target = self.sessions.get(sid) if sid is not None else None
        if target is not None and target.agent is not None:
            # Backpressure: this connection is not read while its agent's stdin is full.
            agent = target.agent
            await wait_for_agent_stdin(agent.outbox, agent.stdin_limit_bytes)
        if sid is not None and client.tg is not None:
            gate = client.gates.get(sid)
            if gate is not None or (isinstance(msg, Request) and self._needs_restore(sid)):
                if gate is None:
                    gate = client.gates[sid] = deque()
                    client.tg.start_soon(self._drain_gate, client, sid, gate)
                gate.append(msg)
                return
        await self._dispatch(client, msg)

    def _gate_key(self, client: ClientConnection, msg: Message) -> str | None:
        """The session a message must stay in order with, if any."""
        if msg.method == "$/cancel_request" and client.gates:
            # Cancelling a request still waiting in a gate: it waits there too.
            try:
                target = msgspec.json.decode(msg.params, type=_CancelParams).requestId
            except MALFORMED_JSON:
                return None
            return next(
                (
                    sid
                    for sid, gate in client.gates.items()
                    if any(isinstance(m, Request) and m.id == target for m in gate)
                ),
                None,
            )
        if msg.method in _UNGATED:
            return None
        return session_id_of(msg.params)

    def _needs_restore(self, sid: str) -> bool:
        session = self.sessions.get(sid)
        return session is None or not session.live

    async def _drain_gate(self, client: ClientConnection, sid: str, gate: deque[Message]) -> None:
        try:
            while gate:
                await self._dispatch(client, gate[0])  # still queued: the gate stays busy
                gate.popleft()
        finally:
            client.gates.pop(sid, None)

    async def _dispatch(self, client: ClientConnection, msg: Message) -> None:
        if isinstance(msg, Notification):
            try:
                self._handle_notification(client, msg)
            except ProtocolError as exc:  # nobody to answer: a notification has no id
                client.log.warning("client.bad_notification", method=msg.method, error=exc.message)
            return
        assert isinstance(msg, Request)
        handler = METHODS.get(msg.method)
        if handler is None:
            if msg.method.startswith("_"):
                handler = session_forward
            else:
                client.send_error(
                    msg.id,
                    METHOD_NOT_FOUND,
                    f"Method not found: {msg.method}",
                    {"method": msg.method},
                )
                return
        if msg.method in BACKGROUND and client.tg is not None:
            client.tg.start_soon(self._guarded, handler, client, msg)
        else:
            await self._guarded(handler, client, msg)

    async def _guarded(
        self, handler: MethodHandler, client: ClientConnection, req: Request
    ) -> None:
        try:
            await handler(self, client, req)
        except (StoreError, sqlite3.Error) as exc:
            # Disk full, read-only, locked: this request fails, the connection and its other
            # sessions' requests go on.
            client.log.error("store.request_failed", method=req.method, error=str(exc))
            client.send_error(
                req.id,
                INTERNAL_ERROR,
                f"{req.method} failed: the session store failed ({exc}); check the disk "
                "holding the proxy's database, then retry",
                {"kind": "store_failed", "method": req.method},
            )
        except ProtocolError as exc:
            if self.config.client_profile == "open-design" and _is_lost_session(req, exc):
                # The daemon drops its handle on resume_failed and re-runs the turn with its
                # own transcript on a new session.
                client.send_error(
                    req.id,
                    INVALID_REQUEST,
                    "the resumed session could not be loaded",
                    {
                        "kind": "resume_failed",
                        "phase": "session_load" if req.method != "session/prompt" else "prompt",
                        "retryable": True,
                        "reason": exc.message,
                    },
                )
                return
            client.send_error(req.id, exc.code, exc.message, exc.data)

    def _handle_notification(self, client: ClientConnection, msg: Notification) -> None:
        if msg.method == ENV_METHOD:
            try:
                env = msgspec.json.decode(msg.params, type=_EnvParams).env
            except MALFORMED_JSON:
                client.log.warning("client.bad_env_notification")
                return
            client.env = env
            client.log.info("client.env", names=sorted(env))
        elif msg.method == "session/cancel":
            session = self.sessions.get(session_id_of(msg.params) or "")
            if session is not None and may_use(self.config, client.peer_uid, session.record):
                session.cancel_turn()
        elif msg.method == "$/cancel_request":
            # Hop-scoped (acp-notes §7.4): the agent gets its own id, never the client's.
            try:
                target = msgspec.json.decode(msg.params, type=_CancelParams).requestId
            except MALFORMED_JSON:
                client.log.warning("client.bad_cancel_request")
                return
            entry = client.inflight.get(target)
            if entry is not None and entry[0].alive:
                entry[0].send_notification(
                    "$/cancel_request", _encoder.encode({"requestId": entry[1]})
                )
        elif msg.method.startswith("_"):
            session = self.sessions.get(session_id_of(msg.params) or "")
            if (
                session is not None
                and session.live
                and may_use(self.config, client.peer_uid, session.record)
            ):
                assert session.agent is not None and session.upstream_id is not None
                params = rewrite_members(object_members(msg.params), sessionId=session.upstream_id)
                session.agent.send_notification(msg.method, params)
        else:
            client.log.debug("client.notification_ignored", method=msg.method)

    async def ready_session(
        self, params: Raw, client: ClientConnection | None = None, *, check_cwd: bool = False
    ) -> Session:
        """The session named in ``params``, with a live agent (restored if it was gone).

        Raises:
            LocalProtocolError: no such session (-32002), wrong cwd (-32602), or
                :class:`RestoreFailed` when no rung of the restore ladder worked.
        """
        members = object_members(params)
        sid = get_str(members, "sessionId")
        if sid is None:
            raise LocalProtocolError(
                'Invalid params: "sessionId" (string) is required', INVALID_PARAMS
            )
        session = self.sessions.get(sid) or await self._session_from_store(sid)
        check_session_access(self.config, client.peer_uid if client else None, session.record)
        cwd = get_str(members, "cwd")
        if check_cwd and cwd is not None and cwd != session.record.cwd:
            raise LocalProtocolError(
                f"Invalid params: session {sid} belongs to cwd {session.record.cwd!r}, "
                f"not {cwd!r}; sessions are bound to their cwd",
                INVALID_PARAMS,
                {"sessionId": sid, "cwd": session.record.cwd},
            )
        env = self.process_env(client)
        if session.live and env and env != session.env and session.turn is None:
            # The agent process runs under another turn's billing/tracing values: restart it
            # through the restore ladder rather than bill this turn to the previous one.
            session.log.info("session.env_changed", names=sorted(env))
            session.retire_agent()
        if env:
            session.env = env
        # A session/close from another connection can retire the agent while the restore's
        # last writes are awaited: restore again (bounded), so callers always get a live one.
        for _attempt in range(_RESTORE_ATTEMPTS):
            if session.live:
                break
            async with session.lock:
                if not session.live:
                    await restore_session(
                        self,
                        session,
                        mcp_servers=members.get("mcpServers"),
                        additional_directories=members.get("additionalDirectories"),
                        auth=client.auth_params if client is not None else None,
                    )
        if not session.live:
            raise LocalProtocolError(
                f"session {sid} was closed {_RESTORE_ATTEMPTS} times while being restored; "
                "retry the request",
                RESOURCE_NOT_FOUND,
                {"kind": "restore_failed", "sessionId": sid},
            )
        return session

    async def _session_from_store(self, sid: str) -> Session:
        # Sessions come back on first use: a restart restores nothing eagerly.
        record = await self.store.get_session(sid)
        if record is None:
            raise LocalProtocolError(
                f"Resource not found: no session {sid}; create one with session/new",
                RESOURCE_NOT_FOUND,
                {"sessionId": sid},
            )
        last_seq = await self.store.last_event_seq(sid)
        turn_seq = await self.store.last_turn_seq(sid)
        state = await self.store.last_events_of_kinds(sid, sorted(STATE_KINDS))
        if sid in self.sessions:  # another connection got here first
            return self.sessions[sid]
        session = Session(self, record, last_seq=last_seq, turn_seq=turn_seq)
        session.delivered_seq = last_seq
        for kind, payload in state.items():
            update = object_members(payload).get("update")
            if update is not None:
                session.last_state[kind] = bytes(update)
        self.sessions[sid] = session
        return session

    # -- lifecycle ---------------------------------------------------------------------------

    def on_client_closed(self, client: ClientConnection) -> None:
        """A client went away: its sessions keep their agents; pending asks are answered."""
        for session in list(client.sessions):
            session.detach(client)
        client.sessions.clear()
        client.inflight.clear()
        self.pool.release_owner(client.number)

    def log_session(self, session: Session, event: str) -> None:
        """The canonical line per session."""
        agent = session.agent
        session.log.info(
            event,
            turns=session.turns_completed,
            updates_recorded=session.updates_recorded,
            events=session.last_seq,
            agent_pid=agent.pid if agent else None,
            live_s=round(time.monotonic() - session.created_mono, 3),
        )

    def shutdown(self) -> None:
        """Stop every agent (spares included); log each session's line."""
        for session in self.sessions.values():
            self.log_session(session, "session.stopped")
            if session.agent is not None:
                session.agent.stop()
        self.pool.stop()


#: Restores tried for one request when concurrent closes keep retiring the restored agent.
_RESTORE_ATTEMPTS: Final = 3

#: Messages that never wait in a session's gate (no session, or handled beside the reader).
_UNGATED: Final = frozenset(
    {"initialize", "authenticate", "session/new", "session/list", ENV_METHOD}
)


def _is_lost_session(req: Request, exc: ProtocolError) -> bool:
    """An unknown session, or one no rung of the restore ladder could bring back."""
    return req.method in ("session/load", "session/resume", "session/prompt") and (
        exc.code == RESOURCE_NOT_FOUND
    )
