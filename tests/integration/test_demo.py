"""The README's main job, `acp-proxy demo`, end to end as a user runs it."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import trio

pytestmark = pytest.mark.trio


async def test_demo_shows_one_warm_agent_and_the_speed_up(tmp: Path) -> None:
    """The demo serves turn 2 from the agent of turn 1 and reports the ratio to a re-spawn."""
    with trio.fail_after(90):
        done = await trio.run_process(
            [sys.executable, "-m", "acp_proxy", "demo", "--dir", str(tmp)],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    out = done.stdout.decode()
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert "same agent process, initialized once: yes" in out
    ratio = re.search(r"warm agent through the proxy: ([0-9.]+)x sooner", out)
    assert ratio is not None, out
    assert (tmp / "proxy.db").exists()
    # The recorded store is a plain SQLite file the user can read.
    listed = await trio.run_process(
        [sys.executable, "-m", "acp_proxy", "sessions", "--db", str(tmp / "proxy.db"), "list"],
        capture_stdout=True,
    )
    assert listed.stdout.count(b"sess_") == 1
