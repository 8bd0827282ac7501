"""Per-turn environment for the processes an agent starts for its tools.

A warm agent keeps the environment it was started with, but a client such as the open-design
daemon sets new values every run (a tool token minted per run, the run id…) and tells the
agent to use them from its bash tool. So every agent is started with ``BASH_ENV`` naming a
file of its own, and before each prompt is forwarded the file is rewritten with the variables
the prompting client's bridge forwarded (``acp-proxy attach --forward-env``/
``--forward-env-prefix``). Non-interactive bash reads that file at the start of every
command, so the turn's tool calls see the turn's values while the agent process itself keeps
its own environment (variables it reads at start-up are ``Config.per_process_env``: a change
restarts the agent).

The files hold secrets: they live in a private directory (0700), each file is 0600 and
replaced atomically, emptied when the turn ends, removed when the agent exits, and the
directory is removed when the proxy stops. Values are never logged.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shlex
import shutil
import tempfile
from typing import Final

__all__ = ["ToolEnv", "render"]

_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_HEADER: Final = "# acp-proxy: the running turn's environment for tool processes (BASH_ENV)\n"


def render(env: dict[str, str], chain: str | None = None) -> str:
    """The shell text exporting ``env`` (names that are not shell identifiers are skipped);
    ``chain``: a ``BASH_ENV`` file of the proxy's own environment, sourced first."""
    lines = [_HEADER]
    if chain:
        lines.append(f"[ -r {shlex.quote(chain)} ] && . {shlex.quote(chain)}\n")
    for name in sorted(env):
        if _NAME.match(name):
            lines.append(f"export {name}={shlex.quote(env[name])}\n")
    return "".join(lines)


class ToolEnv:
    """The environment files of every agent process, one per agent (so one per session)."""

    def __init__(self, chain: str | None = None) -> None:
        #: the proxy's own BASH_ENV, if it had one: still read by the agents' shells
        self.chain = chain if chain is not None else os.environ.get("BASH_ENV")
        self._dir: str | None = None
        self._files: dict[object, str] = {}
        #: what each file holds now: an unchanged file is not written again (most turns
        #: forward nothing, and two file writes per turn would cost more than the proxy's
        #: whole share of a warm turn)
        self._written: dict[str, bytes] = {}

    def _directory(self) -> str:
        if self._dir is None or not os.path.isdir(self._dir):
            base = os.environ.get("XDG_RUNTIME_DIR")
            self._dir = tempfile.mkdtemp(
                prefix="acp-proxy-env-", dir=base if base and os.path.isdir(base) else None
            )  # mode 0700
        return self._dir

    def new_file(self, agent: object) -> str:
        """Create ``agent``'s (empty) file; returns its path, for ``BASH_ENV``."""
        path = os.path.join(self._directory(), f"agent-{secrets.token_hex(8)}.env")
        self._files[agent] = path
        self._write(path, {})
        return path

    def path(self, agent: object) -> str | None:
        """``agent``'s file, if it has one."""
        return self._files.get(agent)

    def write(self, agent: object, env: dict[str, str]) -> None:
        """Give ``agent``'s tool processes ``env`` from now on (replaces the whole file)."""
        path = self._files.get(agent)
        if path is not None:
            self._write(path, env)

    def clear(self, agent: object) -> None:
        """The turn is over: nothing of its values stays on disk."""
        self.write(agent, {})

    def remove(self, agent: object) -> None:
        """``agent`` has exited: its file goes."""
        path = self._files.pop(agent, None)
        if path is not None:
            self._written.pop(path, None)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def close(self) -> None:
        """Remove every file and the directory (the proxy is stopping)."""
        self._files.clear()
        self._written.clear()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def _write(self, path: str, env: dict[str, str]) -> None:
        text = render(env, self.chain).encode()
        if self._written.get(path) == text and os.path.exists(path):
            return
        tmp = f"{path}.{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(text)
            os.replace(tmp, path)  # a shell starting now reads the old file or the new one
            self._written[path] = text
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
