"""Two ``serve`` replicas on one PostgreSQL database: one owner per conversation.

Each replica has its own socket and its own agent state directory (as two hosts would): a
conversation taken over by the other replica comes back through the restore ladder from the
shared store alone. Skipped, with the reason, where PostgreSQL is not installed.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
import trio

from acp_proxy.testing.client import AcpClient, Reply
from acp_proxy.testing.proxy_process import ProxyHandle

from .conftest import client, db_rows, eventually, proxy, summary

pytestmark = pytest.mark.trio

LEASE_TTL_S = 1.0


def _replica(tmp: Path, name: str, db: str, *extra: str) -> Any:
    """A replica: its own directory, agent state, short leases, an advertised address."""
    return proxy(
        tmp / name,
        "--state-dir",
        str(tmp / name / "agent-state"),
        db=db,
        extra_args=(
            "--lease-ttl-s",
            str(LEASE_TTL_S),
            "--advertise",
            f"{name}.internal:7000",
            *extra,
        ),
    )


def _owned_elsewhere(reply: Reply) -> bool:
    return reply.error is not None and (reply.error.get("data") or {}).get("kind") == (
        "session_owned_elsewhere"
    )


async def _load(c: AcpClient, sid: str, cwd: Path) -> Reply:
    return await c.request("session/load", {"sessionId": sid, "cwd": str(cwd), "mcpServers": []})


async def _load_once_free(c: AcpClient, sid: str, cwd: Path, *, within_s: float = 10) -> Reply:
    """``session/load`` retried (as a router would) while another replica owns the session."""
    with trio.fail_after(within_s):
        while True:
            reply = await _load(c, sid, cwd)
            if not _owned_elsewhere(reply):
                assert reply.error is None, reply.error
                return reply
            await trio.sleep(0.1)


def _agent_side(updates: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [u for u in updates if u["update"]["sessionUpdate"] != "user_message_chunk"]


async def _kill_9(p: ProxyHandle) -> None:
    p.kill(signal.SIGKILL)
    await p.process.wait()


async def test_conversation_continues_on_another_replica_after_kill_9(
    tmp: Path, pg_url: str
) -> None:
    """Started on A, refused by B while A lives, continued on B once A is killed: same
    session id, the same replay, and B's restored agent knows the earlier turns."""
    async with _replica(tmp, "a", pg_url) as a, _replica(tmp, "b", pg_url) as b:
        async with client(a) as ca:
            sid = await ca.new_session(str(tmp))
            assert (await ca.prompt(sid, "first")).error is None
            assert (await ca.prompt(sid, "second")).error is None
            seen_on_a = ca.updates(sid)
            async with client(b) as cb:
                refused = await _load(cb, sid, tmp)
                assert _owned_elsewhere(refused), refused.error
                assert refused.error is not None
                assert refused.error["data"]["address"] == "a.internal:7000"
                assert refused.error["data"]["sessionId"] == sid
                assert refused.error["code"] == -32013
        await _kill_9(a)
        async with client(b) as cb:
            loaded = await _load_once_free(cb, sid, tmp)
            replay = [n["params"] for n in loaded.notifications]
            assert _agent_side(replay) == seen_on_a
            reply = await cb.prompt(sid, "third")
            assert reply.error is None, reply.error
            assert "holds 2 earlier turns" in summary(reply.updates())
            assert reply.result["_meta"]["acp-proxy"]["agent"].startswith("restored:")
        assert db_rows(pg_url, "SELECT count(*) FROM turns WHERE session_id = ?", sid) == [(3,)]
        assert any(e["event"] == "lease.acquired" for e in b.logs())


async def test_one_prompt_sent_to_both_replicas_runs_once(tmp: Path, pg_url: str) -> None:
    """The same prompt reaches A (the owner) and B at once: it runs once, on A; B answers
    session_owned_elsewhere and starts no agent for it."""
    async with _replica(tmp, "a", pg_url) as a, _replica(tmp, "b", pg_url) as b:
        async with client(a) as ca, client(b) as cb:
            sid = await ca.new_session(str(tmp))
            assert (await ca.prompt(sid, "warm up")).error is None
            replies: dict[str, Reply] = {}

            async def send(name: str, c: AcpClient) -> None:
                replies[name] = await c.prompt(sid, "only once, please")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send, "a", ca)
                nursery.start_soon(send, "b", cb)
            assert replies["a"].error is None, replies["a"].error
            assert _owned_elsewhere(replies["b"]), replies["b"].error
            assert "holds 1 earlier turns" in summary(replies["a"].updates())
        rows = db_rows(
            pg_url, "SELECT seq, outcome FROM turns WHERE session_id = ? ORDER BY seq", sid
        )
        assert rows == [(1, "completed"), (2, "completed")]
        assert not any(e["event"] == "session.created" for e in b.logs())


async def test_paused_owner_cannot_write_after_a_takeover(tmp: Path, pg_url: str) -> None:
    """A is stopped (SIGSTOP) mid-stream past its lease; B takes the conversation over and
    runs a turn; A resumes (SIGCONT): nothing A writes after that reaches the store, A drops
    the session, and the replay equals what B's clients saw."""
    async with _replica(tmp, "a", pg_url) as a, _replica(tmp, "b", pg_url) as b:
        async with client(a) as ca:
            sid = await ca.new_session(str(tmp))
            assert (await ca.prompt(sid, "first")).error is None
            since = len(ca.messages)
            await ca.start_prompt(sid, 'fake:{"chunks": 400, "chunk_delay": 0.01}')
            await ca.wait_for(
                lambda m: (
                    (m.get("params", {}).get("update", {}).get("sessionUpdate"))
                    == "agent_message_chunk"
                ),
                since=since,
            )
            a.kill(signal.SIGSTOP)
            try:
                await trio.sleep(LEASE_TTL_S * 1.5)
                async with client(b) as cb:
                    loaded = await _load_once_free(cb, sid, tmp)
                    seen_on_b = [n["params"] for n in loaded.notifications]
                    reply = await cb.prompt(sid, "taken over")
                    assert reply.error is None, reply.error
                    seen_on_b += [
                        {"sessionId": sid, "update": {"sessionUpdate": "user_message_chunk"}}
                    ]
                    seen_on_b += [n["params"] for n in reply.notifications]
            finally:
                a.kill(signal.SIGCONT)
            await eventually(lambda: any(e["event"] == "lease.lost" for e in a.logs()))
            stored_after_takeover = db_rows(
                pg_url, "SELECT count(*) FROM events WHERE session_id = ?", sid
            )
            await trio.sleep(0.5)  # A had 400 chunks to go: give them time to be refused
            assert (
                db_rows(pg_url, "SELECT count(*) FROM events WHERE session_id = ?", sid)
                == stored_after_takeover
            )
        async with client(b) as late:
            replay = [n["params"] for n in (await _load(late, sid, tmp)).notifications]
        kinds = [u["update"]["sessionUpdate"] for u in replay]
        expected = [u["update"]["sessionUpdate"] for u in seen_on_b]
        assert kinds == expected
        assert _agent_side(replay) == _agent_side(seen_on_b)
        rejected = [e for e in a.logs() if e["event"] == "store.commit_failed"]
        assert all(
            "stale" in e.get("error", "") or "lease" in e.get("error", "") for e in rejected
        ), rejected


async def test_a_session_whose_agent_died_is_released_to_other_replicas(
    tmp: Path, pg_url: str
) -> None:
    """A keeps a session's lease only while it has an agent for it: after the agent dies
    (and no turn runs), A stops renewing and B may take the conversation over."""
    async with _replica(tmp, "a", pg_url) as a, _replica(tmp, "b", pg_url) as b:
        async with client(a) as ca:
            sid = await ca.new_session(str(tmp))
            assert (await ca.prompt(sid, "first")).error is None
            state = (await ca.request("_fake/state", {"sessionId": sid})).unwrap()
            os.kill(state["pid"], signal.SIGKILL)
        async with client(b) as cb:
            assert _owned_elsewhere(await _load(cb, sid, tmp))  # A's lease is still valid
            await _load_once_free(cb, sid, tmp, within_s=4 * LEASE_TTL_S + 2)
            reply = await cb.prompt(sid, "second")
            assert reply.error is None, reply.error
            assert "holds 1 earlier turns" in summary(reply.updates())
        assert any(e["event"] == "lease.acquired" for e in b.logs())
        assert a.process.returncode is None
