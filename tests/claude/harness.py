"""Running the real ``claude-agent-acp`` offline: where it is, and the private environment it needs.

Shared by the claude test suite and ``bench/claude_turn.py``. See
``scripts/install-claude-agent.sh`` for the install (repo-local, in ``.claude-agent/``).

What keeps it offline and isolated (checked with ``unshare -n`` in
``test_claude.py::test_runs_without_a_network``):

* ``ANTHROPIC_BASE_URL`` at the local fake Messages API, a dummy ``ANTHROPIC_API_KEY``;
* ``CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1`` and the telemetry, error-reporting and
  auto-update switches off;
* a private ``HOME`` and ``CLAUDE_CONFIG_DIR`` (the CLI keeps each session's transcript in
  ``$CLAUDE_CONFIG_DIR/projects/``: every agent process started with the same dir finds the
  sessions earlier ones created, so ``session/resume`` and ``session/load`` work across agent
  restarts);
* ``$CLAUDE_CONFIG_DIR/plugins/blocklist.json`` written with a far-future ``fetchedAt``: each CLI
  start otherwise fetches a plugin blocklist in the background;
* ``IS_SANDBOX=1``: as root the SDK refuses ``--allow-dangerously-skip-permissions``, which the
  agent passes, unless it is set.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from tests.real_agent.world import private_env

__all__ = [
    "CLAUDE_AGENT_BIN",
    "CLAUDE_AGENT_PREFIX",
    "INSTALL_HINT",
    "OFFLINE_ENV",
    "ClaudeHome",
    "agent_command",
    "installed",
]

REPO = Path(__file__).resolve().parents[2]
CLAUDE_AGENT_PREFIX = REPO / ".claude-agent"
CLAUDE_AGENT_BIN = CLAUDE_AGENT_PREFIX / "node_modules" / ".bin" / "claude-agent-acp"
INSTALL_HINT = "claude-agent-acp not installed: run scripts/install-claude-agent.sh (make claude)"

#: environment that keeps the Claude Code CLI offline and quiet
OFFLINE_ENV = {
    "ANTHROPIC_API_KEY": "sk-ant-fake-key-for-tests",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "DISABLE_TELEMETRY": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_BUG_COMMAND": "1",
    "IS_SANDBOX": "1",
}
#: the plugin blocklist the CLI would fetch at each start, as if fetched in the far future
BLOCKLIST = {"fetchedAt": "2999-01-01T00:00:00.000Z", "plugins": []}


def installed() -> bool:
    """Whether ``scripts/install-claude-agent.sh`` has been run."""
    return CLAUDE_AGENT_BIN.exists() and os.access(CLAUDE_AGENT_BIN, os.X_OK)


def agent_command() -> list[str]:
    """The agent command line for the proxy (or for spawning on stdio)."""
    return [str(CLAUDE_AGENT_BIN)]


@dataclass
class ClaudeHome:
    """A private HOME + CLAUDE_CONFIG_DIR, stable for as long as it exists.

    ``work`` is a directory outside any git repository, to use as the session ``cwd``.
    """

    root: Path

    def __post_init__(self) -> None:
        for sub in ("home", "config/plugins", "work"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        blocklist = self.config_dir / "plugins" / "blocklist.json"
        if not blocklist.exists():
            blocklist.write_text(json.dumps(BLOCKLIST))

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def config_dir(self) -> Path:
        return self.root / "config"

    @property
    def marker(self) -> str:
        """``NAME=value`` in the environment of every process started with this home."""
        return f"CLAUDE_CONFIG_DIR={self.config_dir}"

    def env(self, base_url: str, *, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The agent's environment: offline, private dirs, the model at ``base_url``."""
        return private_env(
            {
                **OFFLINE_ENV,
                "HOME": str(self.root / "home"),
                "CLAUDE_CONFIG_DIR": str(self.config_dir),
                "ANTHROPIC_BASE_URL": base_url,
                **(extra or {}),
            }
        )
