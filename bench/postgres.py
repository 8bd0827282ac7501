"""Benchmark 12: the PostgreSQL store beside SQLite, and a replica taking a conversation over.

Run ``python -m bench.postgres [--runs N] [--chunks N] [--turns N] [--takeovers N]
[--lease-ttl-s S] [--write BENCHMARKS.md]``.

A throwaway PostgreSQL server is started for the run (``initdb`` + ``pg_ctl`` in a temporary
directory, unix socket only, ``fsync = on``). Three proxies serve the bundled fake agent
(``--thoughts 0 --tool-calls 0``, no costs): S on SQLite as the proxy always runs it (WAL,
``synchronous = NORMAL``: no flush per commit), P on PostgreSQL with the store's default
(``synchronous_commit = off``: the same durability class, no flush per commit), and F on
PostgreSQL with ``?synchronous_commit=on`` in its URL (a disk flush per group commit).

* Streaming: one turn of ``fake:{"chunks": N, "chunk_size": 100}`` per run, alternately through
  S, P and F, read from the socket with the minimal
  reader of ``bench.throughput``; updates/s = updates / (first update → answer). After each
  turn the store is read: the turn's recorded ``agent_message_chunk`` events must equal the
  updates received. Goal: median(P) >= 0.5 x median(S) (F reported beside).
* Continued turn: each of ``--turns`` turns opens a new connection, ``initialize``,
  ``session/load`` (replayed from the store), ``session/prompt`` of a short text, answered:
  the time from connect to the answer, alternately S, P and F, on one warm agent each. Goal:
  p50(P) - p50(S) < 5 ms (F reported beside).
* Takeover: two replicas on one PostgreSQL database with ``--lease-ttl-s``; a session with one
  turn on A; A is killed with SIGKILL; a client of B retries ``session/load`` while the answer
  is ``session_owned_elsewhere`` (every 50 ms), then prompts. Reported: kill → load answered
  (bounded below by the lease's remaining time) and kill → prompt answered (the conversation
  restored by the ladder on B: a new agent, seeded history).
"""

from __future__ import annotations

import argparse
import signal
import statistics
import tempfile
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio

from acp_proxy.testing.postgres import postgres_server, query
from acp_proxy.testing.proxy_process import ProxyHandle, fake_agent_command, run_proxy
from bench._common import (
    Stamp,
    initialize_params,
    new_parser,
    parse,
    percentile,
    report,
    row,
    run_main,
)
from bench.throughput import RawPeer, Run, connect, open_session, recorded, stream_turn

SECTION_TITLE = "## 13. PostgreSQL beside SQLite; another replica taking over"
GOAL_STREAM_RATIO = 0.5
GOAL_TURN_DELTA_MS = 5.0
AGENT_ARGS = ("--thoughts", "0", "--tool-calls", "0")
CWD = "/tmp"
LIMIT_S = 600.0
NAMES = (
    ("S", "S: SQLite (WAL, synchronous NORMAL)"),
    ("P", "P: PostgreSQL (synchronous_commit off, the default)"),
    ("F", "F: PostgreSQL (?synchronous_commit=on: a flush per commit)"),
)


def recorded_pg(url: str, session_id: str, turn: int) -> int:
    sql = (
        "SELECT count(*) FROM events WHERE session_id = ? AND turn = ? "
        "AND kind = 'agent_message_chunk'"
    )
    return int(query(url, sql, session_id, turn)[0][0])  # type: ignore[call-overload]


async def continued_turn(socket: str, session_id: str, n: int) -> float:
    """New connection → initialize → session/load → prompt answered, in seconds."""
    start = time.perf_counter()
    async with connect(socket) as peer:
        await peer.request("initialize", initialize_params("bench-postgres"))
        load = {"sessionId": session_id, "cwd": CWD, "mcpServers": []}
        await peer.request("session/load", load)
        prompt = {"sessionId": session_id, "prompt": [{"type": "text", "text": f"turn {n}"}]}
        await peer.request("session/prompt", prompt)
    return time.perf_counter() - start


async def takeover(tmp: Path, url: str, ttl: float, n: int) -> tuple[float, float]:
    """Seconds from kill -9 of A to B answering the load, and to B answering a prompt."""
    agent = fake_agent_command(*AGENT_ARGS)
    extra = ("--lease-ttl-s", str(ttl))
    async with AsyncExitStack() as stack:
        a: ProxyHandle = await stack.enter_async_context(
            run_proxy(tmp / f"a{n}", agent, db=url, extra_args=extra)
        )
        b: ProxyHandle = await stack.enter_async_context(
            run_proxy(tmp / f"b{n}", agent, db=url, extra_args=extra)
        )
        async with connect(a.socket) as peer:
            sid = await open_session(peer)
            prompt = {"sessionId": sid, "prompt": [{"type": "text", "text": "remember me"}]}
            await peer.request("session/prompt", prompt)
        killed = time.perf_counter()
        a.kill(signal.SIGKILL)
        async with connect(b.socket) as peer:
            await peer.request("initialize", initialize_params("bench-postgres"))
            while True:
                try:
                    await peer.request(
                        "session/load", {"sessionId": sid, "cwd": CWD, "mcpServers": []}
                    )
                    break
                except RuntimeError as exc:
                    if "session_owned_elsewhere" not in str(exc):
                        raise
                    await anyio.sleep(0.05)
            loaded = time.perf_counter() - killed
            prompt = {"sessionId": sid, "prompt": [{"type": "text", "text": "still there?"}]}
            await peer.request("session/prompt", prompt)
            answered = time.perf_counter() - killed
    return loaded, answered


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = new_parser("postgres", __doc__)
    parser.add_argument("--runs", type=int, default=5, help="streaming turns per store (5)")
    parser.add_argument("--chunks", type=int, default=50_000, help="updates per turn (50000)")
    parser.add_argument("--turns", type=int, default=40, help="continued turns per store (40)")
    parser.add_argument("--takeovers", type=int, default=3, help="takeovers measured (3)")
    parser.add_argument("--lease-ttl-s", type=float, default=2.0, help="lease ttl (2 s)")
    args = parse(parser, argv)
    if min(args.runs, args.chunks, args.turns, args.takeovers) < 1 or args.lease_ttl_s <= 0:
        parser.error("counts must be >= 1 and --lease-ttl-s > 0")
    return args


def _rate_cells(runs: list[Run]) -> list[str]:
    rates = [r.rate for r in runs]
    return [f"{statistics.median(rates):,.0f}", f"{min(rates):,.0f}", f"{max(rates):,.0f}"]


async def main() -> int:
    args = parse_args()
    stamp = Stamp.now("postgres")
    agent = fake_agent_command(*AGENT_ARGS)
    stream: dict[str, list[Run]] = {"S": [], "P": [], "F": []}
    turns: dict[str, list[float]] = {"S": [], "P": [], "F": []}
    takeovers: list[tuple[float, float]] = []
    with (
        tempfile.TemporaryDirectory(prefix="acp-bench-") as tmp_name,
        postgres_server(fsync=True) as server,
    ):
        tmp = Path(tmp_name)
        url = server.create_database("bench")
        flushed = server.create_database("bench_flushed") + "&synchronous_commit=on"
        urls = {"P": url, "F": flushed}
        async with (
            run_proxy(tmp / "s", agent) as s,
            run_proxy(tmp / "p", agent, db=url) as p,
            run_proxy(tmp / "f", agent, db=flushed) as f,
            connect(s.socket) as peer_s,
            connect(p.socket) as peer_p,
            connect(f.socket) as peer_f,
        ):
            proxies: dict[str, tuple[ProxyHandle, RawPeer]] = {
                "S": (s, peer_s),
                "P": (p, peer_p),
                "F": (f, peer_f),
            }
            with anyio.fail_after(LIMIT_S):
                streams = {k: await open_session(peer) for k, (_h, peer) in proxies.items()}
                chats = {}
                for key, (_h, peer) in proxies.items():
                    result, _ = await peer.request("session/new", {"cwd": CWD, "mcpServers": []})
                    chats[key] = str(result["sessionId"])
            for n in range(1, args.runs + 1):
                for key, (handle, peer) in proxies.items():
                    with anyio.fail_after(LIMIT_S):
                        run = await stream_turn(peer, streams[key], args.chunks, 100)
                    if key == "S":
                        run.recorded = recorded(handle.db, streams[key], run.turn)
                    else:
                        run.recorded = recorded_pg(urls[key], streams[key], run.turn)
                    stream[key].append(run)
                    print(f"stream {n} {key}: {run.rate:,.0f} updates/s", flush=True)
            for n in range(1, args.turns + 1):
                for key, (handle, _peer) in proxies.items():
                    with anyio.fail_after(LIMIT_S):
                        turns[key].append(await continued_turn(handle.socket, chats[key], n))
            print("continued turns done", flush=True)
        for n in range(args.takeovers):
            other = server.create_database(f"takeover{n}")
            with anyio.fail_after(LIMIT_S):
                takeovers.append(await takeover(tmp, other, args.lease_ttl_s, n))
            print(f"takeover {n}: {takeovers[-1]}", flush=True)
    body, passed = render(args, stream, turns, takeovers)
    return report(SECTION_TITLE, stamp.header(stamp.load_at_start()), body, passed, args.write)


def render(
    args: argparse.Namespace,
    stream: dict[str, list[Run]],
    turns: dict[str, list[float]],
    takeovers: list[tuple[float, float]],
) -> tuple[str, bool]:
    ratio = statistics.median(r.rate for r in stream["P"]) / statistics.median(
        r.rate for r in stream["S"]
    )
    all_recorded = all(r.recorded == r.updates for runs in stream.values() for r in runs)
    p50 = {k: percentile(v, 50) * 1000 for k, v in turns.items()}
    delta = p50["P"] - p50["S"]
    flushed_ratio = statistics.median(r.rate for r in stream["F"]) / statistics.median(
        r.rate for r in stream["S"]
    )
    stream_ok = ratio >= GOAL_STREAM_RATIO and all_recorded
    turn_ok = delta < GOAL_TURN_DELTA_MS
    lines: list[Any] = [
        f"Streaming: {args.runs} turns per store of {args.chunks:,} `agent_message_chunk` "
        "(100 B of text each), alternating S, P, F.",
        "",
        "| store | updates/s median | min | max | recorded = received |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for key, name in NAMES:
        ok = all(r.recorded == r.updates for r in stream[key])
        lines.append(row([name, *_rate_cells(stream[key]), "yes" if ok else "**NO**"]))
    lines += [
        "",
        f"**median(P) / median(S) = {ratio:.2f}x** — goal >= {GOAL_STREAM_RATIO}x: "
        f"**{'PASS' if stream_ok else 'FAIL'}**; median(F) / median(S) = {flushed_ratio:.2f}x.",
        "",
        f"Continued turn (connect → initialize → session/load → prompt answered), "
        f"{args.turns} turns per store, alternating:",
        "",
        "| store | p50 ms | p90 ms | min ms | max ms |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for key, name in NAMES:
        values = [v * 1000 for v in turns[key]]
        lines.append(
            row(
                [
                    name,
                    f"{percentile(values, 50):.2f}",
                    f"{percentile(values, 90):.2f}",
                    f"{min(values):.2f}",
                    f"{max(values):.2f}",
                ]
            )
        )
    lines += [
        "",
        f"**p50(P) - p50(S) = {delta:+.2f} ms** — goal < +{GOAL_TURN_DELTA_MS:g} ms: "
        f"**{'PASS' if turn_ok else 'FAIL'}**; p50(F) - p50(S) = "
        f"{p50['F'] - p50['S']:+.2f} ms.",
        "",
        f"Takeover by another replica after kill -9 of the owner (`--lease-ttl-s "
        f"{args.lease_ttl_s:g}`, {len(takeovers)} trials): kill → load answered on B "
        + ", ".join(f"{t[0]:.2f} s" for t in takeovers)
        + "; kill → prompt answered on B (restored by the ladder) "
        + ", ".join(f"{t[1]:.2f} s" for t in takeovers)
        + ". The wait is the lease's remaining time (at most the ttl, renewed every third of "
        "it), then one restore.",
    ]
    return "\n".join(lines) + "\n", stream_ok and turn_ok


if __name__ == "__main__":
    run_main(main)
