"""Benchmark 10: 100 concurrent conversations through one proxy.

Run ``python -m bench.concurrency [--conversations 100] [--turns 5] [--runs N]
[--first-token-delay 0.05] [--chunks 5] [--think-ms T] [--py-spy PATH] [--write BENCHMARKS.md]``.

Fake agent: the bundled one with ``--first-token-delay 0.05 --thoughts 0 --tool-calls 0
--chunks 5`` (one turn = 5 message chunks + the summary chunk, the first after 50 ms).
``--conversations`` conversations run at once in one anyio task group, each on its own
client: ``initialize``, ``session/new``, turn 1; then all wait at a barrier (100 agent processes
starting on a small machine dominate everything before it) and each goes on with turns
2..``--turns`` back to back, all conversations at once. Two scenarios, alternating run by run:

* B (the one the goal is about), through one ``acp-proxy serve`` (TOML config
  ``max_live_agents = 200``, default ``warm_spares``): one unix-socket connection per
  conversation;
* A (baseline, no proxy): each conversation spawns its own fake agent on stdio, so A measures
  what the machine, the 100 agents and the client cost without the proxy.

Checked, every turn of both: the answer is ``end_turn``; every ``session/update`` the client
received carries its own ``sessionId``; the summary chunk names this conversation's own prompt
(``last user message: conversation <i> turn <t> <nonce>``) and the turn number with its
``t - 1`` earlier turns; nothing names another conversation.

Measured on the warm turns (2..N) only:

* overhead = (client-observed time to first token: request written -> first
  ``agent_message_chunk`` read) - the fake agent's first-token delay;
* B's ``_meta["acp-proxy"]``: ``queue_ms`` (prompt read -> forwarded to the agent, including
  the store commit of the prompt), ``model_first_token_ms`` - delay (agent side: the agent's
  event loop, pipes, the proxy reading them) and client TTFT - ``ttft_ms`` (outside the
  proxy's clock: socket in, the first token's store commit and delivery, socket out, the
  client's own event loop);
* the proxy's CPU time (``/proc/<pid>/stat``) during the warm turns, per turn.

Goal: B's p99 overhead <= 20 ms, and every turn of B succeeds without crossing conversations.

``--think-ms T`` makes the warm turns independent arrivals instead of a herd: before each one,
a conversation waits a time drawn uniformly from [0, T) ms (seeded per run and conversation,
so A and B wait the same); written as section 11. Without it (section 10) every conversation
sends its next prompt the moment its previous turn ends, so 100 prompts (and 100 first
tokens) keep arriving together: the worst case for a single event loop.
``--py-spy PATH`` also records B's proxy process with py-spy (``record --format raw``) during
the warm turns of the first run and adds where its busy samples are.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from acp_proxy.testing.client import AcpClient
from acp_proxy.testing.proxy_process import fake_agent_command, run_proxy
from bench._common import (
    Stamp,
    agent_text,
    alive,
    children,
    load_average,
    new_parser,
    parse,
    percentile,
    proxy_meta,
    report,
    row,
    run_main,
    stat_cpu_seconds,
)

SECTION_TITLE = "## 10. 100 concurrent conversations"
STAGGERED_TITLE = "## 11. 100 concurrent conversations, staggered turns"
GOAL_P99_MS = 20.0
CWD = "/tmp"
CONFIG = "max_live_agents = 200\n"
SETUP_LIMIT_S = 300.0  #: every conversation created and its turn 1 answered within this
TURN_LIMIT_S = 60.0  #: one warm turn
RUN_LIMIT_S = 900.0  #: one whole run of one scenario

OpenClient = Callable[[], AbstractAsyncContextManager[AcpClient]]


@dataclass
class TurnSample:
    conversation: int
    turn: int
    ttft_ms: float  #: client-observed, request written -> first agent chunk read
    total_ms: float  #: client-observed, request written -> answer read
    meta: dict[str, Any]


@dataclass
class RunResult:
    scenario: str
    samples: list[TurnSample] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    setup_s: float = 0.0  #: start -> every conversation past turn 1
    warm_s: float = 0.0  #: barrier -> every warm turn answered
    proxy_cpu_s: float | None = None  #: proxy user+system CPU during the warm phase
    agents: int = 0  #: agent processes during the warm phase
    agents_left: int = 0  #: agent processes still there after the clean-up
    profile: list[tuple[str, float, int]] = field(default_factory=list)
    load: tuple[str, str] = ("", "")  #: 1-min load average at the barrier and at the end

    def warm(self) -> list[TurnSample]:
        return [s for s in self.samples if s.turn >= 2]


class Barrier:
    """Everyone waits until ``parties`` have arrived (a party that failed leaves)."""

    def __init__(self, parties: int) -> None:
        self.parties = parties
        self.arrived = 0
        self.event = anyio.Event()

    def leave(self) -> None:
        self.parties -= 1
        if self.arrived >= self.parties:
            self.event.set()

    async def wait(self) -> None:
        self.arrived += 1
        if self.arrived >= self.parties:
            self.event.set()
        await self.event.wait()


# -- one conversation --------------------------------------------------------------------------


async def conversation(
    open_client: OpenClient,
    index: int,
    turns: int,
    nonce: str,
    barrier: Barrier,
    result: RunResult,
    think_s: float,
) -> None:
    arrived = False
    rng = random.Random(f"{nonce}-{index}")  # the same think times for A and B of a run
    try:
        async with open_client() as client:
            with anyio.fail_after(SETUP_LIMIT_S):
                await client.initialize()
                session_id = await client.new_session(CWD)
                await _turn(client, session_id, index, 1, nonce, result)
            arrived = True
            await barrier.wait()
            for t in range(2, turns + 1):
                if think_s:  # a user reading the answer: independent arrivals, not a herd
                    await anyio.sleep(rng.uniform(0, think_s))
                with anyio.fail_after(TURN_LIMIT_S):
                    await _turn(client, session_id, index, t, nonce, result)
            foreign = {
                str(m["params"].get("sessionId"))
                for m in client.messages
                if m.get("method") == "session/update"
                and m["params"].get("sessionId") != session_id
            }
            if foreign:
                result.failures.append(
                    f"conversation {index}: updates of other sessions {sorted(foreign)[:3]}"
                )
    except Exception as exc:  # recorded and reported; the other conversations go on
        result.failures.append(f"conversation {index}: {type(exc).__name__}: {exc}")
        if not arrived:
            barrier.leave()


async def _turn(
    client: AcpClient, session_id: str, index: int, t: int, nonce: str, result: RunResult
) -> None:
    text = f"conversation {index} turn {t} {nonce}"
    sent = time.perf_counter()
    reply = await client.prompt(session_id, text)
    answer = reply.unwrap("session/prompt")
    if answer.get("stopReason") != "end_turn":
        raise RuntimeError(f"turn {t}: stopReason {answer.get('stopReason')!r}")
    if reply.first_update_at is None:
        raise RuntimeError(f"turn {t}: answered without any agent chunk")
    summary = agent_text(reply.updates())
    expected = f"[fake] turn {t}; context holds {t - 1} earlier turns"
    if expected not in summary or f"last user message: {text}" not in summary:
        raise RuntimeError(f"turn {t}: the answer is not this conversation's: {summary[-160:]!r}")
    for other in re.findall(r"conversation (\d+) turn", summary):
        if int(other) != index:
            raise RuntimeError(f"turn {t}: the answer names conversation {other}")
    result.samples.append(
        TurnSample(
            index,
            t,
            (reply.first_update_at - sent) * 1000,
            (reply.received_at - sent) * 1000,
            proxy_meta(answer),
        )
    )


# -- py-spy ------------------------------------------------------------------------------------

#: Leaf frames where a thread waits rather than works (dropped from the profile).
_IDLE_LEAVES = (
    "EpollSelector.select",
    "_connection_worker_thread (aiosqlite/core.py:59)",
    "Condition.wait",
    "Thread.join",
)


def start_py_spy(pid: int, out: Path) -> subprocess.Popen[bytes] | None:
    exe = Path(sys.executable).with_name("py-spy")
    if not exe.exists():
        print("py-spy not found next to the interpreter: no profile", flush=True)
        return None
    command = [str(exe), "record", "--pid", str(pid), "--rate", "1000", "--format", "raw"]
    command += ["--output", str(out), "--nonblocking"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_py_spy(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _project_frame(frames: list[str]) -> str:
    """The innermost acp_proxy/store function of a stack (line number dropped)."""
    for frame in reversed(frames):
        if "acp_proxy/" in frame or "(store/" in frame:
            if "acp_proxy/__main__.py" in frame:
                return "(event loop: asyncio/anyio scheduling, no deeper project frame)"
            return re.sub(r":\d+\)$", ")", frame)
    return "(aiosqlite worker thread: SQLite statements)"


def top_functions(raw: Path, limit: int = 15) -> list[tuple[str, float, int]]:
    """py-spy's collapsed stacks, idle waits dropped, by innermost acp_proxy/store frame:
    (frame, % of busy samples, samples)."""
    busy: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack.split(";")
        if any(frames[-1].startswith(idle) for idle in _IDLE_LEAVES):
            continue
        total += int(count)
        busy[_project_frame(frames)] += int(count)
    return [(frame, 100 * n / total, n) for frame, n in busy.most_common(limit)] if total else []


# -- one run of a scenario ---------------------------------------------------------------------


async def _drive(
    result: RunResult,
    open_client: OpenClient,
    conversations: int,
    turns: int,
    at_barrier: Callable[[], None],
    think_s: float,
    nonce: str,
) -> None:
    """All conversations at once; ``at_barrier`` runs when every one has finished turn 1."""
    barrier = Barrier(conversations)
    started = time.perf_counter()
    warm_start = 0.0

    async def watch() -> None:
        nonlocal warm_start
        await barrier.event.wait()
        warm_start = time.perf_counter()
        result.setup_s = warm_start - started
        result.load = (load_average(), "")
        at_barrier()

    with anyio.fail_after(RUN_LIMIT_S):
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            for i in range(conversations):
                tg.start_soon(conversation, open_client, i, turns, nonce, barrier, result, think_s)
    result.warm_s = time.perf_counter() - warm_start if warm_start else 0.0
    result.load = (result.load[0], load_average())


async def run_direct(
    agent: list[str], conversations: int, turns: int, think_s: float, nonce: str
) -> RunResult:
    """A: each conversation spawns its own agent on stdio (AcpClient.spawn reaps it)."""
    result = RunResult("A")
    me = os.getpid()

    def at_barrier() -> None:
        result.agents = len(children(me))

    await _drive(
        result, lambda: AcpClient.spawn(agent), conversations, turns, at_barrier, think_s, nonce
    )
    result.agents_left = len([p for p in children(me) if alive(p)])
    return result


async def run_through_proxy(
    directory: Path,
    agent: list[str],
    conversations: int,
    turns: int,
    py_spy: Path | None,
    think_s: float,
    nonce: str,
) -> RunResult:
    """B: one proxy, one socket connection per conversation."""
    directory.mkdir(parents=True)  # noqa: ASYNC240 (set-up, not timed)
    config = directory / "config.toml"
    config.write_text(CONFIG)
    result = RunResult("B")
    agent_pids: list[int] = []
    spy: subprocess.Popen[bytes] | None = None
    cpu0 = 0.0
    async with run_proxy(directory, agent, extra_args=["--config", str(config)]) as proxy:

        def at_barrier() -> None:
            nonlocal spy, cpu0
            cpu0 = stat_cpu_seconds(proxy.pid)
            agent_pids.extend(children(proxy.pid))
            if py_spy is not None:
                spy = start_py_spy(proxy.pid, py_spy)

        try:
            await _drive(
                result,
                lambda: AcpClient.connect(proxy.socket),
                conversations,
                turns,
                at_barrier,
                think_s,
                nonce,
            )
            if agent_pids:
                result.proxy_cpu_s = stat_cpu_seconds(proxy.pid) - cpu0
        finally:
            if spy is not None:
                stop_py_spy(spy)
        if py_spy is not None and py_spy.exists():  # noqa: ASYNC240 (after the timed part)
            result.profile = top_functions(py_spy)
        result.agents = len(agent_pids)
    # run_proxy SIGTERMed the proxy, which stops its agents: check that none is left.
    deadline = time.monotonic() + 10
    left = [p for p in agent_pids if alive(p)]
    while left and time.monotonic() < deadline:
        await anyio.sleep(0.1)
        left = [p for p in left if alive(p)]
    result.agents_left = len(left)
    for pid in left:  # only agents this run's proxy started, by pid
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return result


# -- report ------------------------------------------------------------------------------------


def _stats(values: Sequence[float]) -> list[str]:
    if not values:
        return ["n/a"] * 4
    return [
        f"{statistics.median(values):,.1f}",
        f"{percentile(values, 90):,.1f}",
        f"{percentile(values, 99):,.1f}",
        f"{max(values):,.1f}",
    ]


def render(
    args: argparse.Namespace, runs: list[RunResult], agent_args: Sequence[str]
) -> tuple[str, bool]:
    delay_ms = args.first_token_delay * 1000
    by = {name: [r for r in runs if r.scenario == name] for name in ("A", "B")}
    warm = {name: [s for r in rs for s in r.warm()] for name, rs in by.items()}
    overhead = {name: [s.ttft_ms - delay_ms for s in warm[name]] for name in by}
    failures = {name: [f for r in rs for f in r.failures] for name, rs in by.items()}
    expected = args.runs * args.conversations * (args.turns - 1)
    b_ok = not failures["B"] and len(warm["B"]) == expected
    p99 = percentile(overhead["B"], 99) if overhead["B"] else float("inf")
    passed = b_ok and p99 <= GOAL_P99_MS
    b = warm["B"]

    def meta(key: str) -> list[float]:
        return [float(s.meta[key]) for s in b if isinstance(s.meta.get(key), int | float)]

    outside = [
        s.ttft_ms - float(s.meta["ttft_ms"])
        for s in b
        if isinstance(s.meta.get("ttft_ms"), int | float)
    ]
    kinds = Counter(str(s.meta.get("agent")) for s in b)
    warm_turns = args.conversations * (args.turns - 1)

    def per_run(name: str, fmt: Callable[[RunResult], str]) -> str:
        return ", ".join(fmt(r) for r in by[name])

    def both(label: str, fmt: Callable[[RunResult], str]) -> str:
        """A row of the checks table: ``label``, then ``fmt`` of each run of A and of B."""
        return row([label, per_run("A", fmt), per_run("B", fmt)])

    lines = [
        f"{args.conversations} conversations x {args.turns} turns at once (one anyio task group), "
        f"{args.runs} run(s) per scenario, alternating A, B; fake agent `{' '.join(agent_args)}`. "
        "A: each conversation spawns its own agent on stdio (no proxy). B: one proxy "
        f"(config `{CONFIG.strip()}`), one socket connection per conversation. Every "
        "conversation waits at a barrier after turn 1 (agent start-up); turns 2..N then run "
        + (
            "back to back, all conversations at once."
            if not args.think_ms
            else f"each after a think time drawn uniformly from [0, {args.think_ms:g}) ms "
            "(the same draws for A and B of a run): concurrent, independent arrivals."
        ),
        "",
        row(["check (per run)", "A: no proxy", "B: proxy"]),
        row(["---", "---", "---"]),
        both("turns answered `end_turn` and checked", lambda r: f"{len(r.samples)}"),
        both(
            "failures (errors, foreign `sessionId`, answer naming another prompt)",
            lambda r: f"{len(r.failures)}",
        ),
        both(
            "agent processes during the warm turns / left after clean-up",
            lambda r: f"{r.agents} / {r.agents_left}",
        ),
        both("start -> every conversation past turn 1, s", lambda r: f"{r.setup_s:.1f}"),
        both("barrier -> last warm turn answered, s", lambda r: f"{r.warm_s:.2f}"),
        both(
            "1-min load average at the barrier / at the end (all work on the machine)",
            lambda r: f"{r.load[0]} / {r.load[1]}",
        ),
        row(
            [
                "proxy CPU during the warm turns, s (ms per warm turn)",
                "-",
                per_run(
                    "B",
                    lambda r: (
                        "n/a"
                        if r.proxy_cpu_s is None
                        else f"{r.proxy_cpu_s:.2f} ({1000 * r.proxy_cpu_s / warm_turns:.2f})"
                    ),
                ),
            ]
        ),
        row(
            [
                "`_meta` agent of B's warm turns",
                "-",
                ", ".join(f"{k}: {v}" for k, v in kinds.items()),
            ]
        ),
        "",
    ]
    for name in ("A", "B"):
        if failures[name]:
            lines += [f"First failures of {name}:", ""]
            lines += [f"- {f}" for f in failures[name][:5]]
            lines.append("")
    lines += [
        f"Warm turns (2..{args.turns}), ms ({len(warm['A']):,} samples in A, {len(b):,} in B):",
        "",
        row(["measure", "p50", "p90", "p99", "max"]),
        row(["---", "---:", "---:", "---:", "---:"]),
        row(
            [
                f"A: overhead = client TTFT - first-token delay ({delay_ms:g} ms), no proxy",
                *_stats(overhead["A"]),
            ]
        ),
        row(
            [
                "**B: overhead** = client TTFT - first-token delay, through the proxy",
                *_stats(overhead["B"]),
            ]
        ),
        row(
            [
                "B: `queue_ms` (proxy: prompt read -> forwarded, incl. its store commit)",
                *_stats(meta("queue_ms")),
            ]
        ),
        row(
            [
                "B: `model_first_token_ms` - delay (agent side, pipes, proxy reading them)",
                *_stats([v - delay_ms for v in meta("model_first_token_ms")]),
            ]
        ),
        row(
            [
                "B: `ttft_ms` (proxy: prompt read -> first token read from the agent)",
                *_stats(meta("ttft_ms")),
            ]
        ),
        row(
            [
                "B: client TTFT - `ttft_ms` (socket in, first token's commit + delivery, socket "
                "out, client loop)",
                *_stats(outside),
            ]
        ),
        row(["A: request written -> answer read", *_stats([s.total_ms for s in warm["A"]])]),
        row(["B: request written -> answer read", *_stats([s.total_ms for s in b])]),
        "",
    ]
    if overhead["A"] and overhead["B"]:
        lines += [
            "B - A (what the proxy adds on this machine at this load): "
            f"p50 {statistics.median(overhead['B']) - statistics.median(overhead['A']):+,.1f} ms, "
            f"p99 {p99 - percentile(overhead['A'], 99):+,.1f} ms.",
            "",
        ]
    verdict = "PASS" if passed else "FAIL"
    lines.append(
        f"**B: p99 overhead = {p99:,.1f} ms** — goal <= {GOAL_P99_MS:.0f} ms, every turn "
        f"correct: **{verdict}**"
        + ("" if b_ok else f" (failures: {len(failures['B'])}, samples {len(b)}/{expected})")
    )
    profile = next((r.profile for r in by["B"] if r.profile), None)
    if profile:
        lines += [
            "",
            "py-spy (`record --rate 1000 --nonblocking`) on B's proxy during the warm turns of "
            "run 1: busy samples (idle waits dropped) by innermost `acp_proxy`/`store` frame:",
            "",
            row(["frame", "% of busy samples", "samples"]),
            row(["---", "---:", "---:"]),
        ]
        lines += [row([f"`{f}`", f"{pct:.1f}", f"{n}"]) for f, pct, n in profile]
    return "\n".join(lines) + "\n", passed


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = new_parser("concurrency", __doc__)
    parser.add_argument("--conversations", type=int, default=100)
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--runs", type=int, default=2, help="runs per scenario, pooled (2)")
    parser.add_argument("--first-token-delay", type=float, default=0.05)
    parser.add_argument("--chunks", type=int, default=5)
    parser.add_argument(
        "--think-ms",
        type=float,
        default=0.0,
        help="before each warm turn, wait uniform [0, think-ms) ms (0: all at once, a herd)",
    )
    parser.add_argument("--no-baseline", action="store_true", help="skip scenario A")
    parser.add_argument("--py-spy", metavar="PATH", help="profile B's proxy into PATH (raw)")
    args = parse(parser, argv)
    if args.conversations < 1 or args.turns < 2 or args.runs < 1 or args.think_ms < 0:
        parser.error("--conversations >= 1, --turns >= 2, --runs >= 1, --think-ms >= 0")
    return args


async def main() -> int:
    args = parse_args()
    stamp = Stamp.now("concurrency")
    agent_args = [
        "--first-token-delay",
        str(args.first_token_delay),
        "--thoughts",
        "0",
        "--tool-calls",
        "0",
        "--chunks",
        str(args.chunks),
    ]
    agent = fake_agent_command(*agent_args)
    delay_ms = args.first_token_delay * 1000
    runs: list[RunResult] = []
    with tempfile.TemporaryDirectory(prefix="acp-bench-concurrency-") as tmp:
        think_s = args.think_ms / 1000
        for n in range(args.runs):
            order = ("B",) if args.no_baseline else ("A", "B")
            nonce = secrets.token_hex(4)
            for scenario in order:
                if scenario == "A":
                    result = await run_direct(agent, args.conversations, args.turns, think_s, nonce)
                else:
                    spy = Path(args.py_spy) if args.py_spy and n == 0 else None
                    result = await run_through_proxy(
                        Path(tmp) / f"run-{n}",
                        agent,
                        args.conversations,
                        args.turns,
                        spy,
                        think_s,
                        nonce,
                    )
                runs.append(result)
                warm = [s.ttft_ms - delay_ms for s in result.warm()]
                stats = (
                    f"overhead p50 {percentile(warm, 50):.1f} ms, p99 {percentile(warm, 99):.1f} ms"
                    if warm
                    else "no warm turns"
                )
                print(
                    f"run {n + 1}/{args.runs} {scenario}: {len(result.samples)} turns, "
                    f"{len(result.failures)} failures, set-up {result.setup_s:.1f} s, {stats}, "
                    f"load {result.load[0]}",
                    flush=True,
                )
                for failure in result.failures[:5]:
                    print("  " + failure, flush=True)
    body, passed = render(args, runs, agent_args)
    title = SECTION_TITLE if not args.think_ms else STAGGERED_TITLE
    return report(title, stamp.header(), body, passed, args.write)


if __name__ == "__main__":
    run_main(main)
