"""Command line: ``acp-proxy serve|attach|status|health|sessions|demo``."""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # not `typing`'s: `attach` must start without importing it
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    import argparse

    from . import __version__, ops_cli, sessions_cli

    parser = argparse.ArgumentParser(
        prog="acp-proxy",
        description="A long-lived ACP sidecar: one warm agent per conversation, "
        "every session recorded in SQLite.",
    )
    parser.add_argument("--version", action="version", version=f"acp-proxy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve",
        help="listen on a unix socket and serve ACP clients",
        usage="acp-proxy serve --socket PATH --db PATH [--config FILE] -- AGENT_COMMAND [ARGS...]",
    )
    serve.add_argument(
        "--socket",
        default=os.environ.get("ACP_PROXY_SOCKET"),
        help="unix socket path (default: $ACP_PROXY_SOCKET)",
    )
    serve.add_argument(
        "--db",
        default=os.environ.get("ACP_PROXY_DB"),
        help="SQLite database path, or postgresql://USER@HOST/DB shared by replicas "
        "(default: $ACP_PROXY_DB)",
    )
    serve.add_argument(
        "--advertise",
        default=os.environ.get("ACP_PROXY_ADVERTISE"),
        help="this replica's address, told to clients that reach another replica with a "
        "session this one owns (default: $ACP_PROXY_ADVERTISE)",
    )
    serve.add_argument("--lease-ttl-s", type=float, help="session lease duration (replicas)")
    serve.add_argument("--replica-id", help="this replica's id in the leases (default: unique)")
    serve.add_argument("--config", help="TOML config file (keys as in config.example.toml)")
    serve.add_argument("--warm-spares", type=int, help="agents kept spawned ahead of session/new")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    serve.add_argument(
        "--allow-uid",
        type=int,
        action="append",
        help="a uid allowed to connect besides the proxy's own and root (repeatable)",
    )
    serve.add_argument(
        "--per-process-env",
        help="comma-separated variables whose change (forwarded by attach) restarts the agent",
    )
    serve.add_argument(
        "--client-profile",
        choices=["standard", "open-design"],
        help="how clients are answered (default: standard ACP)",
    )
    serve.add_argument(
        "--drain-timeout",
        type=float,
        metavar="SECONDS",
        help="on SIGTERM, how long running turns may finish before they are cancelled (25)",
    )
    serve.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (default: off)",
    )
    serve.add_argument(
        "--max-sessions-per-agent",
        type=int,
        metavar="N",
        help="conversations one agent process may carry (default 1: one process each)",
    )
    serve.add_argument(
        "--max-agents-memory-mb",
        type=int,
        metavar="MB",
        help="memory budget of all agent process trees, spares included (default 0: none)",
    )
    serve.add_argument(
        "--preopen-sessions",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="spares open a session ahead in the last used directory (default: on)",
    )
    serve.add_argument("agent", nargs=argparse.REMAINDER, help="-- AGENT_COMMAND [ARGS...]")
    sessions_cli.add_parser(sub, os.environ.get("ACP_PROXY_DB"))
    ops_cli.add_parsers(sub, os.environ.get("ACP_PROXY_SOCKET"))
    demo = sub.add_parser(
        "demo", help="run the proxy end to end on its embedded defaults (SQLite + fake agent)"
    )
    demo.add_argument("--dir", help="keep the socket, database and logs here (default: temp)")
    # `attach` never reaches this parser (see main): listed here for --help only.
    sub.add_parser(
        "attach",
        help="bridge stdio to a running proxy's socket (acp-proxy attach --help)",
        add_help=False,
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``acp-proxy`` console script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["attach"]:
        # The bridge runs per turn (twice for some clients): nothing but what it uses is
        # imported, not even argparse.
        from .attach import main as attach_main

        return attach_main(argv[1:])
    import anyio

    from . import ops_cli, sessions_cli
    from .config import ConfigError, load_config
    from .logs import configure_logging

    args = _parser().parse_args(argv)
    if args.command == "sessions":
        return sessions_cli.run(args)
    if args.command in ("status", "health"):
        return ops_cli.run(args)
    if args.command == "demo":
        from .demo import main as demo_main

        return demo_main(args.dir)
    agent = list(args.agent)
    if agent and agent[0] == "--":
        agent = agent[1:]
    try:
        config = load_config(
            args.config,
            socket=args.socket,
            db=args.db,
            advertise=args.advertise,
            lease_ttl_s=args.lease_ttl_s,
            replica_id=args.replica_id,
            agent_command=agent or None,
            warm_spares=args.warm_spares,
            log_level=args.log_level,
            client_profile=args.client_profile,
            drain_timeout_s=args.drain_timeout,
            metrics_address=args.metrics,
            allowed_uids=args.allow_uid,
            max_sessions_per_agent=args.max_sessions_per_agent,
            max_agents_memory_mb=args.max_agents_memory_mb,
            preopen_sessions=args.preopen_sessions,
            per_process_env=[n.strip() for n in args.per_process_env.split(",") if n.strip()]
            if args.per_process_env
            else None,
        )
    except ConfigError as exc:
        print(f"acp-proxy serve: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log_level)
    from .server import StartRefused, serve

    try:
        anyio.run(serve, config)
    except StartRefused as exc:
        from .failures import explain

        # The cause, when known, gets the fuller line (path, cause, fix).
        cause = exc.__cause__
        line = explain(cause, config.socket, config.db) if cause is not None else None
        print(line or f"acp-proxy serve: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    except Exception as exc:
        from .failures import explain

        line = explain(exc, config.socket, config.db)
        if line is None:
            raise  # not an operational failure: a bug, keep its traceback
        print(line, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
