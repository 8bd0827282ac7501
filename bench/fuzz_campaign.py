"""Fuzz campaign: 50,000+ adversarial frames against a real proxy, with a fixed seed.

The proxy runs as a subprocess with the fake agent (one chunk per turn, no thoughts or tool
calls, so the frames rather than the agent dominate) and ``max_line_bytes = 262144`` (so
over-limit lines are cheap). ``acp_proxy.testing.fuzzer`` sends the frames over several
connections at once: ACP requests and notifications with random params aimed at real session
ids, a fraction of them truncated, with invalid UTF-8 inside a string, nested hundreds deep,
binary garbage, batch arrays, CRLF endings, stray responses, over-limit lines. Then every
session the frames touched is closed and restored into a new agent (prompt + load).

PASS: the proxy never exits, logs no crash and only JSON lines, sends only JSON lines, answers
every well-formed request (unique id) with that id, and every touched session is restored.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from acp_proxy.testing.fuzzer import run_campaign
from acp_proxy.testing.proxy_process import fake_agent_command, run_proxy
from bench._common import Stamp, new_parser, parse, report, run_main

TITLE = "## 15. Fuzz campaign: adversarial frames, then every touched session restored"


def parse_args(argv: Sequence[str] | None = None) -> object:
    parser = new_parser("fuzz_campaign", __doc__)
    parser.add_argument("--frames", type=int, default=50_000, help="frames in all (50000)")
    parser.add_argument("--seed", type=int, default=12, help="the campaign's seed (12)")
    parser.add_argument("--connections", type=int, default=4, help="concurrent connections")
    parser.add_argument(
        "--closes",
        type=int,
        default=0,
        help="per connection, session/close frames naming a real session (0; see README)",
    )
    return parse(parser, argv)


async def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = Stamp.now("fuzz_campaign")
    with tempfile.TemporaryDirectory(prefix="acpx-fuzz-") as directory:
        tmp = Path(directory)
        config = tmp / "proxy.toml"
        config.write_text("max_line_bytes = 262144\n")
        agent = fake_agent_command("--chunks", "1", "--thoughts", "0", "--tool-calls", "0")
        started = time.monotonic()
        async with run_proxy(tmp, agent, extra_args=("--config", str(config))) as p:
            result = await run_campaign(
                p.socket,
                str(tmp),
                frames=args.frames,  # type: ignore[attr-defined]
                seed=args.seed,  # type: ignore[attr-defined]
                connections=args.connections,  # type: ignore[attr-defined]
                closes=args.closes,  # type: ignore[attr-defined]
            )
            alive = p.process.returncode is None
            logs = p.logs()
        elapsed = time.monotonic() - started
    crashes = [e for e in logs if e["event"] in ("client.crashed", "agent.handler_crashed")]
    non_json_logs = [e for e in logs if e["event"] == "<non-json>"]
    passed = (
        alive
        and not crashes
        and not non_json_logs
        and result.non_json_lines == 0
        and not result.unanswered
        and result.answered == result.requests_expecting_answer
        and not result.restore_failures
        and result.restored == len(result.touched_sessions)
    )
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(result.kinds.items()))
    body = (
        f"| | |\n|---|---|\n"
        f"| frames sent | {result.frames} ({kinds}) |\n"
        f"| connections | {args.connections} |\n"  # type: ignore[attr-defined]
        f"| seed | {args.seed} |\n"  # type: ignore[attr-defined]
        f"| real session/close frames per connection | {args.closes} |\n"  # type: ignore[attr-defined]
        f"| proxy alive at the end | {'yes' if alive else 'NO'} |\n"
        f"| crashes logged (client.crashed, agent.handler_crashed) | {len(crashes)} |\n"
        f"| non-JSON log lines / non-JSON lines sent to clients | {len(non_json_logs)} / "
        f"{result.non_json_lines} |\n"
        f"| well-formed requests / answered with their id | {result.requests_expecting_answer}"
        f" / {result.answered} |\n"
        f"| unanswered | {len(result.unanswered)} {result.unanswered[:5] or ''} |\n"
        f"| lines received | {result.lines_received} |\n"
        f"| sessions touched / restored afterwards (close, prompt, load) | "
        f"{len(result.touched_sessions)} / {result.restored} |\n"
        f"| wall time | {elapsed:.1f} s |\n\n"
        f"**{'PASS' if passed else 'FAIL'}**: 0 crashes, 0 unanswered requests and every "
        "touched session restorable is the goal (issue 12).\n"
    )
    if result.restore_failures:
        body += "\nRestore failures: " + "; ".join(result.restore_failures[:5]) + "\n"
    return report(TITLE, stamp.header(stamp.load_span()), body, passed, args.write)  # type: ignore[attr-defined]


if __name__ == "__main__":
    run_main(main)
