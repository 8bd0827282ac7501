"""One owner per session: nothing a client does can leave a session half-bound, an agent
orphaned, an answer lost, or a deleted conversation alive. Each test is a bug that the code
before the ownership refactor had (issue 10), reproduced through the real ``serve``."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from acp_proxy.testing.client import AcpClient
from acp_proxy.testing.proxy_process import pid_exists
from tests.real_agent.world import log_lines

from .conftest import client, config_args, db_rows, eventually, proxy, summary
from .test_durability import unread_agent_output

pytestmark = pytest.mark.trio


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from ``/proc/*/task/*/children``)."""
    found: set[int] = set()
    todo = [pid]
    while todo:  # bounded by the process tree
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except FileNotFoundError:
            continue
        for task in tasks:
            try:
                children = Path(f"/proc/{parent}/task/{task}/children").read_text().split()
            except FileNotFoundError:
                continue
            for child in map(int, children):
                if child not in found:
                    found.add(child)
                    todo.append(child)
    return found


async def _agent_pid(c: AcpClient, sid: str) -> int:
    state = (await c.request("_fake/state", {"sessionId": sid})).unwrap("_fake/state")
    pid: int = state["pid"]
    return pid


# -- 1. answers are delivered once committed, whatever happens to the agent after --------------


@pytest.mark.parametrize("how", ["session/close", "session/delete", "evict"])
async def test_a_committed_answer_reaches_the_client_after_its_agent_is_stopped(
    tmp: Path, how: str
) -> None:
    """The agent answers while its batch waits for the store (another process holds the write
    lock); its agent is then stopped (close, delete, or eviction for another conversation's
    agent); once the lock goes, the client still gets every update and the response."""
    extra = config_args(tmp, "warm_spares = 0\nmax_live_agents = 1\nidle_timeout_s = 0\n")
    async with proxy(tmp, "--thoughts", "0", "--tool-calls", "0", extra_args=extra) as p:
        async with client(p) as c, client(p) as other:
            sid = await c.new_session(str(tmp))
            await c.prompt(sid, "warm")
            pid = await _agent_pid(c, sid)
            before = len(c.updates(sid))
            done = tmp / "agent-done"
            lock = sqlite3.connect(p.db, isolation_level=None)
            try:
                lock.execute("BEGIN IMMEDIATE")
                directive = {"chunks": 5, "done_file": str(done)}
                ident = await c.start_prompt(sid, "fake:" + json.dumps(directive))
                await eventually(done.exists)
                await eventually(lambda: unread_agent_output(p.process.pid) == 0)
                assert not any(m.get("id") == ident for m in c.messages)
                if how == "evict":
                    # Another conversation needs the only agent slot: this idle one goes.
                    await other.send_request("session/new", {"cwd": str(tmp), "mcpServers": []})
                else:
                    await other.send_request(how, {"sessionId": sid})
                await eventually(lambda: not pid_exists(pid))
            finally:
                lock.execute("COMMIT")
                lock.close()
            with trio.fail_after(10):
                reply = await c.wait_reply(ident)
        assert reply.result["stopReason"] == "end_turn"
        live = [u["update"] for u in c.updates(sid)[before:]]
        texts = [u["content"]["text"] for u in live if u["sessionUpdate"] == "agent_message_chunk"]
        assert len(texts) == 6 and "[fake] turn 2" in texts[-1]


# -- 2. a client vanishing during session/new leaves no agent behind --------------------------


async def test_a_client_gone_during_session_new_leaves_no_agent_and_no_session(tmp: Path) -> None:
    """session/new waits for a slow agent start; the client breaks its connection (a malformed
    line, then close). The owner finishes the bind, sees nobody waits, and undoes it."""
    extra = config_args(tmp, "warm_spares = 0\n")
    async with proxy(tmp, "--startup-delay", "1.5", extra_args=extra) as p:
        async with client(p) as c:
            await c.send_request("session/new", {"cwd": str(tmp), "mcpServers": []})
            await eventually(lambda: bool(log_lines(p, "agent.spawned")))
            await c.send_raw(b"{not json\n")
        # The agent was spawned for it: it must be gone again, and no session recorded.
        await eventually(lambda: bool(log_lines(p, "session.deleted")), within_s=20)
        [deleted] = log_lines(p, "session.deleted")
        assert deleted["reason"] == "requester_gone"
        await eventually(lambda: not descendants(p.process.pid), within_s=20)
        assert db_rows(p.db, "SELECT count(*) FROM sessions") == [(0,)]


# -- 3. a client vanishing during a restore leaves the session usable --------------------------


async def test_a_client_gone_during_a_restore_does_not_wedge_the_session(tmp: Path) -> None:
    """A prompt waits for a restore (slow agent start) and its client goes away; the next
    prompt, from another connection, is served."""
    extra = config_args(tmp, "warm_spares = 0\n")
    state = tmp / "state"
    async with proxy(tmp, "--startup-delay", "1", "--state-dir", str(state), extra_args=extra) as p:
        async with client(p) as c:
            sid = await c.new_session(str(tmp))
            await c.prompt(sid, "one")
            assert (await c.request("session/close", {"sessionId": sid})).error is None
        async with client(p) as c:
            await c.send_request("session/prompt", {"sessionId": sid, "prompt": [_text("two")]})
            await eventually(lambda: len(log_lines(p, "agent.spawned")) == 2)
        # c left while the restore ran; the owner finished it (or undid it): either way the
        # next prompt works.
        async with client(p) as c:
            with trio.fail_after(20):
                reply = await c.prompt(sid, "three")
        assert reply.error is None, reply.error
        assert "[fake]" in summary(reply.updates())


def _text(text: str) -> dict[str, str]:
    return {"type": "text", "text": text}


# -- 4. max_live_agents holds under any concurrency ------------------------------------------


async def test_the_agent_cap_holds_under_concurrent_session_new(tmp: Path) -> None:
    """With max_live_agents = 3, 10 concurrent session/new (each on its own connection) all
    succeed, one after another as idle agents make room, and never more than 3 agent
    processes run at once."""
    cap, count = 3, 10
    extra = config_args(tmp, f"warm_spares = 0\nmax_live_agents = {cap}\nidle_timeout_s = 0\n")
    peak = 0
    async with proxy(tmp, "--startup-delay", "0.2", extra_args=extra) as p:
        results: list[Any] = []

        async def one() -> None:
            async with client(p) as c:
                new = {"cwd": str(tmp), "mcpServers": []}
                results.append(await c.request("session/new", new))

        async def watch() -> None:
            nonlocal peak
            for _ in range(2000):  # bounded: 2000 samples, 10 ms apart
                peak = max(peak, len(descendants(p.process.pid)))
                await trio.sleep(0.01)

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                watcher = nursery.start_soon(watch)  # noqa: F841
                async with trio.open_nursery() as inner:
                    for _ in range(count):
                        inner.start_soon(one)
                nursery.cancel_scope.cancel()
    assert [r.error for r in results] == [None] * count
    assert 1 <= peak <= cap


# -- 5. a deleted session never comes back ----------------------------------------------------


async def test_a_prompt_racing_delete_never_revives_the_session(tmp: Path) -> None:
    """Prompt and delete sent together: whatever order they run in, afterwards the session is
    gone from the store, no agent runs for it, and a later prompt gets -32002."""
    extra = config_args(tmp, "warm_spares = 0\n")
    async with proxy(tmp, extra_args=extra) as p:
        for _trial in range(4):
            async with client(p) as a, client(p) as b:
                sid = await a.new_session(str(tmp))
                ident = await a.send_request(
                    "session/prompt", {"sessionId": sid, "prompt": [_text("race")]}
                )
                assert (await b.request("session/delete", {"sessionId": sid})).error is None
                with trio.fail_after(10):
                    await a.wait_reply(ident)  # answered, whichever way
                again = await a.prompt(sid, "after delete")
            assert again.error is not None and again.error["code"] == -32002
            assert db_rows(p.db, "SELECT count(*) FROM sessions WHERE id = ?", sid) == [(0,)]
            assert db_rows(p.db, "SELECT count(*) FROM event_runs WHERE session_id = ?", sid) == [
                (0,)
            ]
            await eventually(lambda: not descendants(p.process.pid))


# -- 6. several clients on one session each get the whole stream -----------------------------


async def test_a_second_client_loading_mid_turn_joins_the_stream(tmp: Path) -> None:
    """The prompting client keeps receiving every update and its response while two other
    clients load the session mid-turn; each loader gets replay + live rest, complete."""
    go = tmp / "go"
    directive = "fake:" + json.dumps({"chunks": 30, "pause_after": 10, "pause_until": str(go)})
    async with proxy(tmp, "--thoughts", "0", "--tool-calls", "0") as p:
        async with client(p) as a, client(p) as b, client(p) as c:
            sid = await a.new_session(str(tmp))
            ident = await a.start_prompt(sid, directive)
            await a.wait_for(lambda m: len(a.updates(sid)) >= 11)  # commands + 10 chunks
            load = {"sessionId": sid, "cwd": str(tmp), "mcpServers": []}
            async with trio.open_nursery() as nursery:
                nursery.start_soon(b.request, "session/load", load)
                nursery.start_soon(c.request, "session/load", load)
            go.touch()
            with trio.fail_after(10):
                reply = await a.wait_reply(ident)
            for other in (b, c):
                await other.wait_for(lambda m: "[fake]" in json.dumps(m))

            def chunks(cl: AcpClient) -> list[str]:
                return [
                    u["update"]["content"]["text"]
                    for u in cl.updates(sid)
                    if u["update"]["sessionUpdate"] == "agent_message_chunk"
                ]

        assert reply.result["stopReason"] == "end_turn"
        assert len(chunks(a)) == 31
        assert chunks(b) == chunks(a) == chunks(c)


# -- 7. the replay is what the clients saw ----------------------------------------------------


async def test_replay_after_a_restore_equals_what_the_client_saw(tmp: Path) -> None:
    """After a restore the agent repeats its available commands (as opencode does): an
    identical repeat is neither recorded nor delivered, so a later load replays exactly what
    the client received live (its own prompts aside)."""
    state = tmp / "state"
    async with proxy(tmp, "--state-dir", str(state)) as p:
        async with client(p) as c:
            sid = await c.new_session(str(tmp))
            await c.prompt(sid, "one")
            assert (await c.request("session/close", {"sessionId": sid})).error is None
            await c.prompt(sid, "two")  # restored through session/resume
            assert len(log_lines(p, "session.restored")) == 1
            seen = [u["update"] for u in c.updates(sid)]
        async with client(p) as d:
            loaded = await d.request(
                "session/load", {"sessionId": sid, "cwd": str(tmp), "mcpServers": []}
            )
        replay = [u for u in loaded.updates() if u["sessionUpdate"] != "user_message_chunk"]
        assert replay == seen
        kinds = [u["sessionUpdate"] for u in seen]
        assert kinds.count("available_commands_update") == 1


# -- 8. a dead wrapper does not leave the real agent behind ------------------------------------


async def test_the_agent_behind_a_killed_wrapper_is_stopped_with_the_proxy(tmp: Path) -> None:
    """The agent command is a shell wrapper that runs the real agent as its child; SIGKILL of
    the wrapper leaves the real agent in its process group. A clean stop of the proxy must
    end it too."""
    real = f"{sys.executable} -m acp_proxy.testing.fake_agent"
    wrapper = ["/bin/sh", "-c", f"{real}; exit $?"]
    extra = config_args(tmp, "warm_spares = 0\n")
    async with run_wrapped(tmp, wrapper, extra) as p, client(p) as c:
        sid = await c.new_session(str(tmp))
        await c.prompt(sid, "one")
        real_pid = await _agent_pid(c, sid)
        [spawned] = log_lines(p, "agent.spawned")
        wrapper_pid = spawned["agent_pid"]
        assert real_pid != wrapper_pid
        os.kill(wrapper_pid, signal.SIGKILL)
        await eventually(lambda: not pid_exists(wrapper_pid))
        assert pid_exists(real_pid)
    assert p.process.returncode == 0
    await eventually(lambda: not pid_exists(real_pid))


def run_wrapped(tmp: Path, command: list[str], extra: tuple[str, ...]) -> Any:
    from acp_proxy.testing.proxy_process import run_proxy

    return run_proxy(tmp, command, extra_args=extra)


# -- 9. a spare never carries one client's environment ----------------------------------------


async def test_an_agent_started_with_a_clients_environment_never_becomes_a_spare(
    tmp: Path,
) -> None:
    """The agent refuses session/new; the agent that was spawned with this client's
    per-process variable is stopped, not kept as a spare another client would take. (The
    spare kept for these values, ``env_spares``, is only for clients with the same values:
    off here, so that any agent left with them would be this one.)"""
    extra = config_args(tmp, 'warm_spares = 1\nenv_spares = 0\nper_process_env = ["TENANT"]\n')
    async with proxy(tmp, "--refuse-new", extra_args=extra) as p, client(p) as c:
        await c.notify("_acp-proxy/env", {"env": {"TENANT": "acme"}})
        refused = await c.request("session/new", {"cwd": str(tmp), "mcpServers": []})
        assert refused.error is not None
        await eventually(lambda: len(log_lines(p, "agent.exited")) >= 1)
        for pid in descendants(p.process.pid):
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            assert b"TENANT=acme" not in environ


async def test_cli_delete_of_a_live_session_stops_its_agent(tmp: Path) -> None:
    """``acp-proxy sessions delete --socket`` goes through the running proxy: the agent stops
    and a later prompt gets -32002 instead of running on a conversation that is gone."""
    extra = config_args(tmp, "warm_spares = 0\n")
    async with proxy(tmp, extra_args=extra) as p, client(p) as c:
        sid = await c.new_session(str(tmp))
        await c.prompt(sid, "one")
        pid = await _agent_pid(c, sid)
        command = [sys.executable, "-m", "acp_proxy", "sessions", "--db", p.db, "delete", sid]
        done = await trio.run_process(
            [*command, "--socket", p.socket],
            capture_stderr=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        await eventually(lambda: not pid_exists(pid))
        again = await c.prompt(sid, "after delete")
        assert again.error is not None and again.error["code"] == -32002
        assert db_rows(p.db, "SELECT count(*) FROM sessions") == [(0,)]
