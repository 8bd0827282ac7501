"""The per-turn environment file (BASH_ENV) and the stderr relay's rate bound."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from acp_proxy.stderr_relay import StderrLimiter
from acp_proxy.tool_env import ToolEnv, render


def test_values_survive_bash_quoting(tmp_path: Path) -> None:
    tricky = 'it\'s $HOME `id` "q" \\ \n next line; $(echo no)'
    chained = tmp_path / "own.env"
    chained.write_text("export FROM_OWN=yes\n")
    path = tmp_path / "turn.env"
    path.write_text(render({"TOKEN": tricky, "bad-name": "skipped", "B": ""}, str(chained)))
    out = subprocess.run(
        ["/bin/bash", "-c", 'printf "%s|%s|%s" "$TOKEN" "$FROM_OWN" "${B-unset}"'],
        env={"PATH": os.environ["PATH"], "BASH_ENV": str(path)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out == f"{tricky}|yes|"


def test_files_are_private_replaced_and_removed() -> None:
    tool_env = ToolEnv(chain="")
    agent = object()
    path = tool_env.new_file(agent)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.stat(os.path.dirname(path)).st_mode & 0o777 == 0o700
    tool_env.write(agent, {"OD_TOOL_TOKEN": "t1"})
    assert "OD_TOOL_TOKEN=t1" in Path(path).read_text()
    assert os.stat(path).st_mode & 0o777 == 0o600
    tool_env.clear(agent)
    assert "t1" not in Path(path).read_text()
    tool_env.remove(agent)
    assert not os.path.exists(path)
    tool_env.write(agent, {"X": "y"})  # an agent gone: nothing is written
    directory = os.path.dirname(path)
    tool_env.close()
    assert not os.path.exists(directory)


_HOLDER = """
import sys, time
from acp_proxy.tool_env import ToolEnv
print(ToolEnv(chain="").new_file(object()), flush=True)
time.sleep(60)
"""


def _holder(parent: Path) -> tuple[subprocess.Popen[str], str]:
    """A process that made its environment directory in ``parent`` and keeps running."""
    env = {**os.environ, "XDG_RUNTIME_DIR": str(parent)}
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLDER], stdout=subprocess.PIPE, text=True, env=env
    )
    assert child.stdout is not None
    return child, os.path.dirname(child.stdout.readline().strip())


def test_a_killed_proxys_directory_is_removed_by_the_next_one(tmp_path: Path) -> None:
    """A proxy killed with SIGKILL cannot remove its directory; the next one to create its
    own removes it, and never the directory of one still running."""
    killed, killed_dir = _holder(tmp_path)
    running, running_dir = _holder(tmp_path)
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait(10)
        assert os.path.isdir(killed_dir)
        os.makedirs(tmp_path / "acp-proxy-env-older")  # no lock (an older version): kept
        env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path)}
        subprocess.run(
            [sys.executable, "-c", "from acp_proxy.tool_env import ToolEnv\n"
             "t = ToolEnv(chain=''); t.new_file(object()); t.close()"],
            env=env, check=True, timeout=30,
        )  # fmt: skip
        assert not os.path.exists(killed_dir)
        assert os.path.isdir(running_dir)
        assert os.path.isdir(tmp_path / "acp-proxy-env-older")
    finally:
        for child in (killed, running):
            child.kill()
            child.wait(10)
            assert child.stdout is not None
            child.stdout.close()


def test_stderr_limiter_bounds_rate_and_size() -> None:
    now = [0.0]
    limiter = StderrLimiter(burst=3, rate=1.0, max_chars=10, clock=lambda: now[0])
    assert [limiter.admit(f"l{i}") for i in range(5)] == ["l0", "l1", "l2", None, None]
    now[0] = 1.0
    assert limiter.admit("next") == "[acp-proxy: 2 agent stderr lines dropped (rate)] next"
    now[0] = 2.0
    cut = limiter.admit("x" * 25)
    assert cut is not None and cut.startswith("x" * 10 + "…") and "15 chars cut" in cut
