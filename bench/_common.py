"""Helpers shared by the benchmarks in ``bench/``: one implementation each.

* the section of ``BENCHMARKS.md`` a benchmark writes: its header (date, machine, load average,
  command line), printing it and ``--write PATH``;
* argument parsing boilerplate;
* statistics and markdown table cells;
* ``/proc`` readers (CPU time, child processes, liveness) and small file / wire helpers;
* what ``bench.continued_turn`` and ``bench.opencode_turn`` share: the timed continued turn, the
  A / B alternation and the report tables.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shlex
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import msgspec

from acp_proxy.ops_cli import request_status
from acp_proxy.testing.client import AcpClient, Reply

INTRO = """# Benchmarks

All figures below are ratios (or timings shown next to the baseline they are compared with)
measured side by side in one run, scenarios alternating run by run, on a noisy 2-core machine:
absolute milliseconds move from run to run, the ratios are what each goal is about. `make bench`
will run all of them later; for now each section gives the exact command that produced it, run
from the repository root with the project's virtualenv.
"""


# -- the section: header, printing, BENCHMARKS.md ----------------------------------------------


def machine() -> str:
    """The ``Machine:`` line's value: usable CPUs, Python version, OS and kernel release."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 0
    return (
        f"nproc {cpus}, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}"
    )


def command_line(module: str) -> str:
    """How this run was started: ``<python> -m bench.<module> <args>``, the interpreter's path
    relative to the working directory when it lies below it."""
    exe = sys.executable
    try:
        rel = os.path.relpath(exe)
        if not rel.startswith(".."):
            exe = rel
    except ValueError:
        pass
    return shlex.join([exe, "-m", f"bench.{module}", *sys.argv[1:]])


def load_average() -> str:
    """The 1-minute load average now, two decimals (``n/a`` where there is none)."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "n/a"


@dataclass(frozen=True)
class AgentCosts:
    """The fake agent's cost knobs, in seconds (``name``: how a report calls the profile)."""

    startup_delay: float
    session_init_delay: float
    first_token_delay: float
    name: str = ""

    def args(self) -> list[str]:
        """The fake agent's command-line options for these costs."""
        return [
            "--startup-delay",
            f"{self.startup_delay:g}",
            "--session-init-delay",
            f"{self.session_init_delay:g}",
            "--first-token-delay",
            f"{self.first_token_delay:g}",
        ]


@dataclass(frozen=True)
class Stamp:
    """What a benchmark notes as it starts: its command line, the date, the load average."""

    command: str
    date: str
    load: tuple[float, float, float]  #: 1 / 5 / 15 min

    @classmethod
    def now(cls, module: str) -> Stamp:
        """Note them now, for ``python -m bench.<module>``."""
        command = command_line(module)
        date = datetime.now(UTC).strftime("%a %b %d %H:%M:%S UTC %Y")
        return cls(command, date, os.getloadavg())

    def header(self, machine_note: str = "") -> str:
        """The ``Date:`` / ``Machine:`` / ``Command:`` lines opening the section; ``machine_note``
        follows the machine (see :meth:`load_span`, :meth:`load_at_start`)."""
        return (
            f"Date: {self.date}  \nMachine: {machine()}{machine_note}  \n"
            f"Command: `{self.command}`\n"
        )

    def load_span(self) -> str:
        """`` (load average 1.2 at start, 1.4 at the end)``: 1 min, at start and now."""
        return f" (load average {self.load[0]:.1f} at start, {os.getloadavg()[0]:.1f} at the end)"

    def load_at_start(self) -> str:
        """``; load average at start (1 / 5 / 15 min): 1.20 / 1.10 / 0.90``."""
        load = " / ".join(f"{x:.2f}" for x in self.load)
        return f"; load average at start (1 / 5 / 15 min): {load}"


def write_section(path: Path, title: str, body: str) -> None:
    """Write or replace the section ``title`` (``## N. ...``) of ``path``; keep every other
    section as it is.

    An empty file gets :data:`INTRO` first. A new section goes before the first section with a
    higher number, else at the end.
    """
    text = path.read_text() if path.exists() else ""
    if not text.strip():
        text = INTRO
    section = f"{title}\n\n{body.rstrip()}\n"
    pattern = re.compile(rf"^{re.escape(title)}\n.*?(?=^## |\Z)", re.M | re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _m: section + "\n", text, count=1)
    else:
        mine = re.match(r"## (\d+)\.", title)
        later = None
        if mine is not None:
            for match in re.finditer(r"^## (\d+)\.", text, re.M):
                if int(match.group(1)) > int(mine.group(1)):
                    later = match.start()
                    break
        if later is None:
            text = text.rstrip() + "\n\n" + section
        else:
            text = text[:later] + section + "\n" + text[later:]
    path.write_text(text.rstrip() + "\n")


def report(
    title: str,
    header: str,
    body: str,
    passed: bool,
    write: str | None,
    *,
    blank_first: bool = True,
) -> int:
    """Print the section (after a blank line that ends the progress lines, if
    ``blank_first``); with ``--write PATH`` also write it there. Returns the exit status: 0 on
    PASS, 1 otherwise."""
    if blank_first:
        print()
    print(title)
    print()
    print(header)
    print(body)
    if write:
        write_section(Path(write), title, header + "\n" + body)
        print(f"wrote section to {write}")
    return 0 if passed else 1


def run_main(main: Callable[[], Awaitable[int]]) -> None:
    """Run the benchmark's async ``main`` on asyncio and exit with its status."""
    sys.exit(anyio.run(main, backend="asyncio"))


# -- arguments ---------------------------------------------------------------------------------


def new_parser(module: str, doc: str | None) -> argparse.ArgumentParser:
    """The parser of ``python -m bench.<module>``; ``--help`` shows ``doc`` as written."""
    return argparse.ArgumentParser(
        prog=f"python -m bench.{module}",
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Add the ``--write PATH`` option every benchmark takes (last), then parse ``argv``."""
    parser.add_argument("--write", metavar="PATH", help="write/replace the section in PATH")
    return parser.parse_args(argv)


def int_list(text: str) -> list[int]:
    """An argparse ``type``: comma-separated integers, sorted, each once."""
    try:
        return sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError("must be comma-separated integers") from None


# -- statistics and table cells ----------------------------------------------------------------


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


def least_squares_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ``ys`` over ``xs`` (at least two distinct xs)."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den


def ms(seconds: float, places: int = 1) -> str:
    """Seconds as milliseconds, thousands separated: ``ms(1.23456) == "1,234.6"``."""
    return f"{seconds * 1000:,.{places}f}"


def row(cells: Sequence[str]) -> str:
    """One markdown table row."""
    return "| " + " | ".join(cells) + " |"


# -- /proc -------------------------------------------------------------------------------------


def proc_stat(pid: int) -> list[str]:
    """Fields of ``/proc/<pid>/stat`` after the command name (index 0 is field 3, the state;
    index 1 the parent pid)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def alive(pid: int) -> bool:
    """Whether ``pid`` is a process that has not exited (zombies count as gone)."""
    try:
        state = proc_stat(pid)[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def children(pid: int) -> list[int]:
    """Pids of the live direct child processes of ``pid``, sorted."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if int(proc_stat(int(entry))[1]) == pid:
                    out.append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    return sorted(out)


def stat_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process, all its threads (``/proc/<pid>/stat``, in
    clock ticks); 0 if it is gone."""
    try:
        fields = proc_stat(pid)
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def schedstat_cpu_seconds(pid: int) -> float:
    """Time on CPU of every thread of ``pid`` so far (``/proc/<pid>/task/*/schedstat``, ns, so
    finer than :func:`stat_cpu_seconds`), in seconds."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
    return total / 1e9


# -- files, payloads, the wire -----------------------------------------------------------------


def db_bytes(db: Path | str) -> int:
    """Size of an SQLite database with its ``-wal`` / ``-shm`` files, if any."""
    db = Path(db)
    return sum(p.stat().st_size for p in db.parent.glob(f"{db.name}*"))


def chunk_payload(session_id: str, text: str) -> bytes:
    """A stored event's payload shaped like the proxy's own ``agent_message_chunk`` update."""
    return msgspec.json.encode(
        {
            "sessionId": session_id,
            "update": {
                "sessionUpdate": "agent_message_chunk",
                "content": {"type": "text", "text": text},
            },
        }
    )


def initialize_params(client_name: str) -> dict[str, Any]:
    """``initialize`` params of a raw (not :class:`AcpClient`) benchmark client."""
    return {
        "protocolVersion": 1,
        "clientCapabilities": {"fs": {"readTextFile": False}, "terminal": False},
        "clientInfo": {"name": client_name, "version": "0"},
    }


def request_line(ident: int, method: str, params: object) -> bytes:
    """One JSON-RPC request as an NDJSON line."""
    msg = {"jsonrpc": "2.0", "id": ident, "method": method, "params": params}
    return msgspec.json.encode(msg) + b"\n"


def agent_text(updates: Iterable[dict[str, Any]]) -> str:
    """The text of the ``agent_message_chunk`` updates, joined."""
    return "".join(
        u.get("content", {}).get("text", "")
        for u in updates
        if u.get("sessionUpdate") == "agent_message_chunk"
    )


async def ready_spare(socket: str, *, opened_ahead: bool) -> dict[str, Any]:
    """The status entry of a ready spare of the proxy at ``socket`` (``opened_ahead``: one
    with its session opened ahead), polled until there is one (the caller bounds it)."""
    while True:
        for agent in request_status(socket, 10.0)["agents"]:
            if agent["role"] == "spare" and (agent.get("preopened") or not opened_ahead):
                return dict(agent)
        await anyio.sleep(0.1)


def proxy_meta(result: Any) -> dict[str, Any]:
    """The proxy's ``_meta["acp-proxy"]`` of a result (empty without one)."""
    return ((result or {}).get("_meta") or {}).get("acp-proxy") or {}


def first_token(reply: Reply, what: str) -> float:
    """When the first agent chunk of an answered prompt arrived; ``what`` names it in errors."""
    reply.unwrap(what)
    if reply.first_update_at is None:
        raise RuntimeError(f"{what}: the prompt was answered without any agent chunk")
    return reply.first_update_at


# -- continued turns: bench.continued_turn and the real agents' (bench._real_agent) -----------


@dataclass
class ContinuedRun:
    """One continued turn: times in seconds from the start (spawn or connect)."""

    ready: float  #: initialize answered (spawn/connect + initialize)
    loaded: float  #: session/load answered
    first_token: float  #: first agent chunk of the prompt
    total: float  #: prompt answered
    replayed: int  #: session/update notifications received while loading (the replayed history)
    meta: dict[str, Any] = field(default_factory=dict)  #: the proxy's _meta timings (B only)
    exit_s: float = 0.0  #: re-spawned only, not timed: stdin closed -> process gone


async def continued_turn(
    client: AcpClient,
    session_id: str,
    cwd: str,
    start: float,
    n: int,
    check: Callable[[Reply, int], float],
) -> ContinuedRun:
    """``initialize``, ``session/load``, ``session/prompt`` of turn ``n`` on a fresh client;
    times relative to ``start``. ``check`` vets the answer and returns its first-token time."""
    await client.initialize()
    ready = time.perf_counter()
    load = await client.request(
        "session/load", {"sessionId": session_id, "cwd": cwd, "mcpServers": []}
    )
    load.unwrap("session/load")
    loaded = time.perf_counter()
    reply = await client.prompt(session_id, f"continued turn {n}")
    first = check(reply, n)
    return ContinuedRun(
        ready - start,
        loaded - start,
        first - start,
        reply.received_at - start,
        len(load.updates()),
        proxy_meta(reply.result),
    )


async def alternate(
    runs: int,
    limit_s: float,
    run_a: Callable[[int], Awaitable[ContinuedRun]],
    run_b: Callable[[int], Awaitable[ContinuedRun]],
) -> tuple[list[ContinuedRun], list[ContinuedRun]]:
    """Continued turns 2..runs+1, alternating A, B, A, B, ..., each within ``limit_s``; prints
    one progress line per pair."""
    runs_a: list[ContinuedRun] = []
    runs_b: list[ContinuedRun] = []
    for n in range(2, runs + 2):
        with anyio.fail_after(limit_s):
            a = await run_a(n)
        runs_a.append(a)
        with anyio.fail_after(limit_s):
            b = await run_b(n)
        runs_b.append(b)
        print(f"run {n - 1}/{runs}: A {ms(a.first_token)} ms, B {ms(b.first_token)} ms", flush=True)
    return runs_a, runs_b


def render_continued(
    first_line: str,
    names: tuple[str, str],
    runs_a: list[ContinuedRun],
    runs_b: list[ContinuedRun],
    goal_ratio: float,
) -> tuple[list[str], float, bool]:
    """The continued-turn report up to B's ``_meta`` table: ``first_line``, time to first
    token of scenarios ``names`` (A, B), the ratio and its goal, the per-step breakdown.

    Returns (lines, ratio, passed); the caller adds its closing notes.
    """
    ttft_a = [r.first_token for r in runs_a]
    ttft_b = [r.first_token for r in runs_b]
    ratio = statistics.median(ttft_a) / statistics.median(ttft_b)
    passed = ratio >= goal_ratio
    lines = [
        first_line,
        "",
        "Time to first token of a continued turn, ms (from just before spawn / connect to the "
        "first agent chunk of the prompt):",
        "",
        row(["scenario", "median", "p90", "min", "max"]),
        row(["---", "---:", "---:", "---:", "---:"]),
    ]
    for name, values in zip(names, (ttft_a, ttft_b), strict=True):
        lines.append(row([name, *(ms(v) for v in summary(values))]))
    lines += [
        "",
        f"**Ratio median(A) / median(B) = {ratio:.1f}x** — goal >= {goal_ratio:.0f}x: "
        f"**{'PASS' if passed else 'FAIL'}**",
        "",
        "Breakdown, median ms of each step (each step's own duration):",
        "",
        row(["step", "A: re-spawned", "B: proxy"]),
        row(["---", "---:", "---:"]),
    ]
    steps: tuple[tuple[str, Callable[[ContinuedRun], float]], ...] = (
        ("spawn/connect + initialize", lambda r: r.ready),
        ("session/load", lambda r: r.loaded - r.ready),
        ("session/prompt -> first token", lambda r: r.first_token - r.loaded),
        ("first token -> prompt answered", lambda r: r.total - r.first_token),
    )
    for name, step in steps:
        lines.append(
            row(
                [
                    name,
                    ms(statistics.median(step(r) for r in runs_a)),
                    ms(statistics.median(step(r) for r in runs_b)),
                ]
            )
        )
    lines.append(
        row(
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
        row(["key", "median", "min", "max"]),
        row(["---", "---:", "---:", "---:"]),
    ]
    for key in keys:
        values = [m[key] for m in metas if isinstance(m.get(key), int | float)]
        if not values:
            lines.append(row([f"`{key}`", "n/a", "n/a", "n/a"]))
            continue
        lines.append(
            row(
                [
                    f"`{key}`",
                    f"{statistics.median(values):,.3f}",
                    f"{min(values):,.3f}",
                    f"{max(values):,.3f}",
                ]
            )
        )
    return lines, ratio, passed


def served_by(runs_b: Sequence[ContinuedRun]) -> str:
    """The kinds of agent (``_meta`` ``agent``) that served B's turns, comma-separated."""
    return ", ".join(sorted({str(r.meta.get("agent")) for r in runs_b}))
