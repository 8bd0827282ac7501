"""One input can never make a conversation impossible to restore, or kill a connection."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest
import trio

from acp_proxy.testing.client import AcpClient

from .conftest import client, proxy, summary

pytestmark = pytest.mark.trio

DEEP = b'{"a":' * 600 + b"1" + b"}" * 600


async def _agent_pid(c: AcpClient, sid: str) -> int:
    pid: int = (await c.request("_fake/state", {"sessionId": sid})).unwrap()["pid"]
    return pid


async def _kill_agent(c: AcpClient, sid: str) -> None:
    os.kill(await _agent_pid(c, sid), signal.SIGKILL)
    await trio.sleep(0.3)


def _prompt_line(ident: int, sid: str, text: bytes, meta: bytes = b"{}") -> bytes:
    return (
        b'{"jsonrpc":"2.0","id":%d,"method":"session/prompt","params":{"sessionId":"%s",'
        b'"prompt":[{"type":"text","text":"%s"}],"_meta":%s}}\n' % (ident, sid.encode(), text, meta)
    )


async def _error_for(c: AcpClient, ident: int) -> dict[str, Any]:
    with trio.fail_after(5):
        message = await c.wait_for(lambda m: m.get("id") == ident and "error" in m)
    error: dict[str, Any] = message["error"]
    return error


async def test_poison_prompts_are_refused_before_they_are_forwarded_or_stored(tmp: Path) -> None:
    """A prompt nested 600 deep is -32602 and one with invalid UTF-8 in a string is -32700,
    both answered with the request's id (when it can be read) and never recorded; the agent is
    then killed and the next prompt restores the conversation."""
    async with proxy(tmp, "--no-resume", "--no-load") as p, client(p) as c:
        sid = await c.new_session(str(tmp))
        await c.prompt(sid, "before")
        await c.send_raw(_prompt_line(91, sid, b"deep", DEEP))
        deep = await _error_for(c, 91)
        assert deep["code"] == -32602 and "nested deeper" in deep["message"]
        await c.send_raw(_prompt_line(92, sid, b"bad \xff\xfe utf-8"))
        bad = await c.wait_for(lambda m: "error" in m and m["error"]["code"] == -32700)
        assert "invalid UTF-8" in bad["error"]["message"]
        conn = sqlite3.connect(p.db)
        try:
            payloads = [row[0] for row in conn.execute("SELECT payload FROM events")]
        finally:
            conn.close()
        assert not any(b"deep" in bytes(x) or b"\xff" in bytes(x) for x in payloads)
        await _kill_agent(c, sid)
        reply = await c.prompt(sid, "after the kill")
        assert reply.error is None, reply.error
        assert "holds 1 earlier turns" in summary(reply.updates())


def _append_event(db: str, sid: str, update: bytes) -> None:
    payload = b'{"sessionId":"' + sid.encode() + b'","update":' + update + b"}"
    conn = sqlite3.connect(db)
    try:
        seq, turn = conn.execute(
            "SELECT max(last_seq), max(turn) FROM event_runs WHERE session_id = ?", (sid,)
        ).fetchone()
        entries = f'[["agent_message_chunk", 0, {len(payload)}]]'
        conn.execute(
            "INSERT INTO event_runs (session_id, last_seq, first_seq, turn, entries, payloads) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (sid, seq + 1, seq + 1, turn, entries, payload),
        )
        conn.commit()
    finally:
        conn.close()


async def test_restore_survives_poison_already_in_the_store(tmp: Path) -> None:
    """Rows an older proxy stored (invalid UTF-8 in a chunk, a tool call nested 600 deep),
    written into the database directly: after a restart, session/load replays valid UTF-8
    only, and the next prompt restores through the seeded rung (before: RecursionError in the
    transcript's deepcopy, "could not be restored" for every later prompt)."""
    db = str(tmp / "legacy.db")
    async with proxy(tmp, "--no-resume", "--no-load", db=db) as p, client(p) as c:
        sid = await c.new_session(str(tmp))
        await c.prompt(sid, "first turn")
    chunk = b'{"sessionUpdate":"agent_message_chunk","content":{"type":"text","text":"x\xffy"}}'
    _append_event(db, sid, chunk)
    _append_event(db, sid, b'{"sessionUpdate":"tool_call","toolCallId":"t","_meta":' + DEEP + b"}")
    async with proxy(tmp, "--no-resume", "--no-load", db=db) as p, client(p) as c:
        loaded = await c.request(
            "session/load", {"sessionId": sid, "cwd": str(tmp), "mcpServers": []}
        )
        assert loaded.error is None
        texts = [
            u["content"]["text"] for u in loaded.updates() if u["sessionUpdate"].endswith("chunk")
        ]
        assert "x\ufffdy" in texts
        reply = await c.prompt(sid, "after the restart")
        assert reply.error is None, reply.error
        assert reply.result["_meta"]["acp-proxy"]["agent"] == "restored:new"
        assert "holds 1 earlier turns" in summary(reply.updates())
        skipped = [e for e in p.logs() if e["event"] == "restore.events_skipped"]
        assert skipped and skipped[0]["skipped"] == 1


@pytest.fixture
def small_disk(tmp: Path) -> Any:
    """A 4 MiB tmpfs (root only), unmounted afterwards."""
    mount = tmp / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(directory: Path) -> Path:
    """Fill the (4 MiB) disk: unbuffered, so nothing is left to flush at close."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as f:
        for _ in range(1024):  # bounded: 64 MiB, far past the disk's size
            try:
                f.write(b"\0" * 65536)
            except OSError:
                break
    return filler


async def test_a_full_disk_fails_the_request_not_the_connection(
    tmp: Path, small_disk: Path
) -> None:
    """With the database's disk full, session/new (a large record) and close/delete answer a
    JSON-RPC error with data.kind = "store_failed"; the same connection goes on serving, and
    works fully again once there is space."""
    async with proxy(tmp, db=str(small_disk / "proxy.db")) as p, client(p) as c:
        sid = await c.new_session(str(tmp))
        await c.prompt(sid, "before the disk fills")
        filler = _fill(small_disk)
        servers = [
            {"name": f"s{i}", "command": "x" * 2000, "args": [], "env": []} for i in range(300)
        ]
        reply = await c.request("session/new", {"cwd": str(tmp), "mcpServers": servers})
        assert reply.error is not None, "the disk was not full"
        assert reply.error["data"]["kind"] == "store_failed", reply.error
        listed = await c.request("session/list", {})
        assert listed.error is None
        filler.unlink()
        again = await c.request("session/new", {"cwd": str(tmp), "mcpServers": servers})
        assert again.error is None, again.error
        assert (await c.prompt(sid, "after")).error is None
        events = {e["event"] for e in p.logs()}
        assert "store.request_failed" in events and "client.crashed" not in events
