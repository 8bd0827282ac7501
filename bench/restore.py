"""Benchmark 2: restoring a conversation whose agent is gone, rung by rung.

Run ``python -m bench.restore [--runs N] [--turns K] [--chunks C] [--write BENCHMARKS.md]``.

For each rung of the proxy's restore ladder (the fake agent's profile decides which one it
takes) and for two cost profiles of the fake agent (opencode-like: start-up 1.5 s, session
init 0.8 s, first token 0.1 s; and zero costs, which leaves the proxy's own overhead), one run
is:

* B (through the proxy, default ``warm_spares`` 1): a client creates a session, runs K turns
  (about 30 ``session/update`` each), frees the agent with ``session/close`` and waits until
  its pid is gone. Then, timed: a new connection, ``initialize``, ``session/prompt`` to the
  first agent chunk. The proxy restores the conversation inside that prompt, and its
  ``_meta["acp-proxy"]`` says which rung (``agent = restored:<rung>``) and what it cost
  (``cli_ready_ms``, ``session_init_ms``, ``ttft_ms``).
* A (the same continued turn through a re-spawned agent doing the same rung itself): an agent
  process creates the session and runs the same K turns, then exits. Timed: spawn,
  ``initialize``, the rung (``session/resume``; ``session/load`` with its replay read; or
  ``session/new`` and a first prompt carrying the history block the proxy would send, built
  with :func:`acp_proxy.transcript.seed_block`), ``session/prompt`` to the first agent chunk.

A and B alternate run by run, each run on a fresh session; every answer is checked to continue
the conversation (the fake agent reports how many earlier turns its context holds).

Goal: every B restore takes the expected rung and continues the conversation, and for every
rung and cost profile median(B) <= median(A) (the proxy is never slower than a daemon
re-spawning the agent and doing the rung itself).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import msgspec

from acp_proxy.testing.client import AcpClient, Reply
from acp_proxy.testing.proxy_process import ProxyHandle, fake_agent_command, run_proxy
from acp_proxy.transcript import seed_block
from bench._common import (
    AgentCosts,
    Stamp,
    agent_text,
    alive,
    first_token,
    ms,
    new_parser,
    parse,
    proxy_meta,
    report,
    row,
    run_main,
)

SECTION_TITLE = "## 2. Restoring a conversation whose agent is gone (each rung)"
RUN_LIMIT_S = 120.0  #: one run (set-up + timed turn) of either scenario
SETUP_LIMIT_S = 60.0
PID_GONE_LIMIT_S = 20.0
SPARE_MARGIN_S = 1.0  #: extra wait for the proxy's replacement spare beyond --startup-delay
CWD = "/tmp"

RUNGS: dict[str, tuple[str, ...]] = {
    "resume": ("--state-dir", "{state}"),
    "load": ("--state-dir", "{state}", "--no-resume"),
    "new": ("--no-resume", "--no-load"),
}


@dataclass
class RunA:
    """A: re-spawned agent; times in seconds from just before spawn."""

    ready: float  #: initialize answered
    bound: float  #: the rung answered (resume / load / new)
    first_token: float
    replayed: int  #: updates the agent replayed during session/load (load rung)
    bytes_prompt: int  #: size of the prompt's params (the seed for the new rung)


@dataclass
class RunB:
    """B: the proxy restoring; times in seconds from just before connect."""

    ready: float  #: initialize answered
    first_token: float
    prompt_sent: float
    meta: dict[str, Any] = field(default_factory=dict)


# -- helpers ----------------------------------------------------------------------------------


def _check_continued(reply: Reply, turns: int, what: str) -> None:
    text = agent_text(reply.updates())
    expected = f"context holds {turns} earlier turns"
    if expected not in text:
        raise RuntimeError(f"{what}: expected {expected!r} in the answer, got {text[-300:]!r}")


def _user_chunk(text: str) -> dict[str, Any]:
    return {"sessionUpdate": "user_message_chunk", "content": {"type": "text", "text": text}}


async def _run_turns(client: AcpClient, session_id: str, turns: int, what: str) -> list[Any]:
    """K turns; returns the conversation as the store holds it (user chunk, then updates)."""
    history: list[dict[str, Any]] = []
    for n in range(1, turns + 1):
        text = f"turn {n}: remember the number {n * 7}"
        reply = await client.prompt(session_id, text)
        first_token(reply, f"{what} turn {n}")
        history.append(_user_chunk(text))
        history.extend(reply.updates())
    return history


async def _wait_gone(pid: int) -> None:
    with anyio.fail_after(PID_GONE_LIMIT_S):
        while alive(pid):  # noqa: ASYNC110 (polling another process)
            await anyio.sleep(0.01)


# -- A: a re-spawned agent doing the rung itself ----------------------------------------------


async def run_a(agent: list[str], rung: str, turns: int) -> RunA:
    with anyio.fail_after(SETUP_LIMIT_S):
        async with AcpClient.spawn(agent) as client:
            await client.initialize()
            session_id = await client.new_session(CWD)
            history = await _run_turns(client, session_id, turns, "A set-up")
    params = {"cwd": CWD, "mcpServers": []}
    prompt_text = f"turn {turns + 1}: what did I ask you to remember?"
    start = time.perf_counter()
    async with AcpClient.spawn(agent) as client:
        await client.initialize()
        ready = time.perf_counter()
        replayed = 0
        blocks: list[dict[str, Any]] = [{"type": "text", "text": prompt_text}]
        if rung == "resume":
            (await client.request("session/resume", {**params, "sessionId": session_id})).unwrap(
                "session/resume"
            )
            target = session_id
        elif rung == "load":
            reply = await client.request("session/load", {**params, "sessionId": session_id})
            reply.unwrap("session/load")
            replayed = len(reply.updates())
            target = session_id
        else:
            target = await client.new_session(CWD)
            seed = seed_block(session_id, history)
            if seed is not None:
                blocks.insert(0, seed)
        bound = time.perf_counter()
        prompt_params = {"sessionId": target, "prompt": blocks}
        reply = await client.request("session/prompt", prompt_params)
        first = first_token(reply, f"A {rung} continued turn")
        _check_continued(reply, turns, f"A {rung}")
    return RunA(
        ready - start,
        bound - start,
        first - start,
        replayed,
        len(msgspec.json.encode(prompt_params)),
    )


# -- B: the proxy restores the conversation ----------------------------------------------------


async def run_b(proxy: ProxyHandle, rung: str, turns: int, costs: AgentCosts) -> RunB:
    with anyio.fail_after(SETUP_LIMIT_S):
        async with AcpClient.connect(proxy.socket) as client:
            await client.initialize()
            session_id = await client.new_session(CWD)
            created = time.monotonic()
            await _run_turns(client, session_id, turns, "B set-up")
            state = (await client.request("_fake/state", {"sessionId": session_id})).unwrap()
            pid = int(state["pid"])
            (await client.request("session/close", {"sessionId": session_id})).unwrap(
                "session/close"
            )
        await _wait_gone(pid)
        # session/new took the warm spare and the proxy started a replacement then: give it
        # time to be up, so that every run measures the same thing (a restore onto a spare).
        ready_at = created + costs.startup_delay + SPARE_MARGIN_S
        await anyio.sleep(max(0.0, ready_at - time.monotonic()))
    start = time.perf_counter()
    async with AcpClient.connect(proxy.socket) as client:
        await client.initialize()
        ready = time.perf_counter()
        prompt_text = f"turn {turns + 1}: what did I ask you to remember?"
        sent = time.perf_counter()
        reply = await client.prompt(session_id, prompt_text)
        first = first_token(reply, f"B {rung} continued turn")
        _check_continued(reply, turns, f"B {rung}")
        meta = proxy_meta(reply.result)
    return RunB(ready - start, first - start, sent - start, meta)


# -- report ------------------------------------------------------------------------------------


def _med(values: Sequence[float]) -> float:
    return statistics.median(values)


def _meta_med(runs: Sequence[RunB], key: str) -> str:
    values = [r.meta[key] for r in runs if isinstance(r.meta.get(key), int | float)]
    if not values:
        return "n/a"
    return f"{statistics.median(values):,.1f}"


@dataclass
class Cell:
    costs: AgentCosts
    rung: str
    a: list[RunA] = field(default_factory=list)
    b: list[RunB] = field(default_factory=list)

    def rung_ok(self) -> bool:
        return all(r.meta.get("agent") == f"restored:{self.rung}" for r in self.b)

    def faster(self) -> bool:
        return _med([r.first_token for r in self.b]) <= _med([r.first_token for r in self.a])


def render(cells: list[Cell], runs: int, turns: int, chunks: int) -> tuple[str, bool]:
    updates_per_turn = chunks + 5  # thought, tool call (3 updates), chunks, summary
    lines = [
        f"Fake agent: `--chunks {chunks}` ({updates_per_turn} `session/update` per turn); a "
        f"session of {turns} turns is created for every run; {runs} runs per scenario, "
        "alternating A, B, A, B, ... Rung profiles: resume = `--state-dir D`, load = "
        "`--state-dir D --no-resume`, new = `--no-resume --no-load`. Costs: opencode-like = "
        "`--startup-delay 1.5 --session-init-delay 0.8 --first-token-delay 0.1`, zero = all 0.",
        "",
        "A = the same continued turn through a re-spawned agent doing the rung itself "
        "(spawn + `initialize` + rung + `session/prompt`); B = the proxy (default `warm_spares` "
        "1), agent freed with `session/close`, then a new connection: `initialize` + "
        "`session/prompt`, restored inside the prompt.",
        "",
        "Time to first token of the continued turn, ms, median (min-max):",
        "",
        row(
            [
                "costs",
                "rung",
                "A: re-spawned, spawn -> first token",
                "B: proxy, connect -> first token",
                "B: prompt -> first token",
                "A / B",
            ]
        ),
        row(["---", "---", "---:", "---:", "---:", "---:"]),
    ]
    for cell in cells:
        a = [r.first_token for r in cell.a]
        b = [r.first_token for r in cell.b]
        bp = [r.first_token - r.prompt_sent for r in cell.b]
        lines.append(
            row(
                [
                    cell.costs.name,
                    cell.rung,
                    f"{ms(_med(a))} ({ms(min(a))}-{ms(max(a))})",
                    f"{ms(_med(b))} ({ms(min(b))}-{ms(max(b))})",
                    f"{ms(_med(bp))} ({ms(min(bp))}-{ms(max(bp))})",
                    f"{_med(a) / _med(b):.1f}x",
                ]
            )
        )
    lines += [
        "",
        "Breakdown, medians in ms. A: each step's own duration. B: the proxy's "
        '`_meta["acp-proxy"]` of the restoring prompt (`session_init_ms` = the whole restore '
        "minus `cli_ready_ms`: rung call, state re-applied, store writes; 0 `cli_ready_ms` = "
        "restored onto the warm spare).",
        "",
        row(
            [
                "costs",
                "rung",
                "A spawn + init",
                "A rung",
                "A prompt -> 1st token",
                "B `agent`",
                "B `cli_ready_ms`",
                "B `session_init_ms`",
                "B `model_first_token_ms`",
                "B `ttft_ms`",
                "B `bytes_upstream`",
                "B overhead vs A rung + prompt",
            ]
        ),
        row(["---", "---", *["---:"] * 3, "---", *["---:"] * 6]),
    ]
    for cell in cells:
        a_rung_prompt = _med([r.first_token - r.ready for r in cell.a])
        b_prompt = _med([r.first_token - r.prompt_sent for r in cell.b])
        agents = sorted({str(r.meta.get("agent")) for r in cell.b})
        lines.append(
            row(
                [
                    cell.costs.name,
                    cell.rung,
                    ms(_med([r.ready for r in cell.a])),
                    ms(_med([r.bound - r.ready for r in cell.a])),
                    ms(_med([r.first_token - r.bound for r in cell.a])),
                    ", ".join(agents),
                    _meta_med(cell.b, "cli_ready_ms"),
                    _meta_med(cell.b, "session_init_ms"),
                    _meta_med(cell.b, "model_first_token_ms"),
                    _meta_med(cell.b, "ttft_ms"),
                    f"{_med([r.meta.get('bytes_upstream', 0) for r in cell.b]):,.0f}",
                    f"{(b_prompt - a_rung_prompt) * 1000:+,.1f}",
                ]
            )
        )
    rung_ok = all(cell.rung_ok() for cell in cells)
    faster = all(cell.faster() for cell in cells)
    passed = rung_ok and faster
    lines += [
        "",
        "\"B overhead vs A rung + prompt\" = B's prompt -> first token minus A's rung + prompt "
        "-> first token (A without its spawn and `initialize`): what restoring through the "
        "proxy adds over an agent that is already up; with zero costs it is the proxy's own "
        "overhead. A `session/load` replayed a median of "
        + ", ".join(
            f"{statistics.median(r.replayed for r in cell.a):g} ({cell.costs.name})"
            for cell in cells
            if cell.rung == "load"
        )
        + " updates to A's client, which the proxy drains instead.",
        "",
        f"Every B restore took the expected rung and continued the conversation: "
        f"**{'yes' if rung_ok else 'NO'}**; median(B) <= median(A) for every rung and cost "
        f"profile: **{'yes' if faster else 'NO'}** — goal: **{'PASS' if passed else 'FAIL'}**",
    ]
    return "\n".join(lines) + "\n", passed


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = new_parser("restore", __doc__)
    parser.add_argument("--runs", type=int, default=3, help="runs per scenario (3)")
    parser.add_argument("--turns", type=int, default=5, help="turns before the restore (5)")
    parser.add_argument("--chunks", type=int, default=25, help="message chunks per turn (25)")
    parser.add_argument(
        "--costs",
        choices=["both", "opencode", "zero"],
        default="both",
        help="cost profiles to run (both)",
    )
    args = parse(parser, argv)
    if args.runs < 1 or args.turns < 1 or args.chunks < 0:
        parser.error("--runs and --turns must be >= 1, --chunks >= 0")
    return args


async def main() -> int:
    args = parse_args()
    profiles = [
        AgentCosts(1.5, 0.8, 0.1, name="opencode-like"),
        AgentCosts(0.0, 0.0, 0.0, name="zero"),
    ]
    if args.costs != "both":
        profiles = [p for p in profiles if p.name.startswith(args.costs)]
    stamp = Stamp.now("restore")
    cells: list[Cell] = []
    with tempfile.TemporaryDirectory(prefix="acpb-") as tmp:
        for p_index, costs in enumerate(profiles):
            for rung, rung_args in RUNGS.items():
                base = Path(tmp) / f"{p_index}{rung}"
                state = base / "state"
                state.mkdir(parents=True)
                agent = fake_agent_command(
                    *costs.args(),
                    "--chunks",
                    str(args.chunks),
                    *(a.format(state=state) for a in rung_args),
                )
                cell = Cell(costs, rung)
                cells.append(cell)
                async with run_proxy(base / "p", agent) as proxy:
                    for n in range(1, args.runs + 1):
                        with anyio.fail_after(RUN_LIMIT_S):
                            a = await run_a(agent, rung, args.turns)
                        cell.a.append(a)
                        with anyio.fail_after(RUN_LIMIT_S):
                            b = await run_b(proxy, rung, args.turns, costs)
                        cell.b.append(b)
                        print(
                            f"{costs.name:13} {rung:6} run {n}/{args.runs}: "
                            f"A {ms(a.first_token)} ms, B {ms(b.first_token)} ms "
                            f"(agent {b.meta.get('agent')}, cli_ready_ms "
                            f"{b.meta.get('cli_ready_ms')}, session_init_ms "
                            f"{b.meta.get('session_init_ms')})",
                            flush=True,
                        )
    body, passed = render(cells, args.runs, args.turns, args.chunks)
    return report(SECTION_TITLE, stamp.header(stamp.load_span()), body, passed, args.write)


if __name__ == "__main__":
    run_main(main)
