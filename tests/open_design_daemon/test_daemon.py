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
import signal
import statistics
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.real_agent.model_server import seen

from .world import DaemonConversation, DaemonWorld, RunResult

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


# A cancelled turn's user message stays in opencode's session (opencode stores it when the prompt
# starts, and a cancel does not remove it, through the proxy or not): the turn after a cancelled
# one sees it. The daemon keeps that message in its own transcript too.


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
    conv = DaemonConversation(world, project, conversation)
    results = [conv.turn(f"[[turn:t{k}]] hello number {k}") for k in (1, 2, 3)]
    for k, result in enumerate(results, 1):
        assert_ok(result, seen(k, f"t{k}"))
    # The daemon's own account: turn 1 captured the handle, turns 2 and 3 resumed it.
    assert [r.recovery()[-1] for r in results] == ["captured_not_resumed", "resumed", "resumed"]

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
        daemon_spawn_to_prompt_ms=[r.prompt_sent_ms for r in results],
        proxy_ttft_ms=[round(f["ttft_ms"]) for f in finished],
        vela_invocations=_invocations(world),  # before the probe below adds its own
        version_probe_s=_version_probe(world),
        agent_pid=agent,
        agents_spawned=len(world.proxy_events("agent.spawned")),
        session=session,
    )


def _invocations(world: DaemonWorld) -> dict[str, int]:
    """How often the daemon (or the proxy) ran each vela subcommand, by its first two words."""
    counts: dict[str, int] = {}
    for line in world.standin_log.read_text().splitlines():
        entry = json.loads(line)
        if "argv" in entry and "exit" not in entry:
            key = " ".join(entry["argv"][:2])
            counts[key] = counts.get(key, 0) + 1
    return counts


def _version_probe(world: DaemonWorld, runs: int = 5) -> dict[str, float]:
    """Median wall time of ``--version`` (the daemon's probe before every spawn), through the
    wrapper (bridge, then exec of the stand-in) and on the stand-in directly."""
    env = world.daemon_env()
    out = {}
    for name, binary in (("via_bridge", world.wrapper), ("direct", world.vela)):
        times = []
        for _ in range(runs):
            started = time.monotonic()
            subprocess.run([str(binary), "--version"], env=env, capture_output=True, check=True)
            times.append(time.monotonic() - started)
        out[name] = round(statistics.median(times), 3)
    return out


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
    conv = DaemonConversation(world, project, conversation)
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
    # opencode asks before its bash tool runs; the daemon answers allow_always, which the warm
    # agent then remembers: only the first turn asks (a per-turn process would ask every turn).
    asked = [
        len([d for d in r.agent("diagnostic") if d.get("name") == "acp_approval_request"])
        for r in results
    ]
    report(
        approval_requests=asked,
        approval_options=[
            d.get("optionId")
            for r in results
            for d in r.agent("diagnostic")
            if d.get("name") == "acp_approval_request"
        ],
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
    conv = DaemonConversation(world, project, conversation)
    first = conv.turn("[[turn:s1]] hello")
    assert_ok(first, seen(1, "s1"))
    failed = conv.turn("[[turn:s2]] [[standin-stderr:tier]] [[slow]] this one fails")
    assert failed.status == "failed", failed.summary()
    assert "AMR_TIER_UPGRADE_REQUIRED" in failed.error_codes(), failed.summary()
    after = conv.turn("[[turn:s3]] and again")
    assert_ok(after, seen(3, "s3"))  # s2's user message stayed in opencode's session
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
    conv = DaemonConversation(world, project, conversation)
    first = conv.turn("[[turn:f1]] hello")
    assert_ok(first, seen(1, "f1"))
    world.stop_proxy()
    down = [conv.turn(f"[[turn:f{k}]] the proxy is down") for k in (2, 3)]
    assert_ok(down[0], seen(1, "f2"))  # reseeded: one message holding the whole transcript
    assert_ok(down[1], seen(2, "f3"))  # resumed on the session the reseed opened
    assert "auto_reseeded" in down[0].recovery() and down[1].recovery()[-1] == "resumed"
    for result in down:
        assert "(--fallback)" in result.stderr(), result.stderr()
    direct = not_by_proxy(world)
    assert len(direct) == 3, direct  # f2's failed load, its reseed (a new spawn), f3
    world.start_proxy()
    back = conv.turn("[[turn:f4]] the proxy is back")
    assert_ok(back, seen(1, "f4"))  # vela's handle is unknown to the proxy: reseeded again
    assert "auto_reseeded" in back.recovery()
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
        runs=[r.summary() for r in (first, *down, back)],
    )


def test_a_session_the_proxy_lost_is_reseeded_by_the_daemon(
    world: DaemonWorld, report: Callable[..., None]
) -> None:
    """Item 7 on the real daemon: the conversation's session is deleted from the proxy
    (``acp-proxy sessions delete --socket``, which stops its agent too); the daemon's next
    ``session/load`` of its stored handle gets ``resume_failed``, and the daemon reseeds the
    same run with the whole transcript on a new session: the turn succeeds."""
    project, conversation = world.create_project()
    conv = DaemonConversation(world, project, conversation)
    assert_ok(conv.turn("[[turn:d1]] hello"), seen(1, "d1"))
    assert_ok(conv.turn("[[turn:d2]] again"), seen(2, "d2"))
    (created,) = world.proxy_events("session.created")
    deleted = world.sessions_cli("delete", created["session_id"], "--socket", world.socket)
    assert deleted.returncode == 0, deleted.stderr
    after = conv.turn("[[turn:d3]] after the delete")
    assert_ok(after, seen(1, "d3"))  # one message: the reseed's whole transcript
    assert "auto_reseeded" in after.recovery(), after.summary()  # the daemon's own account
    assert "d1" in world.model.last().user_texts()[-1]  # ... which holds the earlier turns
    sessions = world.proxy_events("session.created")
    assert len(sessions) == 2 and sessions[1]["session_id"] != created["session_id"], sessions
    after_next = conv.turn("[[turn:d4]] and on")
    assert_ok(after_next, seen(2, "d4"))  # the reseeded session is resumed from then on
    assert after_next.recovery()[-1] == "resumed"
    report(
        deleted=created["session_id"],
        reseeded=sessions[1]["session_id"],
        daemon_ttft_ms={"reseed": after.ttft_ms, "next": after_next.ttft_ms},
        runs=[after.summary(), after_next.summary()],
    )


def _turn_running(world: DaemonWorld, result: RunResult, limit_s: float = 60.0) -> None:
    """Wait until the daemon streams the run's first text (the turn runs in the agent)."""
    deadline = time.monotonic() + limit_s
    while not result.agent("text_delta"):
        assert time.monotonic() < deadline, f"no output in {limit_s} s: {result.summary()}"
        time.sleep(0.05)


def test_cancel_through_the_daemon_then_the_next_turn_works(
    world: DaemonWorld, report: Callable[..., None]
) -> None:
    """Item 2 on the real daemon: its cancel API (``session/cancel`` as a request, stdin
    closed, the group SIGTERMed if it lingers) ends a streaming turn; the proxy records it
    cancelled, and the next turn runs at once on the same agent (no -32010)."""
    project, conversation = world.create_project()
    conv = DaemonConversation(world, project, conversation)
    assert_ok(conv.turn("[[turn:c1]] hello"), seen(1, "c1"))
    running = conv.start("[[turn:c2]] [[slow]] a long answer")
    _turn_running(world, running)
    cancelled_at = time.monotonic()
    world.cancel_run(running)
    conv.finish(running)
    cancel_s = time.monotonic() - cancelled_at
    assert running.status == "canceled" or running.status == "cancelled", running.summary()
    nxt = conv.turn("[[turn:c3]] next")
    assert_ok(nxt, seen(3, "c3"))  # c2's user message stayed in opencode's session
    outcomes = [(f["turn"], f["outcome"]) for f in world.proxy_events("turn.finished")]
    assert outcomes == [(1, "completed"), (2, "cancelled"), (3, "completed")], outcomes
    assert len(world.proxy_events("session.created")) == 1
    report(cancel_to_end_s=round(cancel_s, 3), next=nxt.summary(), outcomes=outcomes)


def test_daemon_killed_mid_turn_then_the_next_turn_works(
    world: DaemonWorld, report: Callable[..., None]
) -> None:
    """Item 2: the daemon dies mid-turn (SIGKILL: nothing is sent, its bridge just loses its
    stdin); the proxy cancels the abandoned turn, and after a daemon restart the conversation's
    next turn runs on the same session (no -32010)."""
    project, conversation = world.create_project()
    conv = DaemonConversation(world, project, conversation)
    assert_ok(conv.turn("[[turn:k1]] hello"), seen(1, "k1"))
    running = conv.start("[[turn:k2]] [[slow]] a long answer")
    _turn_running(world, running)
    world.stop_daemon(signal.SIGKILL)
    deadline = time.monotonic() + 30
    while not any(f["turn"] == 2 for f in world.proxy_events("turn.finished")):
        assert time.monotonic() < deadline, "the abandoned turn did not end"
        time.sleep(0.1)
    world.start_daemon()
    conv.history.append(("assistant", ""))
    nxt = conv.turn("[[turn:k3]] after the restart")
    assert_ok(nxt, seen(3, "k3"))  # k2's user message stayed in opencode's session
    outcomes = [(f["turn"], f["outcome"]) for f in world.proxy_events("turn.finished")]
    assert outcomes[:2] == [(1, "completed"), (2, "cancelled")], outcomes
    assert outcomes[-1][1] == "completed", outcomes
    report(
        next=nxt.summary(), outcomes=outcomes, sessions=len(world.proxy_events("session.created"))
    )


def test_a_new_conversation_gets_a_warm_agent_and_sees_only_its_own_turns(
    world: DaemonWorld, report: Callable[..., None]
) -> None:
    """Item 4: a second conversation of the project starts on the proxy's spare (already
    started and initialized, not cold) and the two conversations, interleaved, each see only
    their own turns."""
    project, first_id = world.create_project()
    a = DaemonConversation(world, project, first_id)
    b = DaemonConversation(world, project, world.new_conversation(project))
    a1 = a.turn("[[turn:a1]] hello from a")
    b1 = b.turn("[[turn:b1]] hello from b")
    a2 = a.turn("[[turn:a2]] a again")
    b2 = b.turn("[[turn:b2]] b again")
    assert_ok(a1, seen(1, "a1"))
    assert_ok(b1, seen(1, "b1"))
    assert_ok(a2, seen(2, "a2"))
    assert_ok(b2, seen(2, "b2"))
    created = world.proxy_events("session.created")
    # a spare, or a spare whose session the proxy opened ahead ("preopened", on main)
    assert all(c["agent"] in ("spare", "preopened") for c in created), created
    assert created[0]["agent_pid"] != created[1]["agent_pid"]
    finished = world.proxy_events("turn.finished")
    report(
        daemon_ttft_ms={"a1": a1.ttft_ms, "b1": b1.ttft_ms, "a2": a2.ttft_ms, "b2": b2.ttft_ms},
        proxy_ttft_ms=[round(f["ttft_ms"]) for f in finished],
        agents=[(c["session_id"], c["agent"], c["agent_pid"]) for c in created],
        session_setup_ms=[round(c["setup_ms"]) for c in created],
        spawned=[(e["agent_pid"], e["timestamp"]) for e in world.proxy_events("agent.spawned")],
        created_at=[c["timestamp"] for c in created],
    )


def test_workspace_scope_is_exact_per_agent_and_known_workspaces_stay_warm(
    world: DaemonWorld, report: Callable[..., None]
) -> None:
    """Items 4 and 5 with the daemon's billing scope: projects bound to two Personal
    Workspaces (the web client's identity headers) make the daemon set
    ``OPEN_DESIGN_WORKSPACE_ID`` on every run. Each conversation's agent process starts with its
    own project's workspace (``--per-process-env``: never another's), later turns stay on it,
    and a new conversation in a workspace seen before starts on a warm spare of that workspace."""
    p1, c1 = world.create_project("in w1")
    p2, c2 = world.create_project("in w2")
    a = DaemonConversation(world, p1, c1, "ws-one")
    b = DaemonConversation(world, p2, c2, "ws-two")
    a1 = a.turn("[[turn:wa1]] hello")
    b1 = b.turn("[[turn:wb1]] hello")
    a2 = a.turn("[[turn:wa2]] again")
    c = DaemonConversation(world, p1, world.new_conversation(p1), "ws-one")
    time.sleep(3)  # the warm spare for ws-one, started when a1 took its agent, is ready
    c1_run = c.turn("[[turn:wc1]] a new conversation in ws-one")
    for result, text in ((a1, seen(1, "wa1")), (b1, seen(1, "wb1")), (a2, seen(2, "wa2"))):
        assert_ok(result, text)
    assert_ok(c1_run, seen(1, "wc1"))
    workspace_of = {e["pid"]: e.get("workspace") for e in by_proxy(world)}
    created = world.proxy_events("session.created")
    assert [workspace_of[s["agent_pid"]] for s in created] == ["ws-one", "ws-two", "ws-one"], (
        created,
        workspace_of,
    )
    finished = world.proxy_events("turn.finished")
    assert finished[2]["agent"] == "warm"  # a2 on a1's agent, no restart
    report(
        sessions=[
            (s["agent"], s["agent_pid"], workspace_of[s["agent_pid"]], round(s["setup_ms"]))
            for s in created
        ],
        turns=[(f["turn"], f["agent"], round(f["ttft_ms"])) for f in finished],
        daemon_ttft_ms={"a1": a1.ttft_ms, "b1": b1.ttft_ms, "a2": a2.ttft_ms, "c1": c1_run.ttft_ms},
        agents_spawned=[
            (e["agent_pid"], workspace_of.get(e["agent_pid"]))
            for e in world.proxy_events("agent.spawned")
        ],
    )


def test_time_to_first_token_direct_against_through_the_proxy(
    world: DaemonWorld, report: Callable[..., None]
) -> None:
    """The daemon's own ``ttftMs``, turn by turn, for one conversation through the proxy and
    one with the proxy stopped (``--fallback``: the daemon's per-turn process, as without the
    proxy, plus the bridge's exec). Continued turns through the proxy skip the agent's start,
    ``initialize`` and session load; the direct ones pay them every turn."""
    turns = 4
    project, first = world.create_project()
    warm = DaemonConversation(world, project, first)
    via_proxy = [warm.turn(f"[[turn:v{k}]] hello") for k in range(1, turns + 1)]
    world.stop_proxy()
    direct_conv = DaemonConversation(world, project, world.new_conversation(project))
    direct = [direct_conv.turn(f"[[turn:x{k}]] hello") for k in range(1, turns + 1)]
    for k, (v, x) in enumerate(zip(via_proxy, direct, strict=True), 1):
        assert_ok(v, seen(k, f"v{k}"))
        assert_ok(x, seen(k, f"x{k}"))
        assert "(--fallback)" in x.stderr() and "(--fallback)" not in v.stderr()
    proxy_later = [r.ttft_ms or 0 for r in via_proxy[1:]]
    direct_later = [r.ttft_ms or 0 for r in direct[1:]]
    assert statistics.median(proxy_later) < statistics.median(direct_later)
    report(
        daemon_ttft_ms={
            "via_proxy": [r.ttft_ms for r in via_proxy],
            "direct": [r.ttft_ms for r in direct],
        },
        daemon_spawn_to_prompt_ms={
            "via_proxy": [r.prompt_sent_ms for r in via_proxy],
            "direct": [r.prompt_sent_ms for r in direct],
        },
        median_later_turns_ms={
            "via_proxy": statistics.median(proxy_later),
            "direct": statistics.median(direct_later),
        },
    )


def test_a_second_run_while_one_streams_gets_only_its_own_output(
    world: DaemonWorld, report: Callable[..., None]
) -> None:
    """The daemon accepts a second run on a conversation whose run is still streaming (its API
    does not refuse it). The proxy serialises the two turns (the second waits, no -32010), and
    the second run's bridge, attached by ``session/load`` while the first turn streams, must not
    get that turn's updates: the daemon takes every update before its prompt as its own run's
    output."""
    project, conversation = world.create_project()
    conv = DaemonConversation(world, project, conversation)
    assert_ok(conv.turn("[[turn:q1]] hello"), seen(1, "q1"))
    first = conv.start("[[turn:q2]] [[slow]] a long answer")
    _turn_running(world, first)
    second = conv.start("[[turn:q3]] while q2 streams")
    conv.finish(first)
    conv.finish(second)
    assert_ok(first, seen(2, "q2") + " and some more words to stream")
    assert_ok(second, seen(3, "q3"))
    outcomes = [(f["turn"], f["outcome"]) for f in world.proxy_events("turn.finished")]
    assert outcomes == [(1, "completed"), (2, "completed"), (3, "completed")], outcomes
    report(first=first.summary(), second=second.summary(), outcomes=outcomes)
