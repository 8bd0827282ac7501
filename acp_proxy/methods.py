"""What each client method means: the handlers of the requests a client sends.

Each is ``async def method(hub, client, req)``; :class:`~acp_proxy.proxy.Proxy` dispatches to
them (``METHODS``) and turns a raised :class:`~acp_proxy.protocol.ProtocolError` into the
error answer. Whatever binds, closes or deletes a session goes through its owner task
(``owner.py``); a prompt waits behind the running turn (FIFO, ``max_queued_prompts``).
``session/new`` and ``authenticate`` may spawn an agent, so they run beside the connection's
reader (``BACKGROUND``); requests for a session being restored wait in that session's gate
(see ``Proxy.handle``).
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Final

import anyio
import msgspec
from msgspec import Raw

from store import StoreError

from . import __version__
from .access import check_cwd, check_session_access, listed_creator, may_use
from .agent import AgentError, Batch
from .client import ClientConnection
from .hub import Hub
from .lifecycle import State
from .owner import AgentRefused
from .protocol import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
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

__all__ = [
    "BACKGROUND",
    "METHODS",
    "MethodHandler",
    "run_guarded",
    "session_forward",
    "session_id_of",
]

_encoder: Final = msgspec.json.Encoder()
#: What the proxy serves itself, whatever the agent supports (design §2).
_PROXY_SESSION_CAPABILITIES: Final = ("list", "resume", "close", "delete")
#: Agent session capabilities passed through as they are (they describe request params).
_PASSTHROUGH_SESSION_CAPABILITIES: Final = ("additionalDirectories",)

MethodHandler = Callable[[Hub, ClientConnection, Request], Awaitable[None]]


def session_id_of(params: Raw) -> str | None:
    """The ``sessionId`` string member of request params, or None."""
    try:
        return get_str(object_members(params), "sessionId")
    except ProtocolError:
        return None


async def initialize(hub: Hub, client: ClientConnection, req: Request) -> None:
    info = await hub.pool.ensure_agent_info()
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
    result["_meta"] = {"acp-proxy": {"version": __version__}}
    client.send_response(req.id, result)


async def authenticate(hub: Hub, client: ClientConnection, req: Request) -> None:
    # Scoped to this client (its params may hold an API key): the agent that took them is
    # kept for this client's next session/new, and agents started later for this client's
    # sessions authenticate the same way; spares other clients take never see them.
    try:
        result = await hub.pool.authenticate_for(client.number, req.params)
    except AgentError as exc:
        client.send_error(req.id, exc.reply.code, exc.reply.message, raw=exc.reply.error)
        return
    client.auth_params = req.params
    client.send_response(req.id, result)


async def session_new(hub: Hub, client: ClientConnection, req: Request) -> None:
    members = object_members(req.params)
    cwd = get_str(members, "cwd")
    if cwd is None or not os.path.isabs(cwd):
        raise LocalProtocolError(
            'Invalid params: session/new needs "cwd", an absolute path', INVALID_PARAMS
        )
    check_cwd(hub.config, cwd)
    owner = await hub.new_session(
        cwd, req.params, hub.process_env(client.env), creator_uid=client.peer_uid
    )
    result = await owner.create(client, req.params, auth=client.auth_params)
    session = owner.session
    result["sessionId"] = session.id
    if hub.config.client_profile == "open-design":
        result["openCodeSessionId"] = session.id  # the durable handle the daemon stores
    client.send_response(req.id, result)
    session.release_held(client)


def session_state(session: Session) -> dict[str, Raw]:
    state: dict[str, Raw] = {}
    if session.record.modes:
        state["modes"] = Raw(session.record.modes)
    if session.record.config_options:
        state["configOptions"] = Raw(session.record.config_options)
    return state


async def session_load(hub: Hub, client: ClientConnection, req: Request) -> None:
    await attach(hub, client, req, replay=True)


async def session_resume(hub: Hub, client: ClientConnection, req: Request) -> None:
    await attach(hub, client, req, replay=False)


async def attach(hub: Hub, client: ClientConnection, req: Request, *, replay: bool) -> None:
    started = time.monotonic()
    session = await hub.ready_session(
        req.params,
        hub.process_env(client.env),
        check_cwd=True,
        peer_uid=client.peer_uid,
        auth=client.auth_params,
    )
    state = session_state(session)
    open_design = hub.config.client_profile == "open-design"
    if open_design:
        # This daemon treats any update before its prompt as new output: no replay, nor the
        # live lines of a turn another client runs; the result names the session (it fails
        # the run otherwise).
        replay = False
        state["sessionId"] = state["openCodeSessionId"] = Raw(_encoder.encode(session.id))
    await session.replay_to(client, replay=replay)
    if open_design and session.turn is not None and session.turn.client is not client:
        session.audience.mute(client, session.turn)
    client.send_response(req.id, _encoder.encode(state))
    session.release_held(client)
    session.log.info(
        "session.attached",
        client=client.number,
        replay=replay,
        ms=round((time.monotonic() - started) * 1000, 3),
    )


async def session_prompt(hub: Hub, client: ClientConnection, req: Request) -> None:
    received = time.monotonic()
    env = hub.process_env(client.env)
    session = await hub.ready_session(
        req.params, env, peer_uid=client.peer_uid, auth=client.auth_params
    )
    if session.turn is None and not session.prompt_queue:
        await _run_turn(hub, session, client, req, env, received, None)
        return
    # Another turn runs: queue in order now (a session/cancel read after this line answers
    # it cancelled), and wait beside the reader so the connection goes on meanwhile.
    waiter, generation = _enqueue(hub, session)
    assert client.tg is not None

    async def when_its_turn(hub: Hub, client: ClientConnection, req: Request) -> None:
        try:
            await waiter.wait()
        except BaseException:
            _leave_queue(session, waiter)
            raise
        if session.cancel_generation != generation:
            _leave_queue(session, waiter)
            client.send_response(req.id, b'{"stopReason":"cancelled"}')
            return
        await _run_turn(hub, session, client, req, env, received, waiter)

    client.tg.start_soon(run_guarded, hub, when_its_turn, client, req)


def _enqueue(hub: Hub, session: Session) -> tuple[anyio.Event, int]:
    """Queue a prompt behind the running turn (FIFO, bounded)."""
    turn = session.turn
    if len(session.prompt_queue) >= hub.config.max_queued_prompts:
        raise LocalProtocolError(
            f"session {session.id} is running turn {turn.seq if turn else '?'} with "
            f"{len(session.prompt_queue)} prompts queued behind it (max_queued_prompts); wait "
            "for a response or send session/cancel",
            SESSION_BUSY,
            {
                "kind": "turn_in_progress",
                "sessionId": session.id,
                "turn": turn.seq if turn else None,
            },
        )
    if turn is not None and turn.client.closed:
        # Nobody waits for the running turn's answer any more (its client was killed without
        # a session/cancel): cancel it rather than queue behind it.
        session.log.info("turn.abandoned_cancelled", turn=turn.seq)
        session.cancel_turn()
    waiter = anyio.Event()
    session.prompt_queue.append(waiter)
    return waiter, session.cancel_generation


def _leave_queue(session: Session, waiter: anyio.Event) -> None:
    session.prompt_queue.remove(waiter)
    if session.turn is None and session.prompt_queue:
        session.prompt_queue[0].set()  # the next one may go


async def _run_turn(
    hub: Hub,
    session: Session,
    client: ClientConnection,
    req: Request,
    env: dict[str, str],
    received: float,
    waiter: anyio.Event | None,
) -> None:
    try:
        for _attempt in range(3):  # bounded: the agent may die between two turns
            if session.state is State.LIVE:
                break
            session.require_not_deleted()
            await hub.owners[session.id].ensure_live(env)
        else:
            raise LocalProtocolError(
                f"session {session.id} lost its agent three times in a row; try again",
                INTERNAL_ERROR,
                {"kind": "agent_unstable", "sessionId": session.id},
            )
        ops = session.begin_turn(client, req, received)
        try:
            # Queued now, in order before anything the agent answers; the prompt goes out
            # without waiting for the disk (the commit is awaited right after).
            pending = hub.store.submit(ops)
        except BaseException:
            session.abort_turn()
            raise
        if hub.store.prompt_waits_for_commit and not pending.finished:
            # PostgreSQL: a turn the store never recorded must not reach the agent (a kill
            # -9 here would leave the agent holding an unknown turn). Shielded: once begun,
            # the turn is sent or ended, never left half started.
            with anyio.CancelScope(shield=True):
                await pending.wait()
        # The values of the bridge that sent this prompt are what this turn's tools see.
        hub.pool.tool_env.write(session.agent, client.env)
        user_last_seq = session.forward_prompt(req)
    finally:
        if waiter is not None:
            _leave_queue(session, waiter)
    try:
        await hub.store.wait_committed(pending)
    except StoreError:
        session.log.exception("store.commit_failed", what="turn start")
    session.mark_delivered(user_last_seq)


async def session_cancel_request(hub: Hub, client: ClientConnection, req: Request) -> None:
    # Some clients send session/cancel as a request (open-design): honour and answer it.
    sid = session_id_of(req.params)
    session = hub.sessions.get(sid or "")
    if session is not None and may_use(hub.config, client.peer_uid, session.record):
        session.cancel_turn()
    client.send_response(req.id, b"{}")


async def session_forward(
    hub: Hub,
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
    session = await hub.ready_session(
        req.params, hub.process_env(client.env), peer_uid=client.peer_uid, auth=client.auth_params
    )
    agent = session.agent
    if agent is None or session.upstream_id is None or not session.live:
        # Closed by another connection right after its restore: nothing to forward to.
        raise LocalProtocolError(
            f"session {session.id} was closed while this request waited; retry it",
            RESOURCE_NOT_FOUND,
            {"kind": "restore_failed", "sessionId": session.id},
        )
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


async def session_set_mode(hub: Hub, client: ClientConnection, req: Request) -> None:
    mode_id = get_str(object_members(req.params), "modeId")

    def remember(session: Session, reply: Response, batch: Batch) -> None:
        if mode_id is not None:
            session.set_current_mode(mode_id, batch.ops)

    await session_forward(hub, client, req, remember)


async def session_set_config_option(hub: Hub, client: ClientConnection, req: Request) -> None:
    def remember(session: Session, reply: Response, batch: Batch) -> None:
        try:
            options = object_members(reply.result).get("configOptions")
        except ProtocolError:
            return
        if options is not None:
            session.set_config_options(bytes(options), batch.ops)

    await session_forward(hub, client, req, remember)


async def session_list(hub: Hub, client: ClientConnection, req: Request) -> None:
    members = object_members(req.params)
    try:
        records, next_cursor = await hub.store.list_sessions(
            cwd=get_str(members, "cwd"),
            cursor=get_str(members, "cursor"),
            creator_uid=listed_creator(hub.config, client.peer_uid),
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


async def session_close(hub: Hub, client: ClientConnection, req: Request) -> None:
    sid = session_id_of(req.params)
    if sid is None:
        raise LocalProtocolError('Invalid params: "sessionId" is required', INVALID_PARAMS)
    session, owner = await hub.session(sid)
    check_session_access(hub.config, client.peer_uid, session.record)
    await hub.ownership.claim_session(sid)
    await owner.close()
    hub.ownership.release(sid)
    client.send_response(req.id, b"{}")


async def session_delete(hub: Hub, client: ClientConnection, req: Request) -> None:
    sid = session_id_of(req.params)
    if sid is None:
        raise LocalProtocolError('Invalid params: "sessionId" is required', INVALID_PARAMS)
    try:
        session, owner = await hub.session(sid)
    except LocalProtocolError as exc:
        if exc.code != RESOURCE_NOT_FOUND:
            raise
        # Deleting an unknown session succeeds silently (session-delete.mdx).
    else:
        check_session_access(hub.config, client.peer_uid, session.record)
        await hub.ownership.claim_session(sid)
        await owner.delete()
    client.send_response(req.id, b"{}")


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


async def run_guarded(
    hub: Hub, handler: MethodHandler, client: ClientConnection, req: Request
) -> None:
    """Run a handler; a :class:`ProtocolError` it raises becomes the request's error answer."""
    try:
        await handler(hub, client, req)
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
        if hub.config.client_profile == "open-design" and _is_lost_session(req, exc):
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
        if isinstance(exc, AgentRefused):
            client.send_error(req.id, exc.code, exc.message, raw=exc.raw)
            return
        client.send_error(req.id, exc.code, exc.message, exc.data)


def _is_lost_session(req: Request, exc: ProtocolError) -> bool:
    """A load or resume that cannot attach, whatever the reason (wrong cwd, unknown session,
    no rung of the restore ladder worked): the daemon takes any other load error as final and
    keeps its handle. A prompt only for an unknown or unrestorable session."""
    if req.method in ("session/load", "session/resume"):
        return True
    return req.method == "session/prompt" and exc.code == RESOURCE_NOT_FOUND


#: Slow handlers (they may spawn an agent) run beside the connection's reader.
BACKGROUND: Final = frozenset({"session/new", "authenticate"})
