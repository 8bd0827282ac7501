"""The open-design daemon's exact contract, emulated: a new bridge process per turn."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import anyio
import pytest
import trio
from anyio.abc import Process

from acp_proxy.testing.client import AcpClient
from acp_proxy.testing.proxy_process import ProxyHandle, pid_exists

from .conftest import client, db_rows, eventually, proxy, summary

pytestmark = pytest.mark.trio

ENTRY = ["agent", "run", "--runtime", "opencode"]


def bridge_command(p: ProxyHandle, real_binary: str, *args: str) -> list[str]:
    """What an operator installs as VELA_BIN (the one-line wrapper of the README)."""
    return [
        sys.executable, "-m", "acp_proxy", "attach", "--socket", p.socket,
        "--real-binary", real_binary, "--acp-argv", " ".join(ENTRY),
        "--forward-env", "OPEN_DESIGN_RUN_ID,OPEN_DESIGN_WORKSPACE_ID",
        "--forward-env-prefix", "OD_,VELA_", "--", *args,
    ]  # fmt: skip


@asynccontextmanager
async def _bridge(
    p: ProxyHandle, real: str, env: dict[str, str], stderr: Path | None = None
) -> AsyncIterator[tuple[Process, AcpClient]]:
    """The daemon spawning its agent binary (the bridge) detached, in its own process group,
    and initializing it as open-design does (``stderr``: a file that gets the bridge's
    stderr). Whatever of the group is left at the end is killed."""
    errors = stderr.open("ab") if stderr is not None else None
    process = await anyio.open_process(
        bridge_command(p, real, *ENTRY),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=errors if errors is not None else subprocess.DEVNULL,
        env={**os.environ, **env},
        start_new_session=True,
    )
    assert process.stdin is not None and process.stdout is not None
    c = AcpClient(process.stdout, process.stdin)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(c._read)
            await c.request(
                "initialize",
                {
                    "protocolVersion": 1,
                    "clientCapabilities": {"terminal": False},
                    "clientInfo": {"name": "open-design", "version": "runtime-adapter"},
                },
            )
            yield process, c
            tg.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            with trio.move_on_after(5):
                await process.wait()
            if process.returncode is None:
                os.killpg(process.pid, signal.SIGKILL)
            await process.aclose()
            if errors is not None:
                errors.close()


@asynccontextmanager
async def daemon_turn(
    p: ProxyHandle, real: str, env: dict[str, str], stderr: Path | None = None
) -> AsyncIterator[AcpClient]:
    """One run of the daemon: spawn the bridge, talk ACP, then close stdin and SIGTERM the
    whole process group 500 ms later, as open-design does after every turn."""
    async with _bridge(p, real, env, stderr) as (process, c):
        yield c
        assert process.stdin is not None
        await process.stdin.aclose()
        await trio.sleep(0.5)
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)


async def run_turn(c: AcpClient, handle: str | None, cwd: str, text: str) -> tuple[str, Any]:
    """First turn: session/new; later turns: session/load without mcpServers. Then model and
    prompt. Returns the handle and the prompt reply."""
    if handle is None:
        result = (await c.request("session/new", {"cwd": cwd, "mcpServers": []})).unwrap()
        assert result["openCodeSessionId"] == result["sessionId"]
        handle = result["openCodeSessionId"]
    else:
        loaded = await c.request("session/load", {"sessionId": handle, "cwd": cwd})
        result = loaded.unwrap("session/load")
        assert result["sessionId"] == handle and result["openCodeSessionId"] == handle
        assert loaded.notifications == []  # no replay: the daemon would render it as new output
    model = await c.request(
        "session/set_config_option",
        {"sessionId": handle, "configId": "model", "value": "fake/echo-2"},
    )
    assert model.error is None
    reply = await c.prompt(handle, text)
    return handle, reply


@pytest.fixture
def real_binary(tmp: Path) -> str:
    """Stands in for the closed-source vela binary: prints its argv, exits 7."""
    path = tmp / "vela"
    path.write_text('#!/bin/sh\necho "vela $*"\nexit 7\n')
    path.chmod(0o755)
    return str(path)


async def test_ten_turns_one_agent_no_replay(tmp: Path, real_binary: str) -> None:
    """Ten daemon runs, each a new bridge killed after its turn, reach one agent process."""
    env = {"OPEN_DESIGN_WORKSPACE_ID": "ws1"}
    extra = ("--client-profile", "open-design", "--per-process-env", "OPEN_DESIGN_WORKSPACE_ID")
    async with proxy(tmp, "--state-dir", str(tmp / "state"), extra_args=extra) as p:
        handle = None
        pids = set()
        for turn in range(10):
            run_env = {**env, "OPEN_DESIGN_RUN_ID": f"run{turn}"}
            async with daemon_turn(p, real_binary, run_env) as c:
                handle, reply = await run_turn(c, handle, str(tmp), f"turn {turn}")
                assert reply.error is None, reply.error
                assert reply.result["usage"]["inputTokens"] > 0  # the agent's usage, as sent
                assert f"holds {turn} earlier turns" in summary(reply.updates())
                state = (await c.request("_fake/state", {"sessionId": handle})).unwrap()
                pids.add(state["pid"])
                assert state["initializeCount"] == 1
                meta = reply.result["_meta"]["acp-proxy"]
                assert meta["agent"] == ("cold" if turn == 0 else "warm")
        assert len(pids) == 1


async def test_cancel_as_a_request_is_answered(tmp: Path, real_binary: str) -> None:
    """``session/cancel`` sent with an id is honoured and answered; the prompt ends cancelled."""
    profile = ("--client-profile", "open-design")
    async with proxy(tmp, extra_args=profile) as p, daemon_turn(p, real_binary, {}) as c:
        new = await c.request("session/new", {"cwd": str(tmp), "mcpServers": []})
        handle = new.unwrap()["sessionId"]
        ident = await c.start_prompt(handle, 'fake:{"hang": true}')
        await c.wait_for(lambda m: m.get("method") == "session/update")
        cancel = await c.request("session/cancel", {"sessionId": handle})
        assert cancel.error is None
        with trio.fail_after(5):
            assert (await c.wait_reply(ident)).result["stopReason"] == "cancelled"


async def test_lost_session_is_resume_failed(tmp: Path, real_binary: str) -> None:
    """A session whose state is gone answers the daemon's resume_failed error."""
    async with proxy(tmp, extra_args=("--client-profile", "open-design")) as p:
        async with daemon_turn(p, real_binary, {}) as c:
            handle, _ = await run_turn(c, None, str(tmp), "hello")
            assert (await c.request("session/delete", {"sessionId": handle})).error is None
        async with daemon_turn(p, real_binary, {}) as c:
            for method in ("session/load", "session/prompt"):
                reply = await c.request(
                    method, {"sessionId": handle, "cwd": str(tmp), "prompt": []}
                )
                assert reply.error["code"] == -32600, method
                assert reply.error["message"] == "the resumed session could not be loaded"
                assert reply.error["data"]["kind"] == "resume_failed"
                assert reply.error["data"]["retryable"] is True


async def test_per_process_variable_change_restarts_the_agent(tmp: Path, real_binary: str) -> None:
    """A new workspace id restarts the agent (restored, context kept); a new run id alone does
    not, since only the workspace is declared per-process."""
    extra = ("--client-profile", "open-design", "--per-process-env", "OPEN_DESIGN_WORKSPACE_ID")
    async with proxy(tmp, "--state-dir", str(tmp / "state"), extra_args=extra) as p:
        handle = None
        seen = []
        for turn, workspace in enumerate(["ws1", "ws1", "ws2", "ws2"]):
            env = {"OPEN_DESIGN_WORKSPACE_ID": workspace, "OPEN_DESIGN_RUN_ID": f"r{turn}"}
            async with daemon_turn(p, real_binary, env) as c:
                handle, reply = await run_turn(c, handle, str(tmp), f"turn {turn}")
                assert f"holds {turn} earlier turns" in summary(reply.updates())
                state = (await c.request("_fake/state", {"sessionId": handle})).unwrap()
                seen.append(
                    (
                        state["pid"],
                        state["env"].get("OPEN_DESIGN_WORKSPACE_ID"),
                        reply.result["_meta"]["acp-proxy"]["agent"],
                    )
                )
        assert [s[1] for s in seen] == ["ws1", "ws1", "ws2", "ws2"]
        assert [s[2] for s in seen] == ["cold", "warm", "restored:resume", "warm"]
        assert seen[0][0] == seen[1][0] != seen[2][0] == seen[3][0]


async def test_non_acp_invocations_go_to_the_real_binary(tmp: Path, real_binary: str) -> None:
    """``--version``, ``model list …`` run the real binary: same argv, output and exit code."""
    async with proxy(tmp) as p:
        for args in (["--version"], ["model", "list", "--all", "--format", "json"]):
            result = await trio.run_process(
                bridge_command(p, real_binary, *args), capture_stdout=True, check=False
            )
            assert result.returncode == 7
            assert result.stdout == f"vela {' '.join(args)}\n".encode()


def _turn_outcomes(p: ProxyHandle, handle: str) -> list[str]:
    rows = db_rows(p.db, "SELECT outcome FROM turns WHERE session_id = ? ORDER BY seq", handle)
    return [row[0] for row in rows]


async def test_load_that_cannot_attach_is_resume_failed(tmp: Path, real_binary: str) -> None:
    """A load in another cwd (any load error) answers resume_failed, so the daemon reseeds
    instead of failing every later turn with a handle it keeps; a standard client still gets
    -32602."""
    other = tmp / "elsewhere"
    other.mkdir()
    async with proxy(tmp, extra_args=("--client-profile", "open-design")) as p:
        async with daemon_turn(p, real_binary, {}) as c:
            handle, _ = await run_turn(c, None, str(tmp), "hello")
        async with daemon_turn(p, real_binary, {}) as c:
            reply = await c.request("session/load", {"sessionId": handle, "cwd": str(other)})
            assert reply.error is not None
            assert reply.error["code"] == -32600
            assert reply.error["data"]["kind"] == "resume_failed"
            assert reply.error["data"]["phase"] == "session_load"
            assert str(other) in reply.error["data"]["reason"]
    async with proxy(tmp) as p, client(p) as c:
        sid = await c.new_session(str(tmp))
        reply = await c.request("session/load", {"sessionId": sid, "cwd": str(other)})
        assert reply.error is not None and reply.error["code"] == -32602


async def _kill_bridge_mid_turn(p: ProxyHandle, real: str, handle: str | None) -> str:
    """A daemon run whose watchdog SIGTERMs the bridge's group mid-turn, no session/cancel."""
    async with _bridge(p, real, {}) as (process, c):
        if handle is None:
            new = await c.request("session/new", {"cwd": str(p.log_path.parent)})
            handle = new.unwrap()["sessionId"]
        await c.start_prompt(handle, 'fake:{"hang": true}')
        await c.wait_for(
            lambda m: (
                m.get("method") == "session/update"
                and m["params"]["update"]["sessionUpdate"] == "agent_message_chunk"
            )
        )
        os.killpg(process.pid, signal.SIGTERM)
    assert handle is not None
    return handle


async def test_bridge_killed_without_cancel_cancels_the_turn(tmp: Path, real_binary: str) -> None:
    """open-design profile: a bridge killed mid-turn (watchdog, fail(), a daemon crash: no
    session/cancel) cancels its turn at once; the next message runs on a clean agent."""
    async with proxy(tmp, extra_args=("--client-profile", "open-design")) as p:
        handle = await _kill_bridge_mid_turn(p, real_binary, None)
        await eventually(lambda: _turn_outcomes(p, handle) == ["cancelled"])
        async with daemon_turn(p, real_binary, {}) as c:
            handle, reply = await run_turn(c, handle, str(tmp), "next message")
            assert reply.error is None, reply.error
            # the abandoned turn did not enter the agent's history
            assert "holds 0 earlier turns" in summary(reply.updates())
        assert _turn_outcomes(p, handle) == ["cancelled", "completed"]


async def test_prompt_behind_an_abandoned_turn_cancels_it(tmp: Path, real_binary: str) -> None:
    """Every profile: with on_client_disconnect=continue the orphan turn runs on, but a prompt
    that arrives while it runs cancels it first, then runs (no turn_in_progress)."""
    async with proxy(tmp) as p:
        handle = await _kill_bridge_mid_turn(p, real_binary, None)
        await trio.sleep(0.3)
        assert _turn_outcomes(p, handle) == ["running"]  # continue: still running, unseen
        async with client(p) as c:
            with trio.fail_after(10):
                reply = await c.prompt(handle, "next message")
            assert reply.error is None, reply.error
            assert "holds 0 earlier turns" in summary(reply.updates())
        assert _turn_outcomes(p, handle) == ["cancelled", "completed"]
        assert any(line.get("event") == "turn.abandoned_cancelled" for line in p.logs())


async def test_tool_processes_see_the_turns_environment(tmp: Path, real_binary: str) -> None:
    """Item 1: each run's variables (a fresh tool token, the run id) reach the bash tool calls
    of the one warm agent, turn after turn; the file holding them is 0600, emptied after the
    turn, gone with the proxy; no value reaches the proxy's log or store."""
    extra = ("--client-profile", "open-design")
    check = (
        '[ "$OD_TOOL_TOKEN" = "s3cr3t-$OPEN_DESIGN_RUN_ID" ] && echo "token-ok/$OPEN_DESIGN_RUN_ID"'
        ' || echo "token-bad/$OD_TOOL_TOKEN"; echo "file=$BASH_ENV"'
    )
    prompt = "fake:" + json.dumps({"shell": check})
    async with proxy(tmp, extra_args=extra) as p:
        handle, pids, env_file = None, set(), ""
        for turn in range(5):
            env = {"OD_TOOL_TOKEN": f"s3cr3t-r{turn}", "OPEN_DESIGN_RUN_ID": f"r{turn}"}
            async with daemon_turn(p, real_binary, env) as c:
                handle, reply = await run_turn(c, handle, str(tmp), prompt)
                text = summary(reply.updates())
                assert f"shell=token-ok/r{turn}" in text, text
                env_file = text.rsplit("file=", 1)[1].split()[0].rstrip(";")
                assert os.stat(env_file).st_mode & 0o777 == 0o600
                assert "s3cr3t-r" not in Path(env_file).read_text()  # emptied at turn end
                state = (await c.request("_fake/state", {"sessionId": handle})).unwrap()
                pids.add(state["pid"])
                assert "OD_TOOL_TOKEN" not in state["env"]  # the agent's own env: untouched
        assert len(pids) == 1
        # A client forwarding nothing: its turn's tools see nothing of the last run.
        async with client(p) as c:
            reply = await c.prompt(handle, prompt)
            assert "shell=token-bad/\n" in summary(reply.updates())
        assert b"s3cr3t-r" not in p.log_path.read_bytes()
    assert not Path(env_file).exists()
    db = Path(p.db).read_bytes() + b"".join(
        f.read_bytes() for f in tmp.glob("*.db-wal") if f.is_file()
    )
    assert b"s3cr3t-r" not in db


async def test_agent_stderr_during_a_turn_reaches_the_bridge(tmp: Path, real_binary: str) -> None:
    """Item 3: a line the agent writes to stderr mid-turn comes out of the bridge's stderr
    (never its stdout); what it wrote outside a turn (its start-up lines) does not; a plain
    ACP client is never sent it."""
    errors = tmp / "bridge.stderr"
    line = "AMR error: plan tier upgrade required (code 402)"
    prompt = "fake:" + json.dumps({"stderr": line})
    profile = ("--client-profile", "open-design")
    async with proxy(tmp, "--stderr-lines", "2", extra_args=profile) as p:
        async with daemon_turn(p, real_binary, {}, stderr=errors) as c:
            handle, reply = await run_turn(c, None, str(tmp), prompt)
            assert reply.error is None
            assert all(n["method"] != "_acp-proxy/stderr" for n in reply.notifications)
        assert line in errors.read_text()
        assert "fake-agent: log line" not in errors.read_text()
        async with client(p) as c:
            reply = await c.prompt(handle, prompt)
            assert reply.error is None
            assert all(n.get("method") != "_acp-proxy/stderr" for n in c.messages)


async def test_fallback_runs_the_real_binary_when_the_proxy_is_down(
    tmp: Path, real_binary: str
) -> None:
    """Item 6: with --fallback, an unreachable socket execs the real binary with the ACP argv
    (same stdio, its exit code) and says so in one plain-text stderr line."""
    gone = ProxyHandle(str(tmp / "no.sock"), "", tmp / "log", None)  # type: ignore[arg-type]
    command = bridge_command(gone, real_binary, *ENTRY)
    with_fallback = [*command[: command.index("--")], "--fallback", *command[command.index("--") :]]
    result = await trio.run_process(
        with_fallback, capture_stdout=True, capture_stderr=True, check=False
    )
    assert result.returncode == 7
    assert result.stdout == f"vela {' '.join(ENTRY)}\n".encode()
    err = result.stderr.decode()
    assert "--fallback" in err and real_binary in err and not err.lstrip().startswith("{")
    result = await trio.run_process(command, capture_stderr=True, check=False)
    assert result.returncode == 1 and b"cannot connect" in result.stderr


async def _new_conversation(p: ProxyHandle, real: str, workspace: str, cwd: str) -> tuple[str, int]:
    """A first turn in ``workspace``: how its agent was obtained, and its pid."""
    async with daemon_turn(p, real, {"OPEN_DESIGN_WORKSPACE_ID": workspace}) as c:
        handle, reply = await run_turn(c, None, cwd, "first turn")
        assert reply.error is None, reply.error
        state = (await c.request("_fake/state", {"sessionId": handle})).unwrap()
        assert state["env"]["OPEN_DESIGN_WORKSPACE_ID"] == workspace
        return reply.result["_meta"]["acp-proxy"]["agent"], state["pid"]


def _spares_ready(p: ProxyHandle) -> int:
    return sum(1 for line in p.logs() if line.get("event") == "agent.env_spare_ready")


async def test_new_conversation_in_a_known_workspace_is_warm(tmp: Path, real_binary: str) -> None:
    """Item 4: with --per-process-env, the first conversation of a workspace is cold, the next
    one in that workspace takes the spare kept for its values; another workspace is cold."""
    extra = ("--client-profile", "open-design", "--per-process-env", "OPEN_DESIGN_WORKSPACE_ID")
    async with proxy(tmp, extra_args=extra) as p:
        assert (await _new_conversation(p, real_binary, "ws1", str(tmp)))[0] == "cold"
        await eventually(lambda: _spares_ready(p) == 1)
        async with client(p) as c:  # status lists it: the plain spare and ws1's
            status = (await c.request("_acp-proxy/status", {})).unwrap()
            assert sum(a["role"] == "spare" for a in status["agents"]) == 2
        # (that spare opened a session ahead in the workspace's directory, too)
        assert (await _new_conversation(p, real_binary, "ws1", str(tmp)))[0] == "preopened"
        assert (await _new_conversation(p, real_binary, "ws2", str(tmp)))[0] == "cold"
        await eventually(lambda: _spares_ready(p) == 3)  # ws1 replaced, ws2 new
        assert (await _new_conversation(p, real_binary, "ws2", str(tmp)))[0] == "preopened"


async def test_workspace_spares_count_against_max_live_agents(tmp: Path, real_binary: str) -> None:
    """A workspace spare holds an agent slot; a conversation that needs the slot stops the
    spare, never another conversation's agent."""
    config = tmp / "proxy.toml"
    config.write_text("max_live_agents = 2\nwarm_spares = 0\nidle_timeout_s = 0\n")
    extra = (
        "--config", str(config), "--client-profile", "open-design",
        "--per-process-env", "OPEN_DESIGN_WORKSPACE_ID",
    )  # fmt: skip
    async with proxy(tmp, extra_args=extra) as p:
        how, first_pid = await _new_conversation(p, real_binary, "ws1", str(tmp))
        assert how == "cold"
        await eventually(lambda: _spares_ready(p) == 1)  # 2 slots: ws1's agent + its spare
        how, _ = await _new_conversation(p, real_binary, "ws2", str(tmp))
        assert how == "cold"
        assert pid_exists(first_pid)  # the spare gave its slot up, not the conversation
        assert not any(line.get("event") == "session.evicted" for line in p.logs())
        assert _spares_ready(p) == 1  # no slot left for a ws2 spare


async def test_load_during_another_clients_turn_gets_none_of_it(
    tmp: Path, real_binary: str
) -> None:
    """open-design profile: a daemon run that loads the session while another run's turn is
    streaming (the daemon does not refuse a second run) gets none of that turn's updates, live
    or late, since it would render them as its own output; its prompt waits for the turn, then
    runs. Found with the real daemon (tests/open_design_daemon)."""
    gate = tmp / "go-on"
    slow = json.dumps({"chunks": 4, "pause_after": 2, "pause_until": str(gate)})
    profile = ("--client-profile", "open-design")
    async with proxy(tmp, extra_args=profile) as p, daemon_turn(p, real_binary, {}) as c1:
        handle, first = await run_turn(c1, None, str(tmp), "first")
        assert first.error is None, first.error
        streaming = await c1.start_prompt(handle, f"fake:{slow}")
        await c1.wait_for(
            lambda m: (
                m.get("method") == "session/update"
                and m["params"]["update"]["sessionUpdate"] == "agent_message_chunk"
            )
        )
        async with daemon_turn(p, real_binary, {}) as c2:
            loaded = await c2.request("session/load", {"sessionId": handle, "cwd": str(tmp)})
            assert loaded.unwrap("session/load")["sessionId"] == handle
            own = await c2.start_prompt(handle, "second")
            await trio.sleep(0.3)
            gate.write_text("go")
            assert (await c1.wait_reply(streaming)).error is None
            reply = await c2.wait_reply(own)
            assert reply.error is None, reply.error
            chunks = [
                u["update"]["content"]["text"]
                for u in c2.updates()
                if u["update"]["sessionUpdate"] == "agent_message_chunk"
            ]
            summaries = [text for text in chunks if "[fake]" in text]
            assert len(summaries) == 1 and "holds 2 earlier turns" in summaries[0], chunks
            assert len(chunks) == 4, chunks  # its own three chunks and summary, nothing else


async def test_load_during_another_clients_turn_gets_none_of_its_stderr(
    tmp: Path, real_binary: str
) -> None:
    """The same for the agent's stderr: a line written during another run's turn comes out of
    that run's bridge only, never out of the bridge that loaded meanwhile (the daemon would
    fail its run on a plan/tier line that was not its own)."""
    line = "opencode_event_stream_failure session.status retry tier_model_not_entitled"
    slow = json.dumps({"first_token_delay": 1.0, "stderr": line})
    profile = ("--client-profile", "open-design")
    first_err, second_err = tmp / "first.err", tmp / "second.err"
    async with (
        proxy(tmp, extra_args=profile) as p,
        daemon_turn(p, real_binary, {}, stderr=first_err) as c1,
    ):
        handle, first = await run_turn(c1, None, str(tmp), "first")
        assert first.error is None, first.error
        streaming = await c1.start_prompt(handle, f"fake:{slow}")
        await trio.sleep(0.3)
        async with daemon_turn(p, real_binary, {}, stderr=second_err) as c2:
            loaded = await c2.request("session/load", {"sessionId": handle, "cwd": str(tmp)})
            assert loaded.unwrap("session/load")["sessionId"] == handle
            assert (await c1.wait_reply(streaming)).error is None
            assert (await c2.prompt(handle, "second")).error is None
    assert line in first_err.read_text()
    assert line not in second_err.read_text()
