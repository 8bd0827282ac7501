"""Bringing a conversation back into a new agent process: the restore ladder.

When a session is used whose agent is gone (idle eviction, crash, ``session/close``, proxy
restart), an agent is taken (warm spare or spawn) and the conversation is rebound with the best
primitive it advertises (design §3.3):

1. ``session/resume`` of the agent's own session id: nothing is replayed;
2. ``session/load`` with the agent's replay drained (neither recorded nor forwarded: the
   store already holds it, and agents rewrite ids, so no per-message de-duplication);
3. ``session/new``, and the recorded history goes once, in front of the next prompt, as the
   block described in :func:`acp_proxy.transcript.seed_block` (native updates, never a
   flattened transcript re-sent every turn).

Then the session's mode and config options (model) are re-applied. The rung taken is reported
in the next turn's timings (``agent: restored:<rung>``) and logged.

Only the session's owner task calls :func:`restore_session` (``owner.py``), so a client that
leaves cancels nothing of it; if it fails or is cancelled anyway (proxy shutdown) the agent it
took is stopped (left, when other conversations share it) and the session is left unbound,
never half bound.
"""

from __future__ import annotations

import time
from typing import Any, Final

import msgspec
from msgspec import Raw

from store import FinishTurn, SessionStore, UpdateSession

from .agent import AgentError, AgentExited, AgentProcess
from .lifecycle import Event
from .pool import AgentPool, SetupTimings
from .protocol import RESOURCE_NOT_FOUND, LocalProtocolError
from .session import Session
from .transcript import recorded_updates, seed_block

__all__ = ["RestoreFailed", "restore_session"]

_encoder: Final = msgspec.json.Encoder()
_decoder: Final = msgspec.json.Decoder()


class RestoreFailed(LocalProtocolError):
    """No rung of the ladder could bring the conversation back."""


def _bind_params(
    session: Session, mcp_servers: Raw | None, additional_directories: Raw | None
) -> dict[str, Any]:
    record = session.record
    params: dict[str, Any] = {
        "cwd": record.cwd,
        "mcpServers": mcp_servers if mcp_servers is not None else Raw(record.mcp_servers),
    }
    extra = additional_directories
    if extra is None and record.additional_directories:
        extra = Raw(record.additional_directories)
    if extra is not None:
        params["additionalDirectories"] = extra
    return params


async def _rebind(
    session: Session, agent: AgentProcess, params: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    """Try the rungs in order; returns the rung name and the agent's answer."""
    upstream = session.record.upstream_session_id
    failures: list[str] = []
    if upstream is not None:
        for rung, method in (("resume", "session/resume"), ("load", "session/load")):
            if not agent.supports(rung):
                continue
            session.draining = rung == "load"
            try:
                result = await agent.call(method, {**params, "sessionId": upstream})
            except AgentError as exc:
                failures.append(f"{method}: {exc.reply.code} {exc.reply.message}")
                continue
            finally:
                session.draining = False
            session.upstream_id = upstream
            return rung, result
    result = await agent.call("session/new", params)
    if not isinstance(result.get("sessionId"), str):
        raise RestoreFailed(
            "the agent answered session/new without a sessionId",
            RESOURCE_NOT_FOUND,
            {"kind": "restore_failed", "sessionId": session.id},
        )
    session.upstream_id = result["sessionId"]
    updates, skipped = recorded_updates(await session.store.event_payloads(session.id))
    if skipped:
        session.log.warning("restore.events_skipped", skipped=skipped, why="unreadable or too deep")
    session.seed = seed_block(session.id, updates, include_thoughts=session.config.seed_thoughts)
    if failures:
        session.log.info("restore.fell_back_to_new", failures=failures)
    return "new", result


async def _reapply_state(session: Session, agent: AgentProcess, answer: dict[str, Any]) -> None:
    """Put the session's mode and config options back as they were."""
    upstream = session.upstream_id
    ops: list[Any] = []
    wanted_modes = _decoder.decode(session.record.modes) if session.record.modes else None
    got_modes = answer.get("modes") if isinstance(answer.get("modes"), dict) else None
    wanted_mode = wanted_modes.get("currentModeId") if isinstance(wanted_modes, dict) else None
    if wanted_mode and got_modes and got_modes.get("currentModeId") != wanted_mode:
        await agent.call("session/set_mode", {"sessionId": upstream, "modeId": wanted_mode})
    elif got_modes is not None and wanted_modes is None:
        session.record = msgspec.structs.replace(session.record, modes=_encoder.encode(got_modes))
        ops.append(UpdateSession(session.id, time.time(), modes=session.record.modes))
    wanted_options = (
        _decoder.decode(session.record.config_options) if session.record.config_options else []
    )
    got = {o.get("id"): o for o in answer.get("configOptions") or [] if isinstance(o, dict)}
    final = answer.get("configOptions")
    for option in wanted_options if isinstance(wanted_options, list) else []:
        if not isinstance(option, dict) or option.get("id") not in got:
            continue
        if got[option["id"]].get("currentValue") == option.get("currentValue"):
            continue
        params: dict[str, Any] = {
            "sessionId": upstream,
            "configId": option["id"],
            "value": option.get("currentValue"),
        }
        if option.get("type") == "boolean":
            params["type"] = "boolean"
        reply = await agent.call("session/set_config_option", params)
        final = reply.get("configOptions", final)
    if isinstance(final, list):
        session.set_config_options(_encoder.encode(final), ops)
    if ops:
        await session.store.commit(ops)


async def restore_session(
    session: Session,
    pool: AgentPool,
    *,
    mcp_servers: Raw | None = None,
    additional_directories: Raw | None = None,
    auth: Raw | None = None,
) -> str:
    """Give an UNBOUND ``session`` a live agent again (see the module docstring):
    UNBOUND → BINDING → LIVE, or back to UNBOUND with the agent stopped. Returns the rung.
    ``auth``: the asking client's ``authenticate`` params, for a fresh agent.

    Raises:
        RestoreFailed: every rung failed or the agent could not start; ``data.kind`` is
            ``restore_failed``.
    """
    started = time.monotonic()
    session.lifecycle.handle(Event.BIND)
    agent: AgentProcess | None = None
    try:
        if session.turn is None:
            await _settle_unfinished_turn(session.store, session)
        host, setup = await pool.acquire(session.record.cwd, session.env, session, auth)
        agent = session.agent = host.agent
        pool.forget_preopened(agent)  # a spare's session opened ahead is not this one's
        session.drained = 0
        params = _bind_params(session, mcp_servers, additional_directories)
        async with host.binding_of(session):  # one bind at a time on a shared process
            if session.record.upstream_session_id is not None:  # a load's replay: drained
                host.route(session.record.upstream_session_id, session)
            rung, answer = await _rebind(session, agent, params)
            assert session.upstream_id is not None
            host.route(session.upstream_id, session, session.record.cwd)
        await _reapply_state(session, agent, answer)
        session.record = msgspec.structs.replace(
            session.record, upstream_session_id=session.upstream_id, state="active"
        )
        await session.store.commit(
            [
                UpdateSession(
                    session.id, time.time(), upstream_session_id=session.upstream_id, state="active"
                )
            ]
        )
    except BaseException as exc:
        # Unbind whatever happened: the agent taken is stopped (its slot frees when it has
        # exited), the session is UNBOUND and the next use starts over.
        if agent is not None:
            pool.leave(agent, session)  # a process other conversations share stays
        session.agent = session.upstream_id = session.seed = None
        session.lifecycle.handle(Event.BIND_FAILED)
        if isinstance(exc, LocalProtocolError) or not isinstance(exc, Exception):
            raise  # RestoreFailed, AgentStartError (at capacity, cannot start), cancellation
        if not isinstance(exc, AgentError | AgentExited):
            session.log.exception("restore.crashed")
        raise RestoreFailed(
            f"session {session.id} could not be restored into a new agent process: {exc}",
            RESOURCE_NOT_FOUND,
            {"kind": "restore_failed", "sessionId": session.id, "reason": str(exc)},
        ) from None
    session.lifecycle.handle(Event.BOUND)
    session.setup = SetupTimings(
        f"restored:{rung}",
        cli_ready_ms=setup.cli_ready_ms,
        session_init_ms=(time.monotonic() - started) * 1000 - setup.cli_ready_ms,
    )
    session.log.info(
        "session.restored",
        rung=rung,
        agent_pid=agent.pid,
        upstream_session_id=session.upstream_id,
        drained_updates=session.drained,
        seeded_updates=session.seed["text"].count("\n") - 2 if session.seed else 0,
        ms=round((time.monotonic() - started) * 1000, 3),
    )
    return rung


async def _settle_unfinished_turn(store: SessionStore, session: Session) -> None:
    """A turn left ``running`` by a dead agent or proxy has an unknown outcome: say so."""
    turns = await store.turns(session.id)
    if turns and turns[-1].outcome == "running":
        await store.commit(
            [FinishTurn(session.id, turns[-1].seq, time.time(), None, "unknown", None, None)]
        )
