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
import os
import platform
import re
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio

from acp_proxy.testing.client import AcpClient, Reply
from acp_proxy.testing.proxy_process import fake_agent_command, run_proxy

SECTION_TITLE = "## 1. Continued-turn time to first token (fake agent, opencode-like costs)"
GOAL_RATIO = 15.0
RUN_LIMIT_S = 60.0  #: one continued turn (either scenario) must finish within this
SETUP_LIMIT_S = 120.0
CWD = "/tmp"

INTRO = """# Benchmarks

All figures below are ratios (or timings shown next to the baseline they are compared with)
measured side by side in one run, scenarios alternating run by run, on a noisy 2-core machine:
absolute milliseconds move from run to run, the ratios are what each goal is about. `make bench`
will run all of them later; for now each section gives the exact command that produced it, run
from the repository root with the project's virtualenv.
"""


@dataclass
class Run:
    """One continued turn: times in seconds from the start (spawn or connect)."""

    ready: float  #: initialize answered (spawn/connect + initialize)
    loaded: float  #: session/load answered
    first_token: float  #: first agent chunk of the prompt
    total: float  #: prompt answered
    replayed: int  #: session/update notifications received while loading (the replayed history)
    meta: dict[str, Any] = field(default_factory=dict)  #: the proxy's _meta timings (B only)


@dataclass
class Knobs:
    """The fake agent's cost knobs, shared by both scenarios."""

    startup_delay: float
    session_init_delay: float
    first_token_delay: float

    def args(self) -> list[str]:
        return [
            "--startup-delay",
            str(self.startup_delay),
            "--session-init-delay",
            str(self.session_init_delay),
            "--first-token-delay",
            str(self.first_token_delay),
        ]


def _load_params(session_id: str) -> dict[str, Any]:
    return {"sessionId": session_id, "cwd": CWD, "mcpServers": []}


def _first_token(reply: Reply, what: str) -> float:
    reply.unwrap("session/prompt")
    if reply.first_update_at is None:
        raise RuntimeError(f"{what}: the prompt was answered without any agent chunk")
    return reply.first_update_at


async def _continued_turn(client: AcpClient, session_id: str, start: float, n: int) -> Run:
    """initialize, session/load, session/prompt on a fresh client; times relative to start."""
    await client.initialize()
    ready = time.perf_counter()
    load = await client.request("session/load", _load_params(session_id))
    load.unwrap("session/load")
    loaded = time.perf_counter()
    reply = await client.prompt(session_id, f"continued turn {n}")
    first = _first_token(reply, f"continued turn {n}")
    _check_continued(reply, n)
    meta = ((reply.result or {}).get("_meta") or {}).get("acp-proxy") or {}
    return Run(
        ready - start,
        loaded - start,
        first - start,
        reply.received_at - start,
        len(load.updates()),
        meta,
    )


def _check_continued(reply: Reply, n: int) -> None:
    """The agent must have answered turn n of the same conversation, not a fresh session."""
    text = "".join(
        u.get("content", {}).get("text", "")
        for u in reply.updates()
        if u.get("sessionUpdate") == "agent_message_chunk"
    )
    expected = f"[fake] turn {n}; context holds {n - 1} earlier turns"
    if expected not in text:
        raise RuntimeError(f"continued turn {n}: expected {expected!r} in the answer, got {text!r}")


# -- scenario A: the agent is re-spawned for every turn ----------------------------------------


async def setup_a(agent: list[str]) -> str:
    """A first agent process creates the session, runs turn 1 and exits."""
    async with AcpClient.spawn(agent) as client:
        await client.initialize()
        session_id = await client.new_session(CWD)
        _first_token(await client.prompt(session_id, "turn 1"), "A turn 1")
    return session_id


async def run_a(agent: list[str], session_id: str, n: int) -> Run:
    start = time.perf_counter()
    async with AcpClient.spawn(agent) as client:
        return await _continued_turn(client, session_id, start, n)


# -- scenario B: through the proxy, the agent stays warm ---------------------------------------


async def setup_b(socket: str) -> str:
    """A first client creates the session through the proxy, runs turn 1 and disconnects."""
    async with AcpClient.connect(socket) as client:
        await client.initialize()
        session_id = await client.new_session(CWD)
        _first_token(await client.prompt(session_id, "turn 1"), "B turn 1")
    return session_id


async def run_b(socket: str, session_id: str, n: int) -> Run:
    start = time.perf_counter()
    async with AcpClient.connect(socket) as client:
        return await _continued_turn(client, session_id, start, n)


# -- statistics and report ---------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100), as numpy's default."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summary(values: Sequence[float]) -> tuple[float, float, float, float]:
    """(median, p90, min, max)."""
    return statistics.median(values), percentile(values, 90), min(values), max(values)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f}"


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def render(knobs: Knobs, runs_a: list[Run], runs_b: list[Run]) -> tuple[str, float, bool]:
    """The markdown table and notes; returns (text, ratio, passed)."""
    ttft_a = [r.first_token for r in runs_a]
    ttft_b = [r.first_token for r in runs_b]
    ratio = statistics.median(ttft_a) / statistics.median(ttft_b)
    passed = ratio >= GOAL_RATIO
    lines = [
        f"Fake agent knobs: `{' '.join(knobs.args())}`; {len(runs_a)} runs per scenario, "
        "alternating A, B, A, B, ...",
        "",
        "Time to first token of a continued turn, ms (from just before spawn / connect to the "
        "first agent chunk of the prompt):",
        "",
        _row(["scenario", "median", "p90", "min", "max"]),
        _row(["---", "---:", "---:", "---:", "---:"]),
    ]
    for name, values in (
        ("A: re-spawned agent (spawn + initialize + session/load + prompt)", ttft_a),
        ("B: proxy, warm agent (connect + initialize + session/load + prompt)", ttft_b),
    ):
        lines.append(_row([name, *(_ms(v) for v in summary(values))]))
    lines += [
        "",
        f"**Ratio median(A) / median(B) = {ratio:.1f}x** — goal >= {GOAL_RATIO:.0f}x: "
        f"**{'PASS' if passed else 'FAIL'}**",
        "",
        "Breakdown, median ms of each step (each step's own duration):",
        "",
        _row(["step", "A: re-spawned", "B: proxy"]),
        _row(["---", "---:", "---:"]),
    ]
    steps = (
        ("spawn/connect + initialize", lambda r: r.ready),
        ("session/load", lambda r: r.loaded - r.ready),
        ("session/prompt -> first token", lambda r: r.first_token - r.loaded),
        ("first token -> prompt answered", lambda r: r.total - r.first_token),
    )
    for name, step in steps:
        lines.append(
            _row(
                [
                    name,
                    _ms(statistics.median(step(r) for r in runs_a)),
                    _ms(statistics.median(step(r) for r in runs_b)),
                ]
            )
        )
    lines.append(
        _row(
            [
                "updates replayed by session/load (count)",
                f"{statistics.median(r.replayed for r in runs_a):g}",
                f"{statistics.median(r.replayed for r in runs_b):g}",
            ]
        )
    )
    keys = ("queue_ms", "cli_ready_ms", "session_init_ms", "model_first_token_ms", "ttft_ms")
    metas = [r.meta for r in runs_b]
    lines += [
        "",
        'B: the proxy\'s own timings of the prompt (`result._meta["acp-proxy"]`), ms:',
        "",
        _row(["key", "median", "min", "max"]),
        _row(["---", "---:", "---:", "---:"]),
    ]
    for key in keys:
        values = [m[key] for m in metas if isinstance(m.get(key), int | float)]
        if not values:
            lines.append(_row([f"`{key}`", "n/a", "n/a", "n/a"]))
            continue
        lines.append(
            _row(
                [
                    f"`{key}`",
                    f"{statistics.median(values):,.3f}",
                    f"{min(values):,.3f}",
                    f"{max(values):,.3f}",
                ]
            )
        )
    agents = sorted({str(m.get("agent")) for m in metas})
    lines += ["", f"B served every continued turn with agent(s): {', '.join(agents)}."]
    return "\n".join(lines) + "\n", ratio, passed


def machine() -> str:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 0
    return (
        f"nproc {cpus}, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}"
    )


def command_line() -> str:
    exe = sys.executable
    try:
        rel = os.path.relpath(exe)
        if not rel.startswith(".."):
            exe = rel
    except ValueError:
        pass
    return shlex.join([exe, "-m", "bench.continued_turn", *sys.argv[1:]])


def write_section(path: Path, body: str) -> None:
    """Write or replace this benchmark's section; keep every other section as it is."""
    text = path.read_text() if path.exists() else ""
    if not text.strip():
        text = INTRO
    section = f"{SECTION_TITLE}\n\n{body.rstrip()}\n"
    pattern = re.compile(rf"^{re.escape(SECTION_TITLE)}\n.*?(?=^## |\Z)", re.M | re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _m: section + "\n", text, count=1)
    else:
        text = text.rstrip() + "\n\n" + section
    path.write_text(text.rstrip() + "\n")


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.continued_turn", description=__doc__)
    parser.add_argument("--runs", type=int, default=5, help="runs per scenario (5)")
    parser.add_argument("--startup-delay", type=float, default=1.5)
    parser.add_argument("--session-init-delay", type=float, default=0.8)
    parser.add_argument("--first-token-delay", type=float, default=0.1)
    parser.add_argument("--write", metavar="PATH", help="write/replace the section in PATH")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be >= 1")
    return args


async def main() -> int:
    args = parse_args()
    knobs = Knobs(args.startup_delay, args.session_init_delay, args.first_token_delay)
    command = command_line()
    date = datetime.now(UTC).strftime("%a %b %d %H:%M:%S UTC %Y")
    runs_a: list[Run] = []
    runs_b: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="acp-bench-") as tmp:
        state_dir = Path(tmp) / "agent-state"
        state_dir.mkdir()
        agent_a = fake_agent_command(*knobs.args(), "--state-dir", str(state_dir))
        with anyio.fail_after(SETUP_LIMIT_S):
            session_a = await setup_a(agent_a)
        async with run_proxy(Path(tmp) / "proxy", fake_agent_command(*knobs.args())) as proxy:
            with anyio.fail_after(SETUP_LIMIT_S):
                session_b = await setup_b(proxy.socket)
            for n in range(2, args.runs + 2):
                with anyio.fail_after(RUN_LIMIT_S):
                    a = await run_a(agent_a, session_a, n)
                runs_a.append(a)
                with anyio.fail_after(RUN_LIMIT_S):
                    b = await run_b(proxy.socket, session_b, n)
                runs_b.append(b)
                print(
                    f"run {n - 1}/{args.runs}: A {_ms(a.first_token)} ms, "
                    f"B {_ms(b.first_token)} ms",
                    flush=True,
                )
    body, _ratio, passed = render(knobs, runs_a, runs_b)
    header = f"Date: {date}  \nMachine: {machine()}  \nCommand: `{command}`\n"
    print()
    print(SECTION_TITLE)
    print()
    print(header)
    print(body)
    if args.write:
        write_section(Path(args.write), header + "\n" + body)
        print(f"wrote section to {args.write}")
    return 0 if passed else 1


def _entry() -> None:
    sys.exit(anyio.run(main, backend="asyncio"))


if __name__ == "__main__":
    _entry()
