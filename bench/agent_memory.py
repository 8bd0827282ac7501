"""Benchmark 12: memory of the agents behind the proxy, for sizing a deployment.

Run ``python -m bench.agent_memory [--sessions 4] [--settle 3] [--write BENCHMARKS.md]``.
With the real opencode installed (``make opencode``) the agents are ``opencode acp`` offline
(its model a local fake OpenAI-compatible server); without it, the bundled fake agent, and the
section says so.

One ``acp-proxy serve`` (``warm_spares = 1``) is started; each step opens a new connection,
runs ``initialize``, ``session/new`` and one short ``session/prompt`` (answer checked) and
disconnects: its agent stays live. After start-up and after each step the proxy is left alone
for ``--settle`` seconds, then read:

* every agent's process tree (the agent, its children, anything left in its session), as
  ``acp-proxy status`` reports it: **RSS** (counts the pages processes share, such as the
  agent binary's code, once per process: an upper bound) and **PSS** (shared pages split
  between the processes that map them, from ``/proc/PID/smaps_rollup``: what they cost
  together, close to what a container's memory cgroup is charged for them);
* the proxy process's own RSS.

No pass/fail goal: the section is the measurement the deployment examples are sized from.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from acp_proxy.ops_cli import request_status
from acp_proxy.procmem import read_procs, tree_pids
from acp_proxy.testing.client import AcpClient
from acp_proxy.testing.proxy_process import fake_agent_command, run_proxy
from bench._common import Stamp, new_parser, parse, report, row, run_main

SECTION_TITLE = "## 12. Agent memory (for sizing)"
SETUP_LIMIT_S = 180.0
STEP_LIMIT_S = 120.0
MIB = 1 << 20


def pss_bytes(pid: int) -> int:
    """Proportional set size of one process (0 if it is gone or unreadable)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


@dataclass
class Reading:
    """One step: the live sessions, and what every agent and the proxy hold."""

    live: int
    agents: list[dict[str, Any]]  #: from the status, plus ``pss_bytes`` and ``processes``
    proxy_rss: int

    @property
    def rss_total(self) -> int:
        return sum(a["rss_bytes"] for a in self.agents)

    @property
    def pss_total(self) -> int:
        return sum(a["pss_bytes"] for a in self.agents)


def read(socket: str, proxy_pid: int) -> Reading:
    status = request_status(socket, 10.0)
    trees = tree_pids([a["pid"] for a in status["agents"]], read_procs())
    for agent in status["agents"]:
        pids = trees.get(agent["pid"], [])
        agent["pss_bytes"] = sum(pss_bytes(pid) for pid in pids)
        agent["processes"] = len(pids)
    return Reading(status["sessions"]["live"], status["agents"], rss_bytes(proxy_pid))


async def one_conversation(socket: str, cwd: str, n: int) -> None:
    async with AcpClient.connect(socket) as client:
        await client.initialize()
        sid = await client.new_session(cwd)
        reply = await client.prompt(sid, f"hello {n}")
        if reply.error is not None or reply.result.get("stopReason") != "end_turn":
            raise RuntimeError(f"conversation {n} failed: {reply.error or reply.result}")


def mib(n: float) -> str:
    return f"{n / MIB:,.0f}"


def render(readings: list[Reading], agent: str) -> str:
    lines = [
        f"Agent: {agent}; `warm_spares = 1`; one conversation (`session/new` + one prompt) "
        "added per step, each on its own connection, then left live.",
        "",
        row(
            [
                "live conversations",
                "agents (incl. spare)",
                "agent RSS MiB, each",
                "agent PSS MiB, each",
                "all agents RSS MiB",
                "all agents PSS MiB",
                "proxy RSS MiB",
            ]
        ),
        row(["---:"] * 7),
    ]
    for r in readings:
        each_rss = "/".join(mib(a["rss_bytes"]) for a in r.agents)
        each_pss = "/".join(mib(a["pss_bytes"]) for a in r.agents)
        lines.append(
            row(
                [
                    str(r.live),
                    str(len(r.agents)),
                    each_rss,
                    each_pss,
                    mib(r.rss_total),
                    mib(r.pss_total),
                    mib(r.proxy_rss),
                ]
            )
        )
    busy = [a for r in readings for a in r.agents if a["role"] == "session"]
    spare = [a for r in readings for a in r.agents if a["role"] == "spare"]
    last = readings[-1]
    rss_max = max(a["rss_bytes"] for a in busy) if busy else 0
    pss_med = statistics.median(a["pss_bytes"] for a in busy) if busy else 0
    slope = (
        (last.pss_total - readings[0].pss_total) / (last.live - readings[0].live)
        if last.live > readings[0].live
        else 0
    )
    spare_rss = max((a["rss_bytes"] for a in spare), default=0)
    lines += [
        "",
        f"An agent serving a conversation: RSS up to {mib(rss_max)} MiB, PSS median "
        f"{mib(pss_med)} MiB; a warm spare: RSS {mib(spare_rss)} MiB. Each added conversation "
        f"grew the agents' PSS by {mib(slope)} MiB on average; "
        f"the proxy itself: {mib(last.proxy_rss)} MiB RSS with {last.live} live.",
        "Sizing rule (deploy/README.md): memory limit >= proxy + (max_live_agents + warm_spares)"
        " x agent RSS, with RSS the upper bound measured here; the PSS column is what the "
        "agents cost together when their shared pages are counted once.",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = new_parser("agent_memory", __doc__)
    parser.add_argument("--sessions", type=int, default=4, help="live conversations (4)")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds idle before a reading")
    args = parse(parser, argv)
    if args.sessions < 1:
        parser.error("--sessions must be >= 1")
    return args


async def main() -> int:
    args = parse_args()
    stamp = Stamp.now("agent_memory")
    readings: list[Reading] = []
    with tempfile.TemporaryDirectory(prefix="acp-bench-mem-") as directory:
        tmp = Path(directory)
        async with AsyncExitStack() as stack:
            from tests.opencode.harness import OpencodeHome, agent_command, installed, prime

            if installed():
                from tests.opencode.fake_model import FakeModel

                model = stack.enter_context(FakeModel())
                home = OpencodeHome(tmp / "home")
                await anyio.to_thread.run_sync(prime, home, model.base_url)
                command, env, cwd = agent_command(home.work), home.env(model.base_url), home.work
                version = await _opencode_version(env)
                agent = f"`opencode acp` {version} (npm `opencode-ai`), offline, fake model"
            else:
                print("opencode not installed (make opencode): measuring the fake agent",
                      file=sys.stderr)  # fmt: skip
                command, env, cwd = fake_agent_command(), None, tmp
                agent = "the bundled fake agent (opencode not installed: run `make opencode`)"
            proxy = await stack.enter_async_context(
                run_proxy(tmp / "proxy", command, env=env, extra_args=("--warm-spares", "1"))
            )
            with anyio.fail_after(SETUP_LIMIT_S):
                # Polling another process until its spare is up; bounded by fail_after.
                while not await _spare_up(proxy.socket, proxy.pid):  # noqa: ASYNC110
                    await anyio.sleep(0.2)
            await anyio.sleep(args.settle)
            readings.append(await anyio.to_thread.run_sync(read, proxy.socket, proxy.pid))
            for n in range(1, args.sessions + 1):
                with anyio.fail_after(STEP_LIMIT_S):
                    await one_conversation(proxy.socket, str(cwd), n)
                await anyio.sleep(args.settle)
                readings.append(await anyio.to_thread.run_sync(read, proxy.socket, proxy.pid))
                print(f"step {n}: {mib(readings[-1].rss_total)} MiB RSS in agents", file=sys.stderr)
    body = render(readings, agent)
    return report(SECTION_TITLE, stamp.header(), body, True, args.write)


async def _spare_up(socket: str, pid: int) -> bool:
    return bool((await anyio.to_thread.run_sync(read, socket, pid)).agents)


async def _opencode_version(env: dict[str, str]) -> str:
    from tests.opencode.harness import OPENCODE_BIN

    result = await anyio.run_process([str(OPENCODE_BIN), "--version"], env=env, check=False)
    return result.stdout.decode().strip() or "?"


if __name__ == "__main__":
    run_main(main)
