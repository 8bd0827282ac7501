"""Operational failures read as one line (path, cause, fix), against the real commands.

The permission cases need a user who cannot write where the test (the owner) can: run as
root, the commands run as uid 65534; run as anyone else, the directories are made read-only.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from acp_proxy.testing.proxy_process import fake_agent_command

from .conftest import client, proxy

pytestmark = pytest.mark.trio

ROOT = os.geteuid() == 0
NOBODY = 65534


def _unprivileged() -> list[str]:
    if not ROOT:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv(1) to drop privileges")
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


def _read_only_dir(path: Path) -> Path:
    """A directory the unprivileged user can enter and read but not write."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o755 if ROOT else 0o555)
    return path


async def _run(*args: str) -> subprocess.CompletedProcess[bytes]:
    # Not measured by coverage: as another user it could not write its data file, and its
    # complaint at exit would be a second line on stderr.
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")}
    return await trio.run_process(
        [*_unprivileged(), sys.executable, "-m", "acp_proxy", *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env=env,
    )


async def _serve(socket: Path, db: Path) -> subprocess.CompletedProcess[bytes]:
    args = ("serve", "--socket", str(socket), "--db", str(db), "--warm-spares", "0")
    with trio.fail_after(30):
        return await _run(*args, "--", *fake_agent_command())


def _one_line(result: subprocess.CompletedProcess[bytes], *fragments: str) -> str:
    err = result.stderr.decode()
    assert result.returncode == 1, err
    assert "Traceback" not in err
    assert err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err
    return err


@pytest.fixture
def world(tmp: Path) -> Iterator[Path]:
    """``tmp``, open to the unprivileged user; a writable ``ok/`` inside."""
    tmp.chmod(0o755)
    ok = tmp / "ok"
    ok.mkdir()
    ok.chmod(0o777)
    yield tmp
    for path in tmp.rglob("*"):  # let the fixture clean up what was made read-only
        with contextlib.suppress(OSError):
            path.chmod(0o755 if path.is_dir() else 0o644)


async def test_socket_directory_not_writable(world: Path) -> None:
    """A socket directory owned by another user: path, owner, and the chown to fix it."""
    locked = _read_only_dir(world / "run")
    result = await _serve(locked / "p.sock", world / "ok" / "p.db")
    _one_line(result, f"cannot create the socket {locked}/p.sock", "not writable", "fix:")
    assert f"chown {NOBODY if ROOT else os.geteuid()} {locked}" in result.stderr.decode()


async def test_socket_directory_missing_under_a_locked_parent(world: Path) -> None:
    """The directory to create is named by the ancestor that refuses it."""
    locked = _read_only_dir(world / "run")
    result = await _serve(locked / "acp" / "p.sock", world / "ok" / "p.db")
    _one_line(result, f"{locked} is owned by", "fix:")


async def test_database_directory_not_writable(world: Path) -> None:
    """A database in a directory this user cannot write."""
    locked = _read_only_dir(world / "data")
    result = await _serve(world / "ok" / "p.sock", locked / "p.db")
    _one_line(result, f"cannot open the database {locked}/p.db", "not writable", "--db")


async def test_not_a_database(world: Path) -> None:
    """A file that is not SQLite is named as such; it is not overwritten."""
    junk = world / "ok" / "p.db"
    junk.write_text("these are my notes, not a database\n" * 100)
    junk.chmod(0o666)
    result = await _serve(world / "ok" / "p.sock", junk)
    _one_line(result, f"{junk}", "not an SQLite database", "fix:")
    assert junk.read_text().startswith("these are my notes")


@pytest.mark.skipif(not ROOT, reason="mounting a tiny tmpfs needs root")
async def test_full_disk(world: Path) -> None:
    """A full disk under the database says so, naming the path."""
    disk = world / "disk"
    disk.mkdir()
    mounted = await trio.run_process(
        ["mount", "-t", "tmpfs", "-o", "size=256k,mode=0777", "tmpfs", str(disk)],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        with contextlib.suppress(OSError), (disk / "filler").open("wb") as filler:
            for _ in range(1024):  # bounded: 256 KiB fill up long before 4 MiB
                filler.write(b"\0" * 4096)
                filler.flush()
        result = await _serve(world / "ok" / "p.sock", disk / "p.db")
    finally:
        await trio.run_process(["umount", str(disk)], check=False)
    _one_line(result, f"the disk holding {disk}/p.db is full", "fix:")


async def test_attach_cannot_connect_is_plain_text(world: Path) -> None:
    """The bridge's connect failure is one plain line, not a JSON log."""
    result = await _run("attach", "--socket", str(world / "none.sock"))
    _one_line(result, "acp-proxy attach: cannot connect to", "is `acp-proxy serve` running")
    assert not result.stderr.startswith(b"{")


async def test_sessions_read_commands_work_on_a_read_only_database(world: Path) -> None:
    """list/show/export open a database this user can only read; delete says it cannot."""
    data = world / "data"
    data.mkdir()
    async with proxy(world / "ok", db=str(data / "p.db")) as p, client(p) as c:
        sid = await c.new_session(str(world))
        await c.prompt(sid, "hello")
    for path in (data, *data.iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)
    if not ROOT:
        data.chmod(0o555)
        for path in data.iterdir():
            path.chmod(0o444)
    db = str(data / "p.db")
    listed = await _run("sessions", "--db", db, "list")
    assert listed.returncode == 0, listed.stderr
    assert sid in listed.stdout.decode()
    shown = await _run("sessions", "--db", db, "show", sid)
    assert shown.returncode == 0 and b"turns 1" in shown.stdout
    exported = await _run("sessions", "--db", db, "export", sid)
    assert exported.returncode == 0 and b"hello" in exported.stdout
    denied = await _run("sessions", "--db", db, "delete", sid)
    assert denied.returncode == 1
    assert b"Traceback" not in denied.stderr


async def test_sessions_delete_of_an_unknown_id_exits_1(tmp: Path) -> None:
    """Deleting a session that does not exist is a failure the caller can see."""
    async with proxy(tmp) as p:
        result = await trio.run_process(
            [sys.executable, "-m", "acp_proxy", "sessions", "--db", p.db, "delete", "sess_no"],
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 1
    assert b"no session sess_no" in result.stderr


async def test_metrics_port_in_use(world: Path) -> None:
    """A metrics address already taken is one line naming it, not a traceback."""
    import socket as socket_module

    with socket_module.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = await trio.run_process(
            [sys.executable, "-m", "acp_proxy", "serve", "--socket", str(world / "ok" / "p.sock"),
             "--db", str(world / "ok" / "p.db"), "--warm-spares", "0",
             "--metrics", f"127.0.0.1:{port}", "--", *fake_agent_command()],
            capture_stderr=True,
            check=False,
        )  # fmt: skip
    _one_line(result, "cannot listen for metrics", "--metrics")
