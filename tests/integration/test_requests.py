"""Agent → client requests, cancellation and turn serialisation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from .conftest import client, db_rows, eventually, proxy, summary

pytestmark = pytest.mark.trio


def _is_update(kind: str):
    return lambda m: m.get("params", {}).get("update", {}).get("sessionUpdate") == kind


async def test_permission_round_trip_with_rewritten_ids(tmp: Path) -> None:
    """The agent's permission request reaches the client with a proxy id and session id."""
    async with proxy(tmp, "--permission", "--tool-calls", "2") as p, client(p) as c:
        sid = await c.new_session(str(tmp))
        reply = await c.prompt(sid, "needs permission")
        assert reply.error is None
        assert len(c.requests) == 2
        for request in c.requests:
            assert request["method"] == "session/request_permission"
            assert request["params"]["sessionId"] == sid  # the proxy's id, not the agent's
        assert [r["id"] for r in c.requests] == [1, 2]  # allocated per client connection
        assert "permission=selected:once,selected:once" in summary(reply.updates())


async def test_permission_answer_reject_is_relayed(tmp: Path) -> None:
    """Whatever option the client picks is what the agent gets."""

    def reject(method: str, params: dict) -> tuple[dict, None]:
        return {"outcome": {"outcome": "selected", "optionId": "reject"}}, None

    async with proxy(tmp, "--permission") as p, client(p, policy=reject) as c:
        sid = await c.new_session(str(tmp))
        reply = await c.prompt(sid, "x")
        assert "permission=selected:reject" in summary(reply.updates())
        statuses = [
            u.get("status") for u in reply.updates() if u["sessionUpdate"] == "tool_call_update"
        ]
        assert "failed" in statuses


async def test_cancel_mid_turn_ends_it_cancelled(tmp: Path) -> None:
    """``session/cancel`` reaches the agent at once; the prompt answers stopReason cancelled."""
    async with proxy(tmp) as p, client(p) as c:
        sid = await c.new_session(str(tmp))
        ident = await c.start_prompt(sid, 'fake:{"hang": true}')
        await c.wait_for(_is_update("agent_message_chunk"))
        await c.notify("session/cancel", {"sessionId": sid})
        with trio.fail_after(5):
            reply = await c.wait_reply(ident)
        assert reply.result["stopReason"] == "cancelled"
        assert db_rows(p.db, "SELECT outcome, stop_reason FROM turns") == [
            ("cancelled", "cancelled")
        ]
        # The session is usable right after.
        again = await c.prompt(sid, "after cancel")
        assert again.result["stopReason"] == "end_turn"


async def test_cancel_while_permission_pending_answers_it_cancelled(tmp: Path) -> None:
    """Pending permission requests of a cancelled turn are answered cancelled by the proxy."""
    async with proxy(tmp, "--permission") as p, client(p, auto_answer=False) as c:
        sid = await c.new_session(str(tmp))
        ident = await c.start_prompt(sid, "ask me")
        await c.wait_for(lambda m: m.get("method") == "session/request_permission")
        await c.request("session/cancel", {"sessionId": sid})  # as a request, like open-design
        with trio.fail_after(5):
            reply = await c.wait_reply(ident)
        assert reply.result["stopReason"] == "cancelled"


async def test_cancel_request_is_translated_per_hop(tmp: Path) -> None:
    """``$/cancel_request`` for the client's prompt id cancels the agent's prompt."""
    async with proxy(tmp) as p, client(p) as c:
        sid = await c.new_session(str(tmp))
        ident = await c.start_prompt(sid, 'fake:{"hang": true}')
        await c.wait_for(_is_update("agent_message_chunk"))
        await c.notify("$/cancel_request", {"requestId": ident})
        with trio.fail_after(5):
            reply = await c.wait_reply(ident)
        assert reply.result["stopReason"] == "cancelled"


async def test_a_second_prompt_waits_for_the_running_turn(tmp: Path) -> None:
    """One turn at a time per session: a second prompt is queued and runs once the first has
    ended, and the connection goes on serving other requests meanwhile."""
    go = tmp / "go"
    directive = "fake:" + json.dumps({"chunks": 3, "pause_after": 1, "pause_until": str(go)})
    async with proxy(tmp) as p, client(p) as c:
        sid = await c.new_session(str(tmp))
        first = await c.start_prompt(sid, directive)
        await c.wait_for(_is_update("agent_message_chunk"))
        second = await c.start_prompt(sid, "me too")
        assert (await c.request("session/list", {})).error is None  # not stuck behind it
        assert not any(m.get("id") in (first, second) for m in c.messages)
        go.touch()
        with trio.fail_after(10):
            one = await c.wait_reply(first)
            two = await c.wait_reply(second)
        assert one.result["stopReason"] == two.result["stopReason"] == "end_turn"
        assert "turn 1;" in summary(one.updates()) and "turn 2;" in summary(two.updates())
        ids = [m.get("id") for m in c.messages]
        assert ids.index(first) < ids.index(second)
        assert db_rows(p.db, "SELECT seq, outcome FROM turns") == [
            (1, "completed"),
            (2, "completed"),
        ]


async def test_a_full_prompt_queue_refuses_and_cancel_answers_the_queued(tmp: Path) -> None:
    """Past max_queued_prompts a prompt gets -32010 turn_in_progress; session/cancel answers
    the running turn and every queued prompt ``cancelled`` without running them."""
    config = tmp / "proxy.toml"
    config.write_text("max_queued_prompts = 1\n")
    async with proxy(tmp, extra_args=("--config", str(config))) as p, client(p) as c:
        sid = await c.new_session(str(tmp))
        ident = await c.start_prompt(sid, 'fake:{"hang": true}')
        await c.wait_for(_is_update("agent_message_chunk"))
        queued = await c.start_prompt(sid, "queued")
        third = await c.prompt(sid, "one too many")
        assert third.error["code"] == -32010
        assert third.error["data"] == {"kind": "turn_in_progress", "sessionId": sid, "turn": 1}
        await c.notify("session/cancel", {"sessionId": sid})
        with trio.fail_after(5):
            assert (await c.wait_reply(ident)).result["stopReason"] == "cancelled"
            assert (await c.wait_reply(queued)).result["stopReason"] == "cancelled"
        assert db_rows(p.db, "SELECT seq, outcome FROM turns") == [(1, "cancelled")]


async def test_agent_request_with_no_client_attached_is_answered(tmp: Path) -> None:
    """With the client gone, the agent's permission request gets ``cancelled``, not silence."""
    async with proxy(tmp, "--permission", "--first-token-delay", "0.3") as p:
        async with client(p) as c1:
            sid = await c1.new_session(str(tmp))
            await c1.start_prompt(sid, "ask while nobody is there")
        await eventually(lambda: db_rows(p.db, "SELECT outcome FROM turns") == [("cancelled",)])
        logs = [entry["event"] for entry in p.logs()]
        assert "permission.answered_unattached" in logs


async def test_fs_request_without_client_capability_gets_an_error(tmp: Path) -> None:
    """An agent calling fs/* anyway is answered (by the client here), never left hanging."""
    async with proxy(tmp, "--fs-read", "/etc/hostname") as p, client(p) as c:
        sid = await c.new_session(str(tmp))
        reply = await c.prompt(sid, "read a file")
        assert reply.error is None
        assert "fs=error:-32601" in summary(reply.updates())
