"""The hub: sessions, warm spare agents, and what each client method means.

To a client the proxy is an ACP agent. ``initialize`` is answered from the capabilities of
the agent command (learnt from a warm spare), adjusted to what the proxy itself serves;
``session/new`` binds a spare (or a fresh process) to a new conversation with a proxy-minted
128-bit id; later calls on that id are forwarded to the same warm process with ids and
``sessionId`` rewritten per hop. ``session/load`` and ``session/resume`` are served from the
store without calling the agent.
"""

from __future__ import annotations

import os
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Final

import anyio
import msgspec
from anyio.abc import TaskGroup
from msgspec import Raw

from store import (
    DeleteSession,
    PutSession,
    SessionRecord,
    SqliteStore,
    StoreError,
    UpdateSession,
)

from .agent import UNBOUND, AgentError, AgentExited, AgentProcess, Batch
from .attach import ENV_METHOD
from .client import ClientConnection
from .config import Config
from .logs import get_logger
from .pool import AgentPool, SetupTimings
from .protocol import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    MALFORMED_JSON,
    METHOD_NOT_FOUND,
    RESOURCE_NOT_FOUND,
    SESSION_BUSY,
    ErrorResponse,
    LocalProtocolError,
    Message,
    Notification,
    ProtocolError,
    Request,
    RequestId,
    Response,
    get_str,
    object_members,
    rewrite_members,
)
from .restore import restore_session
from .session import STATE_KINDS, Session

__all__ = ["Proxy"]

_encoder: Final = msgspec.json.Encoder()
#: What the proxy serves itself, whatever the agent supports (design §2).
_PROXY_SESSION_CAPABILITIES: Final = ("list", "resume", "close", "delete")
#: Agent session capabilities passed through as they are (they describe request params).
_PASSTHROUGH_SESSION_CAPABILITIES: Final = ("additionalDirectories",)

Handler = Callable[[ClientConnection, Request], Awaitable[None]]


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
        self._clients = 0
        self.log = get_logger(component="proxy")
        self._requests: dict[str, Handler] = {
            "initialize": self._initialize,
            "authenticate": self._authenticate,
            "session/new": self._session_new,
            "session/load": self._session_load,
            "session/resume": self._session_resume,
            "session/prompt": self._session_prompt,
            "session/cancel": self._session_cancel_request,
            "session/set_mode": self._session_set_mode,
            "session/set_config_option": self._session_set_config_option,
            "session/set_model": self._session_forward,
            "session/list": self._session_list,
            "session/close": self._session_close,
            "session/delete": self._session_delete,
        }
        #: Slow handlers (they may spawn an agent) run beside the connection's reader.
        self._background: frozenset[str] = frozenset({"session/new", "authenticate"})

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
        self, cwd: str, env: dict[str, str] | None = None
    ) -> tuple[AgentProcess, SetupTimings]:
        """An initialized agent for a conversation, within ``max_live_agents``."""
        self.make_room()
        return await self.pool.acquire(cwd, env)

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
        return self._session_id(msg.params)

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
        handler = self._requests.get(msg.method)
        if handler is None:
            if msg.method.startswith("_"):
                handler = self._session_forward
            else:
                client.send_error(
                    msg.id,
                    METHOD_NOT_FOUND,
                    f"Method not found: {msg.method}",
                    {"method": msg.method},
                )
                return
        if msg.method in self._background and client.tg is not None:
            client.tg.start_soon(self._guarded, handler, client, msg)
        else:
            await self._guarded(handler, client, msg)

    async def _guarded(self, handler: Handler, client: ClientConnection, req: Request) -> None:
        try:
            await handler(client, req)
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
            session = self.sessions.get(self._session_id(msg.params) or "")
            if session is not None:
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
            session = self.sessions.get(self._session_id(msg.params) or "")
            if session is not None and session.live:
                assert session.agent is not None and session.upstream_id is not None
                params = rewrite_members(object_members(msg.params), sessionId=session.upstream_id)
                session.agent.send_notification(msg.method, params)
        else:
            client.log.debug("client.notification_ignored", method=msg.method)

    @staticmethod
    def _session_id(params: Raw) -> str | None:
        try:
            return get_str(object_members(params), "sessionId")
        except ProtocolError:
            return None

    async def _ready_session(
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
        if not session.live:
            async with session.lock:
                if not session.live:
                    await restore_session(
                        self,
                        session,
                        mcp_servers=members.get("mcpServers"),
                        additional_directories=members.get("additionalDirectories"),
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

    # -- handlers ----------------------------------------------------------------------------

    async def _initialize(self, client: ClientConnection, req: Request) -> None:
        info = await self.pool.ensure_agent_info()
        caps = dict(info.get("agentCapabilities") or {})
        agent_session_caps = caps.get("sessionCapabilities")
        session_caps: dict[str, Any] = {
            key: value
            for key, value in (agent_session_caps or {}).items()
            if key in _PASSTHROUGH_SESSION_CAPABILITIES
        }
        session_caps.update({key: {} for key in _PROXY_SESSION_CAPABILITIES})
        caps["loadSession"] = True
        caps["sessionCapabilities"] = session_caps
        caps.pop("auth", None)  # logout is per agent process; not offered through the proxy
        result: dict[str, Any] = {
            "protocolVersion": info.get("protocolVersion", 1),
            "agentCapabilities": caps,
            "authMethods": info.get("authMethods", []),
        }
        if "agentInfo" in info:
            result["agentInfo"] = info["agentInfo"]
        result["_meta"] = {"acp-proxy": {"version": "0.1.0"}}
        client.send_response(req.id, result)

    async def _authenticate(self, client: ClientConnection, req: Request) -> None:
        agent = await self.pool.any_agent()
        try:
            result = await agent.call("authenticate", req.params)
        except AgentError as exc:
            client.send_error(req.id, exc.reply.code, exc.reply.message, raw=exc.reply.error)
            return
        # Every agent spawned from now on authenticates the same way. (Agents already serving
        # a conversation were started with whatever credentials they found.)
        self.pool.auth_params = req.params
        client.send_response(req.id, result)

    async def _session_new(self, client: ClientConnection, req: Request) -> None:
        members = object_members(req.params)
        cwd = get_str(members, "cwd")
        if cwd is None or not os.path.isabs(cwd):
            raise LocalProtocolError(
                'Invalid params: session/new needs "cwd", an absolute path', INVALID_PARAMS
            )
        received = time.monotonic()
        env = self.process_env(client)
        agent, setup = await self.acquire_agent(cwd, env)
        now = time.time()
        record = SessionRecord(
            id="sess_" + secrets.token_hex(16),  # 128 random bits, minted by the proxy
            cwd=cwd,
            agent_profile=self.config.agent_profile,
            mcp_servers=bytes(members.get("mcpServers", b"[]")),
            additional_directories=(
                bytes(members["additionalDirectories"])
                if "additionalDirectories" in members
                else None
            ),
            created_at=now,
            updated_at=now,
        )
        session = Session(self, record, env=env)
        session.held = []  # early updates wait until the client has the session id
        await self.store.commit([PutSession(record)])
        agent.handler = session
        session.agent = agent
        started = time.monotonic()
        try:
            result = await agent.call("session/new", req.params)
        except (AgentError, AgentExited) as exc:
            await self.store.commit([DeleteSession(record.id)])
            agent.handler = UNBOUND
            if isinstance(exc, AgentError):
                if agent.alive:
                    self.pool.spares.append(agent)
                client.send_error(req.id, exc.reply.code, exc.reply.message, raw=exc.reply.error)
            else:
                client.send_error(
                    req.id, INTERNAL_ERROR, f"session/new failed: {exc}", exc.info.as_data()
                )
            return
        upstream = result.get("sessionId")
        if not isinstance(upstream, str):
            agent.stop()
            await self.store.commit([DeleteSession(record.id)])
            raise LocalProtocolError(
                "the agent answered session/new without a sessionId", INTERNAL_ERROR
            )
        setup.session_init_ms = (time.monotonic() - started) * 1000
        session.upstream_id = upstream
        session.record = msgspec.structs.replace(session.record, upstream_session_id=upstream)
        session.setup = setup
        ops: list[Any] = [UpdateSession(record.id, time.time(), upstream_session_id=upstream)]
        if isinstance(result.get("modes"), dict):
            session.record = msgspec.structs.replace(
                session.record, modes=_encoder.encode(result["modes"])
            )
            ops.append(UpdateSession(record.id, time.time(), modes=session.record.modes))
        if isinstance(result.get("configOptions"), list):
            session.set_config_options(_encoder.encode(result["configOptions"]), ops)
        await self.store.commit(ops)
        self.sessions[record.id] = session
        session.log.info(
            "session.created",
            upstream_session_id=upstream,
            agent=setup.agent,
            agent_pid=agent.pid,
            cwd=cwd,
            setup_ms=round((time.monotonic() - received) * 1000, 3),
        )
        result["sessionId"] = record.id
        if self.config.client_profile == "open-design":
            result["openCodeSessionId"] = record.id  # the durable handle the daemon stores
        session.attach(client)
        client.send_response(req.id, result)
        session.release_held()

    def _session_state(self, session: Session) -> dict[str, Raw]:
        state: dict[str, Raw] = {}
        if session.record.modes:
            state["modes"] = Raw(session.record.modes)
        if session.record.config_options:
            state["configOptions"] = Raw(session.record.config_options)
        return state

    async def _session_load(self, client: ClientConnection, req: Request) -> None:
        await self._attach(client, req, replay=True)

    async def _session_resume(self, client: ClientConnection, req: Request) -> None:
        await self._attach(client, req, replay=False)

    async def _attach(self, client: ClientConnection, req: Request, *, replay: bool) -> None:
        started = time.monotonic()
        session = await self._ready_session(req.params, client, check_cwd=True)
        state = self._session_state(session)
        if self.config.client_profile == "open-design":
            # This daemon treats any update before its prompt as new output: no replay, and
            # the result names the session (it fails the run otherwise).
            replay = False
            state["sessionId"] = state["openCodeSessionId"] = Raw(_encoder.encode(session.id))
        await session.replay_to(client, replay=replay)
        client.send_response(req.id, _encoder.encode(state))
        session.release_held()
        session.log.info(
            "session.attached",
            client=client.number,
            replay=replay,
            ms=round((time.monotonic() - started) * 1000, 3),
        )

    async def _session_prompt(self, client: ClientConnection, req: Request) -> None:
        received = time.monotonic()
        session = await self._ready_session(req.params, client)
        if session.turn is not None:
            raise LocalProtocolError(
                f"session {session.id} is already running turn {session.turn.seq}; one prompt "
                "at a time per session: wait for its response or send session/cancel",
                SESSION_BUSY,
                {"kind": "turn_in_progress", "sessionId": session.id, "turn": session.turn.seq},
            )
        ops = session.begin_turn(client, req, received)
        try:
            # Queued now, in order before anything the agent answers; the prompt goes out
            # without waiting for the disk (the commit is awaited right after).
            pending = self.store.submit(ops)
        except BaseException:
            session.turn = None
            raise
        user_last_seq = session.forward_prompt(req)
        try:
            await self.store.wait_committed(pending)
        except StoreError:
            session.log.exception("store.commit_failed", what="turn start")
        session.mark_delivered(user_last_seq)

    async def _session_cancel_request(self, client: ClientConnection, req: Request) -> None:
        # Some clients send session/cancel as a request (open-design): honour and answer it.
        sid = self._session_id(req.params)
        session = self.sessions.get(sid or "")
        if session is not None:
            session.cancel_turn()
        client.send_response(req.id, b"{}")

    async def _session_forward(
        self,
        client: ClientConnection,
        req: Request,
        on_success: Callable[[Session, Response, Batch], None] | None = None,
    ) -> None:
        if req.method.startswith("_") and self._session_id(req.params) is None:
            raise LocalProtocolError(
                f"Method not found: {req.method} (extension requests are routed to the agent "
                "by params.sessionId, and this one has none)",
                METHOD_NOT_FOUND,
            )
        session = await self._ready_session(req.params, client)
        agent = session.agent
        assert agent is not None and session.upstream_id is not None
        params = rewrite_members(object_members(req.params), sessionId=session.upstream_id)

        def on_reply(reply: Response | ErrorResponse, batch: Batch) -> None:
            client.inflight.pop(req.id, None)
            if isinstance(reply, Response):
                if on_success is not None:
                    on_success(session, reply, batch)
                batch.deliveries.append(lambda: client.send_response(req.id, reply.result))
            else:
                batch.deliveries.append(
                    lambda: client.send_error(req.id, reply.code, reply.message, raw=reply.error)
                )

        session.attach(client)
        client.inflight[req.id] = (agent, agent.send_request(req.method, params, on_reply))

    async def _session_set_mode(self, client: ClientConnection, req: Request) -> None:
        mode_id = get_str(object_members(req.params), "modeId")

        def remember(session: Session, reply: Response, batch: Batch) -> None:
            if mode_id is not None:
                session.set_current_mode(mode_id, batch.ops)

        await self._session_forward(client, req, remember)

    async def _session_set_config_option(self, client: ClientConnection, req: Request) -> None:
        def remember(session: Session, reply: Response, batch: Batch) -> None:
            try:
                options = object_members(reply.result).get("configOptions")
            except ProtocolError:
                return
            if options is not None:
                session.set_config_options(bytes(options), batch.ops)

        await self._session_forward(client, req, remember)

    async def _session_list(self, client: ClientConnection, req: Request) -> None:
        members = object_members(req.params)
        try:
            records, next_cursor = await self.store.list_sessions(
                cwd=get_str(members, "cwd"), cursor=get_str(members, "cursor")
            )
        except ValueError:
            raise LocalProtocolError(
                'Invalid params: "cursor" must be a nextCursor from an earlier session/list',
                INVALID_PARAMS,
            ) from None
        sessions = []
        for record in records:
            item: dict[str, Any] = {
                "sessionId": record.id,
                "cwd": record.cwd,
                "updatedAt": datetime.fromtimestamp(record.updated_at, UTC)
                .isoformat(timespec="seconds")
                .replace("+00:00", "Z"),
            }
            if record.title is not None:
                item["title"] = record.title
            if record.additional_directories:
                item["additionalDirectories"] = Raw(record.additional_directories)
            sessions.append(item)
        result: dict[str, Any] = {"sessions": sessions}
        if next_cursor is not None:
            result["nextCursor"] = next_cursor
        client.send_response(req.id, result)

    async def _session_close(self, client: ClientConnection, req: Request) -> None:
        sid = self._session_id(req.params)
        if sid is None:
            raise LocalProtocolError('Invalid params: "sessionId" is required', INVALID_PARAMS)
        session = self.sessions.get(sid)
        if session is None and await self.store.get_session(sid) is None:
            raise LocalProtocolError(
                f"Resource not found: no session {sid}", RESOURCE_NOT_FOUND, {"sessionId": sid}
            )
        if session is not None:
            self._end_agent(session)
        await self.store.commit([UpdateSession(sid, time.time(), state="closed")])
        client.send_response(req.id, b"{}")

    async def _session_delete(self, client: ClientConnection, req: Request) -> None:
        sid = self._session_id(req.params)
        if sid is None:
            raise LocalProtocolError('Invalid params: "sessionId" is required', INVALID_PARAMS)
        session = self.sessions.pop(sid, None)
        if session is not None:
            self._end_agent(session)
        # Deleting an unknown session succeeds silently (session-delete.mdx).
        await self.store.commit([DeleteSession(sid)])
        client.send_response(req.id, b"{}")

    def _end_agent(self, session: Session) -> None:
        if session.turn is not None:
            session.cancel_turn()
        self.log_session(session, "session.closed")
        session.retire_agent()

    # -- lifecycle ---------------------------------------------------------------------------

    def on_client_closed(self, client: ClientConnection) -> None:
        """A client went away: its sessions keep their agents; pending asks are answered."""
        for session in list(client.sessions):
            session.detach(client)
        client.sessions.clear()
        client.inflight.clear()

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


#: Messages that never wait in a session's gate (no session, or handled beside the reader).
_UNGATED: Final = frozenset(
    {"initialize", "authenticate", "session/new", "session/list", ENV_METHOD}
)


def _is_lost_session(req: Request, exc: ProtocolError) -> bool:
    """An unknown session, or one no rung of the restore ladder could bring back."""
    return req.method in ("session/load", "session/resume", "session/prompt") and (
        exc.code == RESOURCE_NOT_FOUND
    )
