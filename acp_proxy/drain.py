"""Graceful drain: what ``serve`` does between SIGTERM and stopping the agents.

Theory of operation
-------------------
1. The proxy is marked *stopping*. It still accepts connections (a client that connects gets
   an answer it can act on, not a refused connect), but every request that would start new
   work gets error ``-32012`` with ``data.kind = "proxy_stopping"``: only ``session/cancel``
   and ``_acp-proxy/status`` are still served. Notifications and answers to the agents'
   requests (permissions) flow as before, so running turns can finish.
2. Running turns get up to ``drain_timeout_s`` to finish and deliver: the drain waits until
   no session is in a turn or being restored, no request is being handled or waiting for an
   agent's answer (a ``session/new`` spawning an agent finishes and is answered), no agent
   has output waiting for its commit, and every client's outbox is written out.
3. What is left is cancelled: ``session/cancel`` to the agent, the turn stored as
   ``cancelled``, and the pending ``session/prompt`` answered with ``proxy_stopping``.
4. Those answers are flushed (bounded), then the caller stops the agents as before.

A second signal ends step 2 at once (steps 3 and 4 still run: a few milliseconds). Requests
other than prompts still running when step 2 ends (a ``session/new`` whose agent takes longer
than the drain to start) are cut when the agents stop: their client sees the connection end.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import anyio

from store import StoreError

from .lifecycle import State
from .logs import get_logger
from .stopping import stopping_error

if TYPE_CHECKING:
    from .proxy import Proxy

__all__ = ["drain"]

#: How often the drain looks whether the proxy is idle (an in-memory check, no I/O).
_POLL_S: Final = 0.02
#: Bound on writing out the last answers after the drain.
_FLUSH_S: Final = 2.0


def _busy(proxy: Proxy) -> bool:
    # A handler still running (session/new spawning an agent, a load restoring one), or a
    # request forwarded to an agent and not answered yet: its answer is on the way.
    if proxy.handling or any(client.inflight for client in proxy.clients):
        return True
    for session in proxy.hub.sessions.values():
        if session.turn is not None or session.state is State.BINDING:
            return True
        agent = session.agent
        if agent is not None and agent.undelivered:
            return True
    return not _flushed(proxy)


def _flushed(proxy: Proxy) -> bool:
    return all(client.outbox.idle or client.closed for client in proxy.clients)


async def _wait_until(proxy: Proxy, done: Callable[[Proxy], bool]) -> None:
    # Idle spans sessions, agents and outboxes: no one event says so. A 20 ms poll of
    # in-memory state, for at most drain_timeout_s, costs nothing worth an event per part.
    while not done(proxy):  # noqa: ASYNC110 (bounded by the caller's deadline)
        await anyio.sleep(_POLL_S)


async def drain(proxy: Proxy, timeout_s: float, wait: anyio.CancelScope) -> None:
    """Run steps 1-4 above; cancelling ``wait`` (a second signal) ends step 2 early."""
    log = get_logger(component="drain")
    started = time.monotonic()
    proxy.stopping = True
    running = sum(1 for s in proxy.hub.sessions.values() if s.turn is not None)
    log.info("serve.draining", turns=running, timeout_s=timeout_s)
    with wait, anyio.move_on_after(timeout_s):
        await _wait_until(proxy, lambda p: not _busy(p))
    cancelled = 0
    for session in list(proxy.hub.sessions.values()):
        abandoned = session.abandon_turn()
        if abandoned is None:
            continue
        turn, ops = abandoned
        cancelled += 1
        try:
            await proxy.hub.store.commit(ops)
        except StoreError:
            session.log.exception("store.commit_failed", what="turn cancelled by the drain")
        code, message, data = stopping_error("session/prompt")
        data.update({"sessionId": session.id, "turn": turn.seq, "turnOutcome": "cancelled"})
        message = (
            f"turn {turn.seq} was cancelled: the proxy is stopping and the turn did not finish "
            f"within drain_timeout_s ({timeout_s:g} s); its output so far is recorded"
        )
        turn.client.send_error(turn.client_id, code, message, data)
    with anyio.move_on_after(_FLUSH_S):
        await _wait_until(proxy, _flushed)
    log.info(
        "serve.drained",
        turns_finished=running - cancelled,
        turns_cancelled=cancelled,
        skipped=wait.cancel_called,
        drain_s=round(time.monotonic() - started, 3),
    )
