"""Configuration: one frozen struct, every default next to its reason.

Loaded once in ``__main__`` (TOML file, then command-line options) and passed explicitly;
there is no global configuration.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Final, Literal

import msgspec

from .protocol import DEFAULT_MAX_LINE_BYTES

__all__ = ["DEFAULT_CLIENT_CAPABILITIES", "Config", "ConfigError", "load_config"]

#: The agent sees one fixed client capability set (acp-notes §11.3): no fs, no terminal, so the
#: agent uses its own tools and never depends on which client happens to be attached.
DEFAULT_CLIENT_CAPABILITIES: Final[dict[str, Any]] = {
    "fs": {"readTextFile": False, "writeTextFile": False},
    "terminal": False,
}


class ConfigError(Exception):
    """The configuration is invalid; the message says which key and why."""


class Config(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Every setting of ``acp-proxy serve``."""

    #: Unix socket the proxy listens on.
    socket: str = ""
    #: SQLite database file (created if missing).
    db: str = ""
    #: The agent command line, e.g. ``["opencode", "acp"]``.
    agent_command: list[str] = msgspec.field(default_factory=list)
    #: Working directory of agents started before their session is known (warm spares) and
    #: of sessions whose cwd does not exist on this host. Empty: the proxy's own. Some agents
    #: (opencode) treat it as a project and write config there: point it at an empty dir.
    agent_cwd: str = ""
    #: Name recorded with each session; later, one proxy may serve several agent profiles.
    agent_profile: str = "default"
    #: Socket file mode: owner only, since anyone who can connect can drive the agents.
    socket_mode: int = 0o600
    #: Longest accepted NDJSON line, both sides. Agents send multi-MB lines.
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    #: Agents kept spawned and initialized ahead of ``session/new``. One spare hides the agent's
    #: start-up (≈1.5 s for opencode) from the first turn and gives ``initialize`` its answer.
    warm_spares: int = 1
    #: Spawn → ``initialize`` answered. opencode needs ≈1.5 s; codex is reported at 15-25 s.
    agent_start_timeout_s: float = 60.0
    #: Close stdin, wait this long, SIGTERM the process group, wait again, then SIGKILL.
    kill_grace_s: float = 2.0
    #: ``clientCapabilities`` sent to every agent.
    client_capabilities: dict[str, Any] = msgspec.field(
        default_factory=lambda: dict(DEFAULT_CLIENT_CAPABILITIES)
    )
    #: Answer to ``session/request_permission`` when no client is attached: ``cancelled``, or
    #: ``allow``/``reject`` to pick the first option of that kind.
    unattached_permission: Literal["cancelled", "allow", "reject"] = "cancelled"
    #: What a turn does when its client disconnects: keep running (recorded, replayed later)
    #: or be cancelled. The ``open-design`` profile defaults to ``cancel``: that daemon kills
    #: its bridge without ``session/cancel`` when its watchdog fires, and the turn it gave up
    #: must neither run on unseen nor block the next message (``turn_in_progress``).
    on_client_disconnect: Literal["continue", "cancel"] = "continue"
    #: Bytes queued to one client before it counts as stuck and is disconnected. A slow client
    #: must not stall its agent or the recording (the turn goes on without it).
    client_outbox_bytes: int = 256 * 1024 * 1024
    #: An agent whose session saw no activity for this long is stopped (never mid-turn, never
    #: with a request pending); the conversation comes back through the restore ladder on next
    #: use. Peers found 100 ms-5 s TTLs made every message respawn (openclaw #39724, #66389);
    #: 30 min keeps a human's pauses warm. 0 disables.
    idle_timeout_s: float = 1800.0
    #: Agent processes serving conversations at most, counted from the moment one is asked
    #: for until it has exited (spares not counted); the least recently used idle one is
    #: stopped to make room, and a request waits for a slot up to ``agent_start_timeout_s``.
    #: Each agent costs 100-600 MB (opencode 320-620 MB).
    max_live_agents: int = 32
    #: Prompts that wait behind a session's running turn (FIFO); one more is refused with
    #: -32010 ``turn_in_progress``. A client that sends its next message early is served in
    #: order; a runaway one is told.
    max_queued_prompts: int = 8
    #: How the proxy answers clients: ``standard`` ACP, or ``open-design`` for daemons that
    #: cannot take a replay (load answers sessionId/openCodeSessionId and replays nothing; a
    #: session that cannot be restored is an error with ``data.kind = "resume_failed"``).
    client_profile: Literal["standard", "open-design"] = "standard"
    #: With ``per_process_env``: how many recently seen sets of its values keep a warm spare
    #: each (a new conversation in a known workspace starts warm). Each holds a
    #: ``max_live_agents`` slot while idle, and is stopped first when a conversation needs one.
    env_spares: int = 4
    #: Environment variables that belong to one agent *process* (billing, tracing): when a
    #: client (through ``acp-proxy attach --forward-env``) brings other values, the agent is
    #: restarted through the restore ladder, so a turn never runs under another turn's values.
    per_process_env: list[str] = msgspec.field(default_factory=list)
    #: Start every agent with ``BASH_ENV`` naming a private 0600 file that is rewritten before
    #: each prompt with the variables the prompting client's bridge forwarded: the turn's
    #: values reach the agent's bash tool calls (``tool_env.py``). Off: tools see only the
    #: agent's own environment.
    tool_env: bool = True
    #: Whether the history seeded into a brand new agent session (last rung of the restore
    #: ladder) includes the agent's thoughts. Off: they are long and rarely useful as context.
    seed_thoughts: bool = False
    #: structlog level for the JSON lines on stderr.
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    #: On SIGTERM, running turns get this long to finish and deliver before they are
    #: cancelled (``proxy_stopping``). 25 s fits inside Kubernetes' default 30 s grace
    #: period, with room for stopping the agents after it.
    drain_timeout_s: float = 25.0
    #: ``HOST:PORT`` to serve Prometheus metrics at ``/metrics``; empty: off. Bind loopback
    #: (or the pod's address) only: the metrics name no secrets but are nobody else's business.
    metrics_address: str = ""


def load_config(path: str | os.PathLike[str] | None, **overrides: Any) -> Config:
    """Read a TOML file (optional), apply non-``None`` overrides, validate.

    Raises:
        ConfigError: unknown key, wrong type or an invalid value.
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from None
    data.update({k: v for k, v in overrides.items() if v is not None})
    if data.get("client_profile") == "open-design":
        data.setdefault("on_client_disconnect", "cancel")
    try:
        config = msgspec.convert(data, Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid configuration: {exc}") from None
    if not config.socket:
        raise ConfigError("no socket path: pass --socket or set ACP_PROXY_SOCKET")
    if not config.db:
        raise ConfigError("no database path: pass --db or set ACP_PROXY_DB")
    if not config.agent_command:
        raise ConfigError("no agent command: put it after `--`, e.g. `-- opencode acp`")
    if config.env_spares < 0:
        raise ConfigError("env_spares must be >= 0")
    if config.warm_spares < 0 or config.kill_grace_s < 0 or config.max_line_bytes < 1024:
        raise ConfigError("warm_spares and kill_grace_s must be >= 0, max_line_bytes >= 1024")
    if config.idle_timeout_s < 0 or config.max_live_agents < 1 or config.max_queued_prompts < 0:
        raise ConfigError(
            "idle_timeout_s must be >= 0, max_live_agents >= 1 and max_queued_prompts >= 0"
        )
    if config.drain_timeout_s < 0:
        raise ConfigError("drain_timeout_s must be >= 0")
    if config.metrics_address and not _valid_address(config.metrics_address):
        raise ConfigError(
            f"metrics_address {config.metrics_address!r} is not HOST:PORT (e.g. 127.0.0.1:9464)"
        )
    return config


def _valid_address(address: str) -> bool:
    host, sep, port = address.rpartition(":")
    return bool(sep and host and port.isdigit() and 0 < int(port) < 65536)
