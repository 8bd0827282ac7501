"""Who may connect (SO_PEERCRED), whose sessions they may use, and which cwds are served."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import trio

from .conftest import NOBODY, client, proxy, python_as

pytestmark = pytest.mark.trio

PEER_CLIENT = str(Path(__file__).with_name("peer_client.py"))


def _open_to_others(tmp: Path) -> Path:
    """A proxy config whose socket any local user may open (the peer check is the gate)."""
    os.chmod(tmp, 0o755)
    config = tmp / "proxy.toml"
    config.write_text(f"socket_mode = {0o666}\n")
    return config


async def _as_nobody(socket: str, calls: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    python, env = python_as(NOBODY)
    done = await trio.run_process(
        [python, PEER_CLIENT, socket, json.dumps(calls)],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        user=NOBODY,
        group=NOBODY,
        env=env,
    )
    assert done.returncode == 0, done.stderr.decode()
    return [json.loads(line) for line in done.stdout.splitlines()]


async def test_another_uid_is_refused_by_default(tmp: Path) -> None:
    """Even on a world-writable socket, a uid that is not the proxy's, root or allowed gets
    one error line (data.kind = peer_refused) and is disconnected; the refusal is logged."""
    config = _open_to_others(tmp)
    async with proxy(tmp, extra_args=("--config", str(config))) as p:
        answers = await _as_nobody(p.socket, [("initialize", {"protocolVersion": 1})])
        assert len(answers) == 1
        assert answers[0]["error"]["data"]["kind"] == "peer_refused"
        assert str(NOBODY) in answers[0]["error"]["message"]
        refused = [e for e in p.logs() if e["event"] == "client.refused"]
        assert refused and refused[0]["uid"] == NOBODY


async def test_creator_access_hides_other_uids_sessions(tmp: Path) -> None:
    """--allow-uid admits the other user; with session_access = "creator" it can create and
    use its own sessions but cannot list, load, prompt, close or delete root's."""
    config = _open_to_others(tmp)
    with config.open("a") as f:
        f.write('session_access = "creator"\n')
    extra = ("--config", str(config), "--allow-uid", str(NOBODY))
    async with proxy(tmp, extra_args=extra) as p, client(p) as root:
        mine = await root.new_session(str(tmp))
        await root.prompt(mine, "root's secret")
        cwd = {"cwd": str(tmp), "mcpServers": []}
        answers = await _as_nobody(
            p.socket,
            [
                ("initialize", {"protocolVersion": 1}),
                ("session/list", {}),
                ("session/load", {"sessionId": mine, **cwd}),
                ("session/prompt", {"sessionId": mine, "prompt": [{"type": "text", "text": "x"}]}),
                ("session/close", {"sessionId": mine}),
                ("session/delete", {"sessionId": mine}),
                ("session/new", cwd),
                ("session/list", {}),
            ],
        )
        by_id = {a["id"]: a for a in answers}
        assert by_id[2]["result"]["sessions"] == []
        for ident in (3, 4, 5, 6):
            assert by_id[ident]["error"]["code"] == -32002, by_id[ident]
            assert "secret" not in json.dumps(by_id[ident])
        theirs = by_id[7]["result"]["sessionId"]
        assert [s["sessionId"] for s in by_id[8]["result"]["sessions"]] == [theirs]
        # Root, for its part, no longer sees the other user's session, and still has its own.
        listed = (await root.request("session/list", {})).unwrap()["sessions"]
        assert [s["sessionId"] for s in listed] == [mine]
        assert (await root.prompt(mine, "still mine")).error is None
        load = await root.request("session/load", {"sessionId": theirs, **cwd})
        assert load.error is not None and load.error["code"] == -32002


async def test_cwd_must_exist_and_lie_inside_allowed_roots(tmp: Path) -> None:
    """A missing cwd is -32602 with a clear message (the agent used to run in the proxy's own
    directory); with allowed_roots, a cwd outside them (symlinks resolved) is refused."""
    inside = tmp / "projects" / "a"
    inside.mkdir(parents=True)
    (tmp / "escape").symlink_to("/etc")
    config = tmp / "proxy.toml"
    config.write_text(f'allowed_roots = ["{tmp / "projects"}"]\n')
    async with proxy(tmp, extra_args=("--config", str(config))) as p, client(p) as c:
        missing = await c.request("session/new", {"cwd": str(tmp / "nope"), "mcpServers": []})
        assert missing.error is not None and missing.error["code"] == -32602
        assert "does not exist" in missing.error["message"]
        for outside in (str(tmp), str(tmp / "escape"), str(inside) + "/../../escape"):
            reply = await c.request("session/new", {"cwd": outside, "mcpServers": []})
            assert reply.error is not None and reply.error["code"] == -32602, outside
            assert "allowed_roots" in reply.error["message"]
        await c.new_session(str(inside))
