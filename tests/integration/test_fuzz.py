"""Random, mostly-wrong client messages: the proxy answers or drops each, and never breaks."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import pytest
import trio

from .conftest import client, proxy, summary

pytestmark = pytest.mark.trio

METHODS = [
    "initialize", "authenticate", "session/new", "session/load", "session/resume",
    "session/prompt", "session/cancel", "session/set_mode", "session/set_config_option",
    "session/set_model", "session/list", "session/close", "session/delete", "$/cancel_request",
    "_fake/state", "_acp-proxy/env", "fs/read_text_file", "no/such",
]  # fmt: skip
KEYS = ["sessionId", "cwd", "mcpServers", "prompt", "requestId", "modeId", "configId", "value",
        "cursor", "env", "_meta", "additionalDirectories", "methodId"]  # fmt: skip


def _value(rng: random.Random, sid: str, depth: int = 0) -> Any:
    choices: list[Any] = [
        None, True, 0, -1, 2**70, 1.5, "", "x", "/tmp", "relative", sid, "sess_" + "0" * 32,
        "\u2028", [], {},
    ]  # fmt: skip
    if depth < 3:
        choices += [
            [_value(rng, sid, depth + 1) for _ in range(rng.randint(0, 3))],
            {rng.choice(KEYS): _value(rng, sid, depth + 1) for _ in range(rng.randint(0, 3))},
            [{"type": rng.choice(["text", "image", "weird"]), "text": "t"}],
        ]
    return rng.choice(choices)


def _message(rng: random.Random, sid: str, n: int) -> bytes:
    msg: dict[str, Any] = {"jsonrpc": rng.choice(["2.0", "2.0", "2.0", "1.0"])}
    if rng.random() < 0.9:
        msg["method"] = rng.choice(METHODS)
    if rng.random() < 0.7:
        msg["id"] = rng.choice([n, f"id{n}", None, [n], 1.5])
    if rng.random() < 0.8:
        params = {k: _value(rng, sid) for k in rng.sample(KEYS, rng.randint(0, 4))}
        if rng.random() < 0.5:
            params["sessionId"] = sid
        msg["params"] = params if rng.random() < 0.9 else _value(rng, sid)
    if rng.random() < 0.1:
        msg["result"] = _value(rng, sid)
    line = json.dumps(msg).encode()
    if rng.random() < 0.05:
        line = line[: rng.randint(0, len(line))]  # truncated
    return line + b"\n"


async def test_random_messages_never_break_the_proxy(tmp: Path) -> None:
    """300 random lines on one connection while another session works normally: every request
    that can be answered is, the proxy never crashes a connection, and the other session and
    this one still work afterwards."""
    seed = int(os.environ.get("ACP_PROXY_FUZZ_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    async with proxy(tmp, "--chunks", "2") as p, client(p) as bystander, client(p) as c:
        other = await bystander.new_session(str(tmp))
        sid = await c.new_session(str(tmp))
        with trio.fail_after(60):
            for n in range(300):
                await c.send_raw(_message(rng, sid, 1000 + n))
                if n % 50 == 0:
                    reply = await bystander.prompt(other, f"still here {n}")
                    assert reply.error is None, (seed, reply.error)
            answer = await c.request("session/list", {})
        assert answer.error is None, seed
        events = {e["event"] for e in p.logs()}
        assert "client.crashed" not in events, seed
        assert "agent.handler_crashed" not in events, seed
        reply = await bystander.prompt(other, "after the storm")
        assert "[fake]" in summary(reply.updates()), seed
