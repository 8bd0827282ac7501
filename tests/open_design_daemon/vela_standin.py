"""A stand-in for ``vela``, the open-design daemon's AMR agent binary (closed source, not here).

    vela_standin.py --config CONFIG.json ARGS...

The daemon runs its agent binary (``VELA_BIN``) for a handful of non-ACP subcommands and for the
ACP entry point ``agent run --runtime opencode``. This answers exactly what the daemon at
``NeuralStudioKr/ns-open-design@e00d0bc56e2e`` parses (``apps/daemon/src/runtimes/defs/amr.ts``):

* ``--version``: one line;
* ``model list --all --format json`` / ``model preset --format json``:
  ``{"source": "remote"|"preset", "data": [{"id", "enabled", "default"}]}`` listing the fake
  model (``fake/echo-1``, the id opencode's ``model`` config option takes);
* ``billing summary --format json``: ``{"balanceUsd", "membershipTier"}``;
* ``models``: the legacy plain list; ``login``: exits 0.

``agent run --runtime opencode`` starts the real ``opencode acp`` (offline: private HOME and XDG
dirs, every model at the fake model server, all from the config file) as a child sharing this
process's stderr, and relays both directions line by line, adapting the few points where, by
the daemon's code and its own fake (``/work/shared/open-design.md``), vela's ACP differs from
opencode's. These are modelled, not taken from vela (closed source):

* ``session/load {sessionId, cwd}`` (no ``mcpServers``) is sent on as opencode's
  ``session/resume`` (no replay: the daemon would render a replay as new output); its result
  gets ``sessionId`` and ``openCodeSessionId``; its error becomes vela's lost-session error
  ``-32600 {"kind": "resume_failed"}``, the one the daemon reseeds on;
* a ``session/new`` result gets ``openCodeSessionId`` (= ``sessionId``), the durable handle;
* when a ``session/prompt`` carries ``[[standin-stderr:NAME]]``, the line ``STDERR_LINES[NAME]``
  is written to stderr before the prompt is passed on (vela reports the upstream's retry
  status there; the daemon classifies account failures from it).

Every invocation is appended to the config's ``log`` (JSON lines: argv, pid, ppid, which of
the per-run variables were set), so tests can tell a run through the proxy from a run the
bridge handed straight to this binary (``--fallback``). Standard library only.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

MODEL_ID = "fake/echo-1"
ACP_ENTRY = ["agent", "run", "--runtime", "opencode"]

#: lines written to stderr on ``[[standin-stderr:NAME]]``. ``tier`` is the shape vela gives an
#: upstream retry status: the daemon's ``promotedAmrStderrPayload`` needs
#: ``opencode_event_stream_failure``/``session.status`` and ``retry``, and
#: ``classifyAmrAccountFailure`` maps ``tier_model_not_entitled`` to AMR_TIER_UPGRADE_REQUIRED.
STDERR_LINES = {
    "tier": (
        "opencode_event_stream_failure: session.status retry attempt=1 "
        'error={"code":"tier_model_not_entitled","message":"this model needs a higher plan"}'
    ),
}
#: per-run variables whose presence is logged (never their values)
LOGGED_VARS = (
    "OD_TOOL_TOKEN",
    "OD_DAEMON_URL",
    "OPEN_DESIGN_RUN_ID",
    "OPEN_DESIGN_SESSION_ID",
    "OPEN_DESIGN_WORKSPACE_ID",
    "BASH_ENV",
)


def _log(config: dict[str, Any], **fields: Any) -> None:
    path = config.get("log")
    if not path:
        return
    entry = {"t": time.time(), "pid": os.getpid(), "ppid": os.getppid(), **fields}
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps(entry) + "\n")


def _models(source: str) -> dict[str, Any]:
    return {
        "source": source,
        "data": [{"id": MODEL_ID, "enabled": True, "default": True, "inputPriceUsdPerMillion": 0}],
    }


def _answer(argv: list[str]) -> tuple[int, str]:
    """(exit code, stdout) of a non-ACP subcommand."""
    if argv[:1] in (["--version"], ["version"]):
        return 0, "vela 0.0.0-standin (acp-proxy tests)\n"
    if argv[:2] == ["model", "list"]:
        return 0, json.dumps(_models("remote")) + "\n"
    if argv[:2] == ["model", "preset"]:
        return 0, json.dumps(_models("preset")) + "\n"
    if argv[:1] == ["models"]:
        return 0, f"{MODEL_ID}\n"
    if argv[:2] == ["billing", "summary"]:
        return 0, json.dumps({"balanceUsd": "100.00", "membershipTier": "max"}) + "\n"
    if argv[:1] == ["login"]:
        return 0, "already signed in (stand-in)\n"
    return 2, ""


def _marker_lines(text: str) -> list[str]:
    """The stderr lines a prompt asks for (``[[standin-stderr:NAME]]``)."""
    return [v for k, v in STDERR_LINES.items() if f"[[standin-stderr:{k}]]" in text]


RESUME_FAILED = {
    "code": -32600,
    "message": "the resumed session could not be loaded",
    "data": {"kind": "resume_failed", "phase": "session_load", "retryable": True},
}


class Relay:
    """Both directions between the client (our stdio) and opencode, adapted as vela is."""

    def __init__(self, config: dict[str, Any], child: subprocess.Popen[bytes]) -> None:
        self.config = config
        self.child = child
        self.lock = threading.Lock()
        self.calls: dict[Any, tuple[str, dict[str, Any]]] = {}  #: id -> (method, params)

    def to_agent(self, message: dict[str, Any]) -> dict[str, Any]:
        method, params = message.get("method"), message.get("params") or {}
        if method == "session/prompt":
            for text in _marker_lines(json.dumps(params)):
                _log(self.config, stderr_line=text)
                sys.stderr.write(text + "\n")
                sys.stderr.flush()
        if "id" in message and method in ("session/new", "session/load"):
            with self.lock:
                self.calls[message["id"]] = (method, params)
        if method == "session/load":
            resume = {"mcpServers": [], **params}
            return {**message, "method": "session/resume", "params": resume}
        return message

    def to_client(self, message: dict[str, Any]) -> dict[str, Any]:
        if "method" in message or "id" not in message:
            return message
        with self.lock:
            call = self.calls.pop(message["id"], None)
        if call is None:
            return message
        method, params = call
        result = message.get("result")
        if method == "session/load" and "error" in message:
            _log(self.config, load_error=message["error"])
            return {"jsonrpc": "2.0", "id": message["id"], "error": RESUME_FAILED}
        if isinstance(result, dict) and method == "session/load":
            handle = params.get("sessionId")
            result = {**result, "sessionId": handle, "openCodeSessionId": handle}
        elif isinstance(result, dict) and result.get("sessionId"):
            result = {**result, "openCodeSessionId": result["sessionId"]}
        return {**message, "result": result}


def _lines(fd: int) -> Any:
    pending = b""
    while data := os.read(fd, 65536):
        pending += data
        *lines, pending = pending.split(b"\n")
        yield from lines
    if pending:
        yield pending


def _adapt(line: bytes, adapt: Any) -> bytes:
    try:
        message = json.loads(line)
    except ValueError:
        return line
    if not isinstance(message, dict):
        return line
    return json.dumps(adapt(message), separators=(",", ":")).encode()


def _run_agent(config: dict[str, Any]) -> int:
    """Run opencode as a child sharing stderr, relaying stdin and stdout; ends when it does."""
    env = {**os.environ, **config.get("env", {})}
    child = subprocess.Popen(
        [config["opencode"], "acp"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        cwd=config.get("cwd") or None,
    )
    relay = Relay(config, child)

    def forward(signum: int, _frame: object) -> None:
        if child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    threading.Thread(target=_stdin_to_agent, args=(relay,), daemon=True).start()
    out = threading.Thread(target=_agent_to_stdout, args=(relay,), daemon=True)
    out.start()
    code = child.wait()
    out.join(5)
    return code


def _stdin_to_agent(relay: Relay) -> None:
    """Client -> opencode; closes opencode's stdin at end of input."""
    stdin = relay.child.stdin
    assert stdin is not None
    try:
        for line in _lines(0):
            stdin.write(_adapt(line, relay.to_agent) + b"\n")
            stdin.flush()
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            stdin.close()


def _agent_to_stdout(relay: Relay) -> None:
    """opencode -> client, until opencode closes its stdout."""
    stdout = relay.child.stdout
    assert stdout is not None
    with contextlib.suppress(OSError):
        for line in _lines(stdout.fileno()):
            os.write(1, _adapt(line, relay.to_client) + b"\n")


def main(args: list[str]) -> int:
    if len(args) < 2 or args[0] != "--config":
        sys.stderr.write("usage: vela_standin.py --config CONFIG.json ARGS...\n")
        return 2
    config = json.loads(Path(args[1]).read_text())
    argv = args[2:]
    _log(
        config,
        argv=argv,
        vars=[v for v in LOGGED_VARS if os.environ.get(v)],
        # the billing scope a process starts with (an id, not a secret): what per_process_env
        # must keep exact
        workspace=os.environ.get("OPEN_DESIGN_WORKSPACE_ID"),
    )
    if argv[:4] == ACP_ENTRY:
        code = _run_agent(config)
        _log(config, argv=argv, exit=code)
        sys.stdout.flush()
        os._exit(code & 0xFF)  # the stdin reader may still be blocked: do not wait for it
    code, out = _answer(argv)
    if code == 2:
        sys.stderr.write(f"vela (stand-in): unknown command {argv!r}\n")
    sys.stdout.write(out)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
