"""Benchmark 7: bytes sent to the agent per continued turn, proxy vs. a transcript-resending daemon.

Run ``python -m bench.bytes_per_turn [--turns 1,10,50] [--chunks N] [--chunk-size B]
[--write BENCHMARKS.md]``.

One conversation of ``max(--turns)`` turns goes through one ``acp-proxy serve`` to the bundled
fake agent (by default ``--chunks 10 --chunk-size 80``: an answer of about 1 KB per turn, its
summary chunk included). Every prompt is one text block of the same length
(``Turn 007: please continue with the next step of the task.``).

* Proxy: the agent is warm and keeps the conversation, so each turn sends only the new prompt.
  The figure is the proxy's own count, ``result._meta["acp-proxy"]["bytes_upstream"]`` (the
  JSON of the ``session/prompt`` params written to the agent).
* Daemon: what a daemon that spawns a fresh agent per turn and re-sends the flattened transcript
  would write: the same ``session/prompt`` params whose one text block is the concatenated text
  of every earlier user message and agent message (``agent_message_chunk`` texts, thoughts and
  tool calls left out) plus the new prompt, joined with blank lines. Computed from what the
  client received: the proxy's figure for the turn, with the prompt's JSON string replaced by the
  transcript's.

The table gives the bytes of turn N and the total over turns 1..N for N in ``--turns``, and the
least-squares growth in bytes per extra turn over the whole conversation. Goal: the proxy's bytes
per turn are constant in the number of turns (every turn within 5 % of turn 1, growth < 1 B per
turn).
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio
import msgspec

from acp_proxy.testing.client import AcpClient
from acp_proxy.testing.proxy_process import fake_agent_command, run_proxy
from bench._common import (
    Stamp,
    agent_text,
    int_list,
    least_squares_slope,
    new_parser,
    parse,
    proxy_meta,
    report,
    row,
    run_main,
)

SECTION_TITLE = "## 7. Bytes sent to the agent per continued turn"
TOLERANCE = 0.05  #: every turn's proxy bytes within 5 % of turn 1
MAX_GROWTH_B = 1.0  #: least-squares growth of the proxy's bytes per turn, bytes per extra turn
CWD = "/tmp"
TURN_LIMIT_S = 60.0
SETUP_LIMIT_S = 60.0


@dataclass
class Turn:
    """One turn as both approaches would send it."""

    n: int
    prompt: str
    answer: str  #: the agent's message text (agent_message_chunk texts)
    proxy_bytes: int  #: bytes_upstream reported by the proxy
    daemon_bytes: int = 0


def prompt_text(n: int) -> str:
    return f"Turn {n:03d}: please continue with the next step of the task."


def _json_len(text: str) -> int:
    return len(msgspec.json.encode(text))


def daemon_bytes(turns: list[Turn]) -> None:
    """Fill in what a transcript-resending daemon sends on each turn."""
    earlier: list[str] = []
    for turn in turns:
        transcript = "\n\n".join([*earlier, turn.prompt])
        # Same params as the proxy sent, with the prompt's text replaced by the transcript.
        turn.daemon_bytes = turn.proxy_bytes - _json_len(turn.prompt) + _json_len(transcript)
        earlier += [turn.prompt, turn.answer]


def growth(values: Sequence[int]) -> float:
    """Least-squares slope of values against 1..len(values), per extra turn."""
    if len(values) < 2:
        return 0.0
    return least_squares_slope(range(1, len(values) + 1), values)


async def run_conversation(socket: str, count: int) -> list[Turn]:
    turns: list[Turn] = []
    async with AcpClient.connect(socket) as client:
        with anyio.fail_after(SETUP_LIMIT_S):
            await client.initialize()
            session_id = await client.new_session(CWD)
        for n in range(1, count + 1):
            text = prompt_text(n)
            with anyio.fail_after(TURN_LIMIT_S):
                reply = await client.prompt(session_id, text)
            result = reply.unwrap("session/prompt")
            meta = proxy_meta(result)
            if n > 1 and meta.get("agent") != "warm":
                raise RuntimeError(f"turn {n}: served by a {meta.get('agent')} agent, not warm")
            answer = agent_text(reply.updates())
            if f"context holds {n - 1} earlier turns" not in answer:
                raise RuntimeError(f"turn {n}: the agent did not continue the conversation")
            turns.append(Turn(n, text, answer, int(meta["bytes_upstream"])))
            client.messages.clear()
    daemon_bytes(turns)
    return turns


# -- report ------------------------------------------------------------------------------------


def render(args: argparse.Namespace, turns: list[Turn]) -> tuple[str, bool]:
    proxy = [t.proxy_bytes for t in turns]
    daemon = [t.daemon_bytes for t in turns]
    answer = sorted(len(t.answer.encode()) for t in turns)[len(turns) // 2]
    spread = max(abs(b - proxy[0]) for b in proxy) / proxy[0]
    slope_proxy, slope_daemon = growth(proxy), growth(daemon)
    passed = spread <= TOLERANCE and abs(slope_proxy) < MAX_GROWTH_B
    lines = [
        f"One conversation of {len(turns)} turns through the proxy; fake agent "
        f"`--chunks {args.chunks} --chunk-size {args.chunk_size}` (answer ≈ {answer:,} B of "
        f"text per turn, median); every prompt is {len(turns[0].prompt)} characters "
        f"(`{turns[0].prompt}`).",
        "",
        "Bytes of `session/prompt` params written to the agent:",
        "",
        row(
            [
                "turns N",
                "proxy: turn N",
                "proxy: total 1..N",
                "daemon re-sending the transcript: turn N",
                "daemon: total 1..N",
                "daemon / proxy, turn N",
            ]
        ),
        row(["---:", "---:", "---:", "---:", "---:", "---:"]),
    ]
    for n in args.turns:
        lines.append(
            row(
                [
                    str(n),
                    f"{proxy[n - 1]:,}",
                    f"{sum(proxy[:n]):,}",
                    f"{daemon[n - 1]:,}",
                    f"{sum(daemon[:n]):,}",
                    f"{daemon[n - 1] / proxy[n - 1]:,.1f}x",
                ]
            )
        )
    lines += [
        "",
        f"Growth per extra turn (least squares over turns 1..{len(turns)}): proxy "
        f"**{slope_proxy:+,.2f} B/turn** (min {min(proxy):,} B, max {max(proxy):,} B), "
        f"daemon **{slope_daemon:+,.0f} B/turn**.",
        "",
        f"**Goal: the proxy's bytes per turn are constant in the number of turns** (every turn "
        f"within {TOLERANCE:.0%} of turn 1: largest deviation {spread:.1%}; growth < "
        f"{MAX_GROWTH_B:g} B/turn): **{'PASS' if passed else 'FAIL'}**",
    ]
    return "\n".join(lines) + "\n", passed


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = new_parser("bytes_per_turn", __doc__)
    parser.add_argument(
        "--turns", type=int_list, default="1,10,50", help="turn counts reported (1,10,50)"
    )
    parser.add_argument("--chunks", type=int, default=10, help="message chunks per answer (10)")
    parser.add_argument("--chunk-size", type=int, default=80, help="bytes per chunk (80)")
    args = parse(parser, argv)
    if not args.turns or args.turns[0] < 1 or args.turns[-1] > 999:
        parser.error("--turns must be between 1 and 999")
    if args.chunks < 0 or args.chunk_size < 1:
        parser.error("--chunks must be >= 0 and --chunk-size >= 1")
    return args


async def main() -> int:
    args = parse_args()
    stamp = Stamp.now("bytes_per_turn")
    agent = fake_agent_command("--chunks", str(args.chunks), "--chunk-size", str(args.chunk_size))
    with tempfile.TemporaryDirectory(prefix="acp-bench-") as tmp:
        async with run_proxy(Path(tmp) / "proxy", agent) as proxy:
            turns = await run_conversation(proxy.socket, args.turns[-1])
    body, passed = render(args, turns)
    header = stamp.header()
    return report(SECTION_TITLE, header, body, passed, args.write, blank_first=False)


if __name__ == "__main__":
    run_main(main)
