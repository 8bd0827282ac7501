"""Benchmark 1: continued-turn time to first token, re-spawned agent vs. the proxy's warm agent.

Run ``python -m bench.continued_turn [--runs N] [--startup-delay S] [--session-init-delay S]
[--first-token-delay S] [--write BENCHMARKS.md]``.

Both scenarios use the bundled fake agent with the same knobs (by default opencode-like costs:
startup 1.5 s, session init 0.8 s, first token 0.1 s) and time one *continued* turn of an
existing conversation, from just before the client starts a process / opens a connection to the
first ``agent_message_chunk`` / ``agent_thought_chunk`` of the prompt:

* A (re-spawned agent, as daemons do today): spawn the agent on stdio with ``--state-dir`` so it
  can load the session an earlier process created, ``initialize``, ``session/load``,
  ``session/prompt``.
* B (through the proxy): a new client connection to one long-lived proxy whose agent is already
  warm, ``initialize``, ``session/load`` (replayed from the proxy's store), ``session/prompt``.

A and B alternate run by run (A, B, A, B, ...) so that machine noise hits both alike.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import anyio

from acp_proxy.testing.client import AcpClient, Reply
from acp_proxy.testing.proxy_process import fake_agent_command, run_proxy
from bench._common import (
    AgentCosts,
    ContinuedRun,
    Stamp,
    agent_text,
    alternate,
    continued_turn,
    first_token,
    new_parser,
    parse,
    render_continued,
    report,
    run_main,
    served_by,
)

SECTION_TITLE = "## 1. Continued-turn time to first token (fake agent, opencode-like costs)"
GOAL_RATIO = 15.0
RUN_LIMIT_S = 60.0  #: one continued turn (either scenario) must finish within this
SETUP_LIMIT_S = 120.0
CWD = "/tmp"


def _check_continued(reply: Reply, n: int) -> float:
    """The first-token time of turn ``n``, after checking that the agent answered turn n of the
    same conversation, not a fresh session."""
    first = first_token(reply, f"continued turn {n}")
    text = agent_text(reply.updates())
    expected = f"[fake] turn {n}; context holds {n - 1} earlier turns"
    if expected not in text:
        raise RuntimeError(f"continued turn {n}: expected {expected!r} in the answer, got {text!r}")
    return first


# -- scenario A: the agent is re-spawned for every turn ----------------------------------------


async def setup_a(agent: list[str]) -> str:
    """A first agent process creates the session, runs turn 1 and exits."""
    async with AcpClient.spawn(agent) as client:
        await client.initialize()
        session_id = await client.new_session(CWD)
        first_token(await client.prompt(session_id, "turn 1"), "A turn 1")
    return session_id


async def run_a(agent: list[str], session_id: str, n: int) -> ContinuedRun:
    start = time.perf_counter()
    async with AcpClient.spawn(agent) as client:
        return await continued_turn(client, session_id, CWD, start, n, _check_continued)


# -- scenario B: through the proxy, the agent stays warm ---------------------------------------


async def setup_b(socket: str) -> str:
    """A first client creates the session through the proxy, runs turn 1 and disconnects."""
    async with AcpClient.connect(socket) as client:
        await client.initialize()
        session_id = await client.new_session(CWD)
        first_token(await client.prompt(session_id, "turn 1"), "B turn 1")
    return session_id


async def run_b(socket: str, session_id: str, n: int) -> ContinuedRun:
    start = time.perf_counter()
    async with AcpClient.connect(socket) as client:
        return await continued_turn(client, session_id, CWD, start, n, _check_continued)


# -- report ------------------------------------------------------------------------------------


def render(
    knobs: AgentCosts, runs_a: list[ContinuedRun], runs_b: list[ContinuedRun]
) -> tuple[str, float, bool]:
    """The markdown table and notes; returns (text, ratio, passed)."""
    lines, ratio, passed = render_continued(
        f"Fake agent knobs: `{' '.join(knobs.args())}`; {len(runs_a)} runs per scenario, "
        "alternating A, B, A, B, ...",
        (
            "A: re-spawned agent (spawn + initialize + session/load + prompt)",
            "B: proxy, warm agent (connect + initialize + session/load + prompt)",
        ),
        runs_a,
        runs_b,
        GOAL_RATIO,
    )
    lines += ["", f"B served every continued turn with agent(s): {served_by(runs_b)}."]
    return "\n".join(lines) + "\n", ratio, passed


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = new_parser("continued_turn", __doc__)
    parser.add_argument("--runs", type=int, default=5, help="runs per scenario (5)")
    parser.add_argument("--startup-delay", type=float, default=1.5)
    parser.add_argument("--session-init-delay", type=float, default=0.8)
    parser.add_argument("--first-token-delay", type=float, default=0.1)
    args = parse(parser, argv)
    if args.runs < 1:
        parser.error("--runs must be >= 1")
    return args


async def main() -> int:
    args = parse_args()
    knobs = AgentCosts(args.startup_delay, args.session_init_delay, args.first_token_delay)
    stamp = Stamp.now("continued_turn")
    with tempfile.TemporaryDirectory(prefix="acp-bench-") as tmp:
        state_dir = Path(tmp) / "agent-state"
        state_dir.mkdir()
        agent_a = fake_agent_command(*knobs.args(), "--state-dir", str(state_dir))
        with anyio.fail_after(SETUP_LIMIT_S):
            session_a = await setup_a(agent_a)
        async with run_proxy(Path(tmp) / "proxy", fake_agent_command(*knobs.args())) as proxy:
            with anyio.fail_after(SETUP_LIMIT_S):
                session_b = await setup_b(proxy.socket)
            runs_a, runs_b = await alternate(
                args.runs,
                RUN_LIMIT_S,
                lambda n: run_a(agent_a, session_a, n),
                lambda n: run_b(proxy.socket, session_b, n),
            )
    body, _ratio, passed = render(knobs, runs_a, runs_b)
    return report(SECTION_TITLE, stamp.header(), body, passed, args.write)


if __name__ == "__main__":
    run_main(main)
