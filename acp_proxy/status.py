"""What the proxy is doing, for an operator: the ``_acp-proxy/status`` extension request.

``acp-proxy status`` and ``acp-proxy health`` send it on the socket (no ``initialize``
needed); the metrics gauges read the same snapshot. The answer::

    {"version", "pid", "uptime_s", "stopping", "clients",
     "sessions": {"known", "live", "in_turn"},
     "agents": [{"pid", "role": "session" | "spare", "rss_bytes", "sessions", "idle_s",
                 "in_turn", "preopened" (a spare's session opened ahead: its cwd, or None)}],
     "agent_memory_bytes", "agent_memory_limit_bytes" (0: no budget),
     "agents_stopped_for_memory": {"spare", "session"}}
"""

from __future__ import annotations

import os
import time
from collections.abc import Sized
from typing import Any

from . import __version__
from .extensions import STATUS_METHOD
from .hub import Hub
from .procmem import read_procs, tree_rss_bytes

__all__ = ["STATUS_METHOD", "format_status", "snapshot"]


def snapshot(hub: Hub, clients: Sized, *, stopping: bool, started: float) -> dict[str, Any]:
    """The proxy's state now (reads ``/proc`` once for the agents' memory)."""
    now = time.monotonic()
    agents: dict[int, dict[str, Any]] = {}
    live = in_turn = 0
    for session in hub.sessions.values():
        agent = session.agent
        if agent is None or not session.live or agent.pid is None:
            continue
        live += 1
        busy = session.turn is not None
        in_turn += busy
        entry = agents.setdefault(
            agent.pid,
            {"pid": agent.pid, "role": "session", "sessions": 0, "idle_s": None, "in_turn": False},
        )
        entry["sessions"] += 1
        idle = round(now - session.last_active, 3)
        entry["idle_s"] = idle if entry["idle_s"] is None else min(idle, entry["idle_s"])
        entry["in_turn"] = entry["in_turn"] or busy
    env_spares = [a for a in hub.pool.recent_envs.values() if a is not None]
    for spare in [*hub.pool.spares, *env_spares]:
        if spare.pid is not None and spare.alive:
            ahead = hub.pool.preopened.get(spare)
            agents[spare.pid] = {
                "preopened": ahead.cwd if ahead is not None and ahead.usable else None,
                "pid": spare.pid,
                "role": "spare",
                "sessions": 0,
                "idle_s": round(now - spare.spawned_at, 3),
                "in_turn": False,
            }
    rss = tree_rss_bytes(agents, read_procs())
    for pid, entry in agents.items():
        entry["rss_bytes"] = rss.get(pid, 0)
    return {
        "version": __version__,
        "pid": os.getpid(),
        "uptime_s": round(now - started, 3),
        "stopping": stopping,
        "clients": len(clients),
        "sessions": {"known": len(hub.sessions), "live": live, "in_turn": in_turn},
        "agents": list(agents.values()),
        "agent_memory_bytes": sum(rss.values()),
        "agent_memory_limit_bytes": hub.pool.budget.limit if hub.pool.budget else 0,
        "agents_stopped_for_memory": dict(hub.pool.memory_stops),
    }


def _size(n: int) -> str:
    return f"{n / (1 << 20):.0f} MiB"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def format_status(status: dict[str, Any]) -> str:
    """The status as a short table for a terminal."""
    sessions = status["sessions"]
    lines = [
        f"acp-proxy {status['version']}  pid {status['pid']}  up {_duration(status['uptime_s'])}"
        f"{'  STOPPING' if status['stopping'] else ''}",
        f"clients {status['clients']}  sessions {sessions['known']} known, "
        f"{sessions['live']} live, {sessions['in_turn']} in a turn",
        "",
        f"{'PID':>8}  {'ROLE':<8} {'RSS':>9}  {'SESSIONS':>8}  {'IDLE':>7}  IN TURN",
    ]
    for agent in sorted(status["agents"], key=lambda a: (a["role"], a["pid"])):
        lines.append(
            f"{agent['pid']:>8}  {agent['role']:<8} {_size(agent['rss_bytes']):>9}  "
            f"{agent['sessions']:>8}  {_duration(agent['idle_s']):>7}  "
            f"{'yes' if agent['in_turn'] else 'no'}"
            + (f"  (session open ahead in {agent['preopened']})" if agent.get("preopened") else "")
        )
    if not status["agents"]:
        lines.append(f"{'(no agent running)':>26}")
    lines.append("")
    limit = status.get("agent_memory_limit_bytes")
    lines.append(
        f"agent memory (RSS of all agent process trees): {_size(status['agent_memory_bytes'])}"
        + (f"  budget {_size(limit)}" if limit else "")
    )
    return "\n".join(lines)
