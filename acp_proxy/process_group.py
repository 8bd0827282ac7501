"""Ending an agent's process group: signals in order, bounded waits, the stderr tail.

The group outlives the process the proxy started when that was a wrapper (a shell script,
``npx``) whose child is the real agent: it is signalled in any case. Its id cannot be reused
while any member is left (the kernel keeps it allocated), so signalling it is safe as long as
something of it runs.
"""

from __future__ import annotations

import os
import signal
from collections import deque

import anyio
from anyio.abc import Process

__all__ = ["read_stderr_tail", "signal_group", "stop_group"]

#: How often a wait for an emptying group looks (no event tells when a group empties).
_POLL_S = 0.02


def signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` (0: just look) to a process group; False when no member is left."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member changed its credentials: not ours to signal any more
        return False
    return True


async def stop_group(process: Process, grace_s: float) -> None:
    """SIGTERM, then SIGKILL the process group of ``process``, ``grace_s`` apart, until no
    member is left (or the SIGKILL's grace ran out); then reap ``process``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not signal_group(process.pid, sig):
            break
        with anyio.move_on_after(grace_s):
            await process.wait()
            while signal_group(process.pid, 0):  # noqa: ASYNC110 (bounded by the grace)
                await anyio.sleep(_POLL_S)
    await process.wait()


async def read_stderr_tail(process: Process, tail: deque[str]) -> None:
    """Let stderr finish (briefly) so the tail explains the exit; close the process."""
    if process.stderr is None:
        return
    with anyio.move_on_after(0.2):
        async for data in process.stderr:
            for line in data.decode(errors="replace").splitlines():
                if line.strip():
                    tail.append(line)
    await process.aclose()
