"""Benchmark 4: start-up time of ``acp-proxy serve`` with an empty store and a large one.

Run ``python -m bench.startup [--runs N] [--sessions S] [--events E] [--write BENCHMARKS.md]``.

Set-up (not timed): two SQLite databases written through the store API (``open_store``,
``PutSession``, ``AppendEvent``): one with the schema and no session, one with S sessions
(100 000 by default) of E events each (3 by default). Both are closed cleanly (WAL
checkpointed) and fsynced before the runs.

Timed: from just before the exec of ``acp-proxy serve --socket … --db … -- <fake agent>`` (the
console script, default options, so one warm spare is spawned right after the socket is up) to
the first successful ``connect()`` on its socket, polled every millisecond. The proxy is then
stopped with SIGTERM and waited for. Runs alternate empty, large, empty, large, ...; each run
uses a fresh socket path. The proxy's own ``ready`` log line gives ``startup_ms`` (from
``serve()`` entered to the socket listening), so the table splits interpreter start + imports
from the proxy's own start-up work.

Two bytecode conditions, alternating too:

* installed: compiled bytecode is there for every module, as after ``pip install .`` (the
  Docker image). The checkout is installed editable and this machine sets
  ``PYTHONDONTWRITEBYTECODE=1``, so the proxy runs with ``PYTHONPYCACHEPREFIX`` pointing into a
  temporary directory (nothing is written into the checkout) after one untimed warm-up start.
* checkout as is: the environment unchanged; ``acp_proxy`` and ``store`` are compiled from
  source at every start.

Goal (installed condition): median(large) <= 0.5 s and median(large) <= 1.2 x median(empty).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import msgspec

from acp_proxy.testing.proxy_process import fake_agent_command
from bench._common import (
    Stamp,
    chunk_payload,
    db_bytes,
    new_parser,
    parse,
    report,
    row,
    run_main,
    schedstat_cpu_seconds,
)
from store import AppendEvent, PutSession, SessionRecord, open_store

SECTION_TITLE = "## 4. Startup with many stored sessions"
GOAL_S = 0.5
GOAL_RATIO = 1.2
CWD = "/tmp"
SESSIONS_PER_COMMIT = 5_000
READY_LIMIT_S = 30.0  #: exec -> socket accepting, else the run fails
STOP_LIMIT_S = 15.0
BUILD_LIMIT_S = 300.0


@dataclass
class Database:
    name: str
    path: Path
    sessions: int
    events: int
    bytes: int = 0


@dataclass
class Scenario:
    db: Database
    bytecode: str  #: "installed" | "checkout"
    env: dict[str, str]
    accept: list[float] = field(default_factory=list)  #: seconds, exec -> connect() succeeds
    startup_ms: list[float] = field(default_factory=list)  #: the proxy's ``ready`` startup_ms
    cpu: list[float] = field(default_factory=list)  #: seconds on CPU, exec -> accepting


# -- set-up ------------------------------------------------------------------------------------


def _payload(session_id: str, seq: int) -> bytes:
    return chunk_payload(session_id, f"stored chunk {seq} of {session_id[-8:]}")


async def build(db: Path, sessions: int, events: int) -> None:
    """``sessions`` sessions of ``events`` events each, committed in groups."""
    now = time.time()
    async with open_store(db) as store:
        for start in range(0, sessions, SESSIONS_PER_COMMIT):
            puts: list[PutSession] = []
            appends: list[AppendEvent] = []
            for i in range(start, min(start + SESSIONS_PER_COMMIT, sessions)):
                sid = f"sess_{i:032x}"
                puts.append(
                    PutSession(
                        SessionRecord(
                            id=sid,
                            cwd=f"/work/project-{i % 50}",
                            upstream_session_id=f"agent-{i}",
                            created_at=now - sessions + i,
                            updated_at=now - sessions + i,
                            state="closed",
                        )
                    )
                )
                appends += [
                    AppendEvent(sid, seq, 1, "agent_message_chunk", _payload(sid, seq))
                    for seq in range(1, events + 1)
                ]
            await store.commit([*puts, *appends])


def flush_to_disk(db: Path) -> None:
    """fsync a database and its WAL/SHM files, so their dirty pages are not written back while
    starts are being timed (one such writeback once made the large database look 20 % slower,
    in the exec + imports part that does not read the database at all)."""
    for path in db.parent.glob(f"{db.name}*"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# -- timed -------------------------------------------------------------------------------------


def serve_command() -> list[str]:
    script = Path(sys.executable).parent / "acp-proxy"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "acp_proxy"]


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_LIMIT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_LIMIT_S)


def _ready_startup_ms(log: Path) -> float | None:
    for line in log.read_bytes().splitlines():
        try:
            entry = msgspec.json.decode(line)
        except msgspec.DecodeError:
            continue
        if isinstance(entry, dict) and entry.get("event") == "ready":
            return float(entry["startup_ms"])
    return None


def time_start(
    db: Path, directory: Path, agent: list[str], env: dict[str, str]
) -> tuple[float, float, float | None]:
    """exec -> first successful connect(), in seconds; the proxy's time on CPU until then;
    and the proxy's own startup_ms."""
    directory.mkdir(parents=True)
    sock_path = str(directory / "s.sock")
    log = directory / "proxy.log"
    command = [*serve_command(), "serve", "--socket", sock_path, "--db", str(db), "--", *agent]
    with log.open("wb") as log_file:
        start = time.perf_counter()
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log_file,
            env=env,
        )
    try:
        deadline = start + READY_LIMIT_S
        while True:
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(sock_path)
            except OSError:
                pass
            else:
                elapsed = time.perf_counter() - start
                cpu = schedstat_cpu_seconds(process.pid)
                break
            finally:
                probe.close()
            if process.poll() is not None:
                raise RuntimeError(f"acp-proxy serve exited: {log.read_text()[-2000:]}")
            if time.perf_counter() > deadline:
                raise RuntimeError(f"acp-proxy serve not accepting after {READY_LIMIT_S} s")
            time.sleep(0.001)
        # the ready line follows the listen() at once; give the log a moment
        startup_ms = None
        for _ in range(200):
            startup_ms = _ready_startup_ms(log)
            if startup_ms is not None:
                break
            time.sleep(0.005)
    finally:
        _stop(process)
    return elapsed, cpu, startup_ms


def bare_interpreter() -> float:
    """exec -> exit of ``python -c pass`` (the floor of any Python service's start-up)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True, timeout=30)
    return time.perf_counter() - start


# -- report ------------------------------------------------------------------------------------


def render(
    scenarios: list[Scenario], runs: int, bare: list[float], build_s: float
) -> tuple[str, bool]:
    large_db = next(s.db for s in scenarios if s.db.sessions)
    lines = [
        f"{runs} runs per database and bytecode condition, alternating (empty, large) x "
        f"(installed, checkout), ... Large database: {large_db.sessions:,} sessions x "
        f"{large_db.events} events, {large_db.bytes / 1e6:,.1f} MB, built through the store API "
        f"in {build_s:.1f} s. Default options (`warm_spares` 1), agent: the fake agent. "
        "Installed = compiled bytecode present for every module, as after `pip install .` / "
        "in the Docker image; checkout = this editable checkout as is, with this machine's "
        "`PYTHONDONTWRITEBYTECODE=1` (`acp_proxy` and `store` compiled at every start).",
        "",
        "Time from exec of `acp-proxy serve` to its socket accepting a connection, ms:",
        "",
        row(
            [
                "bytecode",
                "database",
                "median",
                "min",
                "max",
                "proxy's `startup_ms` (median)",
                "exec + imports (median, the rest)",
                "proxy on CPU until accepting (median)",
            ]
        ),
        row(["---", "---", "---:", "---:", "---:", "---:", "---:", "---:"]),
    ]
    for s in scenarios:
        med = statistics.median(s.accept) * 1000
        own = statistics.median(s.startup_ms) if s.startup_ms else float("nan")
        lines.append(
            row(
                [
                    s.bytecode,
                    f"{s.db.name} ({s.db.sessions:,} sessions)",
                    f"{med:,.1f}",
                    f"{min(s.accept) * 1000:,.1f}",
                    f"{max(s.accept) * 1000:,.1f}",
                    f"{own:,.1f}",
                    f"{med - own:,.1f}",
                    f"{statistics.median(s.cpu) * 1000:,.1f}",
                ]
            )
        )
    verdicts = []
    passed = True
    for bytecode in ("installed", "checkout"):
        empty, large = (s for s in scenarios if s.bytecode == bytecode)
        med_empty = statistics.median(empty.accept)
        med_large = statistics.median(large.accept)
        ratio = med_large / med_empty
        abs_ok = med_large <= GOAL_S
        ratio_ok = ratio <= GOAL_RATIO
        judged = bytecode == "installed"
        if judged:
            passed = abs_ok and ratio_ok
        tag = "" if judged else " (not judged)"
        verdicts += [
            f"- {bytecode}{tag}: median(large) = {med_large * 1000:,.1f} ms (goal <= "
            f"{GOAL_S * 1000:.0f} ms): **{'PASS' if abs_ok else 'FAIL'}**; median(large) / "
            f"median(empty) = {ratio:.2f} (goal <= {GOAL_RATIO}): "
            f"**{'PASS' if ratio_ok else 'FAIL'}**",
        ]
    lines += [
        "",
        '"proxy on CPU": time on CPU of every thread of the proxy process from exec to the '
        "first accepted connection (/proc schedstat); the gap to the wall-clock median is time "
        "spent waiting for a CPU on this shared machine (see the load average above).",
        "",
        f"Reference: exec -> exit of a bare `python -c pass`: median "
        f"{statistics.median(bare) * 1000:,.1f} ms.",
        "",
        *verdicts,
        "",
        f"Goal (installed): **{'PASS' if passed else 'FAIL'}**",
    ]
    return "\n".join(lines) + "\n", passed


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = new_parser("startup", __doc__)
    parser.add_argument("--runs", type=int, default=7, help="runs per database (7)")
    parser.add_argument("--sessions", type=int, default=100_000, help="sessions (100000)")
    parser.add_argument("--events", type=int, default=3, help="events per session (3)")
    args = parse(parser, argv)
    if args.runs < 1 or args.sessions < 1 or args.events < 0:
        parser.error("--runs and --sessions must be >= 1, --events >= 0")
    return args


async def main() -> int:
    args = parse_args()
    stamp = Stamp.now("startup")
    agent = fake_agent_command()
    with tempfile.TemporaryDirectory(prefix="acpb-") as tmp:
        base = Path(tmp)
        empty = Database("empty", base / "empty.db", 0, 0)
        large = Database("large", base / "large.db", args.sessions, args.events)
        with anyio.fail_after(BUILD_LIMIT_S):
            async with open_store(empty.path):
                pass
            started = time.perf_counter()
            await build(large.path, args.sessions, args.events)
            build_s = time.perf_counter() - started
        for db in (empty, large):
            db.bytes = db_bytes(db.path)
            flush_to_disk(db.path)  # no writeback of the fresh 100 MB during the timed starts
        print(f"built {args.sessions:,} sessions in {build_s:.1f} s", flush=True)
        installed = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"} | {
            "PYTHONPYCACHEPREFIX": str(base / "pycache")
        }
        checkout = dict(os.environ)
        scenarios = [
            Scenario(db, bytecode, env)
            for bytecode, env in (("installed", installed), ("checkout", checkout))
            for db in (empty, large)
        ]
        time_start(empty.path, base / "warm-up", agent, installed)  # writes the bytecode
        bare: list[float] = []
        for n in range(1, args.runs + 1):
            for s in scenarios:
                directory = base / f"{s.bytecode}-{s.db.name}{n}"
                elapsed, cpu, own = time_start(s.db.path, directory, agent, s.env)
                s.accept.append(elapsed)
                s.cpu.append(cpu)
                if own is not None:
                    s.startup_ms.append(own)
                print(
                    f"run {n}/{args.runs} {s.bytecode:9} {s.db.name:5}: socket accepting "
                    f"after {elapsed * 1000:,.1f} ms (on CPU {cpu * 1000:,.1f} ms; proxy's "
                    f"startup_ms {own})",
                    flush=True,
                )
            bare.append(bare_interpreter())
    body, passed = render(scenarios, args.runs, bare, build_s)
    return report(SECTION_TITLE, stamp.header(stamp.load_span()), body, passed, args.write)


if __name__ == "__main__":
    run_main(main)
