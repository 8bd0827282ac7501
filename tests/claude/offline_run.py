"""One conversation through the proxy with the real claude-agent-acp, for running in a network
namespace that has nothing but loopback (``tests/claude/test_offline.py``).

``python -m tests.claude.offline_run DIR`` starts the fake Messages API and the proxy, runs
``session/new``, a plain turn and a Bash tool turn (permission allowed), closes the session, and
prints one JSON object: the answers' texts and what the fake API was asked for.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import anyio

from acp_proxy.testing.client import AcpClient
from acp_proxy.testing.proxy_process import run_proxy
from tests.real_agent.model_server import RUN_BASH
from tests.real_agent.world import text_of

from .fake_anthropic import FakeAnthropic
from .harness import ClaudeHome, agent_command

LIMIT_S = 240.0


async def conversation(directory: Path) -> dict[str, object]:
    home = ClaudeHome(directory / "cl")
    with FakeAnthropic() as model, anyio.fail_after(LIMIT_S):
        env = home.env(model.base_url)
        async with (
            run_proxy(directory / "proxy", agent_command(), env=env) as proxy,
            AcpClient.connect(proxy.socket) as client,
        ):
            await client.initialize()
            sid = await client.new_session(str(home.work))
            first = await client.prompt(sid, "hello one")
            tool = await client.prompt(sid, f"please {RUN_BASH} now")
            await client.request("session/close", {"sessionId": sid})
        return {
            "texts": [text_of(first), text_of(tool)],
            "permission_asks": len(client.requests),
            "model_requests": [r.kind for r in model.requests],
            "unknown_paths": model.unknown,
        }


def main() -> None:
    result = anyio.run(conversation, Path(sys.argv[1]))
    print(json.dumps(result))  # noqa: T201 (the test reads it)


if __name__ == "__main__":
    main()
