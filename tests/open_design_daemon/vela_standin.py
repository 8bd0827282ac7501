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
process's stdout and stderr, and relays stdin to it line by line. Relaying lets it act like vela
does on stderr: when a ``session/prompt`` carries ``[[standin-stderr:NAME]]``, the line
``STDERR_LINES[NAME]`` is written to stderr before the prompt is passed on (vela reports the
upstream's retry status there, and the daemon classifies account failures from it).

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


def _marker_lines(line: bytes) -> list[str]:
    """The stderr lines a ``session/prompt`` line asks for (``[[standin-stderr:NAME]]``)."""
    if b"session/prompt" not in line or b"[[standin-stderr:" not in line:
        return []
    text = line.decode("utf-8", "replace")
    return [v for k, v in STDERR_LINES.items() if f"[[standin-stderr:{k}]]" in text]


def _run_agent(config: dict[str, Any]) -> int:
    env = {**os.environ, **config.get("env", {})}
    child = subprocess.Popen(
        [config["opencode"], "acp"],
        stdin=subprocess.PIPE,
        env=env,
        cwd=config.get("cwd") or None,
    )
    assert child.stdin is not None

    def forward(signum: int, _frame: object) -> None:
        if child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    pending = b""
    try:
        while True:
            data = os.read(0, 65536)
            if not data:
                break
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                for text in _marker_lines(line):
                    _log(config, stderr_line=text)
                    sys.stderr.write(text + "\n")
                    sys.stderr.flush()
                child.stdin.write(line + b"\n")
            child.stdin.flush()
        if pending:
            child.stdin.write(pending)
    except (BrokenPipeError, OSError):
        pass
    finally:
        with contextlib.suppress(OSError):
            child.stdin.close()
    return child.wait()


def main(args: list[str]) -> int:
    if len(args) < 2 or args[0] != "--config":
        sys.stderr.write("usage: vela_standin.py --config CONFIG.json ARGS...\n")
        return 2
    config = json.loads(Path(args[1]).read_text())
    argv = args[2:]
    _log(config, argv=argv, vars=[v for v in LOGGED_VARS if os.environ.get(v)])
    if argv[:4] == ACP_ENTRY:
        code = _run_agent(config)
        _log(config, argv=argv, exit=code)
        return code
    code, out = _answer(argv)
    if code == 2:
        sys.stderr.write(f"vela (stand-in): unknown command {argv!r}\n")
    sys.stdout.write(out)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
