"""The database is private, served by one proxy at a time, and watched while it runs."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from acp_proxy.testing.proxy_process import fake_agent_command

from .conftest import NOBODY, client, eventually, proxy, python_as

pytestmark = pytest.mark.trio

UMASK_0 = ("sh", "-c", 'umask 000; exec "$@"', "sh")


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _serve(socket: Path, db: Path, python: str = sys.executable) -> list[str]:
    return [
        python, "-m", "acp_proxy", "serve", "--socket", str(socket), "--db", str(db),
        "--", *fake_agent_command(),
    ]  # fmt: skip


async def test_database_side_files_and_directories_are_owner_only_whatever_the_umask(
    tmp: Path,
) -> None:
    """Under umask 000 the database, its -wal and -shm, the lock files and every directory the
    proxy creates are 0600/0700 (they were 0644/0755: any local user read the prompts)."""
    data = tmp / "data" / "nested"
    db = data / "proxy.db"
    async with proxy(tmp, db=str(db), prefix=UMASK_0) as p, client(p) as c:
        sid = await c.new_session(str(tmp))
        await c.prompt(sid, "a secret prompt")
        for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm"), Path(f"{db}.lock")):
            assert _mode(path) == 0o600, path
        assert _mode(Path(f"{p.socket}.lock")) == 0o600
        assert _mode(tmp / "data") == _mode(data) == 0o700
        assert _mode(Path(p.socket)) == 0o600


async def test_existing_files_with_wide_modes_are_tightened_with_a_warning(tmp: Path) -> None:
    """A database left 0644 by an older proxy is made 0600, and the log says so."""
    db = tmp / "old.db"
    async with proxy(tmp, db=str(db)):
        pass
    os.chmod(db, 0o644)
    async with proxy(tmp, db=str(db)) as p:
        assert _mode(db) == 0o600
        warned = [e for e in p.logs() if e["event"] == "store.mode_tightened"]
        assert warned[-1]["file"] == str(db) and warned[-1]["old_mode"] == "0o644"


async def test_a_second_serve_on_the_same_database_exits_1(tmp: Path) -> None:
    """One serve per database: another socket does not make a second writer possible."""
    async with proxy(tmp) as p:
        result = await trio.run_process(
            _serve(tmp / "other.sock", Path(p.db)),
            capture_stderr=True,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        assert result.returncode == 1
        line = result.stderr.decode().strip()
        assert f"the database {p.db} is already served by process {p.pid}" in line
        assert len(line.splitlines()) == 1
        assert not (tmp / "other.sock").exists()
        async with client(p) as c:  # the first one is untouched
            await c.new_session(str(tmp))


async def test_two_serves_racing_for_one_socket_and_database_leave_exactly_one(
    tmp: Path,
) -> None:
    """Started at the same moment, 5 times: exactly one runs; the loser exits 1 without
    unlinking the winner's socket (before: both ran in 5 of 10 trials)."""
    for trial in range(5):
        directory = tmp / f"t{trial}"
        directory.mkdir()
        sock, db = directory / "p.sock", directory / "p.db"
        procs = [
            subprocess.Popen(  # noqa: ASYNC220 (two starts at the same instant)
                _serve(sock, db),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for _ in range(2)
        ]
        try:
            with trio.fail_after(30):
                while all(proc.poll() is None for proc in procs):  # noqa: ASYNC110
                    await trio.sleep(0.05)
            loser = next(proc for proc in procs if proc.poll() is not None)
            winner = next(proc for proc in procs if proc is not loser)
            assert loser.returncode == 1, loser.stderr.read() if loser.stderr else b""
            await eventually(sock.is_socket, within_s=20)
            await trio.sleep(0.3)
            assert winner.poll() is None
            assert sock.is_socket()
            stream = await trio.open_unix_socket(str(sock))
            await stream.aclose()
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.terminate()
                proc.wait(timeout=20)
                if proc.stderr:
                    proc.stderr.close()
        assert not sock.exists()  # the winner removed its own socket when it stopped


async def test_deleting_the_database_under_a_running_proxy_is_logged(tmp: Path) -> None:
    """The proxy notices the file is gone, logs an error naming a way to recover it, and the
    sessions it serves go on."""
    async with proxy(tmp) as p, client(p) as c:
        sid = await c.new_session(str(tmp))
        os.unlink(p.db)
        await eventually(
            lambda: any(e["event"] == "store.file_missing" for e in p.logs()), within_s=10
        )
        error = next(e for e in p.logs() if e["event"] == "store.file_missing")
        assert error["level"] == "error" and f"/proc/{p.pid}/fd/" in error["hint"]
        reply = await c.prompt(sid, "still served")
        assert reply.error is None


async def test_a_read_only_database_refuses_to_start(tmp: Path) -> None:
    """A non-root proxy on a database it cannot write exits 1 with one line naming the file,
    instead of logging ready and failing every write."""
    db = tmp / "ro.db"
    async with proxy(tmp, db=str(db)):
        pass
    python, env = python_as(NOBODY)
    os.chmod(db, 0o400)
    os.chown(tmp, NOBODY, NOBODY)
    for path in tmp.iterdir():
        os.chown(path, NOBODY, NOBODY)
    result = await trio.run_process(
        _serve(tmp / "ro.sock", db, python),
        capture_stderr=True,
        check=False,
        stdin=subprocess.DEVNULL,
        user=NOBODY,
        group=NOBODY,
        env=env,
    )
    assert result.returncode == 1, result.stderr
    line = result.stderr.decode().strip()
    assert len(line.splitlines()) == 1 and str(db) in line, line
