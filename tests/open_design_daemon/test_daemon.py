"""The real open-design daemon (``startServer()``, unmodified) → bridge → proxy → real opencode.

Each test drives the daemon through its HTTP API only, as its web client does, with the README's
set-up: ``acp-proxy serve --client-profile open-design --per-process-env
OPEN_DESIGN_WORKSPACE_ID`` and the one-line wrapper as ``VELA_BIN``. ``vela`` itself is a
stand-in (``vela_standin.py``) that runs the real ``opencode acp``. Numbers (the daemon's own
``ttftMs`` per turn, agent pids) go to the ``report`` fixture.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest

from tests.real_agent.model_server import seen

from .world import Conversation_, DaemonWorld, RunResult

pytestmark = [pytest.mark.open_design_daemon, pytest.mark.timeout(600)]


def standin_runs(world: DaemonWorld) -> list[dict[str, Any]]:
    """The stand-in's ``agent run`` starts (not their exit lines), oldest first."""
    lines = [json.loads(x) for x in world.standin_log.read_text().splitlines() if x.strip()]
    return [e for e in lines if e.get("argv", [])[:2] == ["agent", "run"] and "exit" not in e]


def by_proxy(world: DaemonWorld) -> list[dict[str, Any]]:
    assert world.proxy_process is not None
    return [e for e in standin_runs(world) if e["ppid"] == world.proxy_process.pid]


def not_by_proxy(world: DaemonWorld) -> list[dict[str, Any]]:
    assert world.proxy_process is not None
    return [e for e in standin_runs(world) if e["ppid"] != world.proxy_process.pid]


def assert_ok(result: RunResult, text: str) -> None:
    assert result.status == "succeeded", result.summary()
    assert result.text == text, result.summary()


def test_turns_of_one_conversation_reuse_one_warm_agent(
    world: DaemonWorld, report: Callable[..., None]
) -> None:
    """Turn 1 opens a session; turns 2 and 3 take the daemon's resume path (``session/load``
    of its stored ``openCodeSessionId``): the proxy attaches them to the same session on the
    same agent without replay, and opencode sees the whole conversation."""
    project, conversation = world.create_project()
    conv = Conversation_(world, project, conversation)
    results = [conv.turn(f"[[turn:t{k}]] hello number {k}") for k in (1, 2, 3)]
    for k, result in enumerate(results, 1):
        assert_ok(result, seen(k, f"t{k}"))

    created = world.proxy_events("session.created")
    assert len(created) == 1, created
    session, agent = created[0]["session_id"], created[0]["agent_pid"]
    attached = world.proxy_events("session.attached")
    assert [(a["session_id"], a["replay"]) for a in attached] == [(session, False)] * 2
    finished = world.proxy_events("turn.finished")
    assert [f["session_id"] for f in finished] == [session] * 3
    assert [f["outcome"] for f in finished] == ["completed"] * 3
    status = world.proxy_status()
    agents = {(a["pid"], a["role"], a["sessions"]) for a in status["agents"]}
    assert (agent, "session", 1) in agents, status
    assert not not_by_proxy(world), "a run went around the proxy"
    # The daemon's own time to first token: turn 1 pays the agent's session set-up.
    ttft = [r.ttft_ms for r in results]
    assert all(t is not None for t in ttft)
    assert max(ttft[1:]) < ttft[0], ttft  # type: ignore[operator]
    report(
        daemon_ttft_ms=ttft,
        proxy_ttft_ms=[round(f["ttft_ms"]) for f in finished],
        agent_pid=agent,
        agents_spawned=len(world.proxy_events("agent.spawned")),
        session=session,
    )


#: run from opencode's bash tool: the daemon's own tool wrapper (``od tools connectors list``
#: calls the daemon's /api/tools/* with ``OD_TOOL_TOKEN``, which the daemon mints per run and
#: revokes when that run's child exits), the same with a made-up token (the control: the
#: daemon does check it), then the run id the tool process sees
_LIST = '"$OD_NODE_BIN" "$OD_BIN" tools connectors list --format compact >/dev/null 2>>tool-err.txt'
TOOL_COMMAND = (
    f"{_LIST}; ok=$?; OD_TOOL_TOKEN=made-up {_LIST}; bad=$?;"
    ' echo "exit=$ok control=$bad run=$OPEN_DESIGN_RUN_ID"'
)


def test_tool_calls_see_their_own_runs_values(
    world: DaemonWorld, report: Callable[..., None]
) -> None:
    """Item 1 on the real daemon: every turn's bash tool call, on the one warm agent, runs the
    daemon's own ``"$OD_NODE_BIN" "$OD_BIN" tools …`` wrapper with that turn's token (the
    previous turn's is revoked by then) and sees that turn's ``OPEN_DESIGN_RUN_ID``."""
    project, conversation = world.create_project()
    conv = Conversation_(world, project, conversation)
    results = [
        conv.turn(f"[[turn:b{k}]] check the tools [[bash:{TOOL_COMMAND}]]") for k in (1, 2, 3)
    ]
    for result in results:
        assert result.status == "succeeded", result.summary()
        assert re.fullmatch(rf"Tool said: exit=0 control=[1-9]\d* run={result.run_id}", result.text)
    created = world.proxy_events("session.created")
    assert len(created) == 1, created
    assert len(world.proxy_events("session.attached")) == 2
    assert not not_by_proxy(world), "a run went around the proxy"
    report(
        runs=[r.run_id for r in results],
        texts=[r.text for r in results],
        daemon_ttft_ms=[r.ttft_ms for r in results],
        agent_pid=created[0]["agent_pid"],
    )
