"""The security suite: the proxy as a real subprocess, attacked through its socket and files."""

from __future__ import annotations

from tests.integration.conftest import client, db_rows, eventually, proxy, summary, tmp

__all__ = ["NOBODY", "client", "db_rows", "eventually", "proxy", "python_as", "summary", "tmp"]


import functools
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

NOBODY = 65534
_ROOT = Path(__file__).resolve().parents[2]


@functools.cache
def _python_for(uid: int) -> tuple[str, tuple[tuple[str, str], ...]] | str:
    if os.getuid() != 0:
        return "needs root to run a process as another uid"
    env = {
        "PYTHONPATH": f"{sysconfig.get_paths()['purelib']}:{_ROOT}",
        "PATH": "/usr/bin:/bin",
        "HOME": "/tmp",
    }
    for python in (sys.executable, "/usr/bin/python3.11", "/usr/bin/python3"):
        try:
            done = subprocess.run(
                [python, "-c", "import msgspec, anyio, structlog, aiosqlite, acp_proxy"],
                user=uid,
                env=env,
                capture_output=True,
                timeout=30,
                check=False,
            )
        except OSError:
            continue
        if done.returncode == 0:
            return python, tuple(env.items())
    return f"no Python interpreter that uid {uid} can run with this checkout's packages"


def python_as(uid: int) -> tuple[str, dict[str, str]]:
    """An interpreter (and environment) that can import acp_proxy as ``uid``, or skip."""
    found = _python_for(uid)
    if isinstance(found, str):
        pytest.skip(found)
    return found[0], dict(found[1])
