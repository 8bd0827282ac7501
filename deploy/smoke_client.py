"""The host side of deploy/smoke.sh: drive the containerized proxy through ``acp-proxy attach``.

    python deploy/smoke_client.py turns SOCKET      # two turns on new connections, one agent
    python deploy/smoke_client.py drain SOCKET CMD… # a turn in flight while CMD stops the container

Runs with the repository's virtualenv (it uses the project's test client). Prints one line per
check and exits non-zero on the first one that fails.
"""

from __future__ import annotations

import sys
from typing import Any

import anyio

from acp_proxy.testing.client import AcpClient

CWD = "/var/lib/acp-proxy"  #: exists inside the image; the fake agent works anywhere


def bridge(socket: str) -> list[str]:
    return [sys.executable, "-m", "acp_proxy", "attach", "--socket", socket]


def check(ok: bool, what: str) -> None:
    sys.stdout.write(("ok    " if ok else "FAIL  ") + what + "\n")
    sys.stdout.flush()
    if not ok:
        sys.exit(1)


async def turns(socket: str) -> None:
    async with AcpClient.spawn(bridge(socket)) as c:
        await c.initialize()
        sid = await c.new_session(CWD)
        first = await c.prompt(sid, "turn one")
        check(first.error is None, f"turn 1 through attach (session {sid})")
        pid = (await c.request("_fake/state", {"sessionId": sid})).unwrap()["pid"]
    async with AcpClient.spawn(bridge(socket)) as c:
        await c.initialize()
        resumed = await c.request("session/resume", {"sessionId": sid, "cwd": CWD})
        check(resumed.error is None, "session/resume on a new connection")
        second = await c.prompt(sid, "turn two")
        text = "".join(
            u["content"]["text"]
            for u in second.updates()
            if u.get("sessionUpdate") == "agent_message_chunk"
        )
        check("holds 1 earlier turns" in text, "turn 2 continued the conversation")
        again = (await c.request("_fake/state", {"sessionId": sid})).unwrap()["pid"]
        check(again == pid, f"one agent (pid {pid} in the container) served both turns")


async def drain(socket: str, stop: list[str]) -> None:
    async with AcpClient.spawn(bridge(socket)) as c:
        await c.initialize()
        sid = await c.new_session(CWD)
        ident = await c.start_prompt(sid, 'fake:{"chunks": 10, "chunk_delay": 0.3}')

        def first_chunk(m: dict[str, Any]) -> bool:
            return m.get("method") == "session/update" and m["params"]["sessionId"] == sid

        await c.wait_for(first_chunk)
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: anyio.run_process(stop, check=False))
            with anyio.fail_after(60):
                reply = await c.wait_reply(ident)
        check(
            reply.error is None and reply.result.get("stopReason") == "end_turn",
            "the turn in flight when the container was stopped got its full response",
        )
        chunks = [u for u in reply.updates() if u.get("sessionUpdate") == "agent_message_chunk"]
        check(len(chunks) == 11, f"all {len(chunks)} chunks arrived (10 + summary)")


def main() -> None:
    mode, socket, *rest = sys.argv[1:]
    if mode == "turns":
        anyio.run(turns, socket)
    elif mode == "drain":
        anyio.run(drain, socket, rest)
    else:
        sys.exit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
