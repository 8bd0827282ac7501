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
directory is removed when the proxy stops. A proxy that could not clean up (killed) leaves
its directory behind: each directory holds a lock (``flock``) for its proxy's lifetime, and a
proxy creating its own removes every one whose lock is free. Values are never logged.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import shlex
import shutil
import tempfile
from typing import Final

__all__ = ["ToolEnv", "render", "sweep"]

_PREFIX: Final = "acp-proxy-env-"
_LOCK: Final = ".lock"
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
        self._lock: int | None = None  #: held (flock) while the directory is in use
        self._files: dict[object, str] = {}
        #: what each file holds now: an unchanged file is not written again (most turns
        #: forward nothing, and two file writes per turn would cost more than the proxy's
        #: whole share of a warm turn)
        self._written: dict[str, bytes] = {}

    def _directory(self) -> str:
        if self._dir is None or not os.path.isdir(self._dir):
            base = os.environ.get("XDG_RUNTIME_DIR")
            parent = base if base and os.path.isdir(base) else tempfile.gettempdir()
            sweep(parent)
            self._release_lock()
            directory = tempfile.mkdtemp(prefix=_PREFIX, dir=parent)  # mode 0700
            # Locked before it has its name: a sweeper never sees it unlocked.
            fd = os.open(
                os.path.join(directory, f"{_LOCK}.new"),
                os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC,
                0o600,
            )
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(os.path.join(directory, f"{_LOCK}.new"), os.path.join(directory, _LOCK))
            self._dir, self._lock = directory, fd
        return self._dir

    def _release_lock(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

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
        self._release_lock()

    def _write(self, path: str, env: dict[str, str]) -> None:
        text = render(env, self.chain).encode()
        if self._written.get(path) == text:
            return  # (no stat: this runs twice per turn, and only this proxy writes the file)
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


def sweep(parent: str) -> list[str]:
    """Remove the environment directories in ``parent`` whose proxy is gone (its lock is
    free: it was killed and could not clean up); returns them. Directories of other users,
    of running proxies, and without a lock (older versions, or being created) stay."""
    removed: list[str] = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    for entry in entries:
        try:
            if not entry.name.startswith(_PREFIX) or not entry.is_dir(follow_symlinks=False):
                continue
            if entry.stat(follow_symlinks=False).st_uid != os.getuid():
                continue
            fd = os.open(
                os.path.join(entry.path, _LOCK), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW
            )
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # its proxy is running
        finally:
            os.close(fd)  # (closing drops the lock taken, if any)
        shutil.rmtree(entry.path, ignore_errors=True)
        removed.append(entry.path)
    return removed
