"""Benchmark 14: real opencode, first turn of a new conversation, known workspace vs cold.

Run ``python -m bench.workspace_first_turn [--runs N] [--write BENCHMARKS.md]`` after
``scripts/install-opencode.sh`` (without it the benchmark says so and exits 0).

One ``acp-proxy serve --per-process-env OD_WORKSPACE`` (``warm_spares = 0``,
``env_spares = 2``) in front of the real opencode 1.18.33, offline, its model a local fake
server answering at once. Each run is a new conversation: a connection sends the
``_acp-proxy/env`` notification a bridge would send (``OD_WORKSPACE``), then
``session/new`` and the first ``session/prompt``; timed from just before ``session/new`` is
sent to the first ``agent_message_chunk``/``agent_thought_chunk``; then the session is deleted
(its agent stops). Alternating run by run:

* known workspace: ``OD_WORKSPACE=known``, seen before, so the proxy keeps a spare opencode
  for it, with a session opened ahead in the workspace's directory (the run waits, untimed,
  until that spare is ready with it);
* cold: a workspace value never seen before: a fresh opencode is spawned.

Before each timed run the proxy is left to finish starting the spares of earlier runs, so no
background spawn competes with the timed one. Goal: median(cold) >= 2 x median(known).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from acp_proxy.extensions import ENV_METHOD
from acp_proxy.testing.client import AcpClient
from acp_proxy.testing.proxy_process import ProxyHandle, run_proxy
from bench._common import Stamp, ms, new_parser, parse, report, row, run_main
from tests.opencode.fake_model import FakeModel
from tests.opencode.harness import INSTALL_HINT, OpencodeHome, agent_command, installed, prime

SECTION_TITLE = "## 19. Real opencode: first turn in a known workspace vs cold"
RUN_LIMIT_S = 120.0


def _ready(p: ProxyHandle) -> int:
    return sum(1 for e in p.logs() if e.get("event") == "agent.env_spare_ready")


def _opened_ahead(p: ProxyHandle) -> int:
    return sum(1 for e in p.logs() if e.get("event") == "agent.preopened")


async def _settle(p: ProxyHandle, spares: int) -> None:
    """Wait (bounded) until ``spares`` env spares have been reported ready, each with its
    session opened ahead."""
    with anyio.fail_after(RUN_LIMIT_S):
        while _ready(p) < spares or _opened_ahead(p) < spares:  # noqa: ASYNC110 (its log)
            await anyio.sleep(0.05)
    await anyio.sleep(0.5)


async def _run(p: ProxyHandle, cwd: str, workspace: str) -> tuple[float, str]:
    """One new conversation's first turn: seconds to the first chunk, and how the proxy
    obtained its agent."""
    async with AcpClient.connect(p.socket) as c:
        await c.initialize()
        await c.notify(ENV_METHOD, {"env": {"OD_WORKSPACE": workspace}})
        started = time.perf_counter()
        sid = await c.new_session(cwd)
        reply = await c.prompt(sid, "first turn")
        reply.unwrap("session/prompt")
        if reply.first_update_at is None:
            raise RuntimeError("the first turn streamed no agent chunk")
        meta: dict[str, Any] = (reply.result.get("_meta") or {}).get("acp-proxy") or {}
        (await c.request("session/delete", {"sessionId": sid})).unwrap("session/delete")
        return reply.first_update_at - started, str(meta.get("agent"))


async def main() -> int:
    parser = new_parser("workspace_first_turn", __doc__)
    parser.add_argument("--runs", type=int, default=5, help="runs per scenario (5)")
    args = parse(parser, None)
    if not installed():
        print(f"bench.workspace_first_turn skipped: {INSTALL_HINT}", file=sys.stderr)
        return 0
    stamp = Stamp.now("workspace_first_turn")
    times: dict[str, list[float]] = {"known": [], "cold": []}
    with tempfile.TemporaryDirectory(prefix="acp-bench-ws-") as directory, FakeModel() as model:
        tmp = Path(directory)
        template = OpencodeHome(tmp / "template")
        await anyio.to_thread.run_sync(prime, template, model.base_url)
        home = OpencodeHome(tmp / "home", template.root / "data")
        config = tmp / "proxy.toml"
        config.write_text("warm_spares = 0\nenv_spares = 2\n")
        extra = ("--config", str(config), "--per-process-env", "OD_WORKSPACE")
        command = agent_command(home.work)
        env = home.env(model.base_url)
        async with run_proxy(tmp / "proxy", command, extra_args=extra, env=env) as p:
            with anyio.fail_after(RUN_LIMIT_S):
                await _run(p, str(home.work), "known")  # untimed: the workspace is now known
            expected = 1
            for n in range(1, args.runs + 1):
                for scenario in ("known", "cold"):
                    await _settle(p, expected)
                    workspace = "known" if scenario == "known" else f"cold-{n}"
                    with anyio.fail_after(RUN_LIMIT_S):
                        elapsed, how = await _run(p, str(home.work), workspace)
                    want = "preopened" if scenario == "known" else "cold"
                    if how != want:
                        raise RuntimeError(f"{scenario} run {n}: agent {how!r}, not {want!r}")
                    times[scenario].append(elapsed)
                    expected += 1  # the spare this run asked for (a replacement, or a new one)
                    print(f"run {n}/{args.runs} {scenario:5}: {elapsed * 1000:,.0f} ms", flush=True)
    body, passed = _render(times, args.runs)
    return report(SECTION_TITLE, stamp.header(stamp.load_span()), body, passed, args.write)


def _render(times: dict[str, list[float]], runs: int) -> tuple[str, bool]:
    med = {k: statistics.median(v) for k, v in times.items()}
    lines = [
        f"{runs} runs per scenario, alternating (known, cold, …), after one untimed first "
        "conversation in the known workspace. Time from `session/new` sent to the first "
        "agent chunk of the first prompt, ms:",
        "",
        row(["scenario", "median", "min", "max"]),
        row(["---", "---:", "---:", "---:"]),
    ]
    for name, label in (
        ("known", "known workspace (its spare, session opened ahead)"),
        ("cold", "new workspace (cold)"),
    ):
        values = times[name]
        lines.append(row([label, ms(med[name], 0), ms(min(values), 0), ms(max(values), 0)]))
    ratio = med["cold"] / med["known"]
    passed = ratio >= 2.0
    lines += [
        "",
        f"median(cold) / median(known) = {ratio:.1f} (goal >= 2): "
        f"**{'PASS' if passed else 'FAIL'}**",
    ]
    return "\n".join(lines), passed


if __name__ == "__main__":
    run_main(main)
