"""What agents get from the proxy: not its configuration, not another client's credentials."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from acp_proxy.agent_env import agent_environment
from acp_proxy.testing.client import AcpClient

from .conftest import client, proxy


async def _state(c: AcpClient, sid: str) -> dict[str, Any]:
    result: dict[str, Any] = (await c.request("_fake/state", {"sessionId": sid})).unwrap()
    return result


def test_environment_rules() -> None:
    """ACP_PROXY_* and a store URL carrying a password never pass; the allowlist takes names
    and prefixes; forwarded per-process values are added last."""
    base = {
        "PATH": "/bin",
        "ACP_PROXY_DB": "/x.db",
        "STORE": "postgresql://acp:s3cret@db/acp",
        "LC_ALL": "C",
        "API_KEY": "k",
    }
    url = "postgresql://acp:s3cret@db/acp"
    assert agent_environment(base, store_url=url) == {"PATH": "/bin", "LC_ALL": "C", "API_KEY": "k"}
    assert agent_environment(base, store_url="/x.db") == {
        "PATH": "/bin", "STORE": url, "LC_ALL": "C", "API_KEY": "k",
    }  # fmt: skip
    assert agent_environment(base, allow=["PATH", "LC_*"], extra={"TRACE": "1"}) == {
        "PATH": "/bin", "LC_ALL": "C", "TRACE": "1",
    }  # fmt: skip


@pytest.mark.trio
async def test_agents_never_see_the_proxys_own_configuration(tmp: Path) -> None:
    """The proxy's ACP_PROXY_* variables stay with it; everything else is inherited."""
    env = {**os.environ, "ACP_PROXY_SECRET_TOKEN": "t0p", "FAKE_INHERITED": "yes"}
    async with proxy(tmp, env=env) as p, client(p) as c:
        sid = await c.new_session(str(tmp))
        state = await _state(c, sid)
        assert "ACP_PROXY_SECRET_TOKEN" not in state["envNames"]
        assert state["env"]["FAKE_INHERITED"] == "yes"
        assert "PATH" in state["envNames"]


@pytest.mark.trio
async def test_agent_env_allow_is_a_strict_allowlist(tmp: Path) -> None:
    """With agent_env_allow, only the listed names and prefixes reach the agent."""
    config = tmp / "proxy.toml"
    config.write_text('agent_env_allow = ["PATH", "FAKE_OK*"]\n')
    env = {**os.environ, "FAKE_OK_1": "a", "FAKE_NOT": "b", "SOME_API_KEY": "secret"}
    async with proxy(tmp, extra_args=("--config", str(config)), env=env) as p, client(p) as c:
        sid = await c.new_session(str(tmp))
        names = set((await _state(c, sid))["envNames"])
        assert {"PATH", "FAKE_OK_1"} <= names
        assert not names & {"FAKE_NOT", "SOME_API_KEY", "HOME"}


@pytest.mark.trio
async def test_authenticate_params_reach_only_the_clients_own_agents(tmp: Path) -> None:
    """Client A authenticates with a key: A's sessions' agents got it (also after a restore),
    while client B's session, created next from the spares, never sees it (before: replayed
    to every agent spawned later)."""
    key = {"methodId": "api-key", "_meta": {"key": "sk-A"}}
    async with proxy(tmp) as p, client(p) as a, client(p) as b:
        (await a.request("authenticate", key)).unwrap()
        sid_a = await a.new_session(str(tmp))
        sid_b = await b.new_session(str(tmp))
        sid_b2 = await b.new_session(str(tmp))
        assert (await _state(a, sid_a))["authenticated"] == [key]
        assert (await _state(b, sid_b))["authenticated"] == []
        assert (await _state(b, sid_b2))["authenticated"] == []
        # A restore for A (after close) authenticates the new agent with A's params again.
        (await a.request("session/close", {"sessionId": sid_a})).unwrap()
        (await a.request("session/resume", {"sessionId": sid_a, "cwd": str(tmp)})).unwrap()
        assert (await _state(a, sid_a))["authenticated"] == [key]
        # And B restoring its own session does not.
        (await b.request("session/close", {"sessionId": sid_b})).unwrap()
        (await b.request("session/resume", {"sessionId": sid_b, "cwd": str(tmp)})).unwrap()
        assert (await _state(b, sid_b))["authenticated"] == []


@pytest.mark.trio
async def test_refused_authenticate_is_answered_and_the_agent_is_not_reused(tmp: Path) -> None:
    """The agent's refusal reaches the client; the next session/new still works."""
    async with proxy(tmp) as p, client(p) as c:
        reply = await c.request("authenticate", {"methodId": "reject"})
        assert reply.error is not None and reply.error["message"] == "authentication refused"
        sid = await c.new_session(str(tmp))
        assert (await _state(c, sid))["authenticated"] == []
