"""What each client method means: the handlers of the requests a client sends.

Each is ``async def method(proxy, client, req)``; :class:`~acp_proxy.proxy.Proxy` dispatches to
them (``METHODS``) and turns a raised :class:`~acp_proxy.protocol.ProtocolError` into the
error answer. ``session/new`` and ``authenticate`` may spawn an agent, so they run beside the
connection's reader (``BACKGROUND``); requests for a session being restored wait in that
session's gate (see ``Proxy.handle``).
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import msgspec
from msgspec import Raw

from store import DeleteSession, PutSession, SessionRecord, StoreError, UpdateSession

from .access import check_cwd, check_session_access, listed_creator, may_use
from .agent import UNBOUND, AgentError, AgentExited, Batch
from .client import ClientConnection
from .protocol import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    METHOD_NOT_FOUND,
    RESOURCE_NOT_FOUND,
    SESSION_BUSY,
    ErrorResponse,
    LocalProtocolError,
    ProtocolError,
    Request,
    Response,
    get_str,
    object_members,
    rewrite_members,
)
from .session import Session

if TYPE_CHECKING:
    from .proxy import Proxy

__all__ = ["BACKGROUND", "METHODS", "MethodHandler", "session_forward", "session_id_of"]

_encoder: Final = msgspec.json.Encoder()
#: What the proxy serves itself, whatever the agent supports (design §2).
_PROXY_SESSION_CAPABILITIES: Final = ("list", "resume", "close", "delete")
#: Agent session capabilities passed through as they are (they describe request params).
_PASSTHROUGH_SESSION_CAPABILITIES: Final = ("additionalDirectories",)

MethodHandler = Callable[["Proxy", ClientConnection, Request], Awaitable[None]]


def session_id_of(params: Raw) -> str | None:
    """The ``sessionId`` string member of request params, or None."""
    try:
        return get_str(object_members(params), "sessionId")
    except ProtocolError:
        return None


async def initialize(proxy: Proxy, client: ClientConnection, req: Request) -> None:
    info = await proxy.pool.ensure_agent_info()
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


async def authenticate(proxy: Proxy, client: ClientConnection, req: Request) -> None:
    # Scoped to this client (its params may hold an API key): the agent that took them is
    # kept for this client's next session/new, and agents started later for this client's
    # sessions authenticate the same way; spares other clients take never see them.
    try:
        result = await proxy.pool.authenticate_for(client.number, req.params)
    except AgentError as exc:
        client.send_error(req.id, exc.reply.code, exc.reply.message, raw=exc.reply.error)
        return
    client.auth_params = req.params
    client.send_response(req.id, result)


async def session_new(proxy: Proxy, client: ClientConnection, req: Request) -> None:
    members = object_members(req.params)
    cwd = get_str(members, "cwd")
    if cwd is None or not os.path.isabs(cwd):
        raise LocalProtocolError(
            'Invalid params: session/new needs "cwd", an absolute path', INVALID_PARAMS
        )
    check_cwd(proxy.config, cwd)
    received = time.monotonic()
    env = proxy.process_env(client)
    agent, setup = await proxy.acquire_agent(cwd, env, client.auth_params, client.number)
    now = time.time()
    record = SessionRecord(
        id="sess_" + secrets.token_hex(16),  # 128 random bits, minted by the proxy
        cwd=cwd,
        agent_profile=proxy.config.agent_profile,
        mcp_servers=bytes(members.get("mcpServers", b"[]")),
        additional_directories=(
            bytes(members["additionalDirectories"]) if "additionalDirectories" in members else None
        ),
        created_at=now,
        updated_at=now,
        creator_uid=client.peer_uid,
    )
    session = Session(proxy, record, env=env)
    session.held = []  # early updates wait until the client has the session id
    try:
        await proxy.store.commit([PutSession(record)])
    except StoreError:
        proxy.pool.give_back(agent)  # unbound still: another session can use it
        raise
    agent.handler = session
    session.agent = agent
    started = time.monotonic()
    try:
        result = await agent.call("session/new", req.params)
    except (AgentError, AgentExited) as exc:
        await proxy.store.commit([DeleteSession(record.id)])
        agent.handler = UNBOUND
        if isinstance(exc, AgentError):
            if agent.alive:
                proxy.pool.spares.append(agent)
            client.send_error(req.id, exc.reply.code, exc.reply.message, raw=exc.reply.error)
        else:
            client.send_error(
                req.id, INTERNAL_ERROR, f"session/new failed: {exc}", exc.info.as_data()
            )
        return
    upstream = result.get("sessionId")
    if not isinstance(upstream, str):
        agent.stop()
        await proxy.store.commit([DeleteSession(record.id)])
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
    try:
        await proxy.store.commit(ops)
    except StoreError:
        agent.stop()  # a session the store does not know could never be loaded again
        raise
    proxy.sessions[record.id] = session
    session.log.info(
        "session.created",
        upstream_session_id=upstream,
        agent=setup.agent,
        agent_pid=agent.pid,
        cwd=cwd,
        setup_ms=round((time.monotonic() - received) * 1000, 3),
    )
    result["sessionId"] = record.id
    if proxy.config.client_profile == "open-design":
        result["openCodeSessionId"] = record.id  # the durable handle the daemon stores
    session.attach(client)
    client.send_response(req.id, result)
    session.release_held()


def session_state(session: Session) -> dict[str, Raw]:
    state: dict[str, Raw] = {}
    if session.record.modes:
        state["modes"] = Raw(session.record.modes)
    if session.record.config_options:
        state["configOptions"] = Raw(session.record.config_options)
    return state


async def session_load(proxy: Proxy, client: ClientConnection, req: Request) -> None:
    await attach(proxy, client, req, replay=True)


async def session_resume(proxy: Proxy, client: ClientConnection, req: Request) -> None:
    await attach(proxy, client, req, replay=False)


async def attach(proxy: Proxy, client: ClientConnection, req: Request, *, replay: bool) -> None:
    started = time.monotonic()
    session = await proxy.ready_session(req.params, client, check_cwd=True)
    state = session_state(session)
    if proxy.config.client_profile == "open-design":
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


async def session_prompt(proxy: Proxy, client: ClientConnection, req: Request) -> None:
    received = time.monotonic()
    session = await proxy.ready_session(req.params, client)
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
        pending = proxy.store.submit(ops)
    except BaseException:
        session.turn = None
        raise
    user_last_seq = session.forward_prompt(req)
    try:
        await proxy.store.wait_committed(pending)
    except StoreError:
        session.log.exception("store.commit_failed", what="turn start")
    session.mark_delivered(user_last_seq)


async def session_cancel_request(proxy: Proxy, client: ClientConnection, req: Request) -> None:
    # Some clients send session/cancel as a request (open-design): honour and answer it.
    sid = session_id_of(req.params)
    session = proxy.sessions.get(sid or "")
    if session is not None and may_use(proxy.config, client.peer_uid, session.record):
        session.cancel_turn()
    client.send_response(req.id, b"{}")


async def session_forward(
    proxy: Proxy,
    client: ClientConnection,
    req: Request,
    on_success: Callable[[Session, Response, Batch], None] | None = None,
) -> None:
    if req.method.startswith("_") and session_id_of(req.params) is None:
        raise LocalProtocolError(
            f"Method not found: {req.method} (extension requests are routed to the agent "
            "by params.sessionId, and this one has none)",
            METHOD_NOT_FOUND,
        )
    session = await proxy.ready_session(req.params, client)
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


async def session_set_mode(proxy: Proxy, client: ClientConnection, req: Request) -> None:
    mode_id = get_str(object_members(req.params), "modeId")

    def remember(session: Session, reply: Response, batch: Batch) -> None:
        if mode_id is not None:
            session.set_current_mode(mode_id, batch.ops)

    await session_forward(proxy, client, req, remember)


async def session_set_config_option(proxy: Proxy, client: ClientConnection, req: Request) -> None:
    def remember(session: Session, reply: Response, batch: Batch) -> None:
        try:
            options = object_members(reply.result).get("configOptions")
        except ProtocolError:
            return
        if options is not None:
            session.set_config_options(bytes(options), batch.ops)

    await session_forward(proxy, client, req, remember)


async def session_list(proxy: Proxy, client: ClientConnection, req: Request) -> None:
    members = object_members(req.params)
    try:
        records, next_cursor = await proxy.store.list_sessions(
            cwd=get_str(members, "cwd"),
            cursor=get_str(members, "cursor"),
            creator_uid=listed_creator(proxy.config, client.peer_uid),
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


async def session_close(proxy: Proxy, client: ClientConnection, req: Request) -> None:
    sid = session_id_of(req.params)
    if sid is None:
        raise LocalProtocolError('Invalid params: "sessionId" is required', INVALID_PARAMS)
    session = proxy.sessions.get(sid)
    record = session.record if session is not None else await proxy.store.get_session(sid)
    if record is None:
        raise LocalProtocolError(
            f"Resource not found: no session {sid}", RESOURCE_NOT_FOUND, {"sessionId": sid}
        )
    check_session_access(proxy.config, client.peer_uid, record)
    if session is not None:
        end_agent(proxy, session)
    await proxy.store.commit([UpdateSession(sid, time.time(), state="closed")])
    client.send_response(req.id, b"{}")


async def session_delete(proxy: Proxy, client: ClientConnection, req: Request) -> None:
    sid = session_id_of(req.params)
    if sid is None:
        raise LocalProtocolError('Invalid params: "sessionId" is required', INVALID_PARAMS)
    record = proxy.sessions[sid].record if sid in proxy.sessions else None
    if record is None and proxy.config.session_access == "creator":
        record = await proxy.store.get_session(sid)
    if record is not None:
        check_session_access(proxy.config, client.peer_uid, record)
    session = proxy.sessions.pop(sid, None)
    if session is not None:
        end_agent(proxy, session)
    # Deleting an unknown session succeeds silently (session-delete.mdx).
    await proxy.store.commit([DeleteSession(sid)])
    client.send_response(req.id, b"{}")


def end_agent(proxy: Proxy, session: Session) -> None:
    if session.turn is not None:
        session.cancel_turn()
    proxy.log_session(session, "session.closed")
    session.retire_agent()


METHODS: Final[dict[str, MethodHandler]] = {
    "initialize": initialize,
    "authenticate": authenticate,
    "session/new": session_new,
    "session/load": session_load,
    "session/resume": session_resume,
    "session/prompt": session_prompt,
    "session/cancel": session_cancel_request,
    "session/set_mode": session_set_mode,
    "session/set_config_option": session_set_config_option,
    "session/set_model": session_forward,
    "session/list": session_list,
    "session/close": session_close,
    "session/delete": session_delete,
}
#: Slow handlers (they may spawn an agent) run beside the connection's reader.
BACKGROUND: Final = frozenset({"session/new", "authenticate"})
