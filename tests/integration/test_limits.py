"""Idle eviction and the live-agent cap: agents go, conversations stay."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import client, eventually, proxy, summary

pytestmark = pytest.mark.trio


def _config(tmp: Path, text: str) -> tuple[str, str]:
    path = tmp / "proxy.toml"
    path.write_text(text)
    return ("--config", str(path))


def _events(p, name: str) -> list[dict]:
    return [e for e in p.logs() if e["event"] == name]


async def test_idle_agent_is_evicted_and_restored_on_next_use(tmp: Path) -> None:
    """After idle_timeout_s without activity the agent stops; the next prompt restores it."""
    extra = _config(tmp, "idle_timeout_s = 0.4\nwarm_spares = 0\n")
    async with proxy(tmp, "--state-dir", str(tmp / "state"), extra_args=extra) as p:
        async with client(p) as c:
            sid = await c.new_session(str(tmp))
            await c.prompt(sid, "one")
            await eventually(lambda: bool(_events(p, "session.evicted")))
            [evicted] = _events(p, "session.evicted")
            assert evicted["reason"] == "idle"
            assert evicted["idle_s"] >= 0.4
            reply = await c.prompt(sid, "two")
        assert "holds 1 earlier turns" in summary(reply.updates())
        assert reply.result["_meta"]["acp-proxy"]["agent"] == "restored:resume"


async def test_a_running_turn_is_never_evicted(tmp: Path) -> None:
    """A turn five times longer than the idle timeout runs to its end; the agent is evicted
    only once the turn is over (so the reaper was running all along)."""
    extra = _config(tmp, "idle_timeout_s = 0.2\nwarm_spares = 0\n")
    async with proxy(tmp, extra_args=extra) as p, client(p) as c:
        sid = await c.new_session(str(tmp))
        reply = await c.prompt(sid, 'fake:{"first_token_delay": 1.0}')
        assert reply.result["stopReason"] == "end_turn"
        await eventually(lambda: bool(_events(p, "session.evicted")))
        [finished] = _events(p, "turn.finished")
        [evicted] = _events(p, "session.evicted")
        assert evicted["timestamp"] > finished["timestamp"]
        assert evicted["idle_s"] >= 0.2


async def test_cap_evicts_the_least_recently_used_idle_agent(tmp: Path) -> None:
    """With max_live_agents = 2, a third conversation stops the least recently used agent."""
    extra = _config(tmp, "max_live_agents = 2\nwarm_spares = 0\nidle_timeout_s = 0\n")
    async with proxy(tmp, "--state-dir", str(tmp / "state"), extra_args=extra) as p:
        async with client(p) as c:
            a = await c.new_session(str(tmp))
            b = await c.new_session(str(tmp))
            await c.prompt(b, "b first")
            await c.prompt(a, "a first")  # a is now the most recently used
            await c.new_session(str(tmp))  # makes room by stopping b
            [evicted] = _events(p, "session.evicted")
            assert evicted["session_id"] == b
            assert evicted["reason"] == "max_live_agents"
            warm = await c.prompt(a, "a again")
            assert warm.result["_meta"]["acp-proxy"]["agent"] == "warm"
            back = await c.prompt(b, "b again")
        assert "holds 1 earlier turns" in summary(back.updates())
        assert back.result["_meta"]["acp-proxy"]["agent"] == "restored:resume"
