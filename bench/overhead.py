"""Benchmark 5: the proxy's own overhead on time to first token and on a full turn.

Run ``python -m bench.overhead [--prompts N] [--block N] [--warmup N] [--write BENCHMARKS.md]``.

The bundled fake agent answers at once (``--thoughts 0 --tool-calls 0 --chunks 3``: three
``agent_message_chunk`` and its summary chunk, no delay), so whatever B adds over A is the proxy:

* A (direct): one warm agent spawned on stdio, one session, many prompts over its pipes.
* B (through the proxy): one ``acp-proxy serve`` (SQLite store) with the same agent command, one
  client connection, one session, many prompts. Every prompt is committed to the store before it
  is forwarded, and every update is committed before it is delivered.

Both use the same client (``acp_proxy.testing.client.AcpClient``). Each prompt is timed from just
before it is written to the first ``agent_message_chunk`` received (time to first token) and to
its answer (full turn). After ``--warmup`` untimed prompts each, the scenarios alternate in blocks
of ``--block`` prompts (A B B A A B ...) until each has ``--prompts`` (default 1000). The report
gives p50 / p99 of both for A and B and the differences B - A. Goal: p50 ≤ +1 ms and p99 ≤ +5 ms,
for time to first token and for the full turn.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from acp_proxy.testing.client import AcpClient
from acp_proxy.testing.proxy_process import fake_agent_command, run_proxy
from bench._common import (
    Stamp,
    ms,
    new_parser,
    parse,
    percentile,
    proxy_meta,
    report,
    row,
    run_main,
)

SECTION_TITLE = "## 5. Proxy overhead on time to first token and on a full turn"
GOAL_P50_MS = 1.0
GOAL_P99_MS = 5.0
AGENT_ARGS = ("--thoughts", "0", "--tool-calls", "0", "--chunks", "3")
CWD = "/tmp"
SETUP_LIMIT_S = 60.0
PROMPT_LIMIT_S = 30.0  #: one prompt (either scenario) must be answered within this
META_KEYS = ("queue_ms", "model_first_token_ms", "ttft_ms", "total_ms")


@dataclass
class Samples:
    """Per-prompt timings of one scenario, seconds."""

    ttft: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)
    meta: list[dict[str, Any]] = field(default_factory=list)  #: the proxy's _meta (B only)


async def open_session(client: AcpClient) -> str:
    await client.initialize()
    return await client.new_session(CWD)


async def timed_prompt(client: AcpClient, session_id: str, n: int, into: Samples | None) -> None:
    """One prompt; its timings go to ``into`` (None: a warm-up prompt)."""
    start = time.perf_counter()
    with anyio.fail_after(PROMPT_LIMIT_S):
        reply = await client.prompt(session_id, f"prompt {n}")
    result = reply.unwrap("session/prompt")
    if reply.first_update_at is None or result.get("stopReason") != "end_turn":
        raise RuntimeError(f"prompt {n}: unexpected answer {result!r}")
    chunks = [u for u in reply.updates() if u.get("sessionUpdate") == "agent_message_chunk"]
    if len(chunks) != 4:  # --chunks 3 + the summary chunk
        raise RuntimeError(f"prompt {n}: expected 4 message chunks, got {len(chunks)}")
    client.messages.clear()  # nothing is pending between prompts: keep the client's log short
    if into is not None:
        into.ttft.append(reply.first_update_at - start)
        into.total.append(reply.received_at - start)
        into.meta.append(proxy_meta(result))


# -- report ------------------------------------------------------------------------------------


def _signed_ms(seconds: float) -> str:
    return f"{seconds * 1000:+,.2f}"


def render(args: argparse.Namespace, a: Samples, b: Samples) -> tuple[str, bool]:
    lines = [
        f"Fake agent `{' '.join(AGENT_ARGS)}` (no delays); {len(a.ttft)} timed prompts per "
        f"scenario after {args.warmup} untimed each, alternating in blocks of {args.block} "
        "(A B B A A B ...); one warm agent, one session, one connection per scenario.",
        "",
        "Per prompt, ms (from just before the prompt is written: to the first "
        "`agent_message_chunk` = time to first token; to the answer = full turn):",
        "",
        row(
            [
                "scenario",
                "first token p50",
                "first token p99",
                "full turn p50",
                "full turn p99",
                "full turn mean",
            ]
        ),
        row(["---", "---:", "---:", "---:", "---:", "---:"]),
    ]

    def stats(s: Samples) -> list[float]:
        return [
            percentile(s.ttft, 50),
            percentile(s.ttft, 99),
            percentile(s.total, 50),
            percentile(s.total, 99),
            statistics.fmean(s.total),
        ]

    sa, sb = stats(a), stats(b)
    lines.append(row(["A: agent over its pipes", *(ms(v, 2) for v in sa)]))
    lines.append(row(["B: through the proxy", *(ms(v, 2) for v in sb)]))
    diff = [y - x for x, y in zip(sa, sb, strict=True)]
    lines.append(row(["**B - A**", *(f"**{_signed_ms(v)}**" for v in diff)]))
    verdicts = [
        ("first token p50", diff[0], GOAL_P50_MS),
        ("first token p99", diff[1], GOAL_P99_MS),
        ("full turn p50", diff[2], GOAL_P50_MS),
        ("full turn p99", diff[3], GOAL_P99_MS),
    ]
    passed = all(d * 1000 <= goal for _name, d, goal in verdicts)
    lines += [""]
    for name, d, goal in verdicts:
        ok = d * 1000 <= goal
        margin = (
            f"{goal - d * 1000:,.2f} ms to spare" if ok else f"missed by {d * 1000 - goal:,.2f} ms"
        )
        lines.append(
            f"- {name}: B - A = {_signed_ms(d)} ms, goal <= +{goal:g} ms: "
            f"**{'PASS' if ok else 'FAIL'}** ({margin})"
        )
    lines += [
        "",
        f"**Goal (p50 <= +{GOAL_P50_MS:g} ms, p99 <= +{GOAL_P99_MS:g} ms): "
        f"{'PASS' if passed else 'FAIL'}**",
        "",
        'B: the proxy\'s own timings of the same prompts (`result._meta["acp-proxy"]`), ms '
        "(`queue_ms`: prompt read → forwarded to the agent, i.e. the prompt's commit; "
        "`model_first_token_ms`: forwarded → first chunk read from the agent):",
        "",
        row(["key", "p50", "p99", "max"]),
        row(["---", "---:", "---:", "---:"]),
    ]
    for key in META_KEYS:
        values = [m[key] for m in b.meta if isinstance(m.get(key), int | float)]
        if values:
            lines.append(
                row(
                    [
                        f"`{key}`",
                        f"{percentile(values, 50):,.3f}",
                        f"{percentile(values, 99):,.3f}",
                        f"{max(values):,.3f}",
                    ]
                )
            )
    return "\n".join(lines) + "\n", passed


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = new_parser("overhead", __doc__)
    parser.add_argument(
        "--prompts", type=int, default=1000, help="timed prompts per scenario (1000)"
    )
    parser.add_argument("--block", type=int, default=50, help="prompts per block (50)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed prompts first (20)")
    args = parse(parser, argv)
    if args.prompts < 1 or args.block < 1 or args.warmup < 0:
        parser.error("--prompts and --block must be >= 1, --warmup >= 0")
    return args


async def main() -> int:
    args = parse_args()
    stamp = Stamp.now("overhead")
    agent = fake_agent_command(*AGENT_ARGS)
    a, b = Samples(), Samples()
    with tempfile.TemporaryDirectory(prefix="acp-bench-") as tmp:
        async with (
            run_proxy(Path(tmp) / "proxy", agent) as proxy,
            AcpClient.connect(proxy.socket) as client_b,
            AcpClient.spawn(agent) as client_a,
        ):
            with anyio.fail_after(SETUP_LIMIT_S):
                session_a = await open_session(client_a)
                session_b = await open_session(client_b)
            n = 0
            for _ in range(args.warmup):
                n += 1
                await timed_prompt(client_a, session_a, n, None)
                await timed_prompt(client_b, session_b, n, None)
            block = 0
            while len(a.ttft) < args.prompts or len(b.ttft) < args.prompts:
                order = [(client_a, session_a, a), (client_b, session_b, b)]
                if block % 2:
                    order.reverse()
                for client, session_id, samples in order:
                    for _ in range(min(args.block, args.prompts - len(samples.ttft))):
                        n += 1
                        await timed_prompt(client, session_id, n, samples)
                block += 1
                print(
                    f"block {block}: {len(a.ttft)} + {len(b.ttft)} prompts; "
                    f"first token p50 A {ms(percentile(a.ttft, 50), 2)} ms, "
                    f"B {ms(percentile(b.ttft, 50), 2)} ms",
                    flush=True,
                )
    body, passed = render(args, a, b)
    header = stamp.header(stamp.load_at_start())
    return report(SECTION_TITLE, header, body, passed, args.write)


if __name__ == "__main__":
    run_main(main)
