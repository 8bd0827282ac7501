"""Black-box tests of the fake ACP agent, driven as a real subprocess over its stdio pipes."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 5.0


class FakeAgentProcess:
    """The fake agent in a subprocess, with line-oriented JSON helpers and a reader thread."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "acp_proxy.testing.fake_agent", *args],
            cwd=REPO,
            env={**os.environ, **(env or {})},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.lines: queue.Queue[bytes | None] = queue.Queue()
        self.stderr: list[bytes] = []
        self.next_id = 100
        self.threads = [
            threading.Thread(target=self._pump_stdout, daemon=True),
            threading.Thread(target=self._pump_stderr, daemon=True),
        ]
        for thread in self.threads:
            thread.start()

    def _pump_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _pump_stderr(self) -> None:
        assert self.proc.stderr is not None
        self.stderr.extend(self.proc.stderr)

    def send_raw(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def send(self, message: dict[str, Any]) -> None:
        self.send_raw(json.dumps({"jsonrpc": "2.0", **message}).encode() + b"\n")

    def request(self, method: str, params: dict[str, Any] | None = None) -> int:
        self.next_id += 1
        self.send({"id": self.next_id, "method": method, "params": params or {}})
        return self.next_id

    def recv(self, timeout: float = TIMEOUT) -> dict[str, Any] | None:
        """Next message from the agent; None at EOF."""
        line = self.lines.get(timeout=timeout)
        return None if line is None else json.loads(line)

    def until_response(self, rid: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Read up to the response to ``rid``; return (messages before it, the response)."""
        before: list[dict[str, Any]] = []
        while True:
            message = self.recv()
            assert message is not None, f"EOF before response {rid}; stderr={self.stderr}"
            if message.get("id") == rid and "method" not in message:
                return before, message
            before.append(message)

    def until_request(self, method: str) -> dict[str, Any]:
        """Skip notifications up to the next request ``method`` sent by the agent; return it."""
        while True:
            message = self.recv()
            assert message is not None, f"EOF before {method}; stderr={self.stderr}"
            if message.get("method") == method and "id" in message:
                return message

    def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        _, response = self.until_response(self.request(method, params))
        return response

    def new_session(self, cwd: str = "/tmp") -> str:
        self.call("initialize", {"protocolVersion": 1, "clientCapabilities": {}})
        response = self.call("session/new", {"cwd": cwd, "mcpServers": []})
        commands = self.recv()
        assert commands is not None
        assert commands["params"]["update"]["sessionUpdate"] == "available_commands_update"
        return response["result"]["sessionId"]

    def wait(self, timeout: float = TIMEOUT) -> int:
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=TIMEOUT)
        for thread in self.threads:
            thread.join(timeout=TIMEOUT)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


@contextlib.contextmanager
def fake_agent(*args: str, env: dict[str, str] | None = None) -> Iterator[FakeAgentProcess]:
    agent = FakeAgentProcess(*args, env=env)
    try:
        yield agent
    finally:
        agent.kill()


def updates(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m["params"]["update"] for m in messages if m.get("method") == "session/update"]


def text_prompt(session_id: str, text: str) -> dict[str, Any]:
    return {"sessionId": session_id, "prompt": [{"type": "text", "text": text}]}


def summary_of(messages: list[dict[str, Any]]) -> str:
    return updates(messages)[-1]["content"]["text"]


def test_initialize_advertises_capabilities() -> None:
    with fake_agent() as agent:
        result = agent.call("initialize", {"protocolVersion": 1})["result"]
        assert result["protocolVersion"] == 1
        caps = result["agentCapabilities"]
        assert caps["loadSession"] is True
        assert caps["sessionCapabilities"] == {"resume": {}, "close": {}, "list": {}}
        assert result["agentInfo"] == {"name": "fake-agent", "version": "1.0.0"}
        agent.call("initialize", {"protocolVersion": 1})
        state = agent.call("_fake/state")["result"]
        assert state["initializeCount"] == 2
        assert state["pid"] == agent.proc.pid
    with fake_agent("--no-load", "--no-resume") as agent:
        caps = agent.call("initialize", {"protocolVersion": 1})["result"]["agentCapabilities"]
        assert caps["loadSession"] is False
        assert "resume" not in caps["sessionCapabilities"]
        error = agent.call("session/load", {"sessionId": "x", "cwd": "/tmp", "mcpServers": []})
        assert error["error"]["code"] == -32601


def test_new_and_prompt_sequence_and_continuity() -> None:
    with fake_agent() as agent:
        sid = agent.new_session()
        assert sid.startswith("fake_")
        assert len(sid) == 5 + 16
        before, response = agent.until_response(
            agent.request("session/prompt", text_prompt(sid, "hello there"))
        )
        kinds = [(u["sessionUpdate"], u.get("status")) for u in updates(before)]
        assert kinds == [
            ("agent_thought_chunk", None),
            ("tool_call", "pending"),
            ("tool_call_update", "in_progress"),
            ("tool_call_update", "completed"),
            *[("agent_message_chunk", None)] * 4,
        ]
        chunks = [u for u in updates(before) if u["sessionUpdate"].startswith("agent_")]
        assert len({u["messageId"] for u in chunks}) == 1
        assert all(len(u["content"]["text"]) == 24 for u in chunks[:-1])
        summary = summary_of(before)
        assert summary.startswith("[fake] turn 1; context holds 0 earlier turns; mode=build;")
        assert summary.endswith("last user message: hello there")
        result = response["result"]
        assert result["stopReason"] == "end_turn"
        usage = result["usage"]
        assert usage["totalTokens"] == usage["inputTokens"] + usage["outputTokens"] > 0

        before, _ = agent.until_response(agent.request("session/prompt", text_prompt(sid, "again")))
        assert "[fake] turn 2; context holds 1 earlier turns;" in summary_of(before)
        assert (
            agent.call("_fake/state", {"sessionId": sid})["result"]["sessions"][sid]["turns"] == 2
        )


def test_permission_round_trip() -> None:
    with fake_agent("--permission") as agent:
        sid = agent.new_session()
        prompt_id = agent.request("session/prompt", text_prompt(sid, "do it"))
        ask = agent.until_request("session/request_permission")
        assert [o["optionId"] for o in ask["params"]["options"]] == ["once", "always", "reject"]
        assert ask["params"]["toolCall"]["status"] == "pending"
        agent.send(
            {"id": ask["id"], "result": {"outcome": {"outcome": "selected", "optionId": "once"}}}
        )
        before, response = agent.until_response(prompt_id)
        statuses = [u.get("status") for u in updates(before) if "toolCallId" in u]
        assert statuses == ["pending", "in_progress", "completed"]
        assert summary_of(before).endswith("; permission=selected:once")
        assert response["result"]["stopReason"] == "end_turn"

        prompt_id = agent.request("session/prompt", text_prompt(sid, "again"))
        ask = agent.until_request("session/request_permission")
        agent.send(
            {"id": ask["id"], "result": {"outcome": {"outcome": "selected", "optionId": "reject"}}}
        )
        before, _ = agent.until_response(prompt_id)
        assert [u.get("status") for u in updates(before) if "toolCallId" in u] == [
            "pending",
            "failed",
        ]
        assert summary_of(before).endswith("; permission=selected:reject")

        prompt_id = agent.request("session/prompt", text_prompt(sid, "third"))
        ask = agent.until_request("session/request_permission")
        agent.send({"id": ask["id"], "result": {"outcome": {"outcome": "cancelled"}}})
        _, response = agent.until_response(prompt_id)
        assert response["result"] == {"stopReason": "cancelled"}


def test_cancel_while_waiting_for_permission_cancels_that_request() -> None:
    with fake_agent("--permission") as agent:
        sid = agent.new_session()
        prompt_id = agent.request("session/prompt", text_prompt(sid, "do it"))
        ask = agent.until_request("session/request_permission")
        agent.send({"method": "session/cancel", "params": {"sessionId": sid}})
        before, response = agent.until_response(prompt_id)
        assert before == [
            {"jsonrpc": "2.0", "method": "$/cancel_request", "params": {"requestId": ask["id"]}}
        ]
        assert response["result"] == {"stopReason": "cancelled"}


def test_cancel_during_hang() -> None:
    with fake_agent("--hang") as agent:
        sid = agent.new_session()
        prompt_id = agent.request("session/prompt", text_prompt(sid, "hang"))
        seen = []
        while len(seen) < 7:  # thought, 3 tool updates, 3 message chunks; then it hangs
            message = agent.recv()
            assert message is not None
            seen.append(message)
        with pytest.raises(queue.Empty):
            agent.recv(timeout=0.3)
        busy = agent.call("session/prompt", text_prompt(sid, "me too"))
        assert busy["error"]["code"] == -32600
        agent.send({"method": "session/cancel", "params": {"sessionId": sid}})
        _, response = agent.until_response(prompt_id)
        assert response["result"] == {"stopReason": "cancelled"}

        prompt_id = agent.request("session/prompt", text_prompt(sid, "hang again"))
        agent.send({"method": "$/cancel_request", "params": {"requestId": prompt_id}})
        _, response = agent.until_response(prompt_id)
        assert response["result"] == {"stopReason": "cancelled"}
        # cancelled turns are not recorded
        assert agent.call("_fake/state")["result"]["sessions"][sid]["turns"] == 0


def test_crash_after() -> None:
    with fake_agent("--crash-after", "2") as agent:
        sid = agent.new_session()
        agent.request("session/prompt", text_prompt(sid, "crash"))
        seen = []
        while (message := agent.recv()) is not None:
            seen.append(message)
        assert len(updates(seen)) == 2
        assert agent.wait() == 3
        agent.threads[1].join(timeout=TIMEOUT)
        assert b"crashing after 2 updates" in b"".join(agent.stderr)


def test_exit_at_start() -> None:
    with fake_agent("--exit-at-start", "7") as agent:
        assert agent.wait() == 7
        assert agent.recv() is None
        agent.threads[1].join(timeout=TIMEOUT)
        assert b"".join(agent.stderr) == b"fake-agent: exiting at start as asked\n"


def test_fake_directive_overrides_knobs() -> None:
    with fake_agent() as agent:
        sid = agent.new_session()
        directive = 'fake:{"chunks":2,"thoughts":0,"tool_calls":0,"plan":true,"text":"abcdef"}'
        before, response = agent.until_response(
            agent.request("session/prompt", text_prompt(sid, directive))
        )
        got = updates(before)
        assert [u["sessionUpdate"] for u in got] == ["plan"] + ["agent_message_chunk"] * 3
        assert len(got[0]["entries"]) == 2
        assert [u["content"]["text"] for u in got[1:3]] == ["abc", "def"]
        assert got[3]["content"]["text"].endswith("last user message: " + directive)
        assert response["result"]["stopReason"] == "end_turn"

        bad = agent.call("session/prompt", text_prompt(sid, 'fake:{"chunkz":1}'))
        assert bad["error"]["code"] == -32602


def test_load_replays_history_across_processes(tmp_path: Path) -> None:
    state_dir = str(tmp_path / "state")
    with fake_agent("--state-dir", state_dir) as first:
        sid = first.new_session()
        before, _ = first.until_response(
            first.request("session/prompt", text_prompt(sid, "remember me"))
        )
        first_summary = summary_of(before)
        first_pid = first.proc.pid
    with fake_agent("--state-dir", state_dir) as second:
        second.call("initialize", {"protocolVersion": 1})
        unknown = second.call(
            "session/load", {"sessionId": "fake_0000000000000000", "cwd": "/tmp", "mcpServers": []}
        )
        assert unknown["error"]["code"] == -32002
        replay, response = second.until_response(
            second.request("session/load", {"sessionId": sid, "cwd": "/tmp", "mcpServers": []})
        )
        assert [(u["sessionUpdate"], u["content"]["text"]) for u in updates(replay)] == [
            ("user_message_chunk", "remember me"),
            ("agent_message_chunk", first_summary),
        ]
        assert response["result"]["modes"]["currentModeId"] == "build"
        before, _ = second.until_response(
            second.request("session/prompt", text_prompt(sid, "still there?"))
        )
        summary = summary_of(before)
        assert "[fake] turn 2; context holds 1 earlier turns;" in summary
        assert f"pid={second.proc.pid};" in summary
        assert second.proc.pid != first_pid
    with fake_agent("--state-dir", state_dir) as third:
        third.call("initialize", {"protocolVersion": 1})
        before, response = third.until_response(
            third.request("session/resume", {"sessionId": sid, "cwd": "/tmp"})
        )
        assert before == []
        assert "configOptions" in response["result"]


def test_fs_read_round_trip() -> None:
    with fake_agent("--fs-read", "/etc/hostname", "--tool-calls", "0") as agent:
        sid = agent.new_session()
        prompt_id = agent.request("session/prompt", text_prompt(sid, "read"))
        ask = agent.until_request("fs/read_text_file")
        assert ask["params"] == {"sessionId": sid, "path": "/etc/hostname"}
        agent.send({"id": ask["id"], "result": {"content": "0123456789abcdefghijKLMN"}})
        before, _ = agent.until_response(prompt_id)
        assert summary_of(before).endswith("; fs=ok:0123456789abcdefghij")

        prompt_id = agent.request("session/prompt", text_prompt(sid, "read"))
        ask = agent.until_request("fs/read_text_file")
        agent.send({"id": ask["id"], "error": {"code": -32002, "message": "Resource not found"}})
        before, _ = agent.until_response(prompt_id)
        assert summary_of(before).endswith("; fs=error:-32002")


def test_malformed_and_unknown() -> None:
    with fake_agent() as agent:
        agent.send_raw(b"{not json\n")
        error = agent.recv()
        assert error is not None
        assert error["id"] is None
        assert error["error"]["code"] == -32700
        agent.send({"method": "no/such_notification", "params": {}})
        response = agent.call("no/such_method")
        assert response["error"]["code"] == -32601
        assert agent.call("session/prompt", text_prompt("nope", "x"))["error"]["code"] == -32002
        assert (
            agent.call("session/new", {"cwd": "relative", "mcpServers": []})["error"]["code"]
            == -32602
        )
        agent.proc.stdin.close()  # type: ignore[union-attr]
        assert agent.wait() == 0


def test_hold_on_eof_keeps_running_while_a_session_is_open() -> None:
    """--hold-on-eof: EOF with an open session does not end the process; with every session
    closed first, EOF ends it at once."""
    with fake_agent("--hold-on-eof") as agent:
        agent.new_session()
        assert agent.proc.stdin is not None
        agent.proc.stdin.close()
        with pytest.raises(subprocess.TimeoutExpired):
            agent.wait(timeout=1.0)
    with fake_agent("--hold-on-eof") as agent:
        sid = agent.new_session()
        assert agent.call("session/close", {"sessionId": sid})["result"] == {}
        assert agent.proc.stdin is not None
        agent.proc.stdin.close()
        assert agent.wait() == 0
