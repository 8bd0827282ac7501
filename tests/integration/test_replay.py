"""``session/load`` replays the recorded native stream exactly as the client saw it live."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .conftest import client, db_rows, eventually, proxy, summary

pytestmark = pytest.mark.trio

RICH = ("--plan", "--thoughts", "2", "--tool-calls", "2", "--chunks", "5")


def _strip(messages: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if k != "_t"} for m in messages]


async def test_load_replays_what_the_client_saw_live(tmp: Path) -> None:
    """Replay = the user's blocks + every update received live, in order, byte-equal JSON."""
    async with proxy(tmp, *RICH) as p:
        async with client(p) as c1:
            sid = await c1.new_session(str(tmp))
            prompts = ["first question", "second question"]
            for text in prompts:
                reply = await c1.prompt(sid, text)
                assert reply.error is None
            live = c1.updates(sid)
        # What a replay must contain: each turn's user block, then the live updates of that
        # turn; updates outside a turn (available_commands_update) in arrival order.
        live_kinds = [u["update"]["sessionUpdate"] for u in live]
        assert {"plan", "agent_thought_chunk", "tool_call", "tool_call_update"} <= set(live_kinds)
        async with client(p) as c2:
            loaded = await c2.request(
                "session/load", {"sessionId": sid, "cwd": str(tmp), "mcpServers": []}
            )
            assert loaded.error is None
            replay = [n["params"] for n in loaded.notifications]
        user = [u for u in replay if u["update"]["sessionUpdate"] == "user_message_chunk"]
        assert [u["update"]["content"]["text"] for u in user] == prompts
        others = [u for u in replay if u["update"]["sessionUpdate"] != "user_message_chunk"]
        assert _strip(others) == _strip(live)
        # User blocks sit right before their turn's first agent update (the agent's
        # available_commands_update may arrive anywhere around them: it is not part of a turn).
        after = replay[replay.index(user[0]) + 1 :]
        kinds_after = [u["update"]["sessionUpdate"] for u in after]
        kinds_after = [k for k in kinds_after if k != "available_commands_update"]
        assert kinds_after[0] == "plan"


async def test_replay_preserves_unknown_fields_and_meta(tmp: Path) -> None:
    """Payload bytes are stored raw: a prompt's unknown fields and _meta come back unchanged."""
    async with proxy(tmp) as p:
        block = {"type": "text", "text": "ünïcode ✓", "_meta": {"x.y/z": [1, {"a": None}]}}
        async with client(p) as c1:
            sid = await c1.new_session(str(tmp))
            reply = await c1.request("session/prompt", {"sessionId": sid, "prompt": [block]})
            assert reply.error is None
        async with client(p) as c2:
            loaded = await c2.request(
                "session/load", {"sessionId": sid, "cwd": str(tmp), "mcpServers": []}
            )
        [user] = [
            n["params"]["update"]
            for n in loaded.notifications
            if n["params"]["update"]["sessionUpdate"] == "user_message_chunk"
        ]
        assert user == {"sessionUpdate": "user_message_chunk", "content": block}
        stored = db_rows(p.db, "SELECT payload FROM events WHERE kind = 'user_message_chunk'")
        assert json.loads(stored[0][0])["update"]["content"] == block


async def test_load_with_another_cwd_is_refused(tmp: Path) -> None:
    """Sessions are bound to their cwd; a load elsewhere gets a clear -32602."""
    async with proxy(tmp) as p, client(p) as c:
        sid = await c.new_session(str(tmp))
        reply = await c.request(
            "session/load", {"sessionId": sid, "cwd": "/somewhere/else", "mcpServers": []}
        )
        assert reply.error is not None
        assert reply.error["code"] == -32602
        assert "cwd" in reply.error["message"]


async def test_unknown_session_is_resource_not_found(tmp: Path) -> None:
    """Loading or prompting an id the proxy never minted answers -32002."""
    async with proxy(tmp) as p, client(p) as c:
        for method in ("session/load", "session/prompt"):
            reply = await c.request(
                method, {"sessionId": "sess_nope", "cwd": str(tmp), "prompt": [], "mcpServers": []}
            )
            assert reply.error is not None
            assert reply.error["code"] == -32002, method


async def test_client_leaving_mid_turn_keeps_the_turn_and_a_later_load_sees_all(
    tmp: Path,
) -> None:
    """The turn outlives its client; a client loading mid-turn gets replay then the live rest."""
    # The agent stops after 10 of its 30 message chunks until the test creates `go`: the load
    # happens mid-turn by construction, whatever the machine's speed.
    go = tmp / "go"
    directive = "fake:" + json.dumps({"chunks": 30, "pause_after": 10, "pause_until": str(go)})

    def is_chunk(update: dict[str, Any]) -> bool:
        return update["sessionUpdate"] == "agent_message_chunk"

    async with proxy(tmp) as p:
        async with client(p) as c1:
            sid = await c1.new_session(str(tmp))
            await c1.start_prompt(sid, directive)
            await c1.wait_for(lambda m: sum(is_chunk(u["update"]) for u in c1.updates(sid)) == 10)
        # c1 is gone; the turn goes on, paused. Attach mid-turn.
        async with client(p) as c2:
            loaded = await c2.request(
                "session/load", {"sessionId": sid, "cwd": str(tmp), "mcpServers": []}
            )
            assert loaded.error is None
            replayed = [u for u in loaded.updates() if is_chunk(u)]
            assert len(replayed) == 10  # the replay: what was sent before the load
            assert not go.exists()  # so the turn was still running when the load was answered
            go.touch()
            await c2.wait_for(
                lambda m: "[fake]" in str(m.get("params", {}).get("update", {}).get("content"))
            )
            stream = [u["update"] for u in c2.updates(sid)]
        chunks = [u for u in stream if is_chunk(u)]
        assert len(chunks) == 31  # 30 filler chunks + the summary: none lost, none doubled
        assert len(chunks) - len(replayed) == 21  # the live rest, after the load's answer
        assert "holds 0 earlier turns" in summary(stream)
        await eventually(lambda: db_rows(p.db, "SELECT outcome FROM turns") == [("completed",)])


async def test_long_replay_crosses_pages_without_gap(tmp: Path) -> None:
    """A load of more events than one replay page delivers every one, in order."""
    async with proxy(tmp, "--thoughts", "0", "--tool-calls", "0") as p:
        async with client(p) as c1:
            sid = await c1.new_session(str(tmp))
            reply = await c1.prompt(sid, 'fake:{"chunks": 4500, "chunk_size": 8}')
            live = [u["update"] for u in c1.updates(sid)]
        async with client(p) as c2:
            loaded = await c2.request(
                "session/load", {"sessionId": sid, "cwd": str(tmp), "mcpServers": []}
            )
        replay = [n["params"]["update"] for n in loaded.notifications]
        assert reply.error is None
        assert [u for u in replay if u["sessionUpdate"] != "user_message_chunk"] == live
        assert len(replay) == len(live) + 1 > 4500
