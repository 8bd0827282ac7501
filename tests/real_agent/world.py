"""Helpers for tests that run a real agent behind the real proxy (on trio).

A real agent runs with a private environment: its own HOME and config dirs, nothing of the
caller's provider settings, every model at a local fake server. :func:`private_env` builds that
environment; :func:`reap` finds the agent processes of one test by a marker in their environment
(``NAME=value``) and kills, by pid, any that outlived the test.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from acp_proxy.testing.client import AcpClient, Reply
from acp_proxy.testing.proxy_process import ProxyHandle, pid_exists

__all__ = [
    "agent_pid",
    "client",
    "log_lines",
    "private_env",
    "processes_with",
    "proxy_meta",
    "reap",
    "text_of",
    "wait_dead",
]

#: variables of the caller's environment that must not leak into a real agent's
_DROP_PREFIXES = (
    "OPENCODE_",
    "XDG_",
    "OPENAI_",
    "ANTHROPIC_",
    "CLAUDE",
    "GEMINI_",
    "GOOGLE_",
    "AWS_",
)
_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy")


def private_env(settings: dict[str, str]) -> dict[str, str]:
    """The caller's environment without provider settings or proxies, plus ``settings``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(_DROP_PREFIXES) and k not in _PROXY_VARS
    }
    env.update({"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"})
    env.update(settings)
    return env


def processes_with(marker: str) -> list[int]:
    """Pids of processes whose environment holds ``marker`` (``NAME=value``)."""
    wanted = marker.encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if wanted in environ.split(b"\0"):
            pids.append(int(entry))
    return pids


def reap(marker: str, grace_s: float = 10.0) -> list[int]:
    """Wait for the processes marked ``marker`` to end; SIGKILL (by pid) any that do not.

    Returns the pids that had to be killed.
    """
    deadline = time.monotonic() + grace_s
    while (pids := processes_with(marker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids


@asynccontextmanager
async def client(handle: ProxyHandle, **kwargs: Any) -> AsyncIterator[AcpClient]:
    """An initialized client connection to the proxy."""
    async with AcpClient.connect(handle.socket, **kwargs) as c:
        await c.initialize()
        yield c


def text_of(reply: Reply) -> str:
    """The agent's message text in a turn (its chunks joined)."""
    return "".join(
        u["content"].get("text", "")
        for u in reply.updates()
        if u.get("sessionUpdate") == "agent_message_chunk" and isinstance(u.get("content"), dict)
    )


def proxy_meta(reply: Reply) -> dict[str, Any]:
    """The proxy's ``_meta["acp-proxy"]`` of a prompt answer."""
    return ((reply.result or {}).get("_meta") or {}).get("acp-proxy") or {}


def log_lines(handle: ProxyHandle, event: str) -> list[dict[str, Any]]:
    """The proxy's JSON log lines of one event."""
    return [e for e in handle.logs() if e.get("event") == event]


def agent_pid(handle: ProxyHandle, session_id: str) -> int:
    """The pid of the agent the proxy last bound ``session_id`` to (from its log)."""
    pids = [
        e["agent_pid"]
        for e in handle.logs()
        if e.get("event") in ("session.created", "session.restored")
        and session_id in (e.get("session"), e.get("session_id"), e.get("sessionId"))
    ]
    assert pids, f"no session.created/restored log line for {session_id}"
    return pids[-1]


async def wait_dead(pid: int, within_s: float = 10.0) -> None:
    with trio.fail_after(within_s):
        while pid_exists(pid):  # noqa: ASYNC110 (polling another process)
            await trio.sleep(0.05)
