"""Fuzzed frames on several connections: no crash, every request answered, and every session
the frames touched can still be restored into a new agent."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from acp_proxy.testing.fuzzer import run_campaign

from .conftest import proxy

pytestmark = pytest.mark.trio


async def test_fuzzed_frames_leave_every_session_restorable(tmp: Path) -> None:
    """3,000 frames (the campaign in bench/fuzz_campaign.py sends 50,000+): the proxy stays
    up, answers every well-formed request with its id, only ever sends JSON, logs only JSON,
    and each touched session is restored and answers afterwards."""
    seed = int(os.environ.get("ACP_PROXY_FUZZ_SEED", random.randrange(1 << 30)))
    config = tmp / "proxy.toml"
    config.write_text("max_line_bytes = 262144\n")
    async with proxy(
        tmp, "--chunks", "1", "--thoughts", "0", "--tool-calls", "0",
        extra_args=("--config", str(config)),
    ) as p:  # fmt: skip
        report = await run_campaign(p.socket, str(tmp), frames=3000, seed=seed)
        assert p.process.returncode is None, seed
        logs = p.logs()
    assert report.unanswered == [], (seed, report.unanswered)
    assert report.answered == report.requests_expecting_answer > 1000, seed
    assert report.non_json_lines == 0, seed
    assert report.restore_failures == [], (seed, report.restore_failures)
    assert report.restored == len(report.touched_sessions) >= 4, seed
    events = {e["event"] for e in logs}
    assert not events & {"client.crashed", "agent.handler_crashed", "<non-json>"}, seed
    assert {"deep", "invalid_utf8", "truncated", "garbage"} <= set(report.kinds), report.kinds
