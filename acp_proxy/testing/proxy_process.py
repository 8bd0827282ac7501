"""Run ``acp-proxy serve`` as a real subprocess (tests, demo, benchmarks).

The proxy's JSON log goes to a file next to its socket, so tests can read the canonical lines.
Only the process started here is ever signalled, by its pid.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import msgspec
from anyio.abc import Process

__all__ = ["ProxyHandle", "fake_agent_command", "pid_exists", "run_proxy"]


def pid_exists(pid: int) -> bool:
    """Whether a process ``pid`` exists (until its parent reaps it: an agent the proxy has not
    waited for yet still counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def fake_agent_command(*args: str) -> list[str]:
    """The bundled fake agent as an agent command line."""
    return [sys.executable, "-m", "acp_proxy.testing.fake_agent", *args]


@dataclass
class ProxyHandle:
    """A running proxy."""

    socket: str
    db: str
    log_path: Path
    process: Process

    @property
    def pid(self) -> int:
        """The proxy's pid."""
        return self.process.pid

    def logs(self) -> list[dict[str, Any]]:
        """Every JSON log line written so far."""
        out = []
        for line in self.log_path.read_bytes().splitlines():
            try:
                out.append(msgspec.json.decode(line))
            except msgspec.DecodeError:
                out.append({"event": "<non-json>", "line": line.decode(errors="replace")})
        return out

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the proxy process (and only it)."""
        if self.process.returncode is None:
            os.kill(self.process.pid, sig)


async def _wait_ready(socket_path: str, process: Process, log_path: Path, limit_s: float) -> None:
    with anyio.fail_after(limit_s):
        while True:
            if process.returncode is not None:
                raise RuntimeError(
                    f"acp-proxy serve exited with {process.returncode}: "
                    f"{log_path.read_text()[-2000:]}"
                )
            try:
                stream = await anyio.connect_unix(socket_path)
            except OSError:
                await anyio.sleep(0.02)
                continue
            await stream.aclose()
            return


async def _skip_a_long_drain(handle: ProxyHandle) -> None:
    """A test that leaves a turn running would wait out the whole drain (25 s by default):
    once the drain has begun, a second SIGTERM skips it (tests of the drain itself wait for
    the proxy's exit before they leave)."""
    with anyio.move_on_after(1):
        while handle.process.returncode is None:
            events = {line.get("event") for line in handle.logs()}
            if "serve.drained" in events:
                return
            if "serve.draining" in events:
                await anyio.sleep(0.2)  # the turns that end at once do
                if "serve.drained" not in {line.get("event") for line in handle.logs()}:
                    handle.kill(signal.SIGTERM)
                return
            await anyio.sleep(0.02)


@asynccontextmanager
async def run_proxy(
    directory: str | os.PathLike[str],
    agent_command: Sequence[str],
    *,
    extra_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    db: str | None = None,
    ready_timeout_s: float = 30.0,
    prefix: Sequence[str] = (),
    socket_path: str | None = None,
) -> AsyncIterator[ProxyHandle]:
    """Start ``acp-proxy serve`` and wait until its socket accepts connections.

    ``prefix`` runs the proxy under a launcher, e.g. ``["prlimit", "--nofile=128:128"]``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    socket_path = socket_path or str(directory / "proxy.sock")
    db_path = db or str(directory / "proxy.db")
    log_path = directory / "proxy.log"
    command = [
        *prefix,
        sys.executable,
        "-m",
        "acp_proxy",
        "serve",
        "--socket",
        socket_path,
        "--db",
        db_path,
        *extra_args,
        "--",
        *agent_command,
    ]
    with log_path.open("ab") as log_file:
        process = await anyio.open_process(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log_file,
            env=env,
        )
    handle = ProxyHandle(socket_path, db_path, log_path, process)
    try:
        await _wait_ready(socket_path, process, log_path, ready_timeout_s)
        yield handle
    finally:
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                handle.kill(signal.SIGTERM)
                with anyio.move_on_after(15):
                    await _skip_a_long_drain(handle)
                    await process.wait()
            if process.returncode is None:
                handle.kill(signal.SIGKILL)
            await process.wait()
            await process.aclose()
