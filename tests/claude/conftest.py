"""The real ``claude-agent-acp`` behind the real proxy, driven by a local fake Messages API.

Every test gets its own private home (HOME, CLAUDE_CONFIG_DIR, a work dir outside any git
repository) and its own fake model server. The home stays the same for the whole test, across
agent and proxy restarts, so the CLI's own transcripts let ``session/resume`` and
``session/load`` find the conversation in a new process.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from acp_proxy.testing.proxy_process import ProxyHandle, run_proxy
from tests.real_agent.world import reap

from .fake_anthropic import FakeAnthropic
from .harness import INSTALL_HINT, ClaudeHome, agent_command, installed

#: the proxy's kill grace: short, so a test sees at once whether an agent exits by itself
KILL_GRACE_S = 5.0


@dataclass
class Claude:
    """One test's Claude world: its private home, its fake model, its scratch dir."""

    tmp: Path
    home: ClaudeHome
    model: FakeAnthropic

    @property
    def cwd(self) -> str:
        """The session cwd (outside any git repository)."""
        return str(self.home.work)

    def env(self) -> dict[str, str]:
        return self.home.env(self.model.base_url)

    @asynccontextmanager
    async def proxy(
        self, name: str = "proxy", *, db: str | None = None, extra_args: tuple[str, ...] = ()
    ) -> AsyncIterator[ProxyHandle]:
        """``acp-proxy serve`` with claude-agent-acp as its agent command."""
        config = self.tmp / f"{name}.toml"
        config.write_text(f"kill_grace_s = {KILL_GRACE_S}\n")
        async with run_proxy(
            self.tmp / name,
            agent_command(),
            extra_args=("--config", str(config), *extra_args),
            env=self.env(),
            db=db or str(self.tmp / "sessions.db"),
        ) as handle:
            yield handle


@pytest.fixture
def claude() -> Iterator[Claude]:
    """A private Claude home + fake model; skips when claude-agent-acp is not installed."""
    if not installed():
        pytest.skip(INSTALL_HINT)
    with tempfile.TemporaryDirectory(prefix="acpcl-") as directory, FakeAnthropic() as model:
        tmp = Path(directory)
        world = Claude(tmp, ClaudeHome(tmp / "cl"), model)
        try:
            yield world
        finally:
            leftovers = reap(world.home.marker)
        assert not leftovers, f"claude processes outlived the test (killed): {leftovers}"
        assert not model.unknown, f"the agent asked the fake API for more: {model.unknown}"
