"""The real ``opencode acp`` behind the real proxy, driven by a local fake model. Run on trio.

Every test gets its own private opencode home (HOME, XDG_* dirs, a work dir outside any git
repository) and its own fake model server. The home stays the same for the whole test, across
agent and proxy restarts, so opencode's own session database lets ``session/resume`` and
``session/load`` find the conversation in a new process.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from acp_proxy.testing.proxy_process import ProxyHandle, run_proxy
from tests.real_agent.scenarios import TEST_LIMIT_S
from tests.real_agent.world import (
    agent_pid,
    client,
    log_lines,
    proxy_meta,
    reap,
    text_of,
    wait_dead,
)

from .fake_model import FakeModel
from .harness import INSTALL_HINT, OpencodeHome, agent_command, installed, prime

__all__ = [
    "TEST_LIMIT_S",
    "Opencode",
    "agent_pid",
    "client",
    "log_lines",
    "proxy_meta",
    "text_of",
    "wait_dead",
]


@dataclass
class Opencode:
    """One test's opencode world: its private home, its fake model, its scratch dir."""

    tmp: Path
    home: OpencodeHome
    model: FakeModel

    @property
    def cwd(self) -> str:
        """The session cwd (outside any git repository)."""
        return str(self.home.work)

    def env(self, **kwargs: Any) -> dict[str, str]:
        """The proxy's (hence opencode's) environment; bash asks for permission."""
        kwargs.setdefault("permission", {"bash": "ask"})
        return self.home.env(self.model.base_url, **kwargs)

    def command(self) -> list[str]:
        return agent_command(self.home.work)

    @asynccontextmanager
    async def proxy(
        self, name: str = "proxy", *, db: str | None = None, extra_args: tuple[str, ...] = ()
    ) -> AsyncIterator[ProxyHandle]:
        """``acp-proxy serve`` with opencode as its agent command."""
        async with run_proxy(
            self.tmp / name,
            self.command(),
            extra_args=extra_args,
            env=self.env(),
            db=db or str(self.tmp / "sessions.db"),
        ) as handle:
            yield handle


@pytest.fixture(scope="session")
def primed_data() -> Iterator[Path]:
    """A data dir whose opencode database one ``opencode acp`` run has created (once per run).

    Each test's home starts from a copy: with a fresh data dir, the proxy's first two agents
    (warm spare + the one ``initialize`` spawns, see ``test_proxy_start_spawns_one_agent``)
    would both create the database at once and one may die with ``database is locked``.
    """
    if not installed():
        pytest.skip(INSTALL_HINT)
    with tempfile.TemporaryDirectory(prefix="acpoc-prime-") as directory, FakeModel() as model:
        home = OpencodeHome(Path(directory))
        try:
            prime(home, model.base_url)
        finally:
            leftovers = _reap(home.root)
        assert not leftovers, f"opencode processes outlived priming (killed): {leftovers}"
        yield home.root / "data"


@pytest.fixture
def fresh_opencode() -> Iterator[Opencode]:
    """Like ``opencode`` but with an empty data dir (opencode's very first start)."""
    yield from _world(None)


@pytest.fixture
def opencode(primed_data: Path) -> Iterator[Opencode]:
    """A private opencode home + fake model; skips when opencode is not installed."""
    yield from _world(primed_data)


def _world(data_template: Path | None) -> Iterator[Opencode]:
    if not installed():
        pytest.skip(INSTALL_HINT)
    with tempfile.TemporaryDirectory(prefix="acpoc-") as directory, FakeModel() as model:
        tmp = Path(directory)
        world = Opencode(tmp, OpencodeHome(tmp / "oc", data_template), model)
        try:
            yield world
        finally:
            leftovers = _reap(world.home.root)
        assert not leftovers, f"opencode processes outlived the test (killed): {leftovers}"
        # opencode ran no npm install (the pre-installed plugin made it a no-op): no network.
        assert not (world.home.root / "home" / ".npm").exists(), "opencode ran npm"


def _reap(root: Path) -> list[int]:
    """Wait for this test's opencode processes to end; SIGKILL (by pid) any that do not."""
    return reap(f"XDG_DATA_HOME={root / 'data'}")
