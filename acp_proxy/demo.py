"""``acp-proxy demo``: the proxy end to end on its embedded defaults.

Starts ``acp-proxy serve`` with a SQLite file and the bundled fake agent (configured with
opencode-like costs: start-up 1.5 s, session init 0.8 s, first token 0.1 s), runs a two-turn
conversation where turn 2 comes from a *new* client connection (as a daemon that re-spawns its
bridge per message would), and prints what the warm agent saved, next to a re-spawned agent
doing the same continued turn.
"""

from __future__ import annotations

import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from .testing.client import AcpClient, Reply
from .testing.proxy_process import fake_agent_command, run_proxy

__all__ = ["demo"]

KNOBS = ("--startup-delay", "1.5", "--session-init-delay", "0.8", "--first-token-delay", "0.1")


def _say(text: str = "") -> None:
    print(text, flush=True)  # noqa: T201 (the demo's output is its purpose)


def _ttft_ms(start: float, reply: Reply) -> float:
    reply.unwrap("session/prompt")
    assert reply.first_update_at is not None, "the agent sent no chunk"
    return (reply.first_update_at - start) * 1000


def _summary(reply: Reply) -> str:
    texts = [
        u["content"]["text"]
        for u in reply.updates()
        if u.get("sessionUpdate") == "agent_message_chunk" and "[fake]" in u["content"]["text"]
    ]
    return texts[-1].split("; last user message")[0] if texts else "?"


async def _respawned_turn(directory: Path, cwd: str) -> float:
    """A continued turn the way daemons do it today: spawn, initialize, load, prompt."""
    agent = fake_agent_command(*KNOBS, "--state-dir", str(directory / "agent-state"))
    async with AcpClient.spawn(agent) as c:
        await c.initialize()
        sid = await c.new_session(cwd)
        await c.prompt(sid, "turn 1")
    start = time.perf_counter()
    async with AcpClient.spawn(agent) as c:
        await c.initialize()
        await c.request("session/load", {"sessionId": sid, "cwd": cwd, "mcpServers": []})
        return _ttft_ms(start, await c.prompt(sid, "turn 2"))


async def demo(directory: str | None = None) -> int:
    """Run the demo; returns the exit status."""
    with tempfile.TemporaryDirectory(prefix="acp-proxy-demo-") as tmp:
        base = Path(directory or tmp)
        cwd = str(base)
        _say(f"acp-proxy demo: socket and SQLite file in {base}")
        _say(f"agent: the bundled fake ACP agent {' '.join(KNOBS)}")
        async with run_proxy(
            base, fake_agent_command(*KNOBS), extra_args=("--warm-spares", "0")
        ) as p:
            _say(f"proxy ready (pid {p.pid})\n")
            async with AcpClient.connect(p.socket) as c:
                start = time.perf_counter()
                await c.initialize()
                sid = await c.new_session(cwd)
                first = await c.prompt(sid, "Hello! Please remember the word 'teal'.")
                ttft1 = _ttft_ms(start, first)
                state1: dict[str, Any] = (
                    await c.request("_fake/state", {"sessionId": sid})
                ).unwrap()
            _say(f"turn 1  new connection, cold agent   first token after {ttft1:7.1f} ms")
            _say(f"        agent pid {state1['pid']}: {_summary(first)}")
            _say("        (client disconnects, like a daemon whose bridge exits after a turn)")
            async with AcpClient.connect(p.socket) as c:
                start = time.perf_counter()
                await c.initialize()
                loaded = await c.request(
                    "session/load", {"sessionId": sid, "cwd": cwd, "mcpServers": []}
                )
                loaded.unwrap("session/load")
                second = await c.prompt(sid, "What was the word?")
                ttft2 = _ttft_ms(start, second)
                state2 = (await c.request("_fake/state", {"sessionId": sid})).unwrap()
            meta = second.result["_meta"]["acp-proxy"]
            _say(f"turn 2  new connection, warm agent   first token after {ttft2:7.1f} ms")
            _say(f"        agent pid {state2['pid']}: {_summary(second)}")
            _say(
                f"        load replayed {len(loaded.notifications)} recorded updates from SQLite; "
                f"proxy timings: queue {meta['queue_ms']} ms, model first token "
                f"{meta['model_first_token_ms']} ms"
            )
            same = state1["pid"] == state2["pid"] and state2["initializeCount"] == 1
            _say("        same agent process, initialized once: " + ("yes" if same else "NO"))
            with sqlite3.connect(p.db) as db:
                events = db.execute("SELECT count(*) FROM events").fetchone()[0]
                turns = db.execute("SELECT count(*) FROM turns").fetchone()[0]
            _say(f"\nstore {p.db}: {turns} turns, {events} events recorded")
        _say("\nthe same continued turn through a re-spawned agent (spawn + initialize + load):")
        respawned = await _respawned_turn(base, cwd)
        _say(f"turn 2  re-spawned agent             first token after {respawned:7.1f} ms")
        _say(f"\nwarm agent through the proxy: {respawned / ttft2:.1f}x sooner to the first token")
        return 0 if same else 1


def main(directory: str | None = None) -> int:
    """Entry point used by ``acp-proxy demo``."""
    try:
        return anyio.run(demo, directory)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the demo reports, it does not hide
        print(f"acp-proxy demo failed: {exc}", file=sys.stderr)  # noqa: T201
        return 1
