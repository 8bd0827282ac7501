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
    #: SQLite database file (created if missing), or a PostgreSQL URL
    #: (``postgresql://USER@HOST/DB``) shared by several replicas.
    db: str = ""
    #: Replicas on one PostgreSQL database: how long a session's lease lasts unless its owner
    #: renews it (every third of it, while it keeps the session): how long a conversation
    #: whose replica died waits before another replica can take it over.
    lease_ttl_s: float = 10.0
    #: Where clients can reach this replica (host:port, URL): told to clients that reach
    #: another replica with a session this one owns (``session_owned_elsewhere``).
    advertise: str = ""
    #: This replica's id in the leases; empty: host name, pid and random bits (unique per run).
    replica_id: str = ""
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
    #: Conversations one agent process carries at most. A new conversation takes a place on a
    #: live agent with the same per-process environment before a spare or a spawn. 1 keeps
    #: one process per conversation (isolation: a crash, a leak or a stuck tool touches one
    #: conversation); more trades that for memory (opencode: ~400 MB per process, a few MB
    #: per extra session). See README "Density".
    max_sessions_per_agent: int = 1
    #: Budget for the resident memory (PSS where readable) of every agent's process tree,
    #: spares included, in MiB; 0: none. Over it, spares and then the least recently used
    #: idle agents are stopped (never one in a turn); a new agent that would not fit waits
    #: up to ``agent_start_timeout_s`` for one to become idle, then fails (``memory_budget``).
    max_agents_memory_mb: int = 0
    #: The idle limit of a conversation created here whose client never came back after its
    #: first turn (acpx ``exec``: session/new, one prompt, gone, no session/close), while no
    #: client is attached. 5 min outlasts a human's usual pause before a follow-up (15-120 s)
    #: and frees a 300-600 MB agent six times sooner than ``idle_timeout_s``. 0: off.
    unreturned_idle_timeout_s: float = 300.0
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
    #: Every warm spare opens one session ahead in the directory conversations with its
    #: environment used last, so a new conversation there (``session/new`` with no MCP
    #: servers) is answered at once, without the agent's per-directory bootstrap
    #: (``preopen.py``). Unused ones are resumed by the next spare, never piled up.
    preopen_sessions: bool = True
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
    #: Client connections served at once; more are refused with one error line. 0: derived at
    #: start from the open-file limit (raised to its hard limit), minus what the agents
    #: (4 descriptors each, ``max_live_agents`` + ``warm_spares``) and the store need, so a
    #: client opening connections in a loop can never starve the agents of descriptors.
    max_connections: int = 0
    #: Unix uids allowed to connect (checked with ``SO_PEERCRED``), besides the proxy's own
    #: uid and root, which are always allowed. Lets a group-shared socket admit named users.
    allowed_uids: list[int] = msgspec.field(default_factory=list)
    #: ``any``: every admitted peer may use every session. ``creator``: a session is listed,
    #: loaded, prompted, cancelled, closed or deleted only by the uid that created it.
    session_access: Literal["any", "creator"] = "any"
    #: Directories a session's ``cwd`` must be inside (after resolving symlinks). Empty: any
    #: existing directory.
    allowed_roots: list[str] = msgspec.field(default_factory=list)
    #: Agents inherit the proxy's environment minus the proxy's own configuration
    #: (``ACP_PROXY_*``). Non-empty: only these variables pass (a name, or a prefix ending in
    #: ``*`` such as ``LC_*``); list PATH and HOME too if the agent needs them.
    agent_env_allow: list[str] = msgspec.field(default_factory=list)
    #: Bytes queued to one agent's stdin before the clients sending to it wait (backpressure);
    #: an agent that leaves this plus one ``max_line_bytes`` line unread is stuck and stopped.
    agent_stdin_bytes: int = 16 * 1024 * 1024
    #: Global budget for what clients make the proxy buffer (unterminated lines and queued
    #: output, replays included). Over it, the connection holding the most is disconnected.
    #: Worst case is this plus one ``max_line_bytes`` line per connection being read.
    max_buffered_bytes: int = 512 * 1024 * 1024
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
    if (
        config.max_sessions_per_agent < 1
        or config.max_agents_memory_mb < 0
        or config.unreturned_idle_timeout_s < 0
    ):
        raise ConfigError(
            "max_sessions_per_agent must be >= 1, max_agents_memory_mb and "
            "unreturned_idle_timeout_s >= 0"
        )
    if config.drain_timeout_s < 0:
        raise ConfigError("drain_timeout_s must be >= 0")
    if config.metrics_address and not _valid_address(config.metrics_address):
        raise ConfigError(
            f"metrics_address {config.metrics_address!r} is not HOST:PORT (e.g. 127.0.0.1:9464)"
        )
    if config.lease_ttl_s <= 0:
        raise ConfigError("lease_ttl_s must be > 0")
    if config.max_connections < 0 or config.agent_stdin_bytes < 1024:
        raise ConfigError("max_connections must be >= 0 and agent_stdin_bytes >= 1024")
    if config.max_buffered_bytes < config.max_line_bytes:
        raise ConfigError("max_buffered_bytes must be >= max_line_bytes")
    if any(not os.path.isabs(root) for root in config.allowed_roots):
        raise ConfigError("allowed_roots must be absolute paths")
    return config


def _valid_address(address: str) -> bool:
    host, sep, port = address.rpartition(":")
    return bool(sep and host and port.isdigit() and 0 < int(port) < 65536)
