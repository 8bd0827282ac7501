"""A fleet limited by memory (``max_agents_memory_mb``) and the short idle limit of
conversations nobody came back for (``unreturned_idle_timeout_s``)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import trio

from acp_proxy.procmem import read_procs, tree_pss_bytes
from acp_proxy.testing.proxy_process import fake_agent_command
from tests.real_agent.world import log_lines

from .conftest import client, config_args, eventually, proxy

pytestmark = pytest.mark.trio

_INIT = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": 1}}


def _fake_agent_mb() -> float:
    """What one initialized fake agent costs here (PSS, MiB): budgets are set from it, so
    the tests hold on any machine."""
    with subprocess.Popen(
        fake_agent_command(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(json.dumps(_INIT).encode() + b"\n")
            proc.stdin.flush()
            proc.stdout.readline()  # initialized: its memory is what an agent holds at rest
            return tree_pss_bytes([proc.pid], read_procs())[proc.pid] / (1 << 20)
        finally:
            proc.kill()


def _is_chunk(sid: str) -> Any:
    return lambda m: (
        m.get("method") == "session/update"
        and m["params"]["sessionId"] == sid
        and m["params"]["update"].get("sessionUpdate") == "agent_message_chunk"
    )


async def test_over_budget_the_least_recently_used_idle_agent_is_stopped(tmp: Path) -> None:
    """A budget of ~2.6 agents: a third conversation stops the least recently used idle
    agent (not the most recent), and that conversation comes back on its next turn."""
    budget = int(2.6 * _fake_agent_mb())
    extra = config_args(
        tmp, f"max_agents_memory_mb = {budget}\nwarm_spares = 0\nidle_timeout_s = 0\n"
    )
    async with proxy(tmp, "--state-dir", str(tmp / "state"), extra_args=extra) as p:
        async with client(p) as c:
            a = await c.new_session(str(tmp))
            b = await c.new_session(str(tmp))
            await c.prompt(b, "b first")
            await c.prompt(a, "a first")  # a is the most recently used
            assert log_lines(p, "session.evicted") == []
            await c.new_session(str(tmp))
            [evicted] = log_lines(p, "session.evicted")
            assert (evicted["session_id"], evicted["reason"]) == (b, "memory")
            warm = await c.prompt(a, "a again")
            assert warm.result["_meta"]["acp-proxy"]["agent"] == "warm"
            back = await c.prompt(b, "b again")
        assert back.result["_meta"]["acp-proxy"]["agent"] == "restored:resume"


async def test_a_new_agent_that_does_not_fit_is_refused_while_all_are_busy(tmp: Path) -> None:
    """Room for one agent, and it is in a turn: the next session/new waits, then fails with
    kind memory_budget; once the turn is over the idle agent makes room."""
    budget = int(1.5 * _fake_agent_mb())
    extra = config_args(
        tmp,
        f"max_agents_memory_mb = {budget}\nwarm_spares = 0\nagent_start_timeout_s = 1.5\n",
    )
    state = str(tmp / "state")
    async with proxy(tmp, "--state-dir", state, extra_args=extra) as p, client(p) as c:
        a = await c.new_session(str(tmp))
        turn = await c.start_prompt(a, 'fake:{"hang": true}')
        await c.wait_for(_is_chunk(a))
        refused = await c.request("session/new", {"cwd": str(tmp), "mcpServers": []})
        assert refused.error is not None
        assert refused.error["data"]["kind"] == "memory_budget"
        assert "max_agents_memory_mb" in refused.error["message"]
        assert log_lines(p, "session.evicted") == []  # never mid-turn
        await c.notify("session/cancel", {"sessionId": a})
        await c.wait_reply(turn)
        await c.new_session(str(tmp))
        [evicted] = log_lines(p, "session.evicted")
        assert (evicted["session_id"], evicted["reason"]) == (a, "memory")


async def test_spares_are_stopped_first_when_memory_is_short(tmp: Path) -> None:
    """Two spares start at once into a budget that holds one: the memory watch stops a
    spare (logged, counted in the status)."""
    budget = int(1.5 * _fake_agent_mb())
    extra = config_args(tmp, f"max_agents_memory_mb = {budget}\nwarm_spares = 2\n")
    async with proxy(tmp, extra_args=extra) as p, client(p) as c:
        await eventually(lambda: bool(log_lines(p, "agent.spare_stopped")), within_s=15)
        [over] = [e for e in log_lines(p, "agents.over_memory_budget") if e.get("stopped")]
        assert [s["role"] for s in over["stopped"]] == ["spare"]
        status = (await c.request("_acp-proxy/status", {})).unwrap()
        assert status["agents_stopped_for_memory"]["spare"] == 1
        assert status["agent_memory_limit_bytes"] == budget << 20
        with trio.fail_after(10):
            while [a["role"] for a in status["agents"]] != ["spare"]:
                await trio.sleep(0.1)
                status = (await c.request("_acp-proxy/status", {})).unwrap()


async def test_conversations_nobody_came_back_for_have_the_short_idle_limit(
    tmp: Path,
) -> None:
    """session/new + one turn + gone (acpx exec): evicted after unreturned_idle_timeout_s.
    A conversation whose client stays, or that a client loaded again, keeps the long one."""
    extra = config_args(
        tmp, "unreturned_idle_timeout_s = 0.5\nidle_timeout_s = 600\nwarm_spares = 0\n"
    )
    async with proxy(tmp, extra_args=extra) as p:
        async with client(p) as gone:
            exec_like = await gone.new_session(str(tmp))
            await gone.prompt(exec_like, "one shot")
        async with client(p) as c:
            returned = await c.new_session(str(tmp))
            await c.prompt(returned, "first")
        async with client(p) as again:
            loaded = await again.request(
                "session/load", {"sessionId": returned, "cwd": str(tmp), "mcpServers": []}
            )
            assert loaded.error is None
        async with client(p) as stays:
            attached = await stays.new_session(str(tmp))
            await stays.prompt(attached, "first")
            await eventually(lambda: bool(log_lines(p, "session.evicted")))
            await trio.sleep(1.0)  # two more limits: nobody else goes
            evicted = log_lines(p, "session.evicted")
        assert [(e["session_id"], e["reason"]) for e in evicted] == [(exec_like, "idle_unreturned")]
