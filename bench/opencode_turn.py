"""Benchmark 9: continued-turn time to first token with the real ``opencode acp``.

Run ``python -m bench.opencode_turn [--runs N] [--write BENCHMARKS.md]`` after
``scripts/install-opencode.sh`` (without it the benchmark says so and exits 0).

The same measurement as ``bench.continued_turn``, but the agent is the real opencode 1.18.33,
offline, its model a local fake OpenAI-compatible server answering at once (so the figures are
opencode's own costs plus the proxy's). One continued turn of an existing conversation is timed
from just before the client starts a process / opens a connection to the first
``agent_message_chunk`` / ``agent_thought_chunk`` of the prompt:

* A (re-spawned opencode, as daemons do today): spawn ``opencode acp`` on stdio, ``initialize``,
  ``session/load`` of the session an earlier process created (opencode's own database),
  ``session/prompt``; then the process is ended (stdin closed) before the next run.
* B (through the proxy): a new client connection to one long-lived ``acp-proxy serve`` whose
  opencode is already warm, ``initialize``, ``session/load`` (replayed from the proxy's store),
  ``session/prompt``.

A and B alternate run by run (A, B, A, B, ...); each has its own private opencode home (HOME,
XDG_* dirs) so the two never share a database, and every answer is checked to come from the same
conversation (the fake model reports how many user messages it was sent).
"""

from __future__ import annotations

import argparse
import os
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
from acp_proxy.testing.proxy_process import run_proxy
from bench.continued_turn import machine, summary
from tests.opencode.fake_model import FakeModel
from tests.opencode.harness import INSTALL_HINT, OpencodeHome, agent_command, installed, prime

SECTION_TITLE = "## 9. Real opencode: continued-turn time to first token"
GOAL_RATIO = 15.0
RUN_LIMIT_S = 120.0  #: one continued turn (either scenario) must finish within this
SETUP_LIMIT_S = 180.0
SETTLE_S = 3.0  #: pause after setting up, so the proxy's replacement spare is up and idle


@dataclass
class Run:
    """One continued turn: times in seconds from the start (spawn or connect)."""

    ready: float  #: initialize answered
    loaded: float  #: session/load answered
    first_token: float  #: first agent chunk of the prompt
    total: float  #: prompt answered
    replayed: int  #: session/update notifications received while loading
    meta: dict[str, Any] = field(default_factory=dict)  #: the proxy's _meta timings (B only)
    exit_s: float = 0.0  #: A only: stdin closed -> process gone (not part of the timing)


def _text(reply: Reply) -> str:
    return "".join(
        u.get("content", {}).get("text", "")
        for u in reply.updates()
        if u.get("sessionUpdate") == "agent_message_chunk"
    )


def _check(reply: Reply, n: int, what: str) -> float:
    """The first-token time of turn ``n``, after checking it continued the conversation."""
    reply.unwrap("session/prompt")
    if reply.first_update_at is None:
        raise RuntimeError(f"{what}: the prompt was answered without any agent chunk")
    expected = f"I have seen {n} user messages. Last: continued turn {n}"
    if n == 1:
        expected = "I have seen 1 user messages. Last: turn 1"
    if _text(reply) != expected:
        raise RuntimeError(f"{what}: expected {expected!r}, got {_text(reply)!r}")
    return reply.first_update_at


async def _continued_turn(client: AcpClient, cwd: str, sid: str, start: float, n: int) -> Run:
    await client.initialize()
    ready = time.perf_counter()
    load = await client.request("session/load", {"sessionId": sid, "cwd": cwd, "mcpServers": []})
    load.unwrap("session/load")
    loaded = time.perf_counter()
    reply = await client.prompt(sid, f"continued turn {n}")
    first = _check(reply, n, f"continued turn {n}")
    meta = ((reply.result or {}).get("_meta") or {}).get("acp-proxy") or {}
    return Run(
        ready - start,
        loaded - start,
        first - start,
        reply.received_at - start,
        len(load.updates()),
        meta,
    )


async def _first_turn(client: AcpClient, cwd: str, what: str) -> tuple[str, dict[str, Any]]:
    """Create a session and run turn 1; returns the session id and the initialize result."""
    info = await client.initialize()
    sid = await client.new_session(cwd)
    _check(await client.prompt(sid, "turn 1"), 1, what)
    return sid, info


# -- scenario A: opencode is re-spawned for every turn -----------------------------------------


async def setup_a(home: OpencodeHome, env: dict[str, str]) -> tuple[str, str]:
    """A first opencode process creates the session, runs turn 1 and exits.

    Returns the session id and opencode's version (from its ``initialize``).
    """
    async with AcpClient.spawn(agent_command(home.work), env=env) as client:
        sid, info = await _first_turn(client, str(home.work), "A turn 1")
        await _end(client)
    return sid, str((info.get("agentInfo") or {}).get("version"))


async def _end(client: AcpClient) -> float:
    """Close the spawned process's stdin and wait until it is gone; returns the seconds taken.

    Done here, gracefully and fully, so that an exiting opencode neither costs the next run CPU
    nor gets SIGKILLed by ``AcpClient.spawn``'s 2 s limit.
    """
    process = client.process
    assert process is not None and process.stdin is not None
    closing = time.perf_counter()
    await process.stdin.aclose()
    await process.wait()
    return time.perf_counter() - closing


async def run_a(home: OpencodeHome, env: dict[str, str], sid: str, n: int) -> Run:
    start = time.perf_counter()
    async with AcpClient.spawn(agent_command(home.work), env=env) as client:
        run = await _continued_turn(client, str(home.work), sid, start, n)
        run.exit_s = await _end(client)
    return run


# -- scenario B: through the proxy, opencode stays warm ----------------------------------------


async def setup_b(socket: str, cwd: str) -> str:
    """A first client creates the session through the proxy, runs turn 1 and disconnects."""
    async with AcpClient.connect(socket) as client:
        return (await _first_turn(client, cwd, "B turn 1"))[0]


async def run_b(socket: str, cwd: str, sid: str, n: int) -> Run:
    start = time.perf_counter()
    async with AcpClient.connect(socket) as client:
        return await _continued_turn(client, cwd, sid, start, n)


# -- report ------------------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f}"


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def render(runs_a: list[Run], runs_b: list[Run], notes: dict[str, Any]) -> tuple[str, bool]:
    """The markdown body; returns (text, passed)."""
    ttft_a = [r.first_token for r in runs_a]
    ttft_b = [r.first_token for r in runs_b]
    ratio = statistics.median(ttft_a) / statistics.median(ttft_b)
    passed = ratio >= GOAL_RATIO
    lines = [
        f"Agent: `opencode acp` {notes['version']} (npm `opencode-ai`), offline, model: a local "
        "fake OpenAI-compatible server that streams its answer at once; "
        f"{len(runs_a)} runs per scenario, alternating A, B, A, B, ...",
        "",
        "Time to first token of a continued turn, ms (from just before spawn / connect to the "
        "first agent chunk of the prompt):",
        "",
        _row(["scenario", "median", "p90", "min", "max"]),
        _row(["---", "---:", "---:", "---:", "---:"]),
    ]
    for name, values in (
        ("A: re-spawned opencode (spawn + initialize + session/load + prompt)", ttft_a),
        ("B: proxy, warm opencode (connect + initialize + session/load + prompt)", ttft_b),
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
    lines += [
        "",
        f"B served every continued turn with agent(s): {', '.join(agents)}; the proxy spawned "
        f"{notes['b_spawned']} opencode process(es) in all, "
        f"{notes['b_spawned'] - notes['b_spawned_before']} of them during the timed runs.",
        f"Not timed: A's process exit after stdin is closed, median "
        f"{_ms(statistics.median(r.exit_s for r in runs_a))} ms (A pays it too, between turns).",
        f"Machine load average (1 min) before / after: {notes['load_before']} / "
        f"{notes['load_after']}.",
    ]
    return "\n".join(lines) + "\n", passed


def command_line() -> str:
    exe = sys.executable
    try:
        rel = os.path.relpath(exe)
        if not rel.startswith(".."):
            exe = rel
    except ValueError:
        pass
    return shlex.join([exe, "-m", "bench.opencode_turn", *sys.argv[1:]])


def write_section(path: Path, body: str) -> None:
    """Write or replace this benchmark's section; keep every other section as it is."""
    text = path.read_text() if path.exists() else ""
    section = f"{SECTION_TITLE}\n\n{body.rstrip()}\n"
    pattern = re.compile(rf"^{re.escape(SECTION_TITLE)}\n.*?(?=^## |\Z)", re.M | re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _m: section + "\n", text, count=1)
    else:
        text = text.rstrip() + "\n\n" + section
    path.write_text(text.rstrip() + "\n")


def _spawned(logs: list[dict[str, Any]]) -> int:
    return sum(1 for e in logs if e.get("event") == "agent.spawned")


def _load() -> str:
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "n/a"


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.opencode_turn", description=__doc__)
    parser.add_argument("--runs", type=int, default=5, help="runs per scenario (5)")
    parser.add_argument("--write", metavar="PATH", help="write/replace the section in PATH")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be >= 1")
    return args


async def main() -> int:
    args = parse_args()
    if not installed():
        print(f"bench.opencode_turn skipped: {INSTALL_HINT}", file=sys.stderr)
        return 0
    command = command_line()
    date = datetime.now(UTC).strftime("%a %b %d %H:%M:%S UTC %Y")
    notes: dict[str, Any] = {"load_before": _load()}
    runs_a: list[Run] = []
    runs_b: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="acp-bench-oc-") as directory, FakeModel() as model:
        tmp = Path(directory)
        # opencode's database is created once, then copied: see harness.prime.
        template = OpencodeHome(tmp / "template")
        await anyio.to_thread.run_sync(prime, template, model.base_url)
        home_a = OpencodeHome(tmp / "a", template.root / "data")
        home_b = OpencodeHome(tmp / "b", template.root / "data")
        env_a = home_a.env(model.base_url)
        env_b = home_b.env(model.base_url)
        with anyio.fail_after(SETUP_LIMIT_S):
            session_a, notes["version"] = await setup_a(home_a, env_a)
        async with run_proxy(tmp / "proxy", agent_command(home_b.work), env=env_b) as proxy:
            with anyio.fail_after(SETUP_LIMIT_S):
                session_b = await setup_b(proxy.socket, str(home_b.work))
            await anyio.sleep(SETTLE_S)
            notes["b_spawned_before"] = _spawned(proxy.logs())
            for n in range(2, args.runs + 2):
                with anyio.fail_after(RUN_LIMIT_S):
                    a = await run_a(home_a, env_a, session_a, n)
                runs_a.append(a)
                with anyio.fail_after(RUN_LIMIT_S):
                    b = await run_b(proxy.socket, str(home_b.work), session_b, n)
                runs_b.append(b)
                print(
                    f"run {n - 1}/{args.runs}: A {_ms(a.first_token)} ms, "
                    f"B {_ms(b.first_token)} ms",
                    flush=True,
                )
            notes["b_spawned"] = _spawned(proxy.logs())
    notes["load_after"] = _load()
    body, passed = render(runs_a, runs_b, notes)
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
