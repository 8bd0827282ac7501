"""The bridge's output splitter: relayed stderr lines out, ACP bytes through unchanged."""

from __future__ import annotations

import json
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from acp_proxy.attach import STDERR_PREFIX, StreamSplitter, hello, parse_args


def _stderr_line(text: str) -> bytes:
    params = json.dumps({"sessionId": "s", "line": text}, separators=(",", ":"))
    return STDERR_PREFIX + b'"params":' + params.encode() + b"}\n"


def _run(chunks: list[bytes]) -> tuple[bytes, list[bytes]]:
    out: list[bytes] = []
    err: list[bytes] = []
    splitter = StreamSplitter(out.append, err.append)
    for chunk in chunks:
        splitter.feed(chunk)
    splitter.close()
    return b"".join(out), err


ACP_LINES = [
    b'{"jsonrpc":"2.0","id":1,"result":{}}\n',
    b'{"jsonrpc":"2.0","method":"session/update","params":{"x":"_acp-proxy/stderr"}}\n',
    b"{}\n",
    b"\n",
    b'{"jsonrpc":"2.0","method":"_acp-proxy/stderrX","params":{}}\n',
    b'{"jsonrpc":"2.0","method":"session/update","params":{"t":"' + b"a" * 5000 + b'"}}\n',
]


@settings(max_examples=300, deadline=None)
@given(
    picks=st.lists(st.integers(0, len(ACP_LINES) + 1), max_size=12),
    seed=st.integers(0, 10_000),
    tail=st.booleans(),
)
def test_split_is_exact_whatever_the_chunking(picks: list[int], seed: int, tail: bool) -> None:
    lines, acp, relayed = [], b"", []
    for i in picks:
        if i >= len(ACP_LINES):
            line = _stderr_line(f"stderr {len(lines)}")
            relayed.append(line[:-1])
        else:
            line = ACP_LINES[i]
            acp += line
        lines.append(line)
    stream = b"".join(lines)
    if tail:  # an unfinished last line (the proxy closed mid-line): ACP output
        stream += b'{"jsonrpc"'
        acp += b'{"jsonrpc"'
    rng = random.Random(seed)
    chunks, pos = [], 0
    while pos < len(stream):
        size = rng.choice([1, 2, 7, 30, 47, 48, 49, 100, 4096])
        chunks.append(stream[pos : pos + size])
        pos += size
    out, err = _run(chunks)
    assert out == acp
    assert err == relayed


def test_whole_lines_in_one_chunk() -> None:
    out, err = _run([ACP_LINES[0] + _stderr_line("tier upgrade required") + ACP_LINES[2]])
    assert out == ACP_LINES[0] + ACP_LINES[2]
    assert [json.loads(e)["params"]["line"] for e in err] == ["tier upgrade required"]


def test_hello_forwards_names_and_prefixes(monkeypatch: object) -> None:
    import os

    env = {"OD_TOOL_TOKEN": "t0k", "OD_BIN": "/x", "OPEN_DESIGN_RUN_ID": "r1", "OTHER": "no"}
    old = dict(os.environ)
    os.environ.update(env)
    try:
        message = json.loads(hello(["OPEN_DESIGN_RUN_ID", "MISSING"], ["OD_"]))
    finally:
        os.environ.clear()
        os.environ.update(old)
    assert message["method"] == "_acp-proxy/env"
    assert message["params"] == {
        "env": {"OD_TOOL_TOKEN": "t0k", "OD_BIN": "/x", "OPEN_DESIGN_RUN_ID": "r1"},
        "stderr": True,
    }


def test_parse_args_stops_at_the_passthrough_args() -> None:
    options, fallback, rest = parse_args(
        ["--socket", "/s", "--fallback", "--forward-env=A,B", "--", "agent", "--socket", "x"]
    )
    assert options["--socket"] == "/s" and options["--forward-env"] == "A,B"
    assert fallback and rest == ["agent", "--socket", "x"]
    options, fallback, rest = parse_args(["--socket", "/s", "--version"])
    assert rest == ["--version"] and not fallback
