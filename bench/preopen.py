"""Benchmark 20: sessions opened ahead on spares (``preopen_sessions``), real agents.

Run ``python -m bench.preopen [--runs N] [--write BENCHMARKS.md]`` after
``scripts/install-opencode.sh`` and ``scripts/install-claude-agent.sh`` (an agent not installed
is left out; with neither the benchmark says so and exits 0).

For each installed agent (``opencode acp`` 1.18.33 and ``claude-agent-acp`` 0.23.1, offline,
each with its local fake model answering at once), and for ``preopen_sessions`` on and off,
alternating run by run: one ``acp-proxy serve`` (defaults: ``warm_spares = 1``, one
conversation per process); a first conversation in the workspace (``session/new`` + one
prompt), then, once the replacement spare is ready (with its session opened ahead when on) and
has settled for 8 s:

* the spare's memory: PSS of its process tree (``/proc/PID/smaps_rollup``);
* a new conversation in the same workspace: time from ``session/new`` sent to the first agent
  chunk of its first prompt;
* a continued turn of that new conversation (its second prompt), for scale.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from acp_proxy.procmem import read_procs, tree_pss_bytes
from acp_proxy.testing.client import AcpClient
from acp_proxy.testing.proxy_process import run_proxy
from bench._common import (
    Stamp,
    first_token,
    ms,
    new_parser,
    parse,
    ready_spare,
    report,
    row,
    run_main,
)

SECTION_TITLE = "## 20. Sessions opened ahead on spares (real opencode and claude-agent-acp)"
RUN_LIMIT_S = 180.0
SETTLE_S = 8.0


@dataclass
class Figures:
    spare_mib: list[float] = field(default_factory=list)
    new_s: list[float] = field(default_factory=list)
    continued_s: list[float] = field(default_factory=list)
    served_by: set[str] = field(default_factory=set)


@dataclass
class World:
    """One agent's command, environment and workspace."""

    name: str
    command: list[str]
    env: dict[str, str]
    cwd: str


async def _run(world: World, tmp: Path, preopen: bool, figures: Figures, n: int) -> None:
    extra = () if preopen else ("--no-preopen-sessions",)
    proxy_dir = tmp / f"{world.name}-{n}-{preopen}"
    async with (
        run_proxy(proxy_dir, world.command, env=world.env, extra_args=extra) as p,
        AcpClient.connect(p.socket) as c,
    ):
        await c.initialize()
        first = await c.new_session(world.cwd)
        first_token(await c.prompt(first, "the first conversation"), "first conversation")
        spare = await ready_spare(p.socket, opened_ahead=preopen)
        await anyio.sleep(SETTLE_S)
        pss = tree_pss_bytes([spare["pid"]], read_procs())
        figures.spare_mib.append(sum(pss.values()) / 2**20)
        started = time.perf_counter()
        sid = await c.new_session(world.cwd)
        reply = await c.prompt(sid, "a new conversation")
        figures.new_s.append(first_token(reply, "new conversation") - started)
        figures.served_by.add(str(reply.result["_meta"]["acp-proxy"]["agent"]))
        started = time.perf_counter()
        reply = await c.prompt(sid, "its second turn")
        figures.continued_s.append(first_token(reply, "continued turn") - started)


def _worlds(tmp: Path) -> list[tuple[Callable[[], AbstractContextManager[Any]], Any]]:
    """(fake model server factory, world maker) per installed agent."""
    from tests.claude import harness as claude
    from tests.claude.fake_anthropic import FakeAnthropic
    from tests.opencode import harness as opencode
    from tests.opencode.fake_model import FakeModel

    worlds: list[tuple[Callable[[], AbstractContextManager[Any]], Any]] = []
    if opencode.installed():

        def make_opencode(model: Any) -> World:
            template = opencode.OpencodeHome(tmp / "oc-template")
            opencode.prime(template, model.base_url)
            home = opencode.OpencodeHome(tmp / "oc-home", template.root / "data")
            return World(
                "opencode acp 1.18.33",
                opencode.agent_command(home.work),
                home.env(model.base_url),
                str(home.work),
            )

        worlds.append((FakeModel, make_opencode))
    if claude.installed():

        def make_claude(model: Any) -> World:
            home = claude.ClaudeHome(tmp / "cl-home")
            return World(
                "claude-agent-acp 0.23.1",
                claude.agent_command(),
                home.env(model.base_url),
                str(home.work),
            )

        worlds.append((FakeAnthropic, make_claude))
    return worlds


async def main() -> int:
    parser = new_parser("preopen", __doc__)
    parser.add_argument("--runs", type=int, default=3, help="runs per agent and setting (3)")
    args = parse(parser, None)
    stamp = Stamp.now("preopen")
    results: list[tuple[str, dict[bool, Figures]]] = []
    with tempfile.TemporaryDirectory(prefix="acp-bench-preopen-") as directory:
        tmp = Path(directory)
        worlds = _worlds(tmp)
        if not worlds:
            print("bench.preopen skipped: install opencode or claude-agent-acp", file=sys.stderr)
            return 0
        for server, make in worlds:
            with server() as model:
                world = await anyio.to_thread.run_sync(make, model)
                figures = {True: Figures(), False: Figures()}
                for n in range(args.runs):
                    for preopen in (True, False):
                        with anyio.fail_after(RUN_LIMIT_S):
                            await _run(world, tmp, preopen, figures[preopen], n)
                        took = figures[preopen].new_s[-1]
                        print(f"{world.name} run {n + 1} preopen={preopen}: {took * 1000:,.0f} ms")
                results.append((world.name, figures))
    body, passed = _render(results, args.runs)
    return report(SECTION_TITLE, stamp.header(stamp.load_span()), body, passed, args.write)


def _render(results: list[tuple[str, dict[bool, Figures]]], runs: int) -> tuple[str, bool]:
    lines = [
        f"{runs} runs per agent and setting, alternating (on, off, …); one proxy per run, "
        "defaults (`warm_spares = 1`, one conversation per process). Medians:",
        "",
        row(
            [
                "agent",
                "preopen_sessions",
                "spare PSS",
                "new conversation: first token (ms)",
                "continued turn: first token (ms)",
                "new / continued",
                "new served by",
            ]
        ),
        row(["---", "---", "---:", "---:", "---:", "---:", "---"]),
    ]
    notes = []
    for name, figures in results:
        for preopen in (True, False):
            f = figures[preopen]
            new, cont = statistics.median(f.new_s), statistics.median(f.continued_s)
            lines.append(
                row(
                    [
                        name,
                        "on" if preopen else "off",
                        f"{statistics.median(f.spare_mib):,.0f} MiB",
                        ms(new, 0),
                        ms(cont, 0),
                        f"{new / cont:.1f}x",
                        ", ".join(sorted(f.served_by)),
                    ]
                )
            )
        on, off = figures[True], figures[False]
        speedup = statistics.median(off.new_s) / statistics.median(on.new_s)
        extra = statistics.median(on.spare_mib) - statistics.median(off.spare_mib)
        notes.append(
            f"{name}: a new conversation's first token {speedup:.1f}x sooner with the session "
            f"opened ahead; the spare holds {extra:+,.0f} MiB for it."
        )
    lines += ["", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n", True


if __name__ == "__main__":
    run_main(main)
