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
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

from acp_proxy.testing.client import AcpClient
from acp_proxy.testing.proxy_process import run_proxy
from bench._common import (
    ContinuedRun,
    Stamp,
    continued_turn,
    load_average,
    new_parser,
    parse,
    render_continued,
    report,
    run_main,
)
from bench._real_agent import (
    alternate_with_proxy,
    checked_first_turn,
    continued_turn_check,
    real_agent_notes,
)
from bench.plot import ttft_png
from tests.opencode.fake_model import FakeModel
from tests.opencode.harness import INSTALL_HINT, OpencodeHome, agent_command, installed, prime

SECTION_TITLE = "## 9. Real opencode: continued-turn time to first token"
#: Drawn beside the markdown file given to --write (and shown in the README).
FIGURE = "BENCHMARKS-ttft-opencode.png"
GOAL_RATIO = 15.0
RUN_LIMIT_S = 120.0  #: one continued turn (either scenario) must finish within this
SETUP_LIMIT_S = 180.0
SETTLE_S = 3.0  #: pause after setting up, so the proxy's replacement spare is up and idle


# -- scenario A: opencode is re-spawned for every turn -----------------------------------------


async def setup_a(home: OpencodeHome, env: dict[str, str]) -> tuple[str, str]:
    """A first opencode process creates the session, runs turn 1 and exits.

    Returns the session id and opencode's version (from its ``initialize``).
    """
    async with AcpClient.spawn(agent_command(home.work), env=env) as client:
        sid, info = await checked_first_turn(client, str(home.work), "A turn 1")
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


async def run_a(home: OpencodeHome, env: dict[str, str], sid: str, n: int) -> ContinuedRun:
    start = time.perf_counter()
    async with AcpClient.spawn(agent_command(home.work), env=env) as client:
        run = await continued_turn(client, sid, str(home.work), start, n, continued_turn_check)
        run.exit_s = await _end(client)
    return run


# -- report ------------------------------------------------------------------------------------


def render(
    runs_a: list[ContinuedRun], runs_b: list[ContinuedRun], notes: dict[str, Any]
) -> tuple[str, bool]:
    """The markdown body; returns (text, passed)."""
    lines, _ratio, passed = render_continued(
        f"Agent: `opencode acp` {notes['version']} (npm `opencode-ai`), offline, model: a local "
        "fake OpenAI-compatible server that streams its answer at once; "
        f"{len(runs_a)} runs per scenario, alternating A, B, A, B, ...",
        (
            "A: re-spawned opencode (spawn + initialize + session/load + prompt)",
            "B: proxy, warm opencode (connect + initialize + session/load + prompt)",
        ),
        runs_a,
        runs_b,
        GOAL_RATIO,
    )
    lines += real_agent_notes(
        "opencode", "process exit after stdin is closed", runs_a, runs_b, notes
    )
    lines += [
        f"Machine load average (1 min) before / after: {notes['load_before']} / "
        f"{notes['load_after']}.",
    ]
    return "\n".join(lines) + "\n", passed


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = new_parser("opencode_turn", __doc__)
    parser.add_argument("--runs", type=int, default=5, help="runs per scenario (5)")
    args = parse(parser, argv)
    if args.runs < 1:
        parser.error("--runs must be >= 1")
    return args


async def main() -> int:
    args = parse_args()
    if not installed():
        print(f"bench.opencode_turn skipped: {INSTALL_HINT}", file=sys.stderr)
        return 0
    stamp = Stamp.now("opencode_turn")
    notes: dict[str, Any] = {"load_before": load_average()}
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
            runs_a, runs_b = await alternate_with_proxy(
                proxy,
                str(home_b.work),
                args.runs,
                (SETUP_LIMIT_S, RUN_LIMIT_S, SETTLE_S),
                lambda n: run_a(home_a, env_a, session_a, n),
                notes,
            )
    notes["load_after"] = load_average()
    body, passed = render(runs_a, runs_b, notes)
    if args.write and ttft_png(
        Path(args.write).with_name(FIGURE),
        {
            "A: re-spawned opencode": [r.first_token for r in runs_a],
            "B: warm opencode through the proxy": [r.first_token for r in runs_b],
        },
        f"Continued turn, time to first token: opencode {notes['version']}, "
        f"{len(runs_a)} runs each",
        f"{stamp.header().splitlines()[0]}",
    ):
        body += f"\n![time to first token, A vs B]({FIGURE})\n"
    return report(SECTION_TITLE, stamp.header(), body, passed, args.write)


if __name__ == "__main__":
    run_main(main)
