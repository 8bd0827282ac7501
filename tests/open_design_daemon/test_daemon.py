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
    """``agent run`` starts of a proxy (any of the test's proxies)."""
    return [e for e in standin_runs(world) if e["ppid"] in world.proxy_pids]


def not_by_proxy(world: DaemonWorld) -> list[dict[str, Any]]:
    """``agent run`` starts of anything else: the bridge's ``--fallback`` exec."""
    return [e for e in standin_runs(world) if e["ppid"] not in world.proxy_pids]


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


def test_agent_stderr_tier_failure_reaches_the_daemons_classifier(
    world: DaemonWorld, report: Callable[..., None]
) -> None:
    """Item 3 on the real daemon: a plan/tier failure line the agent writes to stderr during a
    turn (the shape vela gives an upstream retry status) comes out of the bridge's stderr while
    the turn runs, and the daemon fails the run with ``AMR_TIER_UPGRADE_REQUIRED``. The next
    turn of the conversation then works."""
    project, conversation = world.create_project()
    conv = Conversation_(world, project, conversation)
    first = conv.turn("[[turn:s1]] hello")
    assert_ok(first, seen(1, "s1"))
    failed = conv.turn("[[turn:s2]] [[standin-stderr:tier]] [[slow]] this one fails")
    assert failed.status == "failed", failed.summary()
    assert "AMR_TIER_UPGRADE_REQUIRED" in failed.error_codes(), failed.summary()
    after = conv.turn("[[turn:s3]] and again")
    assert after.status == "succeeded", after.summary()
    assert not not_by_proxy(world), "a run went around the proxy"
    report(
        failed=failed.summary(),
        after=after.summary(),
        proxy_turns=[
            (f["turn"], f["outcome"], f.get("agent")) for f in world.proxy_events("turn.finished")
        ],
        sessions_created=len(world.proxy_events("session.created")),
        errors=failed.errors,
    )


def test_proxy_down_runs_fall_back_to_the_real_binary(
    world: DaemonWorld, report: Callable[..., None]
) -> None:
    """Item 6 on the real daemon: with the proxy stopped, the bridge execs the real binary
    (``--fallback``) and the conversation goes on. The daemon's stored handle is the proxy's
    session id, which vela does not know: its load fails with ``resume_failed``, the daemon
    reseeds the turn with the whole transcript on a new session, and the next turn resumes
    that one. With the proxy back, the handle (now vela's own) is unknown to the proxy: same
    reseed, through the proxy again."""
    project, conversation = world.create_project()
    conv = Conversation_(world, project, conversation)
    first = conv.turn("[[turn:f1]] hello")
    assert_ok(first, seen(1, "f1"))
    world.stop_proxy()
    down = [conv.turn(f"[[turn:f{k}]] the proxy is down") for k in (2, 3)]
    assert_ok(down[0], seen(1, "f2"))  # reseeded: one message holding the whole transcript
    assert_ok(down[1], seen(2, "f3"))  # resumed on the session the reseed opened
    for result in down:
        assert "(--fallback)" in result.stderr(), result.stderr()
    direct = not_by_proxy(world)
    assert len(direct) == 3, direct  # f2's failed load, its reseed (a new spawn), f3
    world.start_proxy()
    back = conv.turn("[[turn:f4]] the proxy is back")
    assert_ok(back, seen(1, "f4"))  # vela's handle is unknown to the proxy: reseeded again
    assert "(--fallback)" not in back.stderr()
    assert len(not_by_proxy(world)) == 3 and by_proxy(world)
    assert len(world.proxy_events("session.created")) == 2  # f1's, then f4's reseed
    report(
        daemon_ttft_ms={
            "via_proxy": first.ttft_ms,
            "fallback_reseed": down[0].ttft_ms,
            "fallback_resumed": down[1].ttft_ms,
            "proxy_back_reseed": back.ttft_ms,
        },
        texts=[r.text for r in (first, *down, back)],
    )
