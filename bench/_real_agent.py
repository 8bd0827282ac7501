"""What ``bench.opencode_turn`` and ``bench.claude_turn`` share: a real agent's continued turns
with the fake model of ``tests/real_agent`` (whose answers say how many user messages it saw),
re-spawned (A) against one warm agent behind the proxy (B)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from acp_proxy.testing.client import AcpClient, Reply
from acp_proxy.testing.proxy_process import ProxyHandle
from bench._common import (
    ContinuedRun,
    agent_text,
    alternate,
    continued_turn,
    first_token,
    ms,
    served_by,
)

__all__ = [
    "alternate_with_proxy",
    "checked_first_turn",
    "continued_turn_check",
    "continued_turn_via_proxy",
    "new_conversation",
    "real_agent_notes",
    "spawned_agents",
]


def continued_turn_check(reply: Reply, n: int, what: str = "") -> float:
    """The first-token time of turn ``n`` of a real agent's conversation with the fake model of
    ``tests/real_agent``, after checking that it continued the conversation."""
    what = what or f"continued turn {n}"
    first = first_token(reply, what)
    expected = f"I have seen {n} user messages. Last: continued turn {n}"
    if n == 1:
        expected = "I have seen 1 user messages. Last: turn 1"
    text = agent_text(reply.updates())
    if text != expected:
        raise RuntimeError(f"{what}: expected {expected!r}, got {text!r}")
    return first


async def checked_first_turn(client: AcpClient, cwd: str, what: str) -> tuple[str, dict[str, Any]]:
    """Create a session and run turn 1 (checked as :func:`continued_turn_check` does); returns
    the session id and the initialize result."""
    info = await client.initialize()
    sid = await client.new_session(cwd)
    continued_turn_check(await client.prompt(sid, "turn 1"), 1, what)
    return sid, info


async def new_conversation(socket: str, cwd: str, what: str) -> str:
    """A client creates a session through the proxy, runs turn 1 (checked as
    :func:`continued_turn_check` does) and disconnects; returns the session id."""
    async with AcpClient.connect(socket) as client:
        return (await checked_first_turn(client, cwd, what))[0]


async def continued_turn_via_proxy(socket: str, cwd: str, sid: str, n: int) -> ContinuedRun:
    """Continued turn ``n`` from a new connection to the proxy (see :func:`continued_turn`)."""
    start = time.perf_counter()
    async with AcpClient.connect(socket) as client:
        return await continued_turn(client, sid, cwd, start, n, continued_turn_check)


def spawned_agents(logs: list[dict[str, Any]]) -> int:
    """How many agent processes the proxy spawned, from its log lines."""
    return sum(1 for e in logs if e.get("event") == "agent.spawned")


async def alternate_with_proxy(
    proxy: ProxyHandle,
    cwd: str,
    runs: int,
    limits: tuple[float, float, float],
    run_a: Callable[[int], Awaitable[ContinuedRun]],
    notes: dict[str, Any],
) -> tuple[list[ContinuedRun], list[ContinuedRun]]:
    """B's set-up on ``proxy`` (a first conversation in ``cwd``, then a
    pause so its replacement spare is up and idle), then ``runs`` continued turns alternating
    ``run_a`` and B. ``limits``: set-up, one run, the pause (seconds). Notes in ``notes`` how
    many agents the proxy spawned before (``b_spawned_before``) and after (``b_spawned``).
    """
    setup_s, run_s, settle_s = limits
    with anyio.fail_after(setup_s):
        session = await new_conversation(proxy.socket, cwd, "B turn 1")
    await anyio.sleep(settle_s)
    notes["b_spawned_before"] = spawned_agents(proxy.logs())
    runs_a, runs_b = await alternate(
        runs,
        run_s,
        run_a,
        lambda n: continued_turn_via_proxy(proxy.socket, cwd, session, n),
    )
    notes["b_spawned"] = spawned_agents(proxy.logs())
    return runs_a, runs_b


def real_agent_notes(
    agent: str,
    exit_what: str,
    runs_a: list[ContinuedRun],
    runs_b: list[ContinuedRun],
    notes: dict[str, Any],
) -> list[str]:
    """The closing lines of a real agent's continued-turn report: who served B, how many
    ``agent`` processes the proxy spawned, A's untimed ``exit_what``."""
    return [
        "",
        f"B served every continued turn with agent(s): {served_by(runs_b)}; the proxy spawned "
        f"{notes['b_spawned']} {agent} process(es) in all, "
        f"{notes['b_spawned'] - notes['b_spawned_before']} of them during the timed runs.",
        f"Not timed: A's {exit_what}, median "
        f"{ms(statistics.median(r.exit_s for r in runs_a))} ms (A pays it too, between turns).",
    ]
