"""Running the real ``opencode acp`` offline: where it is, and the private environment it needs.

Shared by the opencode test suite and ``bench/opencode_turn.py``. See
``scripts/install-opencode.sh`` for the install (repo-local, in ``.opencode/``).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.real_agent.world import private_env

from .fake_model import opencode_config

__all__ = [
    "INSTALL_HINT",
    "OPENCODE_BIN",
    "OPENCODE_PREFIX",
    "OpencodeHome",
    "agent_command",
    "installed",
    "prime",
]

REPO = Path(__file__).resolve().parents[2]
OPENCODE_PREFIX = REPO / ".opencode"
OPENCODE_BIN = OPENCODE_PREFIX / "node_modules" / ".bin" / "opencode"
#: the config-dir template with @opencode-ai/plugin pre-installed by the install script
CONFIG_TEMPLATE = OPENCODE_PREFIX / "config" / "opencode"
INSTALL_HINT = "opencode not installed: run scripts/install-opencode.sh"

#: environment that keeps opencode offline and quiet (see /work/shared/opencode-offline.md)
OFFLINE_ENV = {
    "OPENCODE_DISABLE_MODELS_FETCH": "1",
    "OPENCODE_DISABLE_AUTOUPDATE": "1",
    "OPENCODE_DISABLE_DEFAULT_PLUGINS": "1",
    "OPENCODE_DISABLE_LSP_DOWNLOAD": "1",
    "OPENCODE_DISABLE_SHARE": "1",
    "OPENCODE_DISABLE_CLAUDE_CODE": "1",
    "OPENCODE_DISABLE_EXTERNAL_SKILLS": "1",
}


def installed() -> bool:
    """Whether ``scripts/install-opencode.sh`` has been run."""
    return OPENCODE_BIN.exists() and os.access(OPENCODE_BIN, os.X_OK)


def agent_command(cwd: str | os.PathLike[str]) -> list[str]:
    """The agent command line for the proxy (or for spawning on stdio), started in ``cwd``.

    opencode treats the directory it starts in as a project: it walks up looking for ``.git``,
    ``AGENTS.md`` and ``.opencode/`` config dirs, and writes a ``.gitignore`` and runs
    ``npm install`` in each ``.opencode/`` it finds. Started from this repository it would take
    the install dir ``.opencode/`` for a config dir, so every process is started in ``cwd`` (a
    directory outside any repository) through ``env -C``, which ``exec``s: the pid the proxy
    sees is opencode's own.
    """
    return ["env", "-C", str(cwd), str(OPENCODE_BIN), "acp"]


@dataclass
class OpencodeHome:
    """A private HOME + XDG_* tree for opencode, stable for as long as it exists.

    opencode keeps its own session database in ``$XDG_DATA_HOME/opencode/``: every agent process
    started with the same home sees the sessions earlier ones created, so ``session/resume`` and
    ``session/load`` work across agent restarts. ``work`` is a directory outside any git
    repository, to use as the session ``cwd``.
    """

    root: Path
    #: a primed data dir (see :func:`prime`) whose database is copied in, if given
    data_template: Path | None = None

    def __post_init__(self) -> None:
        for sub in ("home", "data", "state", "cache", "config/opencode", "work"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._install_plugin()
        if self.data_template is not None:
            source = self.data_template / "opencode"
            target = self.root / "data" / "opencode"
            target.mkdir(exist_ok=True)
            for db in source.glob("opencode.db*"):
                if not (target / db.name).exists():
                    shutil.copy2(db, target / db.name)

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def config_dir(self) -> Path:
        return self.root / "config" / "opencode"

    def _install_plugin(self) -> None:
        """Make opencode's start-up ``npm install @opencode-ai/plugin`` a no-op (no network).

        The lock files are copied and ``node_modules`` is a symlink to the template the install
        script filled, so each home costs a few KB instead of a 60 MB copy.
        """
        if not CONFIG_TEMPLATE.exists():
            return
        for name in ("package.json", "package-lock.json"):
            source = CONFIG_TEMPLATE / name
            if source.exists() and not (self.config_dir / name).exists():
                shutil.copy2(source, self.config_dir / name)
        link = self.config_dir / "node_modules"
        if not link.exists():
            link.symlink_to(CONFIG_TEMPLATE / "node_modules", target_is_directory=True)

    def env(
        self,
        base_url: str,
        *,
        permission: dict[str, Any] | None = None,
        extra: dict[str, str] | None = None,
    ) -> dict[str, str]:
        """The agent's environment: offline, private dirs, every model at ``base_url``."""
        env = private_env(
            {
                **OFFLINE_ENV,
                "HOME": str(self.root / "home"),
                "XDG_DATA_HOME": str(self.root / "data"),
                "XDG_STATE_HOME": str(self.root / "state"),
                "XDG_CACHE_HOME": str(self.root / "cache"),
                "XDG_CONFIG_HOME": str(self.root / "config"),
                "OPENCODE_CONFIG_CONTENT": json.dumps(opencode_config(base_url)),
            }
        )
        if permission is not None:
            env["OPENCODE_PERMISSION"] = json.dumps(permission)
        if extra:
            env.update(extra)
        return env


def prime(home: OpencodeHome, base_url: str, *, timeout_s: float = 60.0) -> float:
    """Start ``opencode acp`` once in ``home`` (``initialize``, then stdin closed) and wait.

    opencode creates and migrates its session database at its first start; two processes doing
    that at once on the same data dir race, and one exits with ``database is locked``. A primed
    data dir (or a copy of it: ``OpencodeHome(..., data_template=home.root / "data")``) is past
    that point. Returns the seconds the whole run took.
    """
    started = time.monotonic()
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": 1, "clientCapabilities": {}},
    }
    with subprocess.Popen(
        agent_command(home.work),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=home.env(base_url),
        start_new_session=True,
    ) as process:
        assert process.stdin is not None and process.stdout is not None
        try:
            process.stdin.write(json.dumps(init).encode() + b"\n")
            process.stdin.flush()
            deadline = time.monotonic() + timeout_s
            buffer = b""
            while b"\n" not in buffer:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([process.stdout], [], [], left)[0]:
                    raise TimeoutError(f"opencode did not answer initialize in {timeout_s} s")
                data = os.read(process.stdout.fileno(), 65536)
                if not data:
                    err = process.stderr.read() if process.stderr else b""
                    raise RuntimeError(f"opencode exited while priming: {err[-2000:]!r}")
                buffer += data
            process.stdin.close()
            process.wait(timeout=timeout_s)
        finally:
            if process.returncode is None:
                process.kill()
                process.wait()
    return time.monotonic() - started
