"""Benchmark 12: the real ``claude-agent-acp``: continued-turn time to first token, and memory
per live conversation.

Run ``python -m bench.claude_turn [--runs N] [--conversations K] [--write BENCHMARKS.md]``
after ``scripts/install-claude-agent.sh`` (without it the benchmark says so and exits 0).

The same measurement as ``bench.opencode_turn``, but the agent is claude-agent-acp 0.23.1 (it
starts one Claude Code CLI process per session), offline, its model a local fake Anthropic
Messages API answering at once (so the figures are the agent's own costs plus the proxy's). One
continued turn of an existing conversation is timed from just before the client starts a
process / opens a connection to the first ``agent_message_chunk`` of the prompt:

* A (re-spawned agent, as daemons do today): spawn ``claude-agent-acp`` on stdio,
  ``initialize``, ``session/load`` of the session an earlier process created (the CLI's own
  transcript), ``session/prompt``; then (not timed) ``session/close`` and stdin closed: the
  agent ignores stdin EOF while it holds a session.
* B (through the proxy): a new client connection to one long-lived ``acp-proxy serve`` whose
  agent is already warm, ``initialize``, ``session/load`` (replayed from the proxy's store),
  ``session/prompt``.

A and B alternate run by run; each has its own private home (HOME, CLAUDE_CONFIG_DIR), and every
answer is checked to come from the same conversation (the fake model reports how many user
messages it was sent).

Memory, after the timed runs, on B's proxy: the proportional set size (``Pss`` of
``/proc/<pid>/smaps_rollup``: shared pages split between the processes that map them) of each
process under the proxy, with 1, 2, ... K+1 live conversations (each more one is created by its
own connection: ``session/new`` + one prompt). Per live conversation = the least-squares slope
of the whole tree's PSS over the number of live conversations; and each conversation's agent
(``claude-agent-acp``, node) and its CLI child apart.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from acp_proxy.testing.client import AcpClient
from acp_proxy.testing.proxy_process import ProxyHandle, run_proxy
from bench._common import (
    ContinuedRun,
    Stamp,
    children,
    continued_turn,
    least_squares_slope,
    load_average,
    new_parser,
    parse,
    render_continued,
    report,
    row,
    run_main,
)
from bench._real_agent import (
    alternate_with_proxy,
    checked_first_turn,
    continued_turn_check,
    new_conversation,
    real_agent_notes,
)
from tests.claude.fake_anthropic import FakeAnthropic
from tests.claude.harness import INSTALL_HINT, ClaudeHome, agent_command, installed

SECTION_TITLE = "## 14. Real claude-agent-acp: continued-turn time to first token, memory"
GOAL_RATIO = 15.0
RUN_LIMIT_S = 120.0  #: one continued turn (either scenario) must finish within this
SETUP_LIMIT_S = 180.0
SETTLE_S = 3.0  #: pause after setting up, so the proxy's replacement spare is up and idle
MEMORY_SETTLE_S = 2.0  #: pause before each memory reading


# -- scenario A: the agent is re-spawned for every turn ----------------------------------------


async def _end(client: AcpClient, session_id: str) -> float:
    """Close the session, then stdin, and wait until the process is gone; returns the seconds.

    claude-agent-acp ignores stdin EOF while it holds a session (its CLI child keeps it alive):
    without the ``session/close`` it would sit until ``AcpClient.spawn`` kills it.
    """
    process = client.process
    assert process is not None and process.stdin is not None
    closing = time.perf_counter()
    await client.request("session/close", {"sessionId": session_id})
    await process.stdin.aclose()
    await process.wait()
    return time.perf_counter() - closing


async def setup_a(home: ClaudeHome, env: dict[str, str]) -> tuple[str, str]:
    """A first agent process creates the session, runs turn 1 and exits.

    Returns the session id and the agent's version (from its ``initialize``).
    """
    async with AcpClient.spawn(agent_command(), env=env) as client:
        sid, info = await checked_first_turn(client, str(home.work), "A turn 1")
        await _end(client, sid)
    return sid, str((info.get("agentInfo") or {}).get("version"))


async def run_a(home: ClaudeHome, env: dict[str, str], sid: str, n: int) -> ContinuedRun:
    start = time.perf_counter()
    async with AcpClient.spawn(agent_command(), env=env) as client:
        run = await continued_turn(client, sid, str(home.work), start, n, continued_turn_check)
        run.exit_s = await _end(client, sid)
    return run


# -- memory ------------------------------------------------------------------------------------


def pss_kb(pid: int) -> int:
    """``Pss`` of ``/proc/<pid>/smaps_rollup`` in kB (0 if the process is gone)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid``."""
    out = []
    for child in children(pid):
        out += [child, *descendants(child)]
    return out


@dataclass
class MemoryReading:
    live: int  #: live conversations
    proxy_kb: int
    tree_kb: int  #: the proxy and every process below it
    agents: list[tuple[int, int]]  #: per agent process with a CLI below it: (agent kB, CLI kB)
    spare_kb: int  #: agents with nothing below them (warm spares)


def read_memory(proxy: ProxyHandle, live: int) -> MemoryReading:
    agents: list[tuple[int, int]] = []
    spare = 0
    for agent in children(proxy.pid):
        below = sum(pss_kb(p) for p in descendants(agent))
        if below:
            agents.append((pss_kb(agent), below))
        else:
            spare += pss_kb(agent)
    proxy_kb = pss_kb(proxy.pid)
    tree = proxy_kb + sum(pss_kb(p) for p in descendants(proxy.pid))
    return MemoryReading(live, proxy_kb, tree, agents, spare)


async def measure_memory(
    proxy: ProxyHandle, cwd: str, live_before: int, more: int
) -> list[MemoryReading]:
    readings = []
    for extra in range(more + 1):
        if extra:
            with anyio.fail_after(SETUP_LIMIT_S):
                await new_conversation(proxy.socket, cwd, f"memory conversation {extra}")
        await anyio.sleep(MEMORY_SETTLE_S)
        readings.append(read_memory(proxy, live_before + extra))
        print(f"memory: {readings[-1].live} live, tree {readings[-1].tree_kb} kB", flush=True)
    return readings


# -- report ------------------------------------------------------------------------------------


def _mb(kb: float) -> str:
    return f"{kb / 1024:,.1f}"


def render(
    runs_a: list[ContinuedRun],
    runs_b: list[ContinuedRun],
    memory: list[MemoryReading],
    notes: dict[str, Any],
) -> tuple[str, bool]:
    """The markdown body; returns (text, passed)."""
    lines, _ratio, passed = render_continued(
        f"Agent: `claude-agent-acp` {notes['version']} (npm `@zed-industries/claude-agent-acp`, "
        "Claude Code CLI from `@anthropic-ai/claude-agent-sdk` 0.2.83), offline, model: a local "
        "fake Anthropic Messages API that streams its answer at once; "
        f"{len(runs_a)} runs per scenario, alternating A, B, A, B, ...",
        (
            "A: re-spawned agent (spawn + initialize + session/load + prompt)",
            "B: proxy, warm agent (connect + initialize + session/load + prompt)",
        ),
        runs_a,
        runs_b,
        GOAL_RATIO,
    )
    lines += real_agent_notes(
        "agent", "`session/close` + process exit after stdin is closed", runs_a, runs_b, notes
    )
    lines += [
        "",
        "Memory under the proxy with N live conversations, MB of PSS (`smaps_rollup`; shared "
        "pages split between the processes that map them):",
        "",
        row(
            [
                "live conversations",
                "whole tree",
                "proxy",
                "warm spare(s)",
                "per conversation: agent + CLI (median)",
            ]
        ),
        row(["---:", "---:", "---:", "---:", "---"]),
    ]
    for r in memory:
        agent = statistics.median(a for a, _ in r.agents) if r.agents else 0
        cli = statistics.median(c for _, c in r.agents) if r.agents else 0
        lines.append(
            row(
                [
                    str(r.live),
                    _mb(r.tree_kb),
                    _mb(r.proxy_kb),
                    _mb(r.spare_kb),
                    f"{_mb(agent)} + {_mb(cli)} = {_mb(agent + cli)}",
                ]
            )
        )
    if len(memory) > 1:
        slope = least_squares_slope([r.live for r in memory], [r.tree_kb for r in memory])
        lines += ["", f"**Memory per live conversation (slope of the tree): {_mb(slope)} MB.**"]
    lines += [
        "",
        f"Machine load average (1 min) before / after: {notes['load_before']} / "
        f"{notes['load_after']}.",
    ]
    return "\n".join(lines) + "\n", passed


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = new_parser("claude_turn", __doc__)
    parser.add_argument("--runs", type=int, default=5, help="runs per scenario (5)")
    parser.add_argument(
        "--conversations", type=int, default=3, help="live conversations added for memory (3)"
    )
    args = parse(parser, argv)
    if args.runs < 1 or args.conversations < 0:
        parser.error("--runs must be >= 1 and --conversations >= 0")
    return args


async def main() -> int:
    args = parse_args()
    if not installed():
        print(f"bench.claude_turn skipped: {INSTALL_HINT}", file=sys.stderr)
        return 0
    stamp = Stamp.now("claude_turn")
    notes: dict[str, Any] = {"load_before": load_average()}
    with tempfile.TemporaryDirectory(prefix="acp-bench-cl-") as directory, FakeAnthropic() as model:
        tmp = Path(directory)
        home_a, home_b = ClaudeHome(tmp / "a"), ClaudeHome(tmp / "b")
        env_a, env_b = home_a.env(model.base_url), home_b.env(model.base_url)
        with anyio.fail_after(SETUP_LIMIT_S):
            session_a, notes["version"] = await setup_a(home_a, env_a)
        cwd_b = str(home_b.work)
        async with run_proxy(tmp / "proxy", agent_command(), env=env_b) as proxy:
            runs_a, runs_b = await alternate_with_proxy(
                proxy,
                cwd_b,
                args.runs,
                (SETUP_LIMIT_S, RUN_LIMIT_S, SETTLE_S),
                lambda n: run_a(home_a, env_a, session_a, n),
                notes,
            )
            memory = await measure_memory(proxy, cwd_b, 1, args.conversations)
    notes["load_after"] = load_average()
    body, passed = render(runs_a, runs_b, memory, notes)
    return report(SECTION_TITLE, stamp.header(), body, passed, args.write)


if __name__ == "__main__":
    run_main(main)
