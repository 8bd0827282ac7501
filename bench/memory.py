"""Benchmark 8: the proxy's own memory with many stored and live sessions.

Run ``python -m bench.memory [--runs N] [--stored 1000] [--events 20] [--steps 10,25,50]
[--write BENCHMARKS.md]``.

Set-up (not measured): one SQLite database is pre-filled through the store API
(``open_store``, ``PutSession``, ``AppendEvent``) with ``--stored`` sessions of ``--events``
events each (``agent_message_chunk`` payloads of 100-200 B). ``acp-proxy serve`` is started on
it with a TOML config (``max_live_agents = 200``, ``warm_spares = 0``) and the bundled fake
agent with ``--thoughts 0 --tool-calls 0`` (one turn = 3 message chunks + the summary chunk).

Measured, per run (a fresh proxy and a fresh copy of the database each run):

* ``VmRSS`` (and ``RssAnon``, ``VmHWM``, ``Threads``) of the proxy process alone, from
  ``/proc/<pid>/status``: right after start, after one ``session/list`` walk over every stored
  session, then after 10, 25 and 50 live sessions (``--steps``). A live session is one
  conversation created through the socket by its own connection: ``initialize``,
  ``session/new``, one short ``session/prompt`` (the answer is checked), then the connection is
  closed; the agent stays live under the proxy. Before each reading the proxy is left alone
  for ``--settle`` seconds.
* The fake agents' own ``VmRSS`` (the proxy's child processes), for context only.

Goal: proxy ``VmRSS`` at the last step (1 000 stored + 50 live) <= 80 MB, and the cost of one
more live session (least-squares slope of ``VmRSS`` over the steps, median of the runs)
<= 100 KB.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from acp_proxy.testing.client import AcpClient
from acp_proxy.testing.proxy_process import ProxyHandle, fake_agent_command, run_proxy
from bench._common import (
    Stamp,
    agent_text,
    children,
    chunk_payload,
    int_list,
    least_squares_slope,
    new_parser,
    parse,
    report,
    row,
    run_main,
)
from store import AppendEvent, PutSession, SessionRecord, open_store

SECTION_TITLE = "## 8. Proxy memory"
GOAL_TOTAL_MB = 80.0
GOAL_PER_SESSION_KB = 100.0
CWD = "/tmp"
AGENT_ARGS = ("--thoughts", "0", "--tool-calls", "0")
CONFIG = "max_live_agents = 200\nwarm_spares = 0\n"
SESSIONS_PER_COMMIT = 100
TURN_LIMIT_S = 60.0  #: one conversation (connect, initialize, new, prompt) within this
SETUP_LIMIT_S = 600.0
RUN_LIMIT_S = 900.0
WORDS = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit", "sed")


# -- /proc -------------------------------------------------------------------------------------


def status_kb(pid: int) -> dict[str, int]:
    """The ``kB`` fields of ``/proc/<pid>/status`` (VmRSS, RssAnon, VmHWM, ...) and Threads."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            parts = value.split()
            if (len(parts) == 2 and parts[1] == "kB") or name == "Threads":
                out[name] = int(parts[0])
    return out


@dataclass
class Reading:
    """One memory reading of the proxy (kB) and its agents."""

    label: str
    live: int  #: live conversations created so far
    rss_kb: int
    anon_kb: int
    hwm_kb: int
    threads: int
    agents: int  #: child processes of the proxy
    agents_rss_kb: list[int] = field(default_factory=list)


def read_memory(proxy: ProxyHandle, label: str, live: int) -> Reading:
    mine = status_kb(proxy.pid)
    agent_rss = []
    for child in children(proxy.pid):
        try:
            agent_rss.append(status_kb(child).get("VmRSS", 0))
        except OSError:
            continue
    return Reading(
        label,
        live,
        mine["VmRSS"],
        mine.get("RssAnon", 0),
        mine.get("VmHWM", 0),
        mine.get("Threads", 0),
        len(agent_rss),
        agent_rss,
    )


# -- set-up ------------------------------------------------------------------------------------


def _text(seq: int) -> str:
    length = 10 + (seq * 37) % 80
    words = [WORDS[(seq + 3 * i) % len(WORDS)] for i in range(length // 4 + 1)]
    return " ".join(words)[:length]


def _payload(session_id: str, seq: int) -> bytes:
    return chunk_payload(session_id, _text(seq))


async def prefill(db: Path, sessions: int, events: int) -> None:
    """``sessions`` stored sessions of ``events`` events each, through the store API."""
    now = time.time()
    async with open_store(db) as store:
        for start in range(0, sessions, SESSIONS_PER_COMMIT):
            ops: list[object] = []
            for i in range(start, min(start + SESSIONS_PER_COMMIT, sessions)):
                sid = f"sess_{i:032x}"
                ops.append(
                    PutSession(
                        SessionRecord(
                            id=sid,
                            cwd=f"/work/project-{i % 20}",
                            upstream_session_id=f"agent-{i}",
                            created_at=now - sessions + i,
                            updated_at=now - sessions + i,
                        )
                    )
                )
                ops += [
                    AppendEvent(
                        sid, seq, 1 + (seq - 1) // 5, "agent_message_chunk", _payload(sid, seq)
                    )
                    for seq in range(1, events + 1)
                ]
            await store.commit(ops)  # type: ignore[arg-type]


# -- measured ----------------------------------------------------------------------------------


async def list_all(socket: str) -> int:
    """Walk ``session/list`` over every stored session; returns how many it saw."""
    seen = 0
    async with AcpClient.connect(socket) as client:
        await client.initialize()
        cursor = None
        while True:
            params = {} if cursor is None else {"cursor": cursor}
            result = (await client.request("session/list", params)).unwrap("session/list")
            seen += len(result["sessions"])
            cursor = result.get("nextCursor")
            if cursor is None:
                return seen


async def one_conversation(socket: str, n: int) -> None:
    """A conversation of its own connection: initialize, session/new, one short turn."""
    text = f"memory bench conversation {n}"
    async with AcpClient.connect(socket) as client:
        await client.initialize()
        session_id = await client.new_session(CWD)
        reply = await client.prompt(session_id, text)
        reply.unwrap("session/prompt")
    summary = agent_text(reply.updates())
    if f"last user message: {text}" not in summary or "[fake] turn 1;" not in summary:
        raise RuntimeError(f"conversation {n}: unexpected answer {summary[-200:]!r}")


@dataclass
class Run:
    readings: list[Reading]

    def steps(self) -> list[Reading]:
        return [r for r in self.readings if r.label.startswith("live")]

    def slope_kb(self) -> float:
        points = self.steps()
        return least_squares_slope([r.live for r in points], [r.rss_kb for r in points])

    def anon_slope_kb(self) -> float:
        points = self.steps()
        return least_squares_slope([r.live for r in points], [r.anon_kb for r in points])


async def one_run(
    directory: Path, template_db: Path, steps: Sequence[int], settle: float, stored: int
) -> Run:
    directory.mkdir(parents=True)  # noqa: ASYNC240 (set-up, not measured)
    db = directory / "proxy.db"
    shutil.copyfile(template_db, db)
    config = directory / "config.toml"
    config.write_text(CONFIG)
    readings: list[Reading] = []
    async with run_proxy(
        directory,
        fake_agent_command(*AGENT_ARGS),
        extra_args=["--config", str(config)],
        db=str(db),
    ) as proxy:
        await anyio.sleep(settle)
        readings.append(read_memory(proxy, "started", 0))
        with anyio.fail_after(TURN_LIMIT_S):
            seen = await list_all(proxy.socket)
        if seen != stored:
            raise RuntimeError(f"session/list saw {seen} sessions, {stored} stored")
        await anyio.sleep(settle)
        readings.append(read_memory(proxy, "listed", 0))
        live = 0
        for target in steps:
            while live < target:
                live += 1
                with anyio.fail_after(TURN_LIMIT_S):
                    await one_conversation(proxy.socket, live)
            await anyio.sleep(settle)
            readings.append(read_memory(proxy, f"live {target}", live))
            print(
                f"  {live:3d} live: proxy VmRSS {readings[-1].rss_kb / 1024:.1f} MB, "
                f"{readings[-1].agents} agent processes",
                flush=True,
            )
    return Run(readings)


# -- report ------------------------------------------------------------------------------------


def _mb(kb: float) -> str:
    return f"{kb / 1024:,.1f}"


def render(runs: list[Run], stored: int, events: int) -> tuple[str, bool]:
    labels = [r.label for r in runs[0].readings]
    med = {
        label: {
            "live": runs[0].readings[i].live,
            "rss": statistics.median(run.readings[i].rss_kb for run in runs),
            "anon": statistics.median(run.readings[i].anon_kb for run in runs),
            "hwm": statistics.median(run.readings[i].hwm_kb for run in runs),
            "threads": statistics.median(run.readings[i].threads for run in runs),
            "agents": statistics.median(run.readings[i].agents for run in runs),
            "agent_rss": statistics.median(
                statistics.median(run.readings[i].agents_rss_kb)
                if run.readings[i].agents_rss_kb
                else 0
                for run in runs
            ),
            "agents_total": statistics.median(sum(run.readings[i].agents_rss_kb) for run in runs),
        }
        for i, label in enumerate(labels)
    }
    last = labels[-1]
    total_kb = med[last]["rss"]
    slopes = [run.slope_kb() for run in runs]
    anon_slopes = [run.anon_slope_kb() for run in runs]
    slope = statistics.median(slopes)
    total_ok = total_kb / 1024 <= GOAL_TOTAL_MB
    slope_ok = slope <= GOAL_PER_SESSION_KB
    passed = total_ok and slope_ok
    lines = [
        f"Database: {stored:,} stored sessions x {events} events (pre-filled through the store "
        f"API); config `{CONFIG.strip().replace(chr(10), '`, `')}`; fake agent "
        f"`{' '.join(AGENT_ARGS)}`; {len(runs)} run(s), a fresh proxy each; medians of the "
        "runs. A live session = its own connection: `initialize`, `session/new`, one short "
        "turn, disconnect (the agent stays live).",
        "",
        "Proxy process alone (`/proc/<pid>/status`), and its agents for context:",
        "",
        row(
            [
                "point",
                "proxy VmRSS MB",
                "proxy RssAnon MB",
                "proxy VmHWM MB",
                "proxy threads",
                "agent processes",
                "agent VmRSS MB (median each)",
                "agents VmRSS MB (sum)",
            ]
        ),
        row(["---", "---:", "---:", "---:", "---:", "---:", "---:", "---:"]),
    ]
    names = {
        "started": "started (0 live)",
        "listed": f"after `session/list` over all {stored:,} (0 live)",
    }
    for label in labels:
        m = med[label]
        lines.append(
            row(
                [
                    names.get(label, f"{stored:,} stored + {m['live']} live"),
                    _mb(m["rss"]),
                    _mb(m["anon"]),
                    _mb(m["hwm"]),
                    f"{m['threads']:g}",
                    f"{m['agents']:g}",
                    _mb(m["agent_rss"]),
                    f"{m['agents_total'] / 1024:,.0f}",
                ]
            )
        )
    lines += [
        "",
        "Cost of one more live session (least-squares slope over "
        f"{', '.join(str(r.live) for r in runs[0].steps())} live), KB per session:",
        "",
        row(["measure", "median", "per run"]),
        row(["---", "---:", "---"]),
        row(
            [
                "VmRSS slope",
                f"{slope:,.1f}",
                ", ".join(f"{s:,.1f}" for s in slopes),
            ]
        ),
        row(
            [
                "RssAnon slope",
                f"{statistics.median(anon_slopes):,.1f}",
                ", ".join(f"{s:,.1f}" for s in anon_slopes),
            ]
        ),
    ]
    extra = med[last]["agents"] - med[last]["live"]
    if extra > 0:
        lines += [
            "",
            f"Agent processes = live + {extra:g} with `warm_spares = 0`: the agent spawned by the "
            "first `initialize` (to learn the capabilities) stays as a spare, and taking a spare "
            "always starts a replacement.",
        ]
    lines += [
        "",
        f"**Proxy VmRSS with {stored:,} stored + {med[last]['live']} live = "
        f"{total_kb / 1024:,.1f} MB** — goal <= {GOAL_TOTAL_MB:.0f} MB: "
        f"**{'PASS' if total_ok else 'FAIL'}**",
        "",
        f"**Per extra live session = {slope:,.1f} KB** — goal <= {GOAL_PER_SESSION_KB:.0f} KB: "
        f"**{'PASS' if slope_ok else 'FAIL'}**",
    ]
    return "\n".join(lines) + "\n", passed


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = new_parser("memory", __doc__)
    parser.add_argument("--runs", type=int, default=3, help="fresh proxies measured (3)")
    parser.add_argument("--stored", type=int, default=1000, help="stored sessions (1000)")
    parser.add_argument("--events", type=int, default=20, help="events per stored session (20)")
    parser.add_argument(
        "--steps",
        type=int_list,
        default="10,25,50",
        help="live session counts measured (10,25,50)",
    )
    parser.add_argument(
        "--settle", type=float, default=1.0, help="seconds left idle before a reading (1.0)"
    )
    args = parse(parser, argv)
    if args.runs < 1 or len(args.steps) < 2 or args.steps[0] < 1:
        parser.error("--runs >= 1 and at least two --steps >= 1")
    return args


async def main() -> int:
    args = parse_args()
    stamp = Stamp.now("memory")
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="acp-bench-memory-") as tmp:
        template = Path(tmp) / "template.db"
        with anyio.fail_after(SETUP_LIMIT_S):
            await prefill(template, args.stored, args.events)
        for n in range(args.runs):
            print(f"run {n + 1}/{args.runs}", flush=True)
            with anyio.fail_after(RUN_LIMIT_S):
                runs.append(
                    await one_run(
                        Path(tmp) / f"run-{n}", template, args.steps, args.settle, args.stored
                    )
                )
    body, passed = render(runs, args.stored, args.events)
    return report(SECTION_TITLE, stamp.header(), body, passed, args.write)


if __name__ == "__main__":
    run_main(main)
