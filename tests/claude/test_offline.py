"""claude-agent-acp needs no network beyond the fake model: one conversation through the proxy
in a network namespace with only loopback, every ``connect``/``sendto`` of every process traced.

Needs root (``unshare -n``) and ``strace``; skipped, with the reason, where either is missing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.real_agent.model_server import BASH_OUTPUT, seen

from .harness import INSTALL_HINT, installed

pytestmark = [pytest.mark.claude, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
_INET = re.compile(r'inet_addr\("([^"]+)"\)|inet_pton\(AF_INET6, "([^"]+)"')
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def _tools_missing() -> str | None:
    if not installed():
        return INSTALL_HINT
    for tool in ("unshare", "strace", "ip"):
        if shutil.which(tool) is None:
            return f"{tool} not found (apt-get install util-linux strace iproute2)"
    if os.geteuid() != 0:
        return "unshare -n needs root"
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        return f"unshare -n refused here: {probe.stderr.decode(errors='replace').strip()}"
    return None


def test_a_conversation_needs_nothing_but_loopback() -> None:
    """New session, a turn and a Bash tool turn in a namespace with only loopback: the answers
    are right, and no process connected or sent to any address but loopback."""
    reason = _tools_missing()
    if reason:
        pytest.skip(reason)
    with tempfile.TemporaryDirectory(prefix="acpcl-netns-") as directory:
        trace = Path(directory) / "strace.log"
        command = [
            "unshare",
            "-n",
            "--",
            "sh",
            "-c",
            'ip link set lo up && exec "$@"',
            "sh",
            "strace",
            "-f",
            "-qq",
            "-e",
            "trace=connect,sendto,sendmsg",
            "-o",
            str(trace),
            sys.executable,
            "-m",
            "tests.claude.offline_run",
            directory,
        ]
        run = subprocess.run(command, cwd=REPO, capture_output=True, timeout=280, check=False)
        assert run.returncode == 0, run.stderr.decode(errors="replace")[-3000:]
        result = json.loads(run.stdout.decode().strip().splitlines()[-1])
        assert result["texts"] == [seen(1, "hello one"), f"Tool said: {BASH_OUTPUT}"]
        assert result["permission_asks"] == 1
        assert result["unknown_paths"] == []
        addresses = {a or b for a, b in _INET.findall(trace.read_text(errors="replace"))}
        assert addresses, "strace saw no inet traffic at all (the fake API is on loopback)"
        assert addresses <= LOOPBACK, f"something tried to leave the machine: {addresses}"
