"""The real ``opencode acp`` behind the real proxy, driven by a local fake model. Run on trio.

Every test gets its own private opencode home (HOME, XDG_* dirs, a work dir outside any git
repository) and its own fake model server. The home stays the same for the whole test, across
agent and proxy restarts, so opencode's own session database lets ``session/resume`` and
``session/load`` find the conversation in a new process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from acp_proxy.testing.client import AcpClient, Reply
from acp_proxy.testing.proxy_process import ProxyHandle, pid_exists, run_proxy

from .fake_model import FakeModel
from .harness import INSTALL_HINT, OpencodeHome, agent_command, installed, prime

#: bound on any single test's body: opencode starts in ~1.5 s and a cold turn takes ~3 s on an idle
#: 2-core machine, but 5-10x that when the machine is loaded (e.g. other suites in parallel)
TEST_LIMIT_S = 150.0


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


def _processes_of(root: Path) -> list[int]:
    """Pids of processes whose environment names this test's private opencode home."""
    marker = f"XDG_DATA_HOME={root / 'data'}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0"):
            pids.append(int(entry))
    return pids


def _reap(root: Path, grace_s: float = 10.0) -> list[int]:
    """Wait for this test's opencode processes to end; SIGKILL (by pid) any that do not."""
    deadline = time.monotonic() + grace_s
    while (pids := _processes_of(root)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids


# -- helpers for the tests --------------------------------------------------------------------


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
