"""The real open-design daemon → ``acp-proxy attach`` → ``acp-proxy serve`` → real ``opencode acp``.

One :class:`DaemonWorld` per test: a fake model server, a private opencode home (as in
``tests/opencode``), a stand-in ``vela`` (``vela_standin.py`` behind a generated shell shim), the
proxy started as the README says (``--client-profile open-design --per-process-env
OPEN_DESIGN_WORKSPACE_ID``), the README's one-line wrapper as ``VELA_BIN``, and the daemon's own
``startServer()`` (``launcher.mjs``) on 127.0.0.1 with a private data dir and HOME. Tests drive
the daemon only through its HTTP API: ``POST /api/projects``, ``POST /api/runs``, ``GET
/api/runs/:id/events`` (server-sent events), ``POST /api/runs/:id/cancel``.

Every process here is started by this module and signalled by its pid only (the opencode
processes, which outlive their parents in some paths, are found by a marker in their
environment, see :func:`tests.real_agent.world.reap`).
"""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from tests.opencode.fake_model import FakeModel
from tests.opencode.harness import OFFLINE_ENV, OPENCODE_BIN, OpencodeHome
from tests.real_agent.model_server import (
    Answer,
    Conversation,
    ModelRequest,
    seen,
)
from tests.real_agent.world import private_env

HERE = Path(__file__).resolve().parent
LAUNCHER = HERE / "launcher.mjs"
STANDIN = HERE / "vela_standin.py"
ACP_ARGV = "agent run --runtime opencode"
FORWARD_ENV = (
    "OPEN_DESIGN_RUN_ID,OPEN_DESIGN_RUN_ATTEMPT,OPEN_DESIGN_SESSION_ID,OPEN_DESIGN_WORKSPACE_ID"
)
#: how long one turn through the daemon may take before a test gives up
TURN_LIMIT_S = 90.0

_TURN = re.compile(r"\[\[turn:([A-Za-z0-9_-]+)\]\]")
_BASH = re.compile(r"\[\[bash:(.*?)\]\]", re.S)
_SLOW = "[[slow]]"


def daemon_answer(conv: Conversation) -> Answer:
    """The fake model's reply to the daemon's prompts.

    The daemon sends its whole system prompt and the request as one user message, so the
    answer names the turn by its ``[[turn:TAG]]`` marker (the last one: a reseeded transcript
    holds the earlier turns' markers too) instead of echoing the message. ``[[bash:CMD]]`` after
    that marker makes the model call opencode's bash tool with CMD; ``[[slow]]`` streams the
    answer one word every 0.5 s (a turn that is still running when a test acts).
    """
    if not conv.tool_names:
        return Answer("side", "Fake conversation")
    if conv.tool_result is not None:
        return Answer("tool_result", f"Tool said: {conv.tool_result.strip()}")
    last = conv.user_texts[-1] if conv.user_texts else ""
    turns = list(_TURN.finditer(last))
    tag = turns[-1].group(1) if turns else "?"
    after = last[turns[-1].end() :] if turns else last
    bash = _BASH.search(after)
    if bash is not None:
        tool = next((n for n in conv.tool_names if n.lower() == "bash"), None)
        if tool is None:
            return Answer("turn", f"No bash tool among {conv.tool_names}")
        return Answer(
            "tool_call",
            tool_name=tool,
            tool_input={"command": bash.group(1).strip(), "description": "Run a check"},
        )
    delay = 0.5 if _SLOW in after else None
    text = seen(len(conv.user_texts), tag) + (" and some more words to stream" if delay else "")
    return Answer("turn", text, delay_s=delay)


@dataclass
class DaemonModel(FakeModel):
    """The opencode fake model, answering with :func:`daemon_answer`."""

    def decide(self, body: dict[str, Any], conversation: Conversation) -> ModelRequest:
        request = ModelRequest(body, conversation, daemon_answer(conversation))
        with self._lock:
            self.requests.append(request)
        return request


@dataclass
class RunResult:
    """One run as the daemon reported it on its event stream."""

    run_id: str
    events: list[tuple[float, str, Any]] = field(default_factory=list)  #: (monotonic, event, data)
    started_at: float = 0.0
    reader: EventReader | None = None

    def of(self, event: str) -> list[Any]:
        return [d for _, e, d in self.events if e == event]

    def agent(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.of("agent") if isinstance(d, dict) and d.get("type") == kind]

    @property
    def status(self) -> str | None:
        ends = self.of("end")
        return ends[-1].get("status") if ends else None

    @property
    def text(self) -> str:
        return "".join(d.get("delta", "") for d in self.agent("text_delta"))

    @property
    def ttft_ms(self) -> int | None:
        """The daemon's own time to first token (its ``streaming`` status, ``ttftMs``)."""
        for d in self.agent("status"):
            if d.get("label") == "streaming" and isinstance(d.get("ttftMs"), (int, float)):
                return int(d["ttftMs"])
        return None

    @property
    def prompt_sent_ms(self) -> int | None:
        """The daemon's ms from spawning the agent binary (the bridge) to sending its prompt
        (``initialize``, ``session/new`` or ``load``, the model set): its
        ``waiting_for_first_output`` status."""
        for d in self.agent("status"):
            if d.get("label") == "waiting_for_first_output":
                return int(d["elapsedMs"])
        return None

    def recovery(self) -> list[str]:
        """The states of the daemon's ``native_session_recovery`` diagnostics, in order."""
        return [
            str((d.get("nativeSessionRecovery") or {}).get("state"))
            for d in self.of("diagnostic")
            if isinstance(d, dict) and d.get("type") == "native_session_recovery"
        ]

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [d for d in self.of("error") if isinstance(d, dict)]

    def error_codes(self) -> list[str]:
        codes = []
        for d in self.errors:
            err = d.get("error") if isinstance(d.get("error"), dict) else d
            if isinstance(err, dict) and err.get("code"):
                codes.append(str(err["code"]))
        return codes

    def stderr(self) -> str:
        return "".join(d.get("chunk", "") for d in self.of("stderr") if isinstance(d, dict))

    def summary(self) -> dict[str, Any]:
        return {
            "run": self.run_id,
            "status": self.status,
            "ttftMs": self.ttft_ms,
            "promptSentMs": self.prompt_sent_ms,
            "recovery": self.recovery(),
            "text": self.text[:200],
            "errors": self.error_codes(),
        }


class EventReader(threading.Thread):
    """Reads a run's server-sent events (``GET /api/runs/:id/events``) until the stream ends."""

    def __init__(self, url: str, result: RunResult) -> None:
        super().__init__(name=f"sse-{result.run_id}", daemon=True)
        self.url = url
        self.result = result
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            with urllib.request.urlopen(self.url, timeout=TURN_LIMIT_S) as response:
                event, data = "message", []
                for raw in response:
                    line = raw.decode("utf-8", "replace").rstrip("\r\n")
                    if line.startswith(":"):
                        continue
                    if not line:
                        if data:
                            payload = "\n".join(data)
                            with contextlib.suppress(json.JSONDecodeError):
                                payload = json.loads(payload)
                            self.result.events.append((time.monotonic(), event, payload))
                        event, data = "message", []
                        continue
                    name, _, value = line.partition(":")
                    value = value[1:] if value.startswith(" ") else value
                    if name == "event":
                        event = value
                    elif name == "data":
                        data.append(value)
        except BaseException as exc:  # reported to the test
            self.failure = exc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class DaemonWorld:
    """Everything one test runs; see the module docstring."""

    tmp: Path
    checkout: Path
    node: str
    home: OpencodeHome
    model: DaemonModel
    proxy_process: subprocess.Popen[bytes] | None = None
    daemon_process: subprocess.Popen[bytes] | None = None
    url: str = ""
    proxy_pids: list[int] = field(default_factory=list)  #: every proxy started, in order

    PROXY_ARGS: ClassVar[tuple[str, ...]] = (
        "--client-profile",
        "open-design",
        "--per-process-env",
        "OPEN_DESIGN_WORKSPACE_ID",
    )

    def __post_init__(self) -> None:
        (self.tmp / "bin").mkdir(parents=True, exist_ok=True)
        self.daemon_data.mkdir(parents=True, exist_ok=True)
        (self.tmp / "daemon-home").mkdir(exist_ok=True)
        config = {
            "opencode": str(OPENCODE_BIN),
            "cwd": str(self.home.work),
            "log": str(self.standin_log),
            "env": self.opencode_env(),
        }
        self.standin_config.write_text(json.dumps(config))
        self.vela.write_text(
            "#!/bin/sh\n"
            f"exec {shlex.quote(sys.executable)} {shlex.quote(str(STANDIN))} "
            f'--config {shlex.quote(str(self.standin_config))} "$@"\n'
        )
        # The README's wrapper, word for word but for the paths.
        self.wrapper.write_text(
            "#!/bin/sh\n"
            f"exec {shlex.quote(sys.executable)} -m acp_proxy attach "
            f"--socket {shlex.quote(self.socket)} --real-binary {shlex.quote(str(self.vela))} \\\n"
            f'  --acp-argv "{ACP_ARGV}" --fallback \\\n'
            f"  --forward-env {FORWARD_ENV} \\\n"
            '  --forward-env-prefix OD_,VELA_ -- "$@"\n'
        )
        for script in (self.vela, self.wrapper):
            script.chmod(0o755)

    # -- paths ---------------------------------------------------------------------------------

    @property
    def socket(self) -> str:
        return str(self.tmp / "proxy.sock")

    @property
    def db(self) -> str:
        return str(self.tmp / "sessions.db")

    @property
    def proxy_log(self) -> Path:
        return self.tmp / "proxy.log"

    @property
    def daemon_log(self) -> Path:
        return self.tmp / "daemon.log"

    @property
    def daemon_data(self) -> Path:
        return self.tmp / "od-data"

    @property
    def standin_log(self) -> Path:
        return self.tmp / "vela-standin.log"

    @property
    def standin_config(self) -> Path:
        return self.tmp / "vela-standin.json"

    @property
    def vela(self) -> Path:
        return self.tmp / "bin" / "vela"

    @property
    def wrapper(self) -> Path:
        return self.tmp / "bin" / "vela-via-acp-proxy"

    def opencode_env(self) -> dict[str, str]:
        """What the stand-in sets for opencode: offline, private dirs, the fake model; bash
        asks for permission (the daemon answers it)."""
        env = self.home.env(self.model.base_url, permission={"bash": "ask"})
        keys = {*OFFLINE_ENV, "HOME", "OPENCODE_CONFIG_CONTENT", "OPENCODE_PERMISSION"}
        keys |= {k for k in env if k.startswith("XDG_")}
        return {k: env[k] for k in keys if k in env}

    # -- the proxy -----------------------------------------------------------------------------

    def start_proxy(self, ready_s: float = 30.0) -> None:
        assert self.proxy_process is None or self.proxy_process.poll() is not None
        command = [
            sys.executable, "-m", "acp_proxy", "serve",
            "--socket", self.socket, "--db", self.db, *self.PROXY_ARGS,
            "--", str(self.vela), *ACP_ARGV.split(),
        ]  # fmt: skip
        readies = len(self.proxy_events("ready"))  # the log is appended to across restarts
        with self.proxy_log.open("ab") as log:
            self.proxy_process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=self.home.env(self.model.base_url),
                cwd=self.home.work,
            )
        self.proxy_pids.append(self.proxy_process.pid)
        deadline = time.monotonic() + ready_s
        while time.monotonic() < deadline:
            if self.proxy_process.poll() is not None:
                raise RuntimeError(f"acp-proxy serve exited: {self.proxy_log.read_text()[-2000:]}")
            if len(self.proxy_events("ready")) > readies:
                return
            time.sleep(0.05)
        raise TimeoutError(f"acp-proxy serve not ready in {ready_s} s")

    def stop_proxy(self) -> None:
        process = self.proxy_process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def proxy_logs(self) -> list[dict[str, Any]]:
        out = []
        if not self.proxy_log.exists():
            return out
        for line in self.proxy_log.read_bytes().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                entry = json.loads(line)
                if isinstance(entry, dict):
                    out.append(entry)
        return out

    def proxy_events(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.proxy_logs() if e.get("event") == event]

    def proxy_status(self) -> dict[str, Any]:
        out = subprocess.run(
            [sys.executable, "-m", "acp_proxy", "status", "--socket", self.socket, "--json"],
            capture_output=True,
            timeout=20,
            check=True,
        )
        return json.loads(out.stdout)

    def sessions_cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "acp_proxy", "sessions", "--db", self.db, *args],
            capture_output=True,
            text=True,
            timeout=30,
        )

    # -- the daemon ----------------------------------------------------------------------------

    def daemon_env(self) -> dict[str, str]:
        node_dir = str(Path(self.node).parent)
        base = private_env({})
        return {
            **base,
            "PATH": f"{node_dir}:{base.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(self.tmp / "daemon-home"),
            "OD_DATA_DIR": str(self.daemon_data),
            "VELA_BIN": str(self.wrapper),
            # Signed in as far as the daemon can tell (readVelaLoginStatus): env credentials.
            "VELA_RUNTIME_KEY": "sk-fake-runtime-key",
            "VELA_LINK_URL": self.model.base_url,
            "NODE_ENV": "production",
        }

    def start_daemon(self, ready_s: float = 90.0) -> None:
        assert self.daemon_process is None or self.daemon_process.poll() is not None
        ready = self.tmp / "daemon.ready"
        ready.unlink(missing_ok=True)
        with self.daemon_log.open("ab") as log:
            self.daemon_process = subprocess.Popen(
                [self.node, str(LAUNCHER), str(self.checkout), str(ready)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.daemon_env(),
                cwd=self.tmp,
            )
        deadline = time.monotonic() + ready_s
        while not ready.exists():
            if self.daemon_process.poll() is not None:
                raise RuntimeError(f"the daemon exited: {self.daemon_log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the daemon did not start in {ready_s} s")
            time.sleep(0.05)
        self.url = json.loads(ready.read_text())["url"]

    def stop_daemon(self, sig: int = signal.SIGTERM) -> None:
        process = self.daemon_process
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def close(self) -> None:
        self.stop_daemon()
        self.stop_proxy()

    # -- its HTTP API --------------------------------------------------------------------------

    def api(
        self,
        method: str,
        path: str,
        body: Any = None,
        timeout: float = 30.0,
        headers: dict[str, str] | None = None,
    ) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={
                **({"Content-Type": "application/json"} if data is not None else {}),
                **(headers or {}),
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{method} {path}: {exc.code} {exc.read()[:2000]!r}") from None
        return json.loads(raw) if raw else None

    def create_project(self, name: str = "proxy test") -> tuple[str, str]:
        """A new project; returns (project id, its first conversation's id)."""
        project_id = f"p-{uuid.uuid4().hex[:12]}"
        body = self.api("POST", "/api/projects", {"id": project_id, "name": name})
        conversation = body.get("conversationId") if isinstance(body, dict) else None
        if not conversation:
            conversation = self.new_conversation(project_id)
        return project_id, conversation

    def new_conversation(self, project_id: str) -> str:
        body = self.api("POST", f"/api/projects/{project_id}/conversations", {"title": "t"})
        conv = body.get("conversation") if isinstance(body, dict) else None
        return str((conv or body)["id"])

    def start_run(
        self,
        project_id: str,
        conversation_id: str,
        prompt: str,
        transcript: str,
        headers: dict[str, str] | None = None,
    ) -> RunResult:
        """``POST /api/runs`` for AMR, then read its events in a thread."""
        body = self.api(
            "POST",
            "/api/runs",
            {
                "agentId": "amr",
                "projectId": project_id,
                "conversationId": conversation_id,
                "message": transcript,
                "currentPrompt": prompt,
            },
            headers=headers,
        )
        run_id = body.get("runId") or body.get("id") or (body.get("run") or {}).get("id")
        assert run_id, f"no run id in {body}"
        result = RunResult(str(run_id), started_at=time.monotonic())
        reader = EventReader(f"{self.url}/api/runs/{run_id}/events", result)
        reader.start()
        result.reader = reader
        return result

    def wait_run(self, result: RunResult, limit_s: float = TURN_LIMIT_S) -> RunResult:
        reader = result.reader
        assert reader is not None
        reader.join(limit_s)
        assert not reader.is_alive(), f"run did not end in {limit_s} s: {result.summary()}"
        if reader.failure is not None:
            raise AssertionError(f"event stream of {result.run_id} failed: {reader.failure!r}")
        return result

    def cancel_run(self, result: RunResult) -> Any:
        return self.api("POST", f"/api/runs/{result.run_id}/cancel", {})


def workspace_headers(workspace_id: str) -> dict[str, str]:
    """The identity headers the web client sends for a signed-in user's Personal Workspace
    (``workspaceProjectHeaders``): the daemon binds the project to it and every AMR run of the
    project then carries ``OPEN_DESIGN_WORKSPACE_ID``."""
    return {
        "X-OD-Workspace-Id": workspace_id,
        "X-OD-Workspace-Member-Id": f"member-of-{workspace_id}",
        "X-OD-Workspace-Type": "personal",
    }


class DaemonConversation:
    """A conversation as the web client drives it: a transcript that grows every turn."""

    def __init__(
        self,
        world: DaemonWorld,
        project_id: str,
        conversation_id: str,
        workspace_id: str | None = None,
    ) -> None:
        self.world = world
        self.project_id = project_id
        self.conversation_id = conversation_id
        self.headers = workspace_headers(workspace_id) if workspace_id else None
        self.history: list[tuple[str, str]] = []

    def start(self, prompt: str) -> RunResult:
        lines = [f"## {role}\n{text}" for role, text in self.history]
        lines.append(f"## user\n{prompt}")
        self.history.append(("user", prompt))
        transcript = "\n\n".join(lines)
        return self.world.start_run(
            self.project_id, self.conversation_id, prompt, transcript, self.headers
        )

    def finish(self, result: RunResult) -> RunResult:
        self.world.wait_run(result)
        self.history.append(("assistant", result.text))
        return result

    def turn(self, prompt: str) -> RunResult:
        return self.finish(self.start(prompt))
