"""A throwaway PostgreSQL server for tests and benchmarks (``initdb`` + ``pg_ctl``).

The server lives in a temporary directory, listens on a unix socket there only (no TCP),
trusts local connections and is stopped (``pg_ctl stop -m immediate``) and deleted on exit.
PostgreSQL refuses to run as root: as root, the data directory is given to the unprivileged
``nobody`` user and the server binaries run under ``runuser -u nobody``.

The binaries come from Debian's ``postgresql`` package (``/usr/lib/postgresql/<ver>/bin``) or
``PATH``; `find_pg_bin` says why none is usable, for a clear pytest skip.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PostgresServer", "PostgresUnavailable", "find_pg_bin", "postgres_server", "query"]

_DB_USER = "acp"
_UNPRIVILEGED = "nobody"


class PostgresUnavailable(Exception):
    """No usable PostgreSQL server binaries on this machine; the message says what to do."""


@dataclass(frozen=True)
class PostgresServer:
    """A running throwaway server."""

    directory: Path
    socket_dir: Path
    port: int
    bin_dir: Path

    def url(self, database: str = "postgres") -> str:
        """A ``postgresql://`` URL for ``database`` over the unix socket."""
        return f"postgresql://{_DB_USER}@/{database}?host={self.socket_dir}&port={self.port}"

    def create_database(self, name: str) -> str:
        """Create an empty database; return its URL."""
        self._psql("postgres", f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, disconnecting whoever still uses it."""
        self._psql("postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _psql(self, database: str, sql: str) -> None:
        psql = shutil.which("psql") or str(self.bin_dir / "psql")
        subprocess.run(
            [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql, self.url(database)],
            check=True,
            capture_output=True,
            timeout=60,
        )


def find_pg_bin() -> Path:
    """The directory holding ``initdb`` and ``pg_ctl``.

    Raises:
        PostgresUnavailable: neither Debian's ``/usr/lib/postgresql/*/bin`` nor ``PATH`` has
            them.
    """
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    for directory in candidates:
        if (directory / "initdb").is_file() and (directory / "pg_ctl").is_file():
            return directory
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).resolve().parent
    raise PostgresUnavailable(
        "PostgreSQL server binaries (initdb, pg_ctl) not found: "
        "apt-get install -y postgresql (Debian) to run the PostgreSQL tests"
    )


def _runner() -> tuple[list[str], int | None, int | None]:
    """The command prefix that drops root, and the uid/gid to give the data directory."""
    if os.geteuid() != 0:
        return [], None, None
    runuser = shutil.which("runuser")
    if runuser is None:
        raise PostgresUnavailable("running as root without runuser: cannot drop to `nobody`")
    entry = pwd.getpwnam(_UNPRIVILEGED)
    return [runuser, "-u", _UNPRIVILEGED, "--"], entry.pw_uid, entry.pw_gid


@contextmanager
def postgres_server(
    *, fsync: bool = False, settings: dict[str, str] | None = None
) -> Iterator[PostgresServer]:
    """Start a PostgreSQL server in a temporary directory; stop and delete it on exit.

    Args:
        fsync: Whether the server fsyncs its WAL (off: tests survive a killed proxy, which is
            what they check, without paying for disk flushes on a shared machine).
        settings: More ``postgresql.conf`` settings.

    Raises:
        PostgresUnavailable: no server binaries, or the server did not start.
    """
    bin_dir = find_pg_bin()
    prefix, uid, gid = _runner()
    # Short path: a unix socket path is limited to ~100 bytes.
    directory = Path(tempfile.mkdtemp(prefix="acpx-pg-"))
    try:
        data = directory / "data"
        data.mkdir()
        if uid is not None and gid is not None:
            os.chown(directory, uid, gid)
            os.chown(data, uid, gid)
        os.chmod(directory, 0o755)
        os.chmod(data, 0o700)
        port = 5432  # only names the socket file: there is no TCP listener
        env = {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
        init = subprocess.run(
            [
                *prefix,
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                _DB_USER,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            capture_output=True,
            env=env,
            timeout=120,
        )
        if init.returncode != 0:
            raise PostgresUnavailable(f"initdb failed: {init.stderr.decode(errors='replace')}")
        conf = {
            "listen_addresses": "''",
            "unix_socket_directories": f"'{directory}'",
            "port": str(port),
            "fsync": "on" if fsync else "off",
            "synchronous_commit": "on",
            "full_page_writes": "on" if fsync else "off",
            "max_connections": "200",
            "shared_buffers": "'64MB'",
            **(settings or {}),
        }
        with (data / "postgresql.conf").open("a") as f:
            f.writelines(f"{key} = {value}\n" for key, value in conf.items())
        log = directory / "server.log"
        start = subprocess.run(
            [
                *prefix,
                str(bin_dir / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(log),
                "-w",
                "-t",
                "60",
                "start",
            ],
            capture_output=True,
            env=env,
            timeout=90,
        )
        if start.returncode != 0:
            detail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise PostgresUnavailable(f"pg_ctl start failed: {start.stderr!r} {detail}")
        try:
            yield PostgresServer(directory, directory, port, bin_dir)
        finally:
            keep = os.environ.get("ACP_PROXY_PG_LOG")  # where to keep the server's log
            if keep:
                shutil.copyfile(log, keep)
            subprocess.run(
                [
                    *prefix,
                    str(bin_dir / "pg_ctl"),
                    "-D",
                    str(data),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ],
                capture_output=True,
                env=env,
                timeout=60,
            )
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def query(url: str, sql: str, *params: object) -> list[tuple[object, ...]]:
    """Run one query in a separate process (the test's own event loop may be trio, asyncpg
    needs asyncio); ``?`` placeholders as in SQLite. Bytes come back as bytes."""
    n = iter(range(1, len(params) + 1))
    pg_sql = re.sub(r"\?", lambda _m: f"${next(n)}", sql)
    done = subprocess.run(
        [sys.executable, "-m", "acp_proxy.testing.postgres", url, pg_sql, json.dumps(params)],
        capture_output=True,
        check=True,
        timeout=60,
    )
    return [
        tuple(bytes.fromhex(v["$b"]) if isinstance(v, dict) else v for v in row)
        for row in json.loads(done.stdout)
    ]


async def _query_main(url: str, sql: str, params: list[object]) -> None:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(sql, *params)
    finally:
        await conn.close()
    out = [[{"$b": v.hex()} if isinstance(v, bytes) else v for v in row] for row in rows]
    sys.stdout.write(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(_query_main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3])))
