"""Benchmarks 13 and 14: several conversations per agent process (``max_sessions_per_agent``).

Run ``python -m bench.density [--agent fake|opencode] [--conversations 20] [--per-agent 1,4,16]
[--max-processes 6] [--write BENCHMARKS.md]``. ``--agent opencode`` needs
``scripts/install-opencode.sh`` (without it the benchmark says so and exits 0).

For each value k of ``max_sessions_per_agent``, one ``acp-proxy serve`` (``warm_spares = 1``)
gets ``min(conversations, k * max-processes)`` live conversations, each opened by its own
connection (``initialize``, ``session/new`` in one shared workspace, one prompt, disconnect).
Then, all of them live:

* **memory per live conversation**: PSS of every agent process tree (spare included; PSS from
  ``/proc/PID/smaps_rollup``, shared pages split between the processes that map them) divided
  by the live conversations;
* **continued turn**: on up to 8 of the conversations, one after another, a new connection,
  ``initialize``, ``session/resume``, ``session/prompt``; timed from the resume to the first
  agent chunk (median);
* **new conversation in the served workspace**: 3 times, a new connection, ``initialize``,
  ``session/new`` in the same directory, ``session/prompt``; timed from the ``session/new`` to
  the first agent chunk (median), with a pause between (the spare is replaced meanwhile).

Each k runs in turn in one invocation, so the ratios (new / continued for one k, continued
at k / continued at k = 1) come from one run on one machine state. k = 1 with opencode keeps
``max-processes`` conversations only (one ~400 MB process each): memory per conversation is a
per-process figure there.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from acp_proxy.ops_cli import request_status
from acp_proxy.procmem import read_procs, tree_pss_bytes
from acp_proxy.testing.client import AcpClient, Reply
from acp_proxy.testing.proxy_process import ProxyHandle, fake_agent_command, run_proxy
from bench._common import (
    Stamp,
    agent_text,
    first_token,
    int_list,
    load_average,
    ms,
    new_parser,
    parse,
    ready_spare,
    report,
    row,
    run_main,
)

TITLES = {
    "fake": "## 16. Density: conversations per agent process (fake agent)",
    "opencode": "## 17. Density: conversations per agent process (real opencode)",
}
MEMORY_GOAL_MB = 60.0  #: per live conversation with 20 live, opencode
NEW_GOAL_RATIO = 2.0  #: new conversation in a served workspace vs a warm continued turn
SHARED_TTFT_GOAL = 1.2  #: continued turn at 16 per process vs 1 per process
CONTINUED_SAMPLES = 8
NEW_SAMPLES = 3
SETTLE_S = 2.0
STEP_LIMIT_S = 120.0
_MIB = 1 << 20


@dataclass
class Figures:
    """What one k measured."""

    per_agent: int
    conversations: int = 0
    processes: int = 0
    memory_bytes: int = 0
    continued: list[float] = field(default_factory=list)
    new: list[float] = field(default_factory=list)
    new_served_by: list[str] = field(default_factory=list)

    @property
    def per_conversation_mb(self) -> float:
        return self.memory_bytes / _MIB / max(1, self.conversations)


def _answer_ok(reply: Reply, agent: str, what: str) -> float:
    first = first_token(reply, what)
    text = agent_text(reply.updates())
    wanted = "I have seen" if agent == "opencode" else "[fake]"
    if wanted not in text:
        raise RuntimeError(f"{what}: unexpected answer {text[:200]!r}")
    return first


async def _open(socket: str, cwd: str, agent: str, n: int) -> str:
    async with AcpClient.connect(socket) as client:
        await client.initialize()
        sid = await client.new_session(cwd)
        _answer_ok(await client.prompt(sid, f"conversation {n}"), agent, f"open {n}")
        return sid


async def _continued(socket: str, cwd: str, agent: str, sid: str) -> float:
    async with AcpClient.connect(socket) as client:
        await client.initialize()
        start = time.perf_counter()
        resumed = await client.request("session/resume", {"sessionId": sid, "cwd": cwd})
        resumed.unwrap("session/resume")
        reply = await client.prompt(sid, "continued turn")
        return _answer_ok(reply, agent, "continued") - start


async def _new(socket: str, cwd: str, agent: str) -> tuple[float, str]:
    async with AcpClient.connect(socket) as client:
        await client.initialize()
        start = time.perf_counter()
        sid = await client.new_session(cwd)
        reply = await client.prompt(sid, "a new conversation")
        served = str(reply.result.get("_meta", {}).get("acp-proxy", {}).get("agent", "?"))
        return _answer_ok(reply, agent, "new") - start, served


def _fleet_memory(socket: str) -> tuple[int, int]:
    """PSS of every agent tree (spare included) and the number of agent processes."""
    status = request_status(socket, 10.0)
    pids = [a["pid"] for a in status["agents"]]
    return sum(tree_pss_bytes(pids, read_procs()).values()), len(pids)


async def measure(
    k: int, conversations: int, proxy_dir: Path, command: list[str], env: dict[str, str] | None,
    cwd: str, agent: str,
) -> Figures:  # fmt: skip
    """One proxy with ``max_sessions_per_agent = k``: open, settle, measure."""
    figures = Figures(k, conversations)
    config = anyio.Path(proxy_dir / "proxy.toml")
    await config.parent.mkdir(parents=True, exist_ok=True)
    await config.write_text(
        f"max_sessions_per_agent = {k}\nwarm_spares = 1\nmax_live_agents = 64\n"
        "idle_timeout_s = 0\nunreturned_idle_timeout_s = 0\n"
    )
    handle: ProxyHandle
    async with run_proxy(proxy_dir, command, env=env, extra_args=("--config", str(config))) as (
        handle
    ):
        sids = []
        for n in range(conversations):
            with anyio.fail_after(STEP_LIMIT_S):
                sids.append(await _open(handle.socket, cwd, agent, n))
            print(f"  k={k}: {n + 1}/{conversations} conversations live", end="\r", flush=True)
        await anyio.sleep(SETTLE_S)
        figures.memory_bytes, figures.processes = _fleet_memory(handle.socket)
        for sid in sids[:CONTINUED_SAMPLES]:
            with anyio.fail_after(STEP_LIMIT_S):
                figures.continued.append(await _continued(handle.socket, cwd, agent, sid))
        for _ in range(NEW_SAMPLES):
            with anyio.fail_after(STEP_LIMIT_S):
                took, served = await _new(handle.socket, cwd, agent)
            figures.new.append(took)
            figures.new_served_by.append(served)
            await anyio.sleep(SETTLE_S)
            with anyio.fail_after(STEP_LIMIT_S):
                if k == 1:  # a new conversation takes the spare: wait for its replacement
                    await ready_spare(handle.socket, opened_ahead=True)
    print()
    return figures


def render(agent: str, results: list[Figures], notes: dict[str, Any]) -> tuple[str, bool]:
    """The markdown body; returns (text, passed)."""
    base = statistics.median(results[0].continued)
    lines = [
        f"Agent: {notes['agent_desc']}. One proxy per row, `warm_spares = 1`; every "
        "conversation opened in one shared workspace directory.",
        "",
        row(
            [
                "max_sessions_per_agent",
                "live conversations",
                "agent processes (spare incl.)",
                "PSS per live conversation",
                "continued turn TTFT (median)",
                "vs 1 per process",
                "new conversation TTFT (median)",
                "new / continued",
                "new served by",
            ]
        ),
        row(["---"] * 9),
    ]
    passed = True
    for f in results:
        continued = statistics.median(f.continued)
        new = statistics.median(f.new)
        lines.append(
            row(
                [
                    str(f.per_agent),
                    str(f.conversations),
                    str(f.processes),
                    f"{f.per_conversation_mb:.1f} MB",
                    f"{ms(continued)} ms",
                    f"{continued / base:.2f}x",
                    f"{ms(new)} ms",
                    f"{new / continued:.2f}x",
                    ", ".join(sorted(set(f.new_served_by))),
                ]
            )
        )
    goals = []
    by_k = {f.per_agent: f for f in results}
    # The goals are stated at 16 per process; the largest k is shown beside them.
    shared = [by_k[k] for k in sorted({16, max(by_k)}) if k in by_k and k > 1]
    if agent != "opencode":  # the goals are opencode's; here the figures only
        shared = []
        goals.append(
            "No goal: the fake agent costs nothing, so these figures are the proxy's own work "
            "(a session/new also writes the session's row before its prompt). The goals are "
            "measured with the real opencode (section 17)."
        )
    for f in shared:
        shared_ratio = statistics.median(f.continued) / base
        new_ratio = statistics.median(f.new) / statistics.median(f.continued)
        ok_ttft, ok_new = shared_ratio <= SHARED_TTFT_GOAL, new_ratio <= NEW_GOAL_RATIO
        goals.append(
            f"continued-turn TTFT at {f.per_agent} per process vs 1: {shared_ratio:.2f}x "
            f"(goal <= {SHARED_TTFT_GOAL}x) {'PASS' if ok_ttft else 'FAIL'}"
        )
        goals.append(
            f"new conversation in a served workspace vs continued turn at {f.per_agent} per "
            f"process: {new_ratio:.2f}x (goal <= {NEW_GOAL_RATIO}x) "
            f"{'PASS' if ok_new else 'FAIL'}"
        )
        passed = passed and ok_ttft and ok_new
    if agent == "opencode" and 1 in by_k:  # the default: a spare, its session opened ahead
        f = by_k[1]
        new_ratio = statistics.median(f.new) / statistics.median(f.continued)
        ok_new = new_ratio <= NEW_GOAL_RATIO
        goals.append(
            f"new conversation in a served workspace vs continued turn at 1 per process (the "
            f"default: served by {', '.join(sorted(set(f.new_served_by)))}): {new_ratio:.2f}x "
            f"(goal <= {NEW_GOAL_RATIO}x) {'PASS' if ok_new else 'FAIL'}"
        )
        passed = passed and ok_new
    if agent == "opencode":
        for f in results:
            if f.conversations < 20:
                continue
            ok_mem = f.per_conversation_mb <= MEMORY_GOAL_MB
            goals.append(
                f"memory per live conversation, {f.conversations} live at {f.per_agent} per "
                f"process ({f.processes} agent process{'es' if f.processes > 1 else ''}, any spare "
                f"included): "
                f"{f.per_conversation_mb:.1f} MB (goal <= {MEMORY_GOAL_MB:.0f} MB) "
                f"{'PASS' if ok_mem else 'FAIL'}"
            )
    lines += ["", *[f"- {g}" for g in goals]]
    lines += [
        "",
        f"Continued turn: `session/resume` + prompt on a new connection, {CONTINUED_SAMPLES} "
        f"conversations one after another; new conversation: `session/new` + prompt, "
        f"{NEW_SAMPLES} times, {SETTLE_S:g} s apart. Times from the first request about the "
        "conversation to its first agent chunk.",
        f"Machine load average (1 min) before / after: {notes['load_before']} / {load_average()}.",
    ]
    return "\n".join(lines) + "\n", passed


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = new_parser("density", __doc__)
    parser.add_argument("--agent", choices=["fake", "opencode"], default="fake")
    parser.add_argument("--conversations", type=int, default=20)
    parser.add_argument("--per-agent", type=int_list, default=[1, 4, 16])
    parser.add_argument(
        "--max-processes", type=int, default=6, help="agent processes per row at most (6)"
    )
    args = parse(parser, argv)
    if args.conversations < 1 or args.max_processes < 1 or min(args.per_agent) < 1:
        parser.error("--conversations, --max-processes and --per-agent must be >= 1")
    return args


async def main() -> int:
    args = parse_args()
    stamp = Stamp.now("density")
    notes: dict[str, Any] = {"load_before": load_average()}
    results: list[Figures] = []
    with tempfile.TemporaryDirectory(prefix="acp-bench-dn-") as directory:
        tmp = Path(directory)
        if args.agent == "opencode":
            from tests.opencode.fake_model import FakeModel
            from tests.opencode.harness import (
                INSTALL_HINT,
                OpencodeHome,
                agent_command,
                installed,
                prime,
            )

            if not installed():
                print(f"bench.density skipped: {INSTALL_HINT}", file=sys.stderr)
                return 0
            with FakeModel() as model:
                template = OpencodeHome(tmp / "template")
                await anyio.to_thread.run_sync(prime, template, model.base_url)
                notes["agent_desc"] = (
                    "`opencode acp` 1.18.33 offline, model: a local fake OpenAI-compatible "
                    "server answering at once"
                )
                for k in sorted(args.per_agent):
                    home = OpencodeHome(tmp / f"home{k}", template.root / "data")
                    count = min(args.conversations, k * args.max_processes)
                    results.append(
                        await measure(
                            k, count, tmp / f"p{k}", agent_command(home.work),
                            home.env(model.base_url), str(home.work), "opencode",
                        )
                    )  # fmt: skip
        else:
            notes["agent_desc"] = "the bundled fake agent (Python, no costs added)"
            work = tmp / "work"
            work.mkdir()
            for k in sorted(args.per_agent):
                count = min(args.conversations, k * args.max_processes)
                results.append(
                    await measure(
                        k, count, tmp / f"p{k}", fake_agent_command(), None, str(work), "fake"
                    )
                )
    body, passed = render(args.agent, results, notes)
    return report(TITLES[args.agent], stamp.header(), body, passed, args.write)


if __name__ == "__main__":
    run_main(main)
