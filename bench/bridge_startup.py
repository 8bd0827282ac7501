"""Benchmark 13: start-up cost of the ``acp-proxy attach`` bridge.

Run ``python -m bench.bridge_startup [--runs N] [--write BENCHMARKS.md]``.

A client that can only spawn a command (the open-design daemon) pays the bridge's start-up
twice per turn: a ``--version`` probe (passthrough: the bridge execs the real binary) and the
ACP run. Set-up (not timed): one ``acp-proxy serve`` with the fake agent, asked once for
``initialize`` so its answer is known. Timed, alternating run by run:

* ``python -c pass``: exec → exit of a bare interpreter (the reference);
* ``attach`` ACP: exec of ``python -m acp_proxy attach --socket S`` → the ``initialize``
  answer read on its stdout (written to its stdin right after the spawn);
* ``attach`` passthrough: exec of ``python -m acp_proxy attach --real-binary /bin/true
  --acp-argv "agent run" -- --version`` → exit (the bridge execs ``/bin/true``);
* the same ACP run with the bridge as it was before this benchmark (commit ``d44dd5c``:
  anyio, msgspec, structlog, argparse), extracted to a temporary directory, dev env only.

Two interpreters: ``installed``, a fresh venv (``python -m venv --without-pip``) whose
site-packages holds a one-line ``.pth`` naming the checkout, as a non-editable install would
put the package on the path (the bridge needs no third-party package, so nothing else is
installed: that it runs there at all shows it imports none); ``dev``, this project's ``.venv``
(editable install: its setuptools finder costs every interpreter start ~25 ms). Bytecode is
compiled once into a private ``PYTHONPYCACHEPREFIX`` (this machine sets
``PYTHONDONTWRITEBYTECODE=1``), as after ``pip install .``.

Goal (installed): median(ACP) <= 2.5 x median(python -c pass) and median(passthrough) <=
median(ACP).
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from acp_proxy.testing.proxy_process import fake_agent_command
from bench._common import Stamp, ms, new_parser, parse, report, row

SECTION_TITLE = "## 18. Bridge start-up (`acp-proxy attach`)"
REPO = Path(__file__).resolve().parent.parent
OLD_COMMIT = "d44dd5c"
INITIALIZE = (
    b'{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":1,'
    b'"clientCapabilities":{"terminal":false},"clientInfo":{"name":"open-design"}}}\n'
)
LIMIT_S = 20.0
CWD = "/"
REAL = "/bin/true"  #: the real binary the passthrough execs
BARE = "python -c pass"
ALONE = f"{REAL} --version alone"
ACP = "attach ACP: spawn → initialize answered"
THROUGH = "attach passthrough: exec → exit"


def _bare(python: str, env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run([python, "-c", "pass"], env=env, check=True, cwd=CWD)
    return time.perf_counter() - started


def _passthrough(python: str, env: dict[str, str]) -> float:
    command = [python, "-m", "acp_proxy", "attach", "--socket", "/nonexistent"]
    command += ["--real-binary", REAL, "--acp-argv", "agent run", "--", "--version"]
    started = time.perf_counter()
    subprocess.run(
        command, env=env, check=True, timeout=LIMIT_S, stdout=subprocess.DEVNULL, cwd=CWD
    )
    return time.perf_counter() - started


def _acp(python: str, env: dict[str, str], sock: str) -> float:
    """Spawn → the initialize answer read back."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [python, "-m", "acp_proxy", "attach", "--socket", sock],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        cwd=CWD,  # not the checkout: `-m` would import from the working directory first
    )
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(INITIALIZE)
    process.stdin.flush()
    line = process.stdout.readline()
    elapsed = time.perf_counter() - started
    if b'"result"' not in line:
        raise RuntimeError(f"the bridge answered {line[:200]!r}")
    process.stdin.close()
    process.wait(timeout=LIMIT_S)
    process.stdout.close()
    return elapsed


def _wait_for_socket(path: str) -> None:
    deadline = time.monotonic() + LIMIT_S
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_UNIX) as s:
            try:
                s.connect(path)
                return
            except OSError:
                time.sleep(0.02)
    raise TimeoutError(f"the proxy did not listen on {path}")


def _venv(base: Path, name: str, paths: Sequence[Path | str]) -> str:
    """A fresh venv (no pip) whose site-packages has ``paths`` as plain ``.pth`` lines."""
    venv = base / name
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python*/site-packages"))
    (site / "acp_proxy_checkout.pth").write_text("".join(f"{p}\n" for p in paths))
    return str(venv / "bin" / "python")


def _old_checkout(base: Path) -> Path:
    old = base / "old"
    old.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", OLD_COMMIT, "acp_proxy", "store"],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
    return old


def _real_alone(env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run([REAL, "--version"], env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main(argv: Sequence[str] | None = None) -> int:
    parser = new_parser("bridge_startup", __doc__)
    parser.add_argument("--runs", type=int, default=15, help="runs per condition (15)")
    args = parse(parser, argv)
    stamp = Stamp.now("bridge_startup")
    with tempfile.TemporaryDirectory(prefix="acpb-") as tmp:
        base = Path(tmp)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = str(base / "pycache")
        new = _venv(base, "new", [REPO])
        third_party = next(Path(sys.prefix, "lib").glob("python*/site-packages"))
        old = _venv(base, "old", [_old_checkout(base), third_party])
        sock, db = str(base / "p.sock"), str(base / "p.db")
        serve = [sys.executable, "-m", "acp_proxy", "serve", "--socket", sock, "--db", db]
        with open(base / "proxy.log", "wb") as log:
            proxy = subprocess.Popen([*serve, "--", *fake_agent_command()], stderr=log, env=env)
        try:
            _wait_for_socket(sock)
            cases = {
                BARE: lambda: _bare(new, env),
                ALONE: lambda: _real_alone(env),
                ACP: lambda: _acp(new, env, sock),
                THROUGH: lambda: _passthrough(new, env),
                f"{ACP}, before ({OLD_COMMIT})": lambda: _acp(old, env, sock),
                f"{THROUGH}, before ({OLD_COMMIT})": lambda: _passthrough(old, env),
            }
            for case in cases.values():  # warm-up: bytecode, the proxy's agent info
                case()
            times: dict[str, list[float]] = {key: [] for key in cases}
            for n in range(1, args.runs + 1):
                for key, case in cases.items():
                    times[key].append(case())
                print(f"run {n}/{args.runs}", flush=True)
        finally:
            proxy.terminate()
            proxy.wait(timeout=LIMIT_S)
    body, passed = _render(times, args.runs)
    return report(SECTION_TITLE, stamp.header(stamp.load_span()), body, passed, args.write)


def _render(times: dict[str, list[float]], runs: int) -> tuple[str, bool]:
    med = {key: statistics.median(values) for key, values in times.items()}
    lines = [
        f"{runs} runs per case, cases alternating run by run, after one warm-up run each. "
        "Interpreter: a fresh venv per bridge with the checkout on its path (one `.pth` line, "
        "as a non-editable install; the bridge of today has no third-party package there, the "
        f"bridge before ({OLD_COMMIT}) has this project's dependencies), bytecode compiled "
        "once (private `PYTHONPYCACHEPREFIX`). ACP: spawn → the `initialize` answer read on "
        "the bridge's stdout (the proxy answers it from the agent's capabilities, known since "
        f"the warm-up). Passthrough: exec → exit of `attach … -- --version`, which execs "
        f"`{REAL} --version`.",
        "",
        row(["case", "median ms", "min ms", "max ms", "x python -c pass"]),
        row(["---", "---:", "---:", "---:", "---:"]),
    ]
    for case, values in times.items():
        cells = [ms(med[case]), ms(min(values)), ms(max(values)), f"{med[case] / med[BARE]:.2f}"]
        lines.append(row([case, *cells]))
    acp, bare = med[ACP], med[BARE]
    added = med[THROUGH] - med[ALONE]
    ok_acp, ok_through = acp <= 2.5 * bare, added <= acp
    before = med[f"{ACP}, before ({OLD_COMMIT})"]
    lines += [
        "",
        f"- median(ACP) / median(python -c pass) = {acp / bare:.2f} (goal <= 2.5; before: "
        f"{before / bare:.2f}): **{'PASS' if ok_acp else 'FAIL'}**",
        f"- passthrough adds {ms(added)} ms to `{REAL} --version` alone, no more than the ACP "
        f"start-up ({ms(acp)} ms): **{'PASS' if ok_through else 'FAIL'}**",
        "",
        f"Goal: **{'PASS' if ok_acp and ok_through else 'FAIL'}**",
    ]
    return "\n".join(lines), ok_acp and ok_through


if __name__ == "__main__":
    sys.exit(main())
