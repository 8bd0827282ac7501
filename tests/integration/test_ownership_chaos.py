"""Random interleavings against the real ``serve``: connect, disconnect, prompt, cancel, load,
close, delete, idle eviction and agent crashes, on two sessions from three clients. Whatever
the order, afterwards: every request a connected client sent was answered, every session that
was not deleted still serves a prompt, its replay holds what every client saw of it in order,
and no agent process is left without a live session."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import trio

from acp_proxy.testing.client import AcpClient

from .conftest import client, eventually, proxy
from .test_ownership import descendants

pytestmark = pytest.mark.trio

OPS = ("connect", "disconnect", "prompt", "crash", "cancel", "load", "close", "delete", "idle")


def _is_subsequence(seen: list[Any], replay: list[Any]) -> bool:
    it = iter(replay)
    return all(any(item == other for other in it) for item in seen)


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
async def test_random_interleavings_leave_nothing_broken(tmp: Path, seed: int) -> None:
    rng = random.Random(seed)
    config = tmp / "proxy.toml"
    config.write_text("warm_spares = 0\nidle_timeout_s = 0.3\nmax_live_agents = 2\n")
    state = tmp / "state"
    agent = ("--state-dir", str(state), "--thoughts", "0", "--tool-calls", "0", "--chunks", "2")
    extra = ("--config", str(config))
    async with proxy(tmp, *agent, extra_args=extra) as p, trio.open_nursery() as nursery:
        async with client(p) as setup:
            sessions = [await setup.new_session(str(tmp)) for _ in range(2)]
        deleted: set[str] = set()
        clients: dict[int, tuple[AcpClient, trio.Event]] = {}
        pending: list[tuple[AcpClient, Any]] = []  # requests of clients still connected

        async def hold(stop: trio.Event, *, task_status: Any) -> None:
            async with client(p) as c:
                task_status.started(c)
                await stop.wait()

        async def connect(k: int) -> AcpClient:
            if k not in clients:
                stop = trio.Event()
                clients[k] = (await nursery.start(hold, stop), stop)
            return clients[k][0]

        for _step in range(30):  # bounded: 30 random operations
            op = rng.choice(OPS)
            k, sid = rng.randrange(3), rng.choice(sessions)
            if op == "disconnect":
                if k in clients:
                    c, stop = clients.pop(k)
                    pending[:] = [(cl, i) for cl, i in pending if cl is not c]
                    stop.set()
                continue
            if op == "idle":
                await trio.sleep(0.4)  # lets the reaper evict idle agents
                continue
            c = await connect(k)
            if op == "prompt" or op == "crash":
                text = 'fake:{"crash_after": 1}' if op == "crash" else "hello"
                ident = await c.send_request(
                    "session/prompt",
                    {"sessionId": sid, "prompt": [{"type": "text", "text": text}]},
                )
                pending.append((c, ident))
            elif op == "cancel":
                await c.notify("session/cancel", {"sessionId": sid})
            elif op == "load":
                load = {"sessionId": sid, "cwd": str(tmp), "mcpServers": []}
                pending.append((c, await c.send_request("session/load", load)))
            elif op in ("close", "delete"):
                with trio.fail_after(20):
                    reply = await c.request(f"session/{op}", {"sessionId": sid})
                if op == "delete":
                    assert reply.error is None
                    deleted.add(sid)
            await trio.sleep(rng.choice([0, 0, 0.01, 0.05]))

        # Every request of a client still connected is answered.
        with trio.fail_after(30):
            for c, ident in pending:
                await c.wait_reply(ident)
        seen: dict[str, list[list[dict[str, Any]]]] = {sid: [] for sid in sessions}
        for c, stop in clients.values():
            for sid in sessions:
                seen[sid].append(
                    [
                        u["update"]
                        for u in c.updates(sid)
                        if u["update"]["sessionUpdate"] != "user_message_chunk"
                    ]
                )
            stop.set()

        # Nothing is stuck, and every replay holds what each client saw, in order.
        async with client(p) as check:
            for sid in sessions:
                if sid in deleted:
                    gone = await check.prompt(sid, "still there?")
                    assert gone.error is not None and gone.error["code"] == -32002
                    continue
                with trio.fail_after(20):
                    reply = await check.prompt(sid, "still there?")
                assert reply.error is None, (seed, reply.error)
                load = {"sessionId": sid, "cwd": str(tmp), "mcpServers": []}
                loaded = await check.request("session/load", load)
                replay = [u for u in loaded.updates() if u["sessionUpdate"] != "user_message_chunk"]
                for view in seen[sid]:
                    assert _is_subsequence(view, replay), (seed, sid, json.dumps(view)[:300])

        # No agent outlives its session: once every session is deleted, none is left.
        async with client(p) as last:
            for sid in sessions:
                await last.request("session/delete", {"sessionId": sid})
        await eventually(lambda: not descendants(p.process.pid), within_s=20)
