"""The real open-design daemon through the proxy: skipped unless a built checkout is given.

    ACP_PROXY_OPEN_DESIGN_DAEMON=/path/to/ns-open-design   # built: scripts/open-design-daemon.sh
    ACP_PROXY_OPEN_DESIGN_NODE=/path/to/node               # Node 24 (else `node` on PATH)
    ACP_PROXY_OPEN_DESIGN_REPORT=/path/to/report.jsonl     # optional: one line of numbers per test

Also skipped when opencode is not installed (``scripts/install-opencode.sh``), like
``tests/opencode``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.opencode.harness import INSTALL_HINT, OpencodeHome, installed, prime
from tests.real_agent.world import reap

from .world import DaemonModel, DaemonWorld

CHECKOUT_VAR = "ACP_PROXY_OPEN_DESIGN_DAEMON"
NODE_VAR = "ACP_PROXY_OPEN_DESIGN_NODE"
REPORT_VAR = "ACP_PROXY_OPEN_DESIGN_REPORT"
BUILD_HINT = "scripts/open-design-daemon.sh CHECKOUT_DIR builds one and prints what to set"


def _checkout() -> Path:
    value = os.environ.get(CHECKOUT_VAR)
    if not value:
        pytest.skip(
            f"the real open-design daemon suite needs {CHECKOUT_VAR}=<a built checkout of "
            f"NeuralStudioKr/ns-open-design@e00d0bc56e2e> ({BUILD_HINT})"
        )
    checkout = Path(value)
    if not (checkout / "apps" / "daemon" / "dist" / "server.js").exists():
        pytest.skip(f"{CHECKOUT_VAR}={value} has no apps/daemon/dist/server.js ({BUILD_HINT})")
    return checkout


def _node() -> str:
    node = os.environ.get(NODE_VAR) or shutil.which("node")
    if not node:
        pytest.skip(f"Node 24 not found: set {NODE_VAR} ({BUILD_HINT})")
    try:
        version = subprocess.run(
            [node, "--version"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"{node} --version failed ({exc}): set {NODE_VAR} to a Node 24 binary")
    if not version.startswith("v24."):
        pytest.skip(f"the daemon needs Node 24 (engines ~24); {node} is {version}: set {NODE_VAR}")
    return node


@pytest.fixture(scope="session")
def daemon_checkout() -> tuple[Path, str]:
    """(the built checkout, the Node 24 binary); skips with the reason when either is missing."""
    checkout = _checkout()
    node = _node()
    if not installed():
        pytest.skip(INSTALL_HINT)
    return checkout, node


@pytest.fixture(scope="session")
def od_primed_data(daemon_checkout: tuple[Path, str]) -> Iterator[Path]:
    """An opencode data dir past its first start (see tests/opencode/conftest.py)."""
    with tempfile.TemporaryDirectory(prefix="acpod-prime-") as directory, DaemonModel() as model:
        home = OpencodeHome(Path(directory))
        try:
            prime(home, model.base_url)
        finally:
            reap(f"XDG_DATA_HOME={home.root / 'data'}")
        yield home.root / "data"


@pytest.fixture
def world(daemon_checkout: tuple[Path, str], od_primed_data: Path) -> Iterator[DaemonWorld]:
    """Proxy and daemon started (see :class:`DaemonWorld`); everything stopped afterwards."""
    checkout, node = daemon_checkout
    with tempfile.TemporaryDirectory(prefix="acpod-") as directory, DaemonModel() as model:
        tmp = Path(directory)
        w = DaemonWorld(tmp, checkout, node, OpencodeHome(tmp / "oc", od_primed_data), model)
        try:
            w.start_proxy()
            w.start_daemon()
            yield w
        finally:
            w.close()
            leftovers = reap(f"XDG_DATA_HOME={w.home.root / 'data'}")
        assert not leftovers, f"opencode processes outlived the test (killed): {leftovers}"


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Callable[..., None]:
    """Record a test's numbers: printed (``-s``) and appended to $ACP_PROXY_OPEN_DESIGN_REPORT."""

    def record(**numbers: Any) -> None:
        line = json.dumps({"test": request.node.name, **numbers})
        sys.stdout.write(line + "\n")
        path = os.environ.get(REPORT_VAR)
        if path:
            with open(path, "a", encoding="utf-8") as out:
                out.write(line + "\n")

    return record
