"""The nesting-depth check and the UTF-8 repair of stored bytes: pure, no I/O."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from acp_proxy.protocol import (
    MAX_NESTING_DEPTH,
    RemoteProtocolError,
    as_valid_utf8,
    decode_message,
    exceeds_depth,
)


def _depth(value: object) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


@pytest.mark.parametrize("depth", [1, 127, 128, 129, 600, 5000])
def test_depth_limit_is_exact(depth: int) -> None:
    """Arrays and objects nested exactly ``depth`` deep are over the limit only past 128."""
    text = b'{"a":' * (depth // 2) + b"[" * (depth - depth // 2)
    text += b"]" * (depth - depth // 2) + b"}" * (depth // 2)
    assert exceeds_depth(text) == (depth > MAX_NESTING_DEPTH)


def test_brackets_inside_strings_are_not_nesting() -> None:
    """A string full of brackets (and escaped quotes) is one level, however long."""
    text = json.dumps({"text": '[{"\\' * 1000}).encode()
    assert not exceeds_depth(text)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ab'),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.text(alphabet='[]{}"\\ab', max_size=3), children, max_size=3)
    ),
    max_leaves=40,
)


@given(json_values, st.integers(min_value=1, max_value=12))
def test_matches_a_recursive_walk(value: object, limit: int) -> None:
    """On any JSON value the linear check agrees with walking the decoded value."""
    text = json.dumps(value).encode()
    assert exceeds_depth(text, limit) == (_depth(value) > limit)


def test_a_deep_request_is_answered_with_its_id() -> None:
    """-32602 with the request's id, before anything could forward or store it."""
    line = b'{"jsonrpc":"2.0","id":"r1","method":"session/prompt","params":{"_meta":'
    line += b"[" * 300 + b"]" * 300 + b"}}"
    with pytest.raises(RemoteProtocolError) as caught:
        decode_message(line)
    assert (caught.value.code, caught.value.data) == (-32602, "r1")


def test_invalid_utf8_is_repaired_valid_is_kept() -> None:
    """Stored bytes a strict parser would reject get U+FFFD; valid ones are the same object."""
    good = "é".encode()
    assert as_valid_utf8(good) is good
    assert as_valid_utf8(b"a\xffb") == "a\ufffdb".encode()
